"""Every elementwise kernel against mpmath, finite differences and PyTorch, float32 and float64."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
from conftest import DTYPES, assert_close, kernel, mp_function, ops_of, param_values, torch_fn

from symgrad.derive import derive
from symgrad.spec import X

ELEMENTWISE = ops_of("elementwise")


def edge_points(dtype) -> np.ndarray:
    """Kinks, thresholds, overflow edges, huge values, subnormals, signed zeros, inf and nan."""
    fi = np.finfo(dtype)
    big = 88.72 if dtype == np.float32 else 709.78
    pts = [0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 6.0, 0.5, -0.5, 20.0, 20.1, 19.9, 10.0, 40.0,
           100.0, -100.0, 1000.0, -1000.0, 1e4, -1e4, big, -big, big + 1, -big - 1,
           float(fi.tiny) / 4, -float(fi.tiny) / 4, float(fi.max), -float(fi.max), 1e-7, -1e-7]
    return np.array(pts + [np.inf, -np.inf, np.nan], dtype=dtype)


def sample_points(dtype, n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(7)
    mags = 10.0 ** rng.uniform(-6, 1.5, n)
    return np.concatenate([rng.normal(0, 4, n), mags * rng.choice([-1, 1], n)]).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_against_mpmath(spec, dtype):
    """Forward and derivative against the textbook definition evaluated at 30 digits."""
    params = param_values(spec)
    subs = {sp.Symbol(k, real=True): v for k, v in params.items()}
    d = derive(spec)
    f = mp_function(spec.forward.subs(subs), [X])
    df = mp_function(sp.diff(spec.forward, X).subs(subs), [X])
    x = np.concatenate([sample_points(dtype), edge_points(dtype)])
    x = x[np.isfinite(x) & (np.abs(x) < 1e4)]
    with mpmath.workdps(30):
        ref_y = np.array([float(f(mpmath.mpf(float(v)))) for v in x])
        ref_d = np.array([float(df(mpmath.mpf(float(v)))) for v in x])
    g = np.ones_like(x)
    y = kernel(spec, "forward")(x, **params)
    assert y.dtype == dtype
    # float32 gets a few ULPs of slack for composed formulas (softplus(beta x)/beta, ...).
    tol = {np.float32: 1e-6, np.float64: 1e-13}[dtype]
    assert_close(y, ref_y, dtype, f"{spec.name} forward", rtol=tol)
    gx = kernel(spec, "backward")(g, x=x, **params)
    assert gx.dtype == dtype
    assert_close(gx, ref_d, dtype, f"{spec.name} backward(x)", rtol=tol * 4)
    if d.grad_y is not None:
        gy = kernel(spec, "backward")(g, y=y, **params)
        assert_close(gy, ref_d, dtype, f"{spec.name} backward(y)", rtol=tol * 8)


@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_against_finite_differences(spec):
    """Central differences of our own forward, wherever the function is smooth at the point."""
    params = param_values(spec)
    x = sample_points(np.float64, 100)
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    fwd = kernel(spec, "forward")
    f_plus, f_0, f_minus = fwd(x + h, **params), fwd(x, **params), fwd(x - h, **params)
    right, left = (f_plus - f_0) / h, (f_0 - f_minus) / h
    smooth = np.abs(right - left) <= 1e-3 * (1 + np.abs(right))
    central = (f_plus - f_minus) / (2 * h)
    gx = kernel(spec, "backward")(np.ones_like(x), x=x, **params)
    assert smooth.sum() > 150
    np.testing.assert_allclose(gx[smooth], central[smooth], rtol=1e-6, atol=1e-8)


# Where torch itself is inconsistent, named with the reason (never to hide a bug of ours).
TORCH_GRADIENT_RTOL = {
    # torch's float64 backward multiplies by float32(1/6) while its forward divides by 6
    # (semantics.md §7.4); our derivative is the forward's, so they differ by 3e-8 relative.
    ("hardsigmoid", np.float64): 1e-7,
    ("hardswish", np.float64): 1e-7,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", [s for s in ELEMENTWISE if s.values[0].torch is not None])
def test_against_torch(spec, dtype):
    """Values and autograd gradients, edges and kinks included, with torch's tie conventions.

    nan inputs are left out here (we propagate nan where torch.sign gives 0; the nan contract
    is checked below), and so is ±float max, where torch's intermediates overflow (x*6/6).
    """
    defaults = {p.name: p.default for p in spec.numeric_params}
    for p in (param_values(spec), {}):  # explicit parameters and the defaults
        x = np.concatenate([sample_points(dtype), edge_points(dtype)])
        x = x[~np.isnan(x) & (np.abs(x) != np.finfo(dtype).max)]
        g = np.random.default_rng(1).uniform(0.5, 2, x.shape).astype(dtype)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch_fn(spec)(xt, **{**defaults, **p})  # torch.threshold has no defaults
        yt.backward(torch.tensor(g))
        y_ref, g_ref = yt.detach().numpy(), xt.grad.numpy()
        y_ref = _limits_where_torch_is_nan(spec, x, y_ref, {**defaults, **p})
        y = kernel(spec, "forward")(x, **p)
        assert_close(y, y_ref, dtype, f"{spec.name} forward")
        finite = np.isfinite(x)  # the derivative at ±inf is a convention
        rtol = TORCH_GRADIENT_RTOL.get((spec.name, dtype))
        gx = kernel(spec, "backward")(g, x=x, **p)
        assert_close(gx[finite], g_ref[finite], dtype, f"{spec.name} backward", rtol=rtol)
        y2, g2 = kernel(spec, "forward_backward")(x, g, **p)
        np.testing.assert_array_equal(y2, y)
        assert_close(g2[finite], g_ref[finite], dtype, f"{spec.name} fused backward", rtol=rtol)


def _limits_where_torch_is_nan(spec, x, y_ref, params):
    """A deliberate departure from torch: at ±inf the kernels return the mathematical limit
    where the formula is inf·0 or inf/inf (softsign(±inf) = ±1, silu/mish/hardswish(-inf) = 0;
    torch gives nan). Only there, and only where torch gives nan, the reference is the limit
    the derivation found (checked against mpmath when it was derived)."""
    limits = derive(spec).inf_limits.get("forward", {})
    subs = {sp.Symbol(k, real=True): v for k, v in params.items()}
    y_ref = y_ref.copy()
    for sign, limit in limits.items():
        at = (x == sign * np.inf) & np.isnan(y_ref)
        y_ref[at] = float(limit.subs(subs))
    return y_ref


@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_limits_at_infinity(spec):
    """±inf in gives the mathematical limit of f and of f' (where it exists), never a nan
    made by inf·0 or inf/inf in the formula. The limits: SymPy's, confirmed in mpmath."""
    from symgrad.kinds.elementwise import _limit_at_infinity

    for dtype in DTYPES:
        x = np.array([np.inf, -np.inf], dtype=dtype)
        y, gx = kernel(spec, "forward_backward")(x, np.ones_like(x))
        gx2 = kernel(spec, "backward")(np.ones_like(x), x=x)
        for k, sign in enumerate((1, -1)):
            for what, got in (("forward", y[k]), ("grad_x", gx[k]), ("grad_x", gx2[k])):
                expr = spec.forward if what == "forward" else sp.diff(spec.forward, X)
                limit = _limit_at_infinity(spec, expr, sign)
                if limit is None:
                    continue
                want = float(limit.subs({p.symbol: p.default for p in spec.numeric_params}))
                assert got == np.asarray(want, dtype), (spec.name, what, sign, got, want)


@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_nan_in_nan_out(spec):
    for dtype in DTYPES:
        x = np.array([np.nan, 1.0, np.nan], dtype=dtype)
        y, gx = kernel(spec, "forward_backward")(x, np.ones_like(x))
        assert np.isnan(y[[0, 2]]).all() and np.isnan(gx[[0, 2]]).all(), spec.name
        assert np.isnan(kernel(spec, "backward")(np.ones_like(x), x=x)[[0, 2]]).all()


@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_finite_in_finite_out(spec):
    """No inf/nan for finite inputs whose true result is finite (both dtypes, whole range)."""
    for dtype in DTYPES:
        fi = np.finfo(dtype)
        with np.errstate(over="ignore"):
            mags = np.geomspace(float(fi.tiny), float(fi.max), 2000, dtype=np.float64)
        x = np.concatenate([mags, -mags, [0.0, -0.0]]).astype(dtype)
        x = x[np.isfinite(x)]
        y, gx = kernel(spec, "forward_backward")(x, np.ones_like(x))
        # Ops that grow like x overflow only where x itself is near the top of the range.
        safe = np.abs(x) < float(fi.max) / 4
        assert np.isfinite(y[safe]).all(), f"{spec.name} forward not finite"
        assert np.isfinite(gx[safe]).all(), f"{spec.name} backward not finite"


@pytest.mark.parametrize("spec", [s for s in ELEMENTWISE if derive(s.values[0]).grad_y is not None])
def test_output_form_backward_needs_only_y(spec):
    x = sample_points(np.float64)
    g = np.random.default_rng(3).standard_normal(x.shape)
    y = kernel(spec, "forward")(x)
    from_y = kernel(spec, "backward")(g, y=y)
    from_x = kernel(spec, "backward")(g, x=x)
    assert_close(from_y, from_x, np.float64, spec.name, rtol=1e-9)


def test_sigmoid_backward_is_y_times_one_minus_y():
    import symgrad_kernels as K

    x = np.random.default_rng(0).normal(0, 3, (4, 5)).astype(np.float32)
    g = np.random.default_rng(1).normal(0, 1, (4, 5)).astype(np.float32)
    y = K.sigmoid_forward(x)
    np.testing.assert_array_equal(K.sigmoid_backward(g, y=y), g * y * (np.float32(1) - y))


def test_shapes_and_layouts():
    import symgrad_kernels as K

    x = np.random.default_rng(0).normal(size=(3, 4, 5))
    ref = K.elu_forward(x)
    view = x.transpose(2, 0, 1)  # non-contiguous
    np.testing.assert_array_equal(K.elu_forward(view), ref.transpose(2, 0, 1))
    np.testing.assert_array_equal(K.elu_forward(x[::-1]), ref[::-1])
    assert K.elu_forward(np.array(2.0)).shape == ()
    assert K.elu_forward(np.float32(-1.0)).dtype == np.float32
    assert K.elu_forward(np.empty((0, 3))).shape == (0, 3)
    out = np.empty_like(x)
    assert K.elu_forward(x, out=out) is out
    np.testing.assert_array_equal(out, ref)
    big = np.random.default_rng(1).normal(size=100_000)  # the parallel loop
    np.testing.assert_array_equal(K.tanh_forward(big), np.concatenate(
        [K.tanh_forward(part) for part in np.split(big, 10)]))


@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_float32_kernels_do_no_float64_arithmetic(spec):
    """Typed constants keep float32 loops in float32 (no silent promotion to double)."""
    import importlib
    import re

    import numba

    module = importlib.import_module(f"symgrad_kernels.{spec.name}")
    x = np.linspace(-3, 3, 16, dtype=np.float32)
    params = [np.float32(p.default) for p in spec.numeric_params]
    for name, args in (("_forward_ser_float32", (x, np.empty_like(x))),
                       ("_backward_x_ser_float32", (x, x, np.empty_like(x))),
                       ("_forward_backward_ser_float32",
                        (x, x, np.empty_like(x), np.empty_like(x)))):
        # Recompiled without the on-disk cache: Numba cannot inspect cached code.
        fresh = numba.njit(error_model="numpy")(getattr(module, name).py_func)
        fresh(*args, *params, x.size)
        ir = fresh.inspect_llvm(fresh.signatures[0])
        assert not re.search(r"fpext float .* to double|f(add|sub|mul|div) double", ir), name


@pytest.mark.parametrize("spec", ELEMENTWISE)
def test_finite_at_the_largest_inputs(spec):
    """At ±max (and ±max/√2, where gelu's √2·x used to overflow into inf·0), every output whose
    limit at ±inf is finite is finite: no intermediate overflows where the result does not."""
    from symgrad.kinds.elementwise import _limit_at_infinity

    for dtype in DTYPES:
        big = float(np.finfo(dtype).max)
        for sign in (1, -1):
            x = np.array([sign * big, sign * big / 1.4142, sign * big / 2.1], dtype=dtype)
            y, gx = kernel(spec, "forward_backward")(x, np.ones_like(x))
            for what, got, expr in (("forward", y, spec.forward),
                                    ("grad_x", gx, sp.diff(spec.forward, X))):
                limit = _limit_at_infinity(spec, expr, sign)
                if limit is not None and limit.subs(
                        {p.symbol: p.default for p in spec.numeric_params}).is_finite:
                    assert np.isfinite(got).all(), (spec.name, dtype, what, x, got)
