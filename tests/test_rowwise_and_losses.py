"""Softmax family and losses against PyTorch autograd, mpmath and finite differences."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
from conftest import DTYPES, assert_close, kernel, ops_of, torch_fn

from symgrad.spec import LSE, X

ROWWISE = ops_of("rowwise")
ELEMENTWISE_LOSSES = ops_of("elementwise_loss")
CLASS_INDEX_LOSSES = ops_of("class_index_loss")
REDUCTIONS = ("none", "mean", "sum")


def logits(dtype, shape=(4, 6, 3), seed=0):
    x = np.random.default_rng(seed).normal(0, 3, shape).astype(dtype)
    x.flat[1] = 700.0  # a row holding 700: the max shift must absorb it
    x.flat[2] = -1e4
    return x


# ------------------------------------------------------------------------------ rowwise


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ROWWISE)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((5, 9), 1), ((5, 9), 0), ((4, 6, 3), 0),
                                       ((4, 6, 3), 1), ((4, 6, 3), -1), ((2, 1000), -1)])
def test_rowwise_against_torch(spec, dtype, shape, dim):
    x = logits(dtype, shape)
    g = np.random.default_rng(1).normal(size=shape).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_fn(spec)(xt, dim=dim)
    yt.backward(torch.tensor(g))
    y = kernel(spec, "forward")(x, dim=dim)
    assert y.dtype == dtype
    assert_close(y, yt.detach().numpy(), dtype, f"{spec.name} forward")
    gx = kernel(spec, "backward")(g, y=y, dim=dim)
    assert_close(gx, xt.grad.numpy(), dtype, f"{spec.name} backward")
    assert_close(kernel(spec, "backward")(g, x=x, dim=dim), xt.grad.numpy(), dtype, "from x")
    y2, g2 = kernel(spec, "forward_backward")(x, g, dim=dim)
    assert_close(y2, yt.detach().numpy(), dtype, f"{spec.name} fused forward")
    assert_close(g2, xt.grad.numpy(), dtype, f"{spec.name} fused backward")


@pytest.mark.parametrize("spec", ROWWISE)
def test_rowwise_against_mpmath_and_finite_differences(spec):
    x = np.random.default_rng(4).normal(0, 3, (3, 5))
    x.flat[1] = 30.0
    # The textbook definition, evaluated by SymPy's mpmath printer at 30 digits.
    row_x = sp.Symbol("row_x", real=True)
    lse_sym = sp.Symbol("lse", real=True)
    f = sp.lambdify([row_x, lse_sym], spec.forward.subs({X: row_x, LSE: lse_sym}), "mpmath")
    with mpmath.workdps(30):
        for row in x:
            lse = mpmath.log(mpmath.fsum(mpmath.exp(spec.input_sign * mpmath.mpf(v)) for v in row))
            ref = np.array([float(f(mpmath.mpf(v), lse)) for v in row])
            assert_close(kernel(spec, "forward")(row), ref, np.float64, spec.name, rtol=1e-14)
    g = np.random.default_rng(2).normal(size=x.shape)
    gx = kernel(spec, "backward")(g, x=x, dim=1)
    h = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        plus = (kernel(spec, "forward")(x + e, dim=1) * g).sum()
        minus = (kernel(spec, "forward")(x - e, dim=1) * g).sum()
        fd[idx] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(gx, fd, rtol=1e-6, atol=1e-8)


def test_softmax_of_all_minus_inf_row_is_nan_like_torch():
    import symgrad_kernels as K

    x = np.array([[-np.inf, -np.inf], [0.0, 1.0]])
    ref = torch.softmax(torch.tensor(x), dim=1).numpy()
    np.testing.assert_array_equal(np.isnan(K.softmax_forward(x)), np.isnan(ref))


def test_seed_softmax_gradient():
    """The seeds' numbers: softmax of a = [0.2001, 0.6048, 0.0787], ∂p₁/∂a."""
    import symgrad_kernels as K

    a = np.array([0.2001, 0.6048, 0.0787])
    p = K.softmax_forward(a)
    grad_p1 = K.softmax_backward(np.array([0.0, 1.0, 0.0]), y=p)
    np.testing.assert_allclose(grad_p1, [-0.1308, 0.2467, -0.1159], atol=5e-5)


# ------------------------------------------------------------------------------ losses


def _torch_loss(spec, xt, t, reduction, **kw):
    kw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    return torch_fn(spec)(xt, torch.tensor(t), reduction=reduction, **kw)


def _check_loss(spec, x, t, dtype, reduction, **kw):
    xt = torch.tensor(x, requires_grad=True)
    loss_t = _torch_loss(spec, xt, t, reduction, **kw)
    if reduction == "none":
        go = np.random.default_rng(5).normal(size=loss_t.shape).astype(dtype)
        loss_t.backward(torch.tensor(go))
    else:
        go = 1.7
        loss_t.backward(torch.tensor(go, dtype=loss_t.dtype))
    loss = kernel(spec, "forward")(x, t, reduction=reduction, **kw)
    assert np.asarray(loss).dtype == dtype
    assert_close(loss, loss_t.detach().numpy(), dtype, f"{spec.name} {reduction} loss")
    grad = kernel(spec, "backward")(x, t, go, reduction=reduction, **kw)
    assert_close(grad, xt.grad.numpy(), dtype, f"{spec.name} {reduction} grad")
    loss2, grad2 = kernel(spec, "forward_backward")(x, t, go, reduction=reduction, **kw)
    assert_close(loss2, loss_t.detach().numpy(), dtype, f"{spec.name} {reduction} fused loss")
    assert_close(grad2, xt.grad.numpy(), dtype, f"{spec.name} {reduction} fused grad")


def _targets_for(spec, x, rng):
    if "logits" in spec.name:  # binary targets are probabilities
        return rng.uniform(0, 1, x.shape).astype(x.dtype)
    return rng.normal(0, 2, x.shape).astype(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("spec", ELEMENTWISE_LOSSES)
def test_elementwise_loss_against_torch(spec, dtype, reduction):
    rng = np.random.default_rng(11)
    x = rng.normal(0, 3, (4, 5, 6)).astype(dtype)
    x.flat[:6] = [0.0, -0.0, 100.0, -100.0, 1000.0, -1000.0]
    _check_loss(spec, x, _targets_for(spec, x, rng), dtype, reduction)
    for tp in spec.tensor_params:  # each optional tensor operand, broadcast along the last dim
        w = rng.uniform(0.2, 3.0, (6,)).astype(dtype)
        _check_loss(spec, x, _targets_for(spec, x, rng), dtype, reduction, **{tp.name: w})


@pytest.mark.parametrize("spec", ELEMENTWISE_LOSSES)
def test_elementwise_loss_finite_differences(spec):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, 50)
    t = _targets_for(spec, x, rng)
    h = 1e-6
    grad = kernel(spec, "backward")(x, t, reduction="sum")
    plus = kernel(spec, "forward")(x + h, t, reduction="none")
    minus = kernel(spec, "forward")(x - h, t, reduction="none")
    np.testing.assert_allclose(grad, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8)


def test_seed_mse_linear_model():
    """The seeds' numbers: y = x·w + b, x=5, w=10, b=2, t=50.6296 gives ∂w=13.7037, ∂b=2.7408."""
    import symgrad_kernels as K

    x, w, b, t = 5.0, 10.0, 2.0, 50.6296
    dl_dy = K.mse_loss_backward(np.array([x * w + b]), np.array([t]), reduction="sum")[0]
    # Exact against the closed form; the seeds print t rounded, hence their 13.7037 vs 13.7040.
    assert dl_dy * x == pytest.approx(2 * 5 * (52 - t), rel=1e-14)
    assert dl_dy == pytest.approx(2 * (52 - t), rel=1e-14)
    assert abs(dl_dy * x - 13.7037) < 5e-4 and abs(dl_dy - 2.7408) < 5e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("spec", CLASS_INDEX_LOSSES)
@pytest.mark.parametrize("shape", [(7,), (5, 7), (4, 7, 3), (2, 7, 3, 2)])
def test_class_index_loss_against_torch(spec, dtype, reduction, shape):
    rng = np.random.default_rng(17)
    x = logits(dtype, shape)
    sample_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    t = rng.integers(0, 7, sample_shape)
    _check_loss(spec, x, t, dtype, reduction)
    if t.ndim:
        t.flat[0] = -100  # ignored
        w = rng.uniform(0.5, 2.0, 7).astype(dtype)
        _check_loss(spec, x, t, dtype, reduction, weight=w)
        _check_loss(spec, x, np.where(t == -100, 3, t), dtype, reduction, ignore_index=3)


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
    import symgrad_kernels as K

    x = logits(np.float64, (6, 5))
    t = np.array([0, 4, 2, 2, 1, 3])
    p = K.softmax_forward(x, dim=1)
    onehot = np.eye(5)[t]
    np.testing.assert_allclose(K.cross_entropy_backward(x, t), (p - onehot) / 6, rtol=1e-13,
                               atol=1e-16)


# ------------------------------------------------------------------ rounding of x - max, log1p


def _ulps(got, true, dtype):
    """|got - true| in units in the last place of the true value (mpmath at 150 digits)."""
    true_d = np.asarray(float(true), dtype=dtype)
    return abs(float(got) - true) / float(np.spacing(np.abs(true_d)))


def _mp_softmax_row(row):
    with mpmath.workdps(150):
        xs = [mpmath.mpf(float(v)) for v in row]
        top = max(xs)
        es = [mpmath.exp(v - top) for v in xs]
        total = mpmath.fsum(es)
        rest = total - 1  # 150 digits: the rows here have rest >= 1e-60
        return ([e / total for e in es],
                [v - top - mpmath.log1p(rest) for v in xs])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_forward_keeps_the_rounding_of_x_minus_max(dtype):
    # x - max rounds for entries far below a max of another binade, and exp multiplies that
    # rounding by |x - max|: the kernel adds the difference's exact error back (TwoSum).
    rng = np.random.default_rng(5)
    rows = [np.concatenate([[rng.uniform(20, 60)], rng.uniform(-40, 3, 31)]).astype(dtype)
            for _ in range(40)]
    rows += [np.array([1e3, 1e3 - 70.3, 1e3 - 85.1, 999.9], dtype)]
    worst = 0.0
    for row in rows:
        want, _ = _mp_softmax_row(row)
        got = kernel(ROWWISE_BY_NAME["softmax"], "forward")(row)
        fused, _ = kernel(ROWWISE_BY_NAME["softmax"], "forward_backward")(row, np.ones_like(row))
        tiny = float(np.finfo(dtype).tiny)
        for k, true in enumerate(want):
            if float(true) >= tiny:
                worst = max(worst, _ulps(got[k], true, dtype), _ulps(fused[k], true, dtype))
    assert worst <= 4, worst


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_of_a_dominated_row_keeps_the_rest(dtype):
    # log Σ e^(x - max) = log1p(rest): for the max entry y = -log1p(rest) ≈ -rest, which
    # log(1 + rest) would round to 0. Ties of the max count in the rest.
    rows = [np.array([0.0, -60.0, -70.0], dtype), np.array([119.3, 1.1, 0.4, -0.2], dtype),
            np.array([5.0, 5.0, -30.0], dtype), np.array([3.0, 2.5, -1.0, 0.25], dtype)]
    for row in rows:
        _, want = _mp_softmax_row(row)
        for fn in ("forward", "forward_backward"):
            f = kernel(ROWWISE_BY_NAME["log_softmax"], fn)
            got = f(row) if fn == "forward" else f(row, np.ones_like(row))[0]
            for k, true in enumerate(want):
                assert _ulps(got[k], true, dtype) <= 4, (row, k, got[k], float(true))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmin"])
def test_rowwise_masked_entries_and_nan(dtype, name):
    # A -inf logit (a mask) gives exactly 0 (or -inf) and no nan; a nan makes its row nan.
    spec = ROWWISE_BY_NAME[name]
    masked = -np.inf if name != "softmin" else np.inf
    x = np.array([[1.0, masked, 2.0, 0.5], [1.0, np.nan, 2.0, 0.5]], dtype)
    xt = torch.tensor(x)
    want = torch_fn(spec)(xt, dim=-1).numpy()
    for y in (kernel(spec, "forward")(x), kernel(spec, "forward_backward")(x, np.ones_like(x))[0]):
        assert np.isnan(y[1]).all()
        np.testing.assert_array_equal(y[0, 1], want[0, 1])
        assert_close(y[0], want[0], dtype, f"{name} masked row")


# ------------------------------------------------------- elementwise losses: both loop versions


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("size", [5, 4096 * 3 + 17, 40000])
def test_bce_with_logits_scalar_and_tensor_operands_agree(dtype, reduction, size):
    # Scalar weights take the hoisted (vectorized) loop, tensor ones the strided loop; the
    # block sums of a reduced loss must match torch either way, serial and parallel sizes.
    rng = np.random.default_rng(3)
    x = rng.normal(0, 4, size).astype(dtype)
    t = rng.random(size).astype(dtype)
    f = kernel(ELEMENTWISE_BY_NAME["binary_cross_entropy_with_logits"], "forward_backward")
    scalar = f(x, t, weight=0.75, pos_weight=1.5, reduction=reduction)
    tensor = f(x, t, weight=np.full(size, 0.75, dtype), pos_weight=np.full(size, 1.5, dtype),
               reduction=reduction)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.binary_cross_entropy_with_logits(
        xt, torch.tensor(t), weight=torch.tensor(0.75, dtype=xt.dtype),
        pos_weight=torch.tensor(1.5, dtype=xt.dtype), reduction=reduction)
    lt.backward(torch.ones_like(lt))
    for loss, grad in (scalar, tensor):
        assert_close(np.asarray(loss), lt.detach().numpy(), dtype, "loss")
        assert_close(grad, xt.grad.numpy(), dtype, "grad")
    g = rng.normal(size=size).astype(dtype)
    if reduction == "none":  # grad_output as an array: the g-versioned loop
        b = kernel(ELEMENTWISE_BY_NAME["binary_cross_entropy_with_logits"], "backward")
        np.testing.assert_allclose(b(x, t, g, weight=0.75, reduction="none"),
                                   b(x, t, g, weight=np.full(size, 0.75, dtype),
                                     reduction="none"), rtol=0, atol=0)


ROWWISE_BY_NAME = {p.values[0].name: p.values[0] for p in ROWWISE}
ELEMENTWISE_BY_NAME = {p.values[0].name: p.values[0] for p in ELEMENTWISE_LOSSES}


# ------------------------------------------------------------------ row-loss contiguous fast path


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("n_classes", [2, 7, 256, 1000, 1027])
def test_cross_entropy_contiguous_rows_match_torch_and_the_strided_kernel(dtype, smoothing,
                                                                          n_classes):
    # (N, C) rows take the fast path (integer-key max, exp stored in the gradient row, block
    # sums); the same data with a trailing dim of 1 takes the strided kernel. Both match torch,
    # with class weights, ignored rows, a row holding nan and a row with an overflowing logit.
    import symgrad_kernels as K

    rng = np.random.default_rng(n_classes)
    x = rng.normal(0, 3, (6, n_classes)).astype(dtype)
    x[1, 0] = 700.0 if dtype == np.float64 else 80.0
    x[2, -1] = np.nan
    x[3, :] = -x[3, ::-1]  # -nan where x held nan: a negative nan skipped by the max
    t = rng.integers(0, n_classes, 6)
    t[4] = -100
    w = rng.uniform(0.5, 2.0, n_classes).astype(dtype)
    g = rng.normal(size=6).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    kw = {"weight": w, "label_smoothing": smoothing}
    for reduction in REDUCTIONS:
        lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), weight=torch.tensor(w),
                                               label_smoothing=smoothing, reduction=reduction)
        go = g if reduction == "none" else dtype(1.3)
        xt.grad = None
        lt.backward(torch.tensor(go))
        loss, grad = K.cross_entropy_forward_backward(x, t, go, reduction=reduction, **kw)
        assert_close(np.asarray(loss), lt.detach().numpy(), dtype, f"{reduction} loss")
        assert_close(grad, xt.grad.numpy(), dtype, f"{reduction} grad")
        strided = K.cross_entropy_forward_backward(x[..., None], t[..., None], go if
                                                   reduction != "none" else go[:, None],
                                                   reduction=reduction, **kw)
        assert_close(np.asarray(strided[0]).reshape(np.shape(loss)), np.asarray(loss), dtype,
                     "strided loss")
        assert_close(strided[1][..., 0], grad, dtype, "strided grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "multi_margin_loss"])
def test_row_loss_parallel_kernels_match_torch(dtype, name):
    # 40,000 elements: the prange kernels, strided and contiguous (parfor compiles them apart).
    rng = np.random.default_rng(9)
    x = rng.normal(0, 3, (40, 1000)).astype(dtype)
    if name == "nll_loss":
        x = torch.log_softmax(torch.tensor(x), 1).numpy()
    t = rng.integers(0, 1000, 40)
    import symgrad_kernels as K

    f = getattr(K, f"{name}_forward_backward")
    strided = [(x[..., None], t[..., None])] if name != "multi_margin_loss" else []  # 2-D only
    for xs, ts in [(x, t), *strided]:
        xt = torch.tensor(xs, requires_grad=True)
        lt = getattr(torch.nn.functional, name)(xt, torch.tensor(ts))
        lt.backward()
        loss, grad = f(xs, ts)
        assert_close(np.asarray(loss), lt.detach().numpy(), dtype, f"{name} loss")
        assert_close(grad, xt.grad.numpy(), dtype, f"{name} grad")


# ------------------------------------------------------------------- pointwise-loss layouts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [4097, 40_000])  # a partial last block; the prange kernels
@pytest.mark.parametrize("layout", ["unit", "hoisted", "general"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pointwise_loss_loop_layouts_against_torch(layout, reduction, n, dtype):
    """mse_loss through each of its kernel's loops: every operand at unit stride (a weight
    array), the default weight read once before the loop, and the general loop (a target of one
    element, at stride 0); for 'none' grad_output both as an array and as one number."""
    from symgrad_kernels import mse_loss_forward, mse_loss_forward_backward

    rng = np.random.default_rng(3)
    x = rng.normal(size=n).astype(dtype)
    t = rng.normal(size=1 if layout == "general" else n).astype(dtype)
    w = rng.uniform(0.5, 2, n).astype(dtype) if layout == "unit" else None
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    per = (xt - torch.tensor(t, dtype=torch.float64)) ** 2
    if w is not None:
        per = per * torch.tensor(w, dtype=torch.float64)
    denominator = float(w.astype(np.float64).sum()) if w is not None else n
    ref = {"none": per, "sum": per.sum(), "mean": per.sum() / denominator}[reduction]
    grads = [rng.normal(size=n).astype(dtype), 0.75] if reduction == "none" else [0.75]
    for g in grads:
        xt.grad = None
        ref.backward(torch.as_tensor(np.broadcast_to(np.asarray(g, np.float64), ref.shape).copy()),
                     retain_graph=True)
        loss, grad = mse_loss_forward_backward(x, t, g, weight=w, reduction=reduction)
        assert_close(loss, ref.detach().numpy(), dtype, f"{layout} loss")
        assert_close(grad, xt.grad.numpy(), dtype, f"{layout} gradient")
    assert_close(mse_loss_forward(x, t, weight=w, reduction=reduction), ref.detach().numpy(), dtype,
                 f"{layout} forward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_mean_scale_folded_into_the_kernel(dtype):
    """'mean' scales the gradient inside the kernel by 1/Σ w[target] (non-ignored rows), or
    1/rows for probability targets, at a size that runs the prange kernels; with every row
    ignored the loss is nan and the gradient 0, as in torch."""
    from symgrad_kernels import cross_entropy_forward_backward

    rng = np.random.default_rng(11)
    x = rng.normal(0, 3, (4000, 12)).astype(dtype)
    t = rng.integers(0, 12, 4000)
    t[::7] = -100
    w = rng.uniform(0.2, 2, 12).astype(dtype)
    probs = rng.dirichlet(np.ones(12), 4000).astype(dtype)
    for target, kw in [(t, {"weight": w}), (t, {}), (probs, {})]:
        xt = torch.tensor(x, requires_grad=True)
        tkw = {k: torch.tensor(v) for k, v in kw.items()}
        lt = torch.nn.functional.cross_entropy(xt, torch.tensor(target), **tkw)
        lt.backward(torch.tensor(1.7, dtype=lt.dtype))
        loss, grad = cross_entropy_forward_backward(x, target, 1.7, **kw)
        assert_close(loss, lt.detach().numpy(), dtype, "cross_entropy mean loss")
        assert_close(grad, xt.grad.numpy(), dtype, "cross_entropy mean grad")
    loss, grad = cross_entropy_forward_backward(x, np.full(4000, -100), 1.7, weight=w)
    assert np.isnan(loss) and not grad.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_cross_entropy_row_of_two_maxima(dtype, layout):
    """Logits [max, max], target 1: the softmax is [1/2, 1/2] in both paths (the strided one
    computed exp(x - L) with L = max + log 2 rounding to max, which gave [1, 1])."""
    from symgrad_kernels import cross_entropy_backward

    big = np.finfo(dtype).max
    x = np.array([[big, big]], dtype=dtype)
    t = np.array([1])
    if layout == "strided":  # (N, C, d): class dim not last
        x, t = x[:, :, None].repeat(2, axis=2), t[:, None].repeat(2, axis=1)
        expected = np.array([[[0.5, 0.5], [-0.5, -0.5]]])
    else:
        expected = np.array([[0.5, -0.5]])
    grad = cross_entropy_backward(x, t, reduction="sum")
    np.testing.assert_array_equal(grad, expected.astype(dtype))


# ------------------------------------------------ cross_entropy where the target logit dominates


def _mp_cross_entropy_row(row, target):
    """ℓ = log Σ_j e^(x_j - x_t) = log1p(Σ_{j≠t} e^(x_j - x_t)) and ∂ℓ/∂x (softmax - one-hot,
    the target's entry -Σ_{j≠t} e^(x_j - x_t) / Σ_j e^(x_j - x_t)), mpmath at 150 digits."""
    with mpmath.workdps(150):
        xs = [mpmath.mpf(float(v)) for v in row]
        es = [mpmath.exp(v - xs[target]) for v in xs]
        rest = mpmath.fsum(e for k, e in enumerate(es) if k != target)
        total = 1 + rest
        grad = [e / total for e in es]
        grad[target] = -rest / total
        return mpmath.log1p(rest), grad


# Rows whose target is the max by far (ℓ and the target's gradient ~1e-22..1e-34: L - x_t and
# softmax_t - 1 cancel to 0), next to ordinary rows, a tied max and x - max that rounds.
_DOMINATED = [([50.0, 0.0, -3.0], 0), ([0.0, -60.0, -80.0], 0), ([-3.0, 75.5, 1.0, 2.0], 1),
              ([1e3, 1e3 - 70.3, 1e3 - 85.1, 999.9 - 60.0], 0), ([3.0, 7.0, -1.0], 0),
              ([1.5, 1.5, -2.0], 1), ([0.25, -41.7, 33.3, -12.6, 21.9], 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_cross_entropy_dominated_target_against_mpmath(dtype, layout):
    """ℓ within 4 ULP and every gradient entry within 8 ULP of mpmath (where the truth is a
    normal number), in the contiguous fast path and the strided kernel, forward alone and
    fused, 'none' / 'sum' / 'mean'; torch agrees except where it cancels to 0."""
    from symgrad_kernels import (
        cross_entropy_backward,
        cross_entropy_forward,
        cross_entropy_forward_backward,
    )

    tiny = float(np.finfo(dtype).tiny)
    for values, target in _DOMINATED:
        row = np.array(values, dtype=dtype)
        want_loss, want_grad = _mp_cross_entropy_row(row, target)
        x, t = row[None, :], np.array([target])
        if layout == "strided":  # (N, C, 2): the class dim is not the last
            x, t = np.repeat(x[:, :, None], 2, axis=2), np.repeat(t[:, None], 2, axis=1)
        for reduction in REDUCTIONS:
            losses = [cross_entropy_forward(x, t, reduction=reduction)]
            fused = cross_entropy_forward_backward(x, t, reduction=reduction)
            grads = [fused[1], cross_entropy_backward(x, t, reduction=reduction)]
            losses.append(fused[0])
            scale = {"none": 1, "sum": t.size, "mean": 1}[reduction]
            for loss in losses:
                for got in np.ravel(loss):
                    err = _ulps(float(got) / scale, want_loss, dtype)
                    assert err <= 4, (values, reduction, float(got), float(want_loss))
            g_scale = 1.0 / t.size if reduction == "mean" else 1.0
            for grad in grads:
                got = grad[0] if layout == "contiguous" else grad[0, :, 0]
                for k, true in enumerate(want_grad):
                    if abs(float(true)) >= tiny:
                        err = _ulps(float(got[k]) / g_scale, true, dtype)
                        assert err <= 8, (values, reduction, k, float(got[k]), float(true))
    # torch where it is right (the target is not far above the rest)
    rows = np.array([v for v, _ in _DOMINATED[4:6]] + [[0.5, 2.0, 1.0]], dtype)
    t = np.array([0, 1, 2])
    xt = torch.tensor(rows, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), reduction="none")
    lt.backward(torch.ones_like(lt))
    loss, grad = cross_entropy_forward_backward(rows, t, reduction="none")
    assert_close(loss, lt.detach().numpy(), dtype, "cross_entropy loss")
    assert_close(grad, xt.grad.numpy(), dtype, "cross_entropy grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_dominated_target_weights_ignore_and_specials(dtype):
    """The same rows with class weights and an ignored row (mean over Σ w[target]); a target
    at +inf stays nan (torch's inf - inf), a nan anywhere makes the row nan, a -inf logit
    elsewhere is a mask."""
    from symgrad_kernels import cross_entropy_forward_backward

    x = np.array([[50.0, 0.0, -3.0], [3.0, 7.0, -1.0], [0.0, -60.0, -80.0]], dtype)
    t = np.array([0, 0, -100])
    w = np.array([0.5, 2.0, 1.5], dtype)
    loss, grad = cross_entropy_forward_backward(x, t, 2.0, weight=w)
    for r in range(2):
        _, want_grad = _mp_cross_entropy_row(x[r], t[r])
        for k, true in enumerate(want_grad):
            want = 2.0 * float(w[t[r]]) * float(true) / float(w[0] + w[0])
            assert _ulps(grad[r, k], want, dtype) <= 8, (r, k, grad[r, k], want)
    want_mean = sum(float(w[0]) * float(_mp_cross_entropy_row(x[r], 0)[0]) for r in range(2))
    assert _ulps(loss, want_mean / float(2 * w[0]), dtype) <= 4
    assert not grad[2].any()
    special = np.array([[np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0], [5.0, -np.inf, -40.0]], dtype)
    loss, grad = cross_entropy_forward_backward(special, np.array([0, 1, 0]), reduction="none")
    assert np.isnan(loss[:2]).all() and np.isnan(grad[:2]).all()
    want_loss, want_grad = _mp_cross_entropy_row(np.array([5.0, -1e300, -40.0]), 0)
    assert _ulps(loss[2], want_loss, dtype) <= 4
    assert grad[2, 1] == 0 and _ulps(grad[2, 0], want_grad[0], dtype) <= 8


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_categorical_crossentropy_dominated_target(dtype):
    """Keras's sparse_categorical_crossentropy(from_logits=True) reads the same log-sum-exp
    relative to the target."""
    from symgrad_kernels import sparse_categorical_crossentropy_forward_backward as f

    for values, target in _DOMINATED[:3]:
        row = np.array(values, dtype)
        want_loss, want_grad = _mp_cross_entropy_row(row, target)
        loss, grad = f(np.array([target]), row[None, :], reduction="none", from_logits=True)
        assert _ulps(loss[0], want_loss, dtype) <= 4, (values, loss[0], float(want_loss))
        for k, true in enumerate(want_grad):
            if abs(float(true)) >= float(np.finfo(dtype).tiny):
                assert _ulps(grad[0, k], true, dtype) <= 8, (values, k, grad[0, k])
