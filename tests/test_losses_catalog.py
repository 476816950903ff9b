"""The loss catalog against PyTorch autograd (values and every gradient) and Keras's formulas.

Every PyTorch loss is compared with ``torch.nn.functional`` (torchvision's sigmoid_focal_loss with
its formula re-written in torch ops) for float32 and float64, each reduction and each option,
on random inputs holding the edges: exact ties of each kink, ±100, ±1000, 0 and -0.0. Separate
tests feed ±inf and nan. Keras losses are checked against their formulas (Keras 3 source,
ε = 1e-7) evaluated in mpmath at 30 digits, gradients by mpmath's numerical derivative.
Kernels compile once per (op variant, dtype): the cases below share them.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DTYPES, assert_close, kernels

from symgrad.cli import main
from symgrad.spec import REGISTRY

REDUCTIONS = ("none", "mean", "sum")


def _kernel(name: str, which: str):
    return getattr(kernels(), f"{name}_{which}")


def _grads_tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def _check(name: str, reference, operands: list, *, diff=(0,), kw=None, torch_kw=None,
           dtype=np.float64, reductions=REDUCTIONS, rtol=None, ours=None,
           reference_dtype=None) -> None:
    """Loss and gradients of every entry point against torch autograd, for each reduction.

    ``diff``: which operands torch differentiates; ``ours``: which of our returned gradients
    they are (default: the first len(diff)). ``reference_dtype``: torch.float64 to hold float32
    kernels to the float64 result where torch's float32 form is the less accurate one.
    """
    kw = kw or {}
    torch_kw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                for k, v in (kw if torch_kw is None else torch_kw).items()}
    ours = tuple(range(len(diff))) if ours is None else ours
    for reduction in reductions:
        tensors = [torch.tensor(o, dtype=reference_dtype, requires_grad=i in diff)
                   if isinstance(o, np.ndarray) else o for i, o in enumerate(operands)]
        loss_t = reference(*tensors, reduction=reduction, **torch_kw)
        if reduction == "none":
            go = np.random.default_rng(5).normal(size=loss_t.shape).astype(dtype)
        else:
            go = 1.7
        loss_t.backward(torch.tensor(go, dtype=loss_t.dtype))
        want = loss_t.detach().numpy()
        if reference_dtype is not None:
            go = go if reduction != "none" else go.astype(dtype)
        want_grads = [tensors[i].grad.numpy() for i in diff]
        what = f"{name} {reduction} {kw}"
        loss = _kernel(name, "forward")(*operands, reduction=reduction, **kw)
        assert np.asarray(loss).dtype == dtype, what
        assert_close(loss, want, dtype, f"{what} loss", rtol)
        grads = _grads_tuple(_kernel(name, "backward")(*operands, go, reduction=reduction, **kw))
        fused = _kernel(name, "forward_backward")(*operands, go, reduction=reduction, **kw)
        assert_close(fused[0], want, dtype, f"{what} fused loss", rtol)
        for k, (i, g_want) in enumerate(zip(ours, want_grads, strict=True)):
            assert grads[i].dtype == dtype and grads[i].shape == g_want.shape, what
            assert_close(grads[i], g_want, dtype, f"{what} grad {k}", rtol)
            assert_close(fused[1 + i], g_want, dtype, f"{what} fused grad {k}", rtol)


def _rng(seed: int = 0):
    return np.random.default_rng(seed)


def _edgy(dtype, shape=(4, 6), seed=0, scale=3.0):
    x = _rng(seed).normal(0, scale, shape).astype(dtype)
    x.flat[:6] = [0.0, -0.0, 100.0, -100.0, 1000.0, -1000.0]
    return x


# ------------------------------------------------------------------------------- regression


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_and_l1_with_weight(dtype):
    x = _edgy(dtype)
    t = _rng(1).normal(0, 3, x.shape).astype(dtype)
    t.flat[6:9] = x.flat[6:9]  # exact ties: l1's gradient is 0 there
    w = _rng(2).uniform(0.1, 2.0, x.shape).astype(dtype)
    for name in ("mse_loss", "l1_loss"):
        _check(name, getattr(F, name), [x, t], dtype=dtype)
        _check(name, getattr(F, name), [x, t], kw={"weight": w}, dtype=dtype)
    grad = _kernel("l1_loss", "backward")(x, t, reduction="sum")
    assert np.all(grad.flat[6:9] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_smooth_l1_and_huber_at_their_kinks(dtype):
    x = _edgy(dtype)
    t = _rng(1).normal(0, 2, x.shape).astype(dtype)
    t.flat[6:12] = x.flat[6:12] - np.array([0.5, -0.5, 1.0, -1.0, 0.7, -0.7], dtype)
    w = _rng(2).uniform(0.1, 2.0, x.shape).astype(dtype)
    for beta in (1.0, 0.5, 0.0):  # beta = 0 is l1_loss
        _check("smooth_l1_loss", F.smooth_l1_loss, [x, t], kw={"beta": beta}, dtype=dtype)
    for delta in (1.0, 0.5):
        _check("huber_loss", F.huber_loss, [x, t], kw={"delta": delta}, dtype=dtype)
        _check("huber_loss", F.huber_loss, [x, t], kw={"delta": delta, "weight": w},
               dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_nll_with_every_var_shape(dtype):
    x = _edgy(dtype, (3, 4))
    t = _rng(1).normal(0, 2, x.shape).astype(dtype)
    var = _rng(2).uniform(0.0, 2.0, x.shape).astype(dtype)
    var.flat[:2] = [0.0, 1e-9]  # clamped to eps; the gradient is taken at eps, unmasked
    for full in (False, True):
        kw = {"full": full, "eps": 1e-6}
        for v in (var, var[:, :1].copy(), var[:, 0].copy(), var[:1, :].copy()):
            _check("gaussian_nll_loss", F.gaussian_nll_loss, [x, t, v], diff=(0, 2), kw=kw,
                   dtype=dtype)
        _check("gaussian_nll_loss", F.gaussian_nll_loss, [x, t, 0.5], kw=kw, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_nll_every_option(dtype):
    x = _rng(0).normal(0, 2, (3, 5)).astype(dtype)
    x.flat[:3] = [0.0, 50.0, -100.0]
    counts = _rng(1).poisson(3.0, x.shape).astype(dtype)
    counts.flat[3:6] = [0.0, 1.0, 2.0]  # Stirling's term only where the target is > 1
    for log_input in (True, False):
        for full in (False, True):
            rate = x if log_input else np.abs(x) + np.asarray(0.5, dtype)
            _check("poisson_nll_loss", F.poisson_nll_loss, [rate, counts],
                   kw={"log_input": log_input, "full": full, "eps": 1e-3}, dtype=dtype)


# ------------------------------------------------------------------------------- binary


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_clamps_and_gradient_floor(dtype):
    p = _rng(0).uniform(0, 1, (4, 5)).astype(dtype)
    t = _rng(1).uniform(0, 1, p.shape).astype(dtype)
    p.flat[:6] = [0.0, 1.0, 0.0, 1.0, 1e-30 if dtype == np.float64 else 1e-20, 0.5]
    t.flat[:6] = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5]  # log clamped at -100; gradient ±1e12 at 0, 1
    w = _rng(2).uniform(0.5, 2.0, (5,)).astype(dtype)
    _check("binary_cross_entropy", F.binary_cross_entropy, [p, t], dtype=dtype)
    _check("binary_cross_entropy", F.binary_cross_entropy, [p, t], kw={"weight": w}, dtype=dtype)
    loss = _kernel("binary_cross_entropy", "forward")(p, t, reduction="none")
    assert loss.flat[0] == 100 and loss.flat[1] == 100


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_margin_and_hinge_embedding(dtype):
    x = _edgy(dtype)
    y = np.where(_rng(1).normal(size=x.shape) > 0, 1.0, -1.0).astype(dtype)
    x.flat[2:6] = [20.0, -20.0, 80.0, -80.0]  # torch's log1p(exp(.)) is finite here
    _check("soft_margin_loss", F.soft_margin_loss, [x, y], dtype=dtype)
    targets = _rng(2).choice(np.array([1.0, -1.0, 0.5], dtype), x.shape)
    x.flat[6:9] = [1.0, 2.0, 1.0]  # x == margin: clamp_min passes the gradient, -1
    targets.flat[6:9] = [-1.0, -1.0, 0.5]
    for margin in (1.0, 2.0):
        _check("hinge_embedding_loss", F.hinge_embedding_loss, [x, targets],
               kw={"margin": margin}, dtype=dtype)
    grad = _kernel("hinge_embedding_loss", "backward")(x, targets, reduction="sum")
    assert grad.flat[6] == -1 and grad.flat[8] == 0  # t = 0.5 adds both terms: 1 - 1


def test_soft_margin_is_finite_where_torch_overflows():
    """torch computes log1p(exp(-y x)): inf (and a nan gradient) past ~88.7 in float32. Ours
    is softplus(-y x): the exact value, checked in mpmath."""
    x = np.array([1000.0, -1000.0, 200.0], dtype=np.float32)
    y = np.array([-1.0, 1.0, -1.0], dtype=np.float32)
    loss, grad = _kernel("soft_margin_loss", "forward_backward")(x, y, reduction="none")
    with mp.workdps(30):
        want = [float(mp.log1p(mp.exp(-mp.mpf(float(a)) * float(b))))
                for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_array_equal(grad, -y)  # d/dx softplus(-y x) = -y σ(-y x) = -y here
    assert torch.isinf(F.soft_margin_loss(torch.tensor(x), torch.tensor(y), reduction="none")[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_div_every_reduction(dtype):
    x = torch.log_softmax(torch.tensor(_rng(0).normal(0, 2, (4, 5))), 1).numpy().astype(dtype)
    t = torch.softmax(torch.tensor(_rng(1).normal(0, 2, (4, 5))), 1).numpy().astype(dtype)
    t.flat[:2] = 0.0  # xlogy(0, 0) = 0
    for reduction in ("none", "batchmean", "sum", "mean"):
        with pytest.warns() if reduction == "mean" else _no_warning():
            _check("kl_div", F.kl_div, [x, t], reductions=(reduction,), dtype=dtype)
            _check("kl_div", F.kl_div, [x, np.log(t + dtype(0.1)).astype(dtype)],
                   kw={"log_target": True}, reductions=(reduction,), dtype=dtype)
    assert _kernel("kl_div", "forward")(np.zeros(()), np.ones(()), reduction="batchmean") == 0


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("dtype", DTYPES)
def test_margin_ranking_gives_both_gradients(dtype):
    x1 = _edgy(dtype)
    x2 = _rng(1).normal(0, 3, x1.shape).astype(dtype)
    y = np.where(_rng(2).normal(size=x1.shape) > 0, 1.0, -1.0).astype(dtype)
    x1.flat[6:8], x2.flat[6:8], y.flat[6:8] = [1.5, 0.0], [1.0, 0.5], [1.0, -1.0]
    for margin in (0.0, 0.5):  # 0.5: the first two pairs sit exactly on the tie
        _check("margin_ranking_loss", F.margin_ranking_loss, [x1, x2, y], diff=(0, 1),
               kw={"margin": margin}, dtype=dtype)


def _torchvision_focal(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss (0.29), re-written in torch ops."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_focal_loss(dtype):
    """Against torchvision's formula in float64: its 1 - (p t + (1 - p)(1 - t)) cancels when p
    saturates (float32: 0, and a nan gradient for gamma < 1); ours is t σ(-x) + (1 - t) σ(x)."""
    x = _rng(0).normal(0, 3, (4, 5)).astype(dtype)
    x.flat[:6] = [0.0, 10.0, -10.0, 30.0, -30.0, 20.0]
    t = _rng(1).integers(0, 2, x.shape).astype(dtype)
    t.flat[:6] = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    t.flat[6:8] = [0.3, 0.8]  # soft targets
    for alpha in (0.25, -1.0, 0.0):
        for gamma in (2.0, 1.0, 0.5):
            _check("sigmoid_focal_loss", _torchvision_focal, [x, t], reference_dtype=torch.float64,
                   kw={"alpha": alpha, "gamma": gamma}, dtype=dtype)
    # Where even float64 torch is 0·inf (x = ±100, gamma < 1), exact in mpmath. For gamma < 1
    # the gradient is nan once σ(-|x|) underflows to 0 (|x| > 745 in float64), as torch's.
    for gamma, points in ((0.5, [100.0, -100.0, 5.0]), (2.0, [1000.0, -1000.0, 5.0])):
        _focal_against_mpmath(np.array(points), np.array([1.0, 0.0, 0.0]), gamma)


def _focal_against_mpmath(x, t, gamma):
    loss, grad = _kernel("sigmoid_focal_loss", "forward_backward")(x, t, 1.0, gamma=gamma)

    def exact(v, label):  # 1 - p_t = σ(-v) for label 1, σ(v) for label 0
        ce = (1 - label) * v + mp.log1p(mp.exp(-v))
        return ((0.25 * label + 0.75 * (1 - label)) * ce
                * (1 / (1 + mp.exp(v)) if label else 1 / (1 + mp.exp(-v))) ** gamma)

    # 200 digits: (1 - t)·v + log1p(e^-v) cancels by 44 digits at v = -100, t = 0
    with mp.workdps(200):
        want = [exact(mp.mpf(v), label) for v, label in zip(x, t, strict=True)]
        slopes = [mp.diff(lambda h, v=v, label=label: exact(mp.mpf(v) + h, label), 0)
                  for v, label in zip(x, t, strict=True)]
    np.testing.assert_allclose(loss, [float(w) for w in want], rtol=1e-13, atol=0)
    assert_close(grad, np.array([float(s) for s in slopes]), np.float64, f"focal at {x}")


# ------------------------------------------------------------------------------- multi-class


def _logits(dtype, shape, seed=0):
    x = _rng(seed).normal(0, 3, shape).astype(dtype)
    x.flat[1] = 700.0
    x.flat[2] = -1e4
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 7), (4, 7, 3), (2, 7, 3, 2)])
def test_cross_entropy_label_smoothing_and_probability_targets(dtype, shape):
    x = _logits(dtype, shape)
    class_dim = 1 if len(shape) > 1 else 0
    sample = shape[:class_dim] + shape[class_dim + 1:]
    t = _rng(1).integers(0, 7, sample)
    w = _rng(2).uniform(0.5, 2.0, 7).astype(dtype)
    probs = torch.softmax(torch.tensor(_rng(3).normal(size=shape)), class_dim).numpy()
    probs = probs.astype(dtype)
    probs.flat[:3] = 0.0  # zero probabilities next to the 700 and -1e4 logits
    for smoothing in (0.0, 0.2):
        kw = {"label_smoothing": smoothing}
        _check("cross_entropy", F.cross_entropy, [x, t], kw=kw, dtype=dtype)
        _check("cross_entropy", F.cross_entropy, [x, t], kw={**kw, "weight": w}, dtype=dtype)
        _check("cross_entropy", F.cross_entropy, [x, probs], kw={**kw, "weight": w},
               dtype=dtype)
        if t.ndim:
            ignored = t.copy()
            ignored.flat[0] = -100
            _check("cross_entropy", F.cross_entropy, [x, ignored], kw={**kw, "weight": w},
                   dtype=dtype)


def test_cross_entropy_reads_only_the_target_logit():
    """With class indices torch reads x_t alone: -inf elsewhere is no 0·inf; smoothing reads all."""
    x = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]])
    t = np.array([0, 1])
    for smoothing in (0.0, 0.1):
        _check("cross_entropy", F.cross_entropy, [x, t], kw={"label_smoothing": smoothing})
    lp = np.array([[-0.5, -np.inf, -1.0]])
    _check("nll_loss", F.nll_loss, [lp, np.array([2])])


@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_margin_loss(dtype):
    x = _rng(0).normal(0, 2, (5, 6)).astype(dtype)
    t = _rng(1).integers(0, 6, 5)
    x[0, (t[0] + 1) % 6] = x[0, t[0]] - 1.0  # margin - x_y + x_j == 0: strict, gradient 0
    w = _rng(2).uniform(0.5, 2.0, 6).astype(dtype)
    for p in (1, 2):
        for margin in (1.0, 0.3):
            _check("multi_margin_loss", F.multi_margin_loss, [x, t],
                   kw={"p": p, "margin": margin}, dtype=dtype)
        _check("multi_margin_loss", F.multi_margin_loss, [x, t], kw={"p": p, "weight": w},
               dtype=dtype)
        _check("multi_margin_loss", F.multi_margin_loss, [x[0], np.array(t[0])], kw={"p": p},
               dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6,), (4, 6), (2, 3, 6)])
def test_multilabel_soft_margin_loss(dtype, shape):
    x = _edgy(dtype, shape)
    t = _rng(1).uniform(0, 1, shape).astype(dtype)
    w = _rng(2).uniform(0.5, 2.0, 6).astype(dtype)
    _check("multilabel_soft_margin_loss", F.multilabel_soft_margin_loss, [x, t], dtype=dtype)
    _check("multilabel_soft_margin_loss", F.multilabel_soft_margin_loss, [x, t],
           kw={"weight": w}, dtype=dtype)


# ------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6,), (5, 6)])
def test_cosine_embedding_loss(dtype, shape):
    a = _rng(0).normal(size=shape).astype(dtype)
    b = _rng(1).normal(size=shape).astype(dtype)
    y = np.where(_rng(2).normal(size=shape[:-1]) > 0, 1.0, -1.0).astype(dtype)
    if len(shape) > 1:
        a[1] = 0.0  # a zero vector: the 1e-12 in each squared norm keeps it finite
        y[:2] = [1.0, -1.0]
    for margin in (0.0, 0.3, -0.5):
        _check("cosine_embedding_loss", F.cosine_embedding_loss, [a, b, y], diff=(0, 1),
               kw={"margin": margin}, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6,), (5, 6)])
def test_triplet_margin_loss(dtype, shape):
    a, p, n = (_rng(s).normal(size=shape).astype(dtype) for s in (0, 1, 2))
    for norm in (2.0, 1.0, 3.0):
        for swap in (False, True):
            _check("triplet_margin_loss", F.triplet_margin_loss, [a, p, n], diff=(0, 1, 2),
                   kw={"p": norm, "swap": swap, "margin": 1.5}, dtype=dtype)
    _check("triplet_margin_loss", F.triplet_margin_loss, [a, p, n], diff=(0, 1, 2),
           kw={"eps": 0.1, "margin": 0.2}, dtype=dtype)


# ------------------------------------------------------------------------------- inf and nan


INF_NAN_CASES = [
    ("mse_loss", F.mse_loss, "real"), ("l1_loss", F.l1_loss, "real"),
    ("smooth_l1_loss", F.smooth_l1_loss, "real"), ("huber_loss", F.huber_loss, "real"),
    ("poisson_nll_loss", F.poisson_nll_loss, "real"),
    ("hinge_embedding_loss", F.hinge_embedding_loss, "sign"),
    ("kl_div", F.kl_div, "prob"),
    ("binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits, "prob"),
]


# bce_with_logits(-inf; t = 0.5) = lim 0.5·|x| = inf (the linear_logsigmoid form).
LIMITS_WHERE_TORCH_IS_NAN = {"binary_cross_entropy_with_logits": np.array([np.nan, np.inf, np.nan,
                                                                          np.nan, np.nan, np.nan])}


@pytest.mark.parametrize("name,reference,targets", INF_NAN_CASES, ids=[c[0] for c in
                                                                        INF_NAN_CASES])
def test_inf_and_nan_inputs_follow_torch(name, reference, targets):
    x = np.array([np.inf, -np.inf, np.nan, 0.5, -2.0, 3.0])
    t = {"real": np.array([1.0, -1.0, 0.0, np.inf, np.nan, 3.0]),
         "sign": np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]),
         "prob": np.array([0.5, 0.5, 0.5, 0.0, 1.0, 0.25])}[targets]
    xt = torch.tensor(x)
    want = reference(xt, torch.tensor(t), reduction="none").numpy()
    # Where torch's formula is inf - inf but the limit exists, ours gives the limit.
    want = np.where(np.isnan(want) & ~np.isnan(x), LIMITS_WHERE_TORCH_IS_NAN.get(name, want),
                    want)
    assert_close(_kernel(name, "forward")(x, t, reduction="none"), want, np.float64, name)


def test_nan_in_a_row_gives_nan_loss():
    x = np.array([[0.5, np.nan, 1.0], [0.5, 0.2, 1.0]])
    t = np.array([0, 2])
    for name in ("cross_entropy", "multi_margin_loss"):
        want = getattr(F, name)(torch.tensor(x), torch.tensor(t), reduction="none").numpy()
        assert_close(_kernel(name, "forward")(x, t, reduction="none"), want, np.float64, name)
    loss = _kernel("triplet_margin_loss", "forward")(x, x * 0, x * 2, reduction="none")
    assert np.isnan(loss[0]) and np.isfinite(loss[1])


# ------------------------------------------------------------------------------- Keras

KERAS_EPS = mp.mpf("1e-7")


def _clip(v, lo, hi):
    return min(max(v, lo), hi)


def _keras_reference(name: str, t: list, p: list, **kw):
    """Keras 3 (keras/src/losses/losses.py) for one sample, in mpmath."""
    eps, n = KERAS_EPS, len(p)

    def mean(terms) -> mp.mpf:
        return mp.fsum(terms) / n

    if name == "mean_absolute_percentage_error":
        return 100 * mean(abs((a - b) / max(abs(a), eps)) for a, b in zip(t, p, strict=True))
    if name == "mean_squared_logarithmic_error":
        return mean((mp.log(max(b, eps) + 1) - mp.log(max(a, eps) + 1)) ** 2
                    for a, b in zip(t, p, strict=True))
    if name in ("hinge", "squared_hinge"):
        t = [2 * a - 1 for a in t] if kw["binary"] else t
        power = 1 if name == "hinge" else 2
        return mean(max(1 - a * b, 0) ** power for a, b in zip(t, p, strict=True))
    if name == "categorical_hinge":
        neg = max((1 - a) * b for a, b in zip(t, p, strict=True))
        return max(neg - mp.fsum(a * b for a, b in zip(t, p, strict=True)) + 1, 0)
    if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        smoothing = mp.mpf(kw.get("label_smoothing", 0.0))
        t = [a * (1 - smoothing) + smoothing / n for a in t]
        if kw.get("from_logits", False):
            top = max(p)
            lse = top + mp.log(mp.fsum(mp.exp(b - top) for b in p))
            return -mp.fsum(a * (b - lse) for a, b in zip(t, p, strict=True))
        total = mp.fsum(p)
        return -mp.fsum(a * mp.log(_clip(b / total, eps, 1 - eps))
                        for a, b in zip(t, p, strict=True))
    if name == "kl_divergence":
        return mp.fsum(_clip(a, eps, 1) * mp.log(_clip(a, eps, 1) / _clip(b, eps, 1))
                       for a, b in zip(t, p, strict=True))
    if name == "cosine_similarity":
        def inverse_norm(v):
            square = mp.fsum(c * c for c in v)
            return min(1 / mp.sqrt(square), 1 / eps) if square else 1 / eps
        it, ip = inverse_norm(t), inverse_norm(p)
        return -mp.fsum(a * it * b * ip for a, b in zip(t, p, strict=True))
    if name == "log_cosh":
        return mean(mp.log(mp.cosh(b - a)) for a, b in zip(t, p, strict=True))
    if name == "poisson":
        return mean(b - a * mp.log(b + eps) for a, b in zip(t, p, strict=True))
    assert name == "binary_focal_crossentropy"
    smoothing, alpha, gamma = (mp.mpf(kw.get(k, d)) for k, d in
                               (("label_smoothing", 0.0), ("alpha", 0.25), ("gamma", 2.0)))
    terms = []
    for a, b in zip(t, p, strict=True):
        a = a * (1 - smoothing) + smoothing / 2
        b = 1 / (1 + mp.exp(-b)) if kw.get("from_logits", False) else b
        c = _clip(b, eps, 1 - eps)
        focal = (1 - (a * b + (1 - a) * (1 - b))) ** gamma * -(a * mp.log(c)
                                                              + (1 - a) * mp.log(1 - c))
        if kw.get("apply_class_balancing", False):
            focal *= a * alpha + (1 - a) * (1 - alpha)
        terms.append(focal)
    return mean(terms)


def _keras_losses_and_grads(name, y_true, y_pred, **kw):
    """Per-sample losses and d(loss_r)/d y_pred, at 30 digits."""
    rows_p = np.asarray(y_pred, dtype=np.float64).reshape(-1, y_pred.shape[-1])
    if name == "sparse_categorical_crossentropy":
        rows_t = [np.eye(y_pred.shape[-1])[k] for k in np.asarray(y_true).reshape(-1)]
    else:
        rows_t = np.asarray(y_true, dtype=np.float64).reshape(rows_p.shape)
    if name in ("hinge", "squared_hinge"):
        kw = {**kw, "binary": bool(np.all((y_true == 0) | (y_true == 1)))}
    def loss_at(t: list, p: list, j: int, h) -> mp.mpf:
        return _keras_reference(name, t, p[:j] + [p[j] + h] + p[j + 1:], **kw)

    losses, grads = [], []
    with mp.workdps(30):
        for t_row, p_row in zip(rows_t, rows_p, strict=True):
            t = [mp.mpf(float(a)) for a in t_row]
            p = [mp.mpf(float(b)) for b in p_row]
            losses.append(float(_keras_reference(name, t, p, **kw)))
            grads.append([float(mp.diff(lambda h, j=j, t=t, p=p: loss_at(t, p, j, h), 0))
                          for j in range(len(p))])
    shape = y_pred.shape
    return np.array(losses).reshape(shape[:-1]), np.array(grads).reshape(shape)


def _keras_check(name, y_true, y_pred, dtype, **kw):
    losses, grads = _keras_losses_and_grads(name, y_true, y_pred, **kw)
    n = losses.size
    for reduction in REDUCTIONS:
        go = (np.random.default_rng(4).normal(size=losses.shape).astype(dtype)
              if reduction == "none" else 1.7)
        if reduction == "none":
            want, want_grad = losses, grads * np.asarray(go, np.float64)[..., None]
        else:
            div = n if reduction == "mean" else 1
            want, want_grad = losses.sum() / div, grads * go / div
        what = f"{name} {reduction} {kw}"
        loss, grad = _kernel(name, "forward_backward")(y_true, y_pred, go, reduction=reduction,
                                                       **kw)
        assert_close(loss, want, dtype, f"{what} loss")
        assert_close(grad, want_grad, dtype, f"{what} grad")
        assert_close(_kernel(name, "forward")(y_true, y_pred, reduction=reduction, **kw), want,
                     dtype, f"{what} forward")
        assert_close(_kernel(name, "backward")(y_true, y_pred, go, reduction=reduction, **kw),
                     want_grad, dtype, f"{what} backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_keras_regression_losses_against_mpmath(dtype):
    rng = _rng(7)
    y_pred, y_true = (rng.normal(0, 1, (3, 5)).astype(dtype) for _ in range(2))
    y_true.flat[0] = 0.0  # MAPE's denominator clipped at ε
    positive_pred, positive_true = (rng.uniform(0.05, 2, (3, 5)).astype(dtype) for _ in range(2))
    positive_true.flat[0] = -0.5  # MSLE clips negatives to ε
    _keras_check("mean_absolute_percentage_error", y_true, y_pred, dtype)
    _keras_check("mean_squared_logarithmic_error", positive_true, positive_pred, dtype)
    _keras_check("log_cosh", y_true, y_pred, dtype)
    _keras_check("poisson", positive_true, positive_pred, dtype)
    _keras_check("cosine_similarity", y_true, y_pred, dtype)
    _keras_check("cosine_similarity", y_true, np.zeros_like(y_pred), dtype)  # 1/ε


@pytest.mark.parametrize("dtype", DTYPES)
def test_keras_classification_losses_against_mpmath(dtype):
    rng = _rng(8)
    logits = rng.normal(0, 2, (3, 5)).astype(dtype)
    probs = rng.uniform(0.05, 1, (3, 5)).astype(dtype)
    target = rng.uniform(0.05, 1, (3, 5))
    target = (target / target.sum(-1, keepdims=True)).astype(dtype)
    labels = rng.integers(0, 2, (3, 5)).astype(dtype)
    for name in ("hinge", "squared_hinge"):
        _keras_check(name, labels, logits, dtype)  # {0, 1}: converted to {-1, 1}
        _keras_check(name, (2 * labels - 1).astype(dtype), logits, dtype)
        _keras_check(name, np.where(labels == 0, 0.5, 1).astype(dtype), logits, dtype)
    _keras_check("categorical_hinge", np.eye(5, dtype=dtype)[[0, 3, 4]], logits, dtype)
    for from_logits in (True, False):
        y_pred = logits if from_logits else probs
        for smoothing in (0.0, 0.1):
            _keras_check("categorical_crossentropy", target, y_pred, dtype,
                         from_logits=from_logits, label_smoothing=smoothing)
        _keras_check("sparse_categorical_crossentropy", np.array([0, 4, 2]), y_pred, dtype,
                     from_logits=from_logits)
    _keras_check("kl_divergence", target, probs / probs.sum(-1, keepdims=True), dtype)
    for balancing in (False, True):
        for from_logits in (False, True):
            _keras_check("binary_focal_crossentropy", labels, logits if from_logits else probs,
                         dtype, apply_class_balancing=balancing, from_logits=from_logits,
                         label_smoothing=0.1, gamma=1.5)


# ------------------------------------------------------------------------------- bad input

LOSSES = [s.name for s in REGISTRY if s.family == "loss"]


def test_bad_input_is_a_value_error_naming_the_argument():
    K = kernels()
    x, t = np.full((2, 3), 0.5), np.full((2, 3), 0.5)
    cases = [
        (ValueError, "input holds", lambda: K.binary_cross_entropy_forward(x * 3, t)),
        (ValueError, "target holds", lambda: K.binary_cross_entropy_forward(x, t - 1)),
        (ValueError, "delta must be > 0", lambda: K.huber_loss_forward(x, t, delta=0.0)),
        (ValueError, "beta must be >= 0", lambda: K.smooth_l1_loss_forward(x, t, beta=-1.0)),
        (ValueError, "weight has shape", lambda: K.mse_loss_forward(x, t, weight=np.ones(3))),
        (ValueError, "var holds", lambda: K.gaussian_nll_loss_forward(x, t, -x)),
        (ValueError, "var has shape", lambda: K.gaussian_nll_loss_forward(x, t, np.ones(3))),
        (TypeError, "full must be True or False",
         lambda: K.gaussian_nll_loss_forward(x, t, x, full=1)),
        (ValueError, "reduction must be one of",
         lambda: K.mse_loss_forward(x, t, reduction="batchmean")),
        (ValueError, "margin must be > 0",
         lambda: K.triplet_margin_loss_forward(x, x, x, margin=0.0)),
        (ValueError, "alpha must be in", lambda: K.sigmoid_focal_loss_forward(x, t, alpha=-0.5)),
        (ValueError, "p must be 1 or 2",
         lambda: K.multi_margin_loss_forward(x, np.array([0, 1]), p=3)),
        (ValueError, "class index 3",
         lambda: K.multi_margin_loss_forward(x, np.array([0, 3]))),
        (ValueError, "class index -100",
         lambda: K.nll_loss_forward(x, np.array([0, -100]), ignore_index=-1)),
        (TypeError, "integer dtype", lambda: K.cross_entropy_forward(x, np.zeros(2))),
        (ValueError, "ignore_index=1 is not supported",
         lambda: K.cross_entropy_forward(x, t, ignore_index=1)),
        (ValueError, "target has shape",
         lambda: K.cosine_embedding_loss_forward(x, x, np.ones(3))),
        (ValueError, "input2 has shape",
         lambda: K.cosine_embedding_loss_forward(x, x[:, :2].copy(), np.ones(2))),
        (TypeError, "dtype", lambda: K.l1_loss_forward(x, t.astype(np.float32))),
        (ValueError, "broadcast", lambda: K.margin_ranking_loss_forward(x, np.ones(2), t)),
        (TypeError, "integer dtype",
         lambda: K.sparse_categorical_crossentropy_forward(np.zeros(2), x)),
        (ValueError, "y_true has shape",
         lambda: K.categorical_crossentropy_forward(np.ones(3), x)),
        (ValueError, "label_smoothing must be <= 1",
         lambda: K.cross_entropy_forward(x, np.array([0, 1]), label_smoothing=1.5)),
        (ValueError, "at least 1 dimension",
         lambda: K.cross_entropy_forward(np.zeros(()), np.zeros((), np.int64))),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_handles_empty_input(name):
    """A 'sum' over nothing is 0, like torch; nothing is compiled for an empty array."""
    args = _empty_args(REGISTRY[name])
    loss = _kernel(name, "forward")(*args, reduction="sum")
    assert loss == 0 and np.asarray(loss).dtype == np.float64
    grads = _grads_tuple(_kernel(name, "backward")(*args, reduction="sum"))
    assert all(g.size == 0 for g in grads)


def _empty_args(spec) -> list:
    """Empty positional arguments, read off the spec's operands."""
    x, index = np.empty((0, 4)), np.empty(0, np.int64)
    if spec.kind == "class_index_loss":
        return [x, index]
    if spec.kind == "elementwise_loss":
        return [x, x]
    if spec.kind == "pointwise_loss":
        return [x for o in spec.operands if not o.optional]
    args = [x if o.role == "element" else np.empty(0) for o in spec.operands if not o.optional]
    if spec.targets != "none":
        args.insert(spec.target_position, index if spec.targets == "index" else x)
    return args


# ------------------------------------------------------------------------------- float32


def _fresh_float32_ir(op: str, call) -> dict[str, str]:
    """LLVM IR of the op's serial float32 kernels, recompiled without the on-disk cache (Numba
    cannot inspect cached code) and run through the public ``call``."""
    import importlib

    import numba

    module = importlib.import_module(f"symgrad_kernels.{op}")
    names = [n for n, v in vars(module).items() if isinstance(v, numba.core.registry.CPUDispatcher)
             and n.endswith("_ser_float32") and not n.startswith("_all_")]
    saved = {n: getattr(module, n) for n in names}
    fresh = {n: numba.njit(error_model="numpy")(saved[n].py_func) for n in names}
    table = getattr(module, "_KERNELS", {})
    saved_table = dict(table)
    try:
        for n in names:
            setattr(module, n, fresh[n])
        for key, kernel in saved_table.items():
            table[key] = next((fresh[n] for n in names if kernel is saved[n]), kernel)
        call()
    finally:
        for n in names:
            setattr(module, n, saved[n])
        table.update(saved_table)
    return {n: f.inspect_llvm(sig) for n, f in fresh.items() for sig in f.signatures}


def test_float32_loss_kernels_compute_in_float32():
    """Typed constants keep float32 losses in float32: the only double is the accumulator."""
    import re

    K = kernels()
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    t = x[::-1].copy()
    calls = {
        "mse_loss": lambda: K.mse_loss_forward_backward(x, t),
        "gaussian_nll_loss": lambda: K.gaussian_nll_loss_forward_backward(x, t, np.abs(x)),
        "sigmoid_focal_loss": lambda: K.sigmoid_focal_loss_forward_backward(x, np.abs(t) / 3),
        "cross_entropy": lambda: K.cross_entropy_forward_backward(x, np.array([0, 1, 3])),
        "triplet_margin_loss": lambda: K.triplet_margin_loss_forward_backward(x, t, x * 2),
        "binary_focal_crossentropy": lambda: K.binary_focal_crossentropy_forward_backward(
            np.abs(t) / 3, x, from_logits=True),
    }
    for op, call in calls.items():
        irs = _fresh_float32_ir(op, call)
        assert irs, op
        for name, ir in irs.items():
            assert not re.search(r"f(sub|mul|div) double|call double @(?!Py)", ir), (op, name)


# ------------------------------------------------------------------------------- CLI


def test_list_and_latex_show_every_loss_with_its_reduction(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in LOSSES:
        assert f"  {name} " in listed, name
    for name in LOSSES:
        assert main(["latex", name]) == 0
        text = capsys.readouterr().out
        assert "Reduction" in text and r"\text{mean" in text or "batchmean" in text, name
    assert main(["latex", "kl_div"]) == 0
    assert r"\frac{1}{B}" in capsys.readouterr().out
    assert main(["latex", "mse_loss"]) == 0
    assert r"\sum_i weight_i" in capsys.readouterr().out


# ------------------------------------------------------------------------------- extreme inputs
# Finite inputs whose true result is finite must give a finite result (issue 4): the points are
# from the accuracy sweep, where the kernels gave inf/nan before. Checked against the textbook
# formula in mpmath, and against torch in float64 where torch is finite there.

def _ulps_close(got, want, dtype, ulps: float, what: str) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got)), f"{what}: not finite: {got}"
    eps = float(np.finfo(dtype).eps)
    err = np.abs(got - np.asarray(want)) / (np.abs(np.asarray(want)) * eps)
    assert np.all(err <= ulps), f"{what}: {err.max():.1f} ULP (got {got}, want {want})"


GAUSS_EXTREMES = {
    np.float32: [(1.8069090079213913e+31, 0.9525145888328552, 7.303501971267142e+28),
                 (3.4745173622112117e+31, 3.474516878640884e+31, 2.4746557935308615e+24),
                 (-4.7482656029347043e+30, 0.0, 4.170408915418819e+23),
                 (-1.556372694201146e+23, 0.0, 1845949429186560.0)],
    np.float64: [(1.4274034080467901e+253, 0.9525145745915263, 2.3732884499958907e+230),
                 (7.149610691593696e+191, 0.0, 2.1043269120361555e+186),
                 (5.3257434222999265e+160, 0.6257429095728544, 2.8035412952265254e+17)],
}


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_nll_is_finite_where_the_square_overflows(dtype):
    """(x - t)² overflows where (x - t)²/var and its gradients are finite: the kernels go
    through r = (x - t)/var and h = r/2."""
    x, t, v = (np.array(c, dtype=dtype) for c in zip(*GAUSS_EXTREMES[dtype], strict=True))
    loss, dx, dv = _kernel("gaussian_nll_loss", "forward_backward")(x, t, v, 1.0,
                                                                    reduction="none")
    with mp.workdps(60):
        d = [mp.mpf(float(a)) - mp.mpf(float(b)) for a, b in zip(x, t, strict=True)]
        vv = [mp.mpf(float(c)) for c in v]
        want_l = [float((mp.log(c) + e**2 / c) / 2) for e, c in zip(d, vv, strict=True)]
        want_x = [float(e / c) for e, c in zip(d, vv, strict=True)]
        want_v = [float((1 / c - e**2 / c**2) / 2) for e, c in zip(d, vv, strict=True)]
    for got, want, what in ((loss, want_l, "loss"), (dx, want_x, "d/dx"), (dv, want_v, "d/dvar")):
        _ulps_close(got, want, dtype, 8, f"gaussian_nll {what}")
    forward = _kernel("gaussian_nll_loss", "forward")(x, t, v, reduction="none")
    assert np.array_equal(forward, loss)
    # torch in float64 on the float32 points (torch overflows on the float64 ones, as ours did)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    vt = torch.tensor(v.astype(np.float64), requires_grad=True)
    ref = F.gaussian_nll_loss(xt, torch.tensor(t.astype(np.float64)), vt, reduction="none")
    ref.sum().backward()
    for got, want in ((loss, ref.detach()), (dx, xt.grad), (dv, vt.grad)):
        want = want.numpy()
        ok = np.isfinite(want)
        assert ok.any() or dtype == np.float64
        if ok.any():
            _ulps_close(got[ok], want[ok], dtype, 8, "gaussian_nll vs torch float64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_is_finite_where_the_linear_term_overflows(dtype):
    """Targets outside [0, 1] at logits near -max: (1 - t)·x overflows where the loss, -t·x
    plus log1p(e^x), is finite (the linear_logsigmoid rewrite)."""
    x, t = {np.float32: ([-1.5606664138782163e+38, -1.0551764379384393e+38, -3e38, 2e38],
                         [-1.728230357170105, -2.823282241821289, 0.5, 0.25]),
            np.float64: ([-1.316128578765996e+308, -1e308, 1e308],
                         [-0.7980720733288238, 0.5, 0.25])}[dtype]
    x, t = np.array(x, dtype=dtype), np.array(t, dtype=dtype)
    loss, grad = _kernel("binary_cross_entropy_with_logits", "forward_backward")(
        x, t, 1.0, reduction="none")
    with mp.workdps(60):
        pts = [(mp.mpf(float(a)), mp.mpf(float(b))) for a, b in zip(x, t, strict=True)]
        want = [float((1 - b) * a + mp.log1p(mp.exp(-a))) for a, b in pts]
    _ulps_close(loss, want, dtype, 4, "bce_with_logits")
    assert np.array_equal(_kernel("binary_cross_entropy_with_logits", "forward")(
        x, t, reduction="none"), loss)
    assert np.all(np.isfinite(grad))
    ref = F.binary_cross_entropy_with_logits(torch.tensor(x.astype(np.float64)),
                                             torch.tensor(t.astype(np.float64)),
                                             reduction="none").numpy()
    ok = np.isfinite(ref)
    _ulps_close(loss[ok], ref[ok], dtype, 4, "bce_with_logits vs torch float64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_unchanged_for_ordinary_inputs(dtype):
    """x >= 0 takes the same operations as before the rewrite; x < 0 computes -t·x directly."""
    x = _rng(3).normal(0, 20, 64).astype(dtype)
    t = _rng(4).uniform(0, 1, 64).astype(dtype)
    got = _kernel("binary_cross_entropy_with_logits", "forward")(x, t, reduction="none")
    want = F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(t),
                                              reduction="none").numpy()
    assert_close(got, want, dtype, "bce_with_logits ordinary")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_focal_loss_is_finite_at_extreme_logits(dtype):
    """Labels in [0, 1], logits out to the dtype's edge: loss and gradient finite and exact."""
    big = float(np.finfo(dtype).max) / 2
    x = np.array([-big, big, -1e4, 1e4, -100.0, 100.0], dtype=dtype)
    t = np.array([0.0, 1.0, 0.3, 0.7, 1.0, 0.0], dtype=dtype)
    loss = _kernel("sigmoid_focal_loss", "forward")(x, t)
    grad = _kernel("sigmoid_focal_loss", "backward")(x, t, np.ones_like(x))
    assert np.isfinite(loss).all() and np.isfinite(grad).all(), (loss, grad)
    with mp.workdps(400):
        want = []
        for a, b in zip(x, t, strict=True):
            a, b = mp.mpf(float(a)), mp.mpf(float(b))
            ce = (1 - b) * a + mp.log1p(mp.exp(-a))
            m = b / (1 + mp.exp(a)) + (1 - b) / (1 + mp.exp(-a))
            want.append(float((0.25 * b + 0.75 * (1 - b)) * ce * m**2))
    want = np.asarray(want)
    tiny = float(np.finfo(dtype).tiny)
    err = np.abs(loss - want) / (np.maximum(np.abs(want), tiny) * float(np.finfo(dtype).eps))
    assert (err <= 8).all(), (loss, want)


def test_sigmoid_focal_loss_rejects_targets_outside_0_1():
    """Outside [0, 1] a label means nothing (and the terms overflow): a ValueError, not a nan."""
    x = np.array([-3e38, -2e38], dtype=np.float32)
    for bad in (-0.2, 1.5):
        with pytest.raises(ValueError, match="targets"):
            _kernel("sigmoid_focal_loss", "forward")(x, np.full(2, bad, np.float32))
