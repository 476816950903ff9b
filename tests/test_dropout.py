"""Dropout kernels: statistics of the counter-based mask, torch's formulas on the same mask,
forward/backward agreement, thread-count independence and torch's shortcuts (p = 0, p = 1, eval).

torch's random stream cannot be reproduced, so the torch comparisons inject our mask into torch's
own computation (``_dropout_impl``: noise = mask / (1 - p), or alpha dropout's affine), and the
mask itself is tested statistically.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
import pytest
import torch
from conftest import DTYPES, assert_close, kernel, ops_of, torch_fn

from symgrad.derive import derive
from symgrad.kinds.dropout import KEEP
from symgrad.spec import REGISTRY

DROPOUTS = ops_of("dropout")
SELU_SATURATION = 1.7580993408473766  # torch's literal (semantics.md §5)


def shape_for(spec) -> tuple[int, ...]:
    """An input torch accepts without a warning: (N, C, L) for 1d, (N, C, H, W) for 2d, ..."""
    if spec.mask == "element":
        return (60, 50)
    return {3: (6, 40, 5), 5: (4, 10, 2, 3, 2)}.get(spec.batched_rank, (6, 40, 3, 2))


def torch_reference(spec, x: np.ndarray, mask: np.ndarray, p: float):
    """torch's _dropout_impl with our mask as its noise: returns (y, d y / d x · 1)."""
    xt = torch.tensor(x, requires_grad=True)
    noise = torch.tensor(np.broadcast_to(mask, x.shape).astype(x.dtype))
    if "alpha" in spec.torch.function:  # torch's _dropout_impl<alpha=true>
        a = 1.0 / math.sqrt((SELU_SATURATION * SELU_SATURATION * p + 1) * (1 - p))
        b = noise.add(-1).mul_(SELU_SATURATION * a).add_(SELU_SATURATION * a * p)
        y = xt * noise.mul_(a) + b
    else:
        y = xt * noise.div_(1 - p)
    y.backward(torch.ones_like(xt))
    return y.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", DROPOUTS)
def test_values_and_gradients_match_torch_on_the_same_mask(spec, dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape_for(spec)).astype(dtype) * 3
    x.flat[:4] = [0.0, -0.0, 1e4, -1e4]
    for p in (0.1, 0.5, 0.8):
        y, mask = kernel(spec, "forward")(x, p=p, training=True, seed=7, return_mask=True)
        assert y.dtype == dtype and mask.dtype == np.bool_
        ref_y, ref_g = torch_reference(spec, x, mask, p)
        assert_close(y, ref_y, dtype, f"{spec.name} p={p} forward", rtol=4 * np.finfo(dtype).eps)
        g = rng.normal(size=x.shape).astype(dtype)
        gx = kernel(spec, "backward")(g, p=p, training=True, seed=7)
        assert_close(gx, g * ref_g, dtype, f"{spec.name} p={p} backward",
                     rtol=2 * np.finfo(dtype).eps)
        y2, gx2 = kernel(spec, "forward_backward")(x, g, p=p, training=True, seed=7)
        assert np.array_equal(y2, y) and np.array_equal(gx2, gx)  # one mask, element for element


@pytest.mark.parametrize("spec", DROPOUTS)
def test_keep_rate_within_a_binomial_bound(spec):
    """Kept fraction within 5 sigma of 1 - p (a false alarm has probability 6e-7 per check);
    neighbouring bits independent (pairs kept at rate (1 - p)^2); seeds give different masks."""
    n = 40_000
    x = np.ones(n if spec.mask == "element" else (n, 1), np.float32)
    for p in (0.2, 0.5, 0.9):
        q = 1 - p
        _, mask = kernel(spec, "forward")(x, p=p, training=True, seed=123, return_mask=True)
        kept = mask.reshape(-1)
        assert abs(kept.sum() - n * q) <= 5 * math.sqrt(n * p * q), (p, kept.mean())
        pairs = (kept[:-1] & kept[1:]).sum()
        assert abs(pairs - (n - 1) * q * q) <= 5 * math.sqrt(n * q * q * (1 - q * q)) * 2
        _, other = kernel(spec, "forward")(x, p=p, training=True, seed=124, return_mask=True)
        assert abs((other.reshape(-1) == kept).mean() - (q * q + p * p)) < 0.02


@pytest.mark.parametrize("spec", [s for s in DROPOUTS if "alpha" in s.values[0].torch.function])
def test_alpha_dropout_keeps_mean_zero_and_variance_one(spec):
    """On N(0, 1) input: the sample mean and variance of y within 5 standard errors of 0 and 1.

    y is a·x + A·a·p (kept, prob q) or -A·a·q (dropped), so Var(y) = 1 (proven symbolically in
    the derivation) and the standard errors are 1/sqrt(n) for the mean and
    sqrt((E[y^4] - 1) / n) for the variance, with E[y^4] computed exactly below.
    """
    n, p = 400_000, 0.3
    q = 1 - p
    a = 1 / math.sqrt((SELU_SATURATION**2 * p + 1) * q)
    kept, dropped = SELU_SATURATION * a * p, -SELU_SATURATION * a * q
    # E[(a x + c)^4] for x ~ N(0, 1): a^4·3 + 6 a^2 c^2 + c^4
    fourth = q * (3 * a**4 + 6 * a**2 * kept**2 + kept**4) + p * dropped**4
    x = np.random.default_rng(5).standard_normal(n if spec.mask == "element" else (n, 1))
    y = kernel(spec, "forward")(x, p=p, training=True, seed=99)
    assert abs(y.mean()) <= 5 / math.sqrt(n)
    assert abs(y.var() - 1) <= 5 * math.sqrt((fourth - 1) / n)
    titles = [proof.claim for proof in derive(spec).proofs]
    assert any("E[y^2] = 1" in t for t in titles) and any("E[y] = 0" in t for t in titles)


def test_same_seed_same_mask_for_any_thread_count_and_dtype():
    spec = REGISTRY["dropout"]
    x = np.random.default_rng(3).normal(size=100_000)  # parallel kernels
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1, m1 = kernel(spec, "forward")(x, p=0.4, seed=2024, return_mask=True)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        yn, mn = kernel(spec, "forward")(x, p=0.4, seed=2024, return_mask=True)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(m1, mn) and np.array_equal(y1, yn)
    _, m32 = kernel(spec, "forward")(x[:1000].astype(np.float32), p=0.4, seed=2024,
                                     return_mask=True)
    assert np.array_equal(m32, m1[:1000])  # the mask depends on (seed, index) only


@pytest.mark.parametrize("spec", DROPOUTS)
def test_mask_granularity_matches_torch(spec):
    """The axes our mask broadcasts over are exactly those along which torch's mask is constant,
    for every rank torch accepts (torch's 3-D dropout2d input is (N, C, L))."""
    for shape in [(16, 8), (4, 16, 5), (2, 16, 3, 3), (2, 8, 2, 3, 2), (16, 2, 3, 2)]:
        x = np.ones(shape)
        torch.manual_seed(0)
        try:
            with warnings.catch_warnings():  # torch warns about ranks it reinterprets
                warnings.simplefilter("ignore")
                t = torch_fn(spec)(torch.tensor(x), p=0.5, training=True).numpy()
        except RuntimeError:
            with pytest.raises(ValueError):
                kernel(spec, "forward")(x, p=0.5, training=True, seed=1)
            continue
        _, mask = kernel(spec, "forward")(x, p=0.5, training=True, seed=1, return_mask=True)
        assert mask.ndim == x.ndim
        broadcast = tuple(i for i, m in enumerate(mask.shape) if m == 1 and shape[i] > 1)
        dropped = t < t.max()  # on ones, a kept element is the larger value (alpha dropout too)
        assert np.array_equal(dropped, np.broadcast_to(dropped.all(axis=broadcast, keepdims=True),
                                                       shape)), (spec.name, shape)
        if mask.size >= 16:
            assert dropped.any() and not dropped.all()


@pytest.mark.parametrize("spec", DROPOUTS)
def test_shortcuts_p0_p1_eval_and_finite_differences(spec):
    x = np.array([[1.5, -2.0, 0.0, -0.0], [np.inf, -np.inf, np.nan, 3.0]])
    for kwargs in ({"p": 0.0, "training": True}, {"p": 0.7, "training": False}):
        assert kernel(spec, "forward")(x, seed=1, **kwargs) is x  # torch returns the input
        assert kernel(spec, "backward")(x, seed=1, **kwargs) is x
    if spec.training_default is False:
        assert kernel(spec, "forward")(x, p=0.5) is x  # F.alpha_dropout defaults to eval
    y = kernel(spec, "forward")(x, p=1.0, training=True)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about 2-D input to dropout2d/3d
        ref = torch_fn(spec)(torch.tensor(x), p=1.0, training=True).numpy()
    assert np.array_equal(np.signbit(y), np.signbit(ref)) and np.array_equal(
        np.isnan(y), np.isnan(ref)) and np.all(y[~np.isnan(y)] == 0)
    out = np.empty_like(x)
    assert kernel(spec, "forward")(x, p=0.0, out=out, seed=1) is out
    # dy/dx by central differences on the same mask equals the backward.
    z = np.random.default_rng(2).normal(size=(4, 6, 3))
    h = 1e-6
    fwd = kernel(spec, "forward")
    fd = (fwd(z + h, p=0.4, training=True, seed=5) - fwd(z - h, p=0.4, training=True, seed=5))
    bwd = kernel(spec, "backward")(np.ones_like(z), p=0.4, training=True, seed=5)
    assert np.allclose(fd / (2 * h), bwd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("spec", DROPOUTS)
def test_bad_input_is_a_clear_error(spec):
    x = np.ones((2, 3, 4), np.float32)
    fwd, bwd = kernel(spec, "forward"), kernel(spec, "backward")
    cases = [
        (lambda: fwd(x, p=1.5, training=True, seed=1), ValueError, "p must be <= 1"),
        (lambda: fwd(x, p=-0.1, training=True, seed=1), ValueError, "p must be >= 0"),
        (lambda: bwd(x, p=2.0, training=True, seed=1), ValueError, "p must be"),
        (lambda: fwd(x, p=0.5, training=True), TypeError, "seed"),
        (lambda: fwd(x, p=0.5, training=True, seed=-1), ValueError, "seed"),
        (lambda: fwd(x, p=0.5, training=True, seed=1.5), TypeError, "seed"),
        (lambda: fwd(x, p=0.5, training=1, seed=1), TypeError, "training"),
        (lambda: fwd(x.astype(np.int32), p=0.5, training=True, seed=1), TypeError, "dtype"),
        (lambda: fwd(x, p=0.5, training=True, seed=1, out=np.empty(3)), ValueError, "out"),
    ]
    if spec.name == "dropout1d":
        cases.append((lambda: fwd(np.ones((2, 2, 2, 2)), p=0.5, training=True, seed=1),
                      ValueError, "2 or 3"))
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()


@pytest.mark.parametrize("spec", DROPOUTS)
def test_float32_kernels_do_no_float64_arithmetic(spec, monkeypatch):
    import importlib
    import re

    module = importlib.import_module(f"symgrad_kernels.{spec.name}")
    irs = []

    def pick(name, dtype, size):
        # Recompiled without the on-disk cache: Numba cannot inspect cached code.
        fresh = numba.njit(error_model="numpy")(getattr(module, f"{name}_ser_float32").py_func)

        def run(*args):
            fresh(*args)
            irs.append(fresh.inspect_llvm(fresh.signatures[0]))
        return run

    monkeypatch.setattr(module, "_pick", pick)
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    kernel(spec, "forward")(x, p=0.3, training=True, seed=1)
    assert len(irs) == 1
    assert not re.search(r"fpext float .* to double|f(add|sub|mul|div) double|double @llvm",
                         irs[0]), spec.name


def test_malformed_specs_are_rejected_with_the_fix():
    import dataclasses

    from symgrad.derive import DerivationError
    from symgrad.spec import SpecError, X

    spec = REGISTRY["dropout"]
    with pytest.raises(SpecError, match="one of"):
        dataclasses.replace(spec, mask="row")
    with pytest.raises(SpecError, match="family='dropout'"):
        dataclasses.replace(spec, family="activation")
    with pytest.raises(DerivationError, match="not linear in x"):
        derive(dataclasses.replace(spec, forward=KEEP * X**2, moments=()))
