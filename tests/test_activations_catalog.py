"""The activation catalog: every op against PyTorch autograd (values and all gradients, kinks and
edges, float32 and float64), mpmath references for the ops torch lacks, rrelu's draws, bad input.

The generic elementwise checks (mpmath, finite differences, torch on random points) live in
tests/test_elementwise.py; this file pins the kinks with non-default parameters and covers the
kinds with learnable parameters, noise, splits and groups.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import symgrad_kernels as K
import sympy as sp
import torch
import torch.nn.functional as F
from conftest import DTYPES, assert_close

from symgrad.cli import main
from symgrad.derive import derive
from symgrad.spec import REGISTRY

EDGES = [100.0, -100.0, 1000.0, -1000.0, 1e-30, -1e-30, 0.0, -0.0]


def torch_grads(fn, x, g, *params):
    """torch forward value and autograd gradients of x and of every array parameter."""
    xt = torch.tensor(x, requires_grad=True)
    pts = [torch.tensor(p, requires_grad=True) if isinstance(p, np.ndarray) else p
           for p in params]
    yt = fn(xt, *pts)
    yt.backward(torch.tensor(g))
    grads = [p.grad.numpy() for p in pts if isinstance(p, torch.Tensor)]
    return yt.detach().numpy(), xt.grad.numpy(), grads


def upstream(shape, dtype, seed=1):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(dtype)


# ------------------------------------------------------------------ elementwise kinks vs torch

# (op, our parameters = torch's, the kinks and special points for those parameters)
KINKS = [
    ("relu6", {}, [0.0, 6.0, 3.0, -1.0, 6.5]),
    ("hardtanh", {}, [-1.0, 1.0, 0.5]),
    ("hardtanh", {"min_val": -2.0, "max_val": 0.5}, [-2.0, 0.5, -2.5, 0.7, 0.0]),
    ("hardsigmoid", {}, [-3.0, 3.0, 2.5, -2.5, 4.0, -4.0]),
    ("hardswish", {}, [-3.0, 3.0, 1.5, -1.5, 4.0, -4.0]),
    ("softshrink", {"lambd": 1.5}, [1.5, -1.5, 2.0, -2.0, 1.0]),
    ("softshrink", {}, [0.5, -0.5]),
    ("hardshrink", {"lambd": 1.5}, [1.5, -1.5, 2.0, -2.0, 1.0]),
    ("hardshrink", {}, [0.5, -0.5]),
    ("threshold", {"threshold": 0.5, "value": -2.0}, [0.5, 0.4, 0.6, -1.0]),
    ("celu", {"alpha": 2.0}, [-1.0, 1.0, -30.0]),
    ("celu", {}, [-1.0, -80.0]),
    ("selu", {}, [-1.0, 1.0, -30.0]),
    ("silu", {}, [1.0, -1.0, 20.0, -20.0, -80.0]),
    ("mish", {}, [1.0, -1.0, 20.0, -20.0, -80.0]),
    ("softsign", {}, [1.0, -1.0, 1e4, -1e4]),
    ("logsigmoid", {}, [1.0, -1.0, -800.0, 30.0]),
    ("tanhshrink", {}, [1e-3, -1e-3, 1.0, 20.0]),
    ("sign", {}, [1.0, -1.0, 1e-40]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,params,points", KINKS,
                         ids=[f"{n}-{'-'.join(map(str, p.values())) or 'defaults'}"
                              for n, p, _ in KINKS])
def test_kinks_and_edges_against_torch(name, params, points, dtype):
    torch_fn = torch.sign if name == "sign" else getattr(F, name)
    x = np.array(points + EDGES + [np.inf, -np.inf], dtype=dtype)
    g = upstream(x.shape, dtype)
    y_ref, g_ref, _ = torch_grads(lambda t: torch_fn(t, **params), x, g)
    if name == "hardsigmoid" and dtype == np.float64:
        # torch's float64 backward multiplies by float32(1/6); ours is the derivative, 1/6.
        g_ref = g_ref / float(np.float32(1 / 6)) / 6
    # A deliberate departure at ±inf only: where torch's formula is inf·0 = nan (hardswish,
    # silu, mish at -inf; softsign at ±inf) the kernels return the limit the derivation found.
    for sign, limit in derive(REGISTRY[name]).inf_limits.get("forward", {}).items():
        at = (x == sign * np.inf) & np.isnan(y_ref)
        y_ref[at] = float(limit.subs({sp.Symbol(k, real=True): v for k, v in params.items()}))
    y = getattr(K, f"{name}_forward")(x, **params)
    assert_close(y, y_ref, dtype, f"{name} forward")
    finite = np.isfinite(x)
    gx = getattr(K, f"{name}_backward")(g, x=x, **params)
    assert_close(gx[finite], g_ref[finite], dtype, f"{name} backward")
    y2, g2 = getattr(K, f"{name}_forward_backward")(x, g, **params)
    assert_close(y2, y_ref, dtype, f"{name} fused forward")
    assert_close(g2[finite], g_ref[finite], dtype, f"{name} fused backward")
    nan = np.array([np.nan], dtype=dtype)
    assert np.isnan(getattr(K, f"{name}_forward")(nan, **params)).all()


def test_reference_values_at_the_kinks():
    """The values semantics.md §2 lists, in float64, through the generated kernels."""
    def grad(name, x, **kw):
        return float(getattr(K, f"{name}_backward")(np.ones(1), x=np.array([x]), **kw)[0])

    def value(name, x, **kw):
        return float(getattr(K, f"{name}_forward")(np.array([x]), **kw)[0])

    assert grad("relu6", 0.0) == 0 and grad("relu6", 6.0) == 0 and grad("relu6", 3.0) == 1
    assert grad("hardtanh", 1.0) == 0 and grad("hardtanh", -1.0) == 0
    assert grad("hardswish", -3.0) == 0 and grad("hardswish", 3.0) == 1
    assert grad("hardsigmoid", 3.0) == 0 and grad("hardsigmoid", -3.0) == 0
    assert grad("softshrink", 0.5) == 0 and grad("hardshrink", -0.5) == 0
    assert grad("celu", 0.0, alpha=2.0) == 1
    assert grad("selu", 0.0) == pytest.approx(1.7580993408473766, rel=1e-15)
    assert grad("mish", 0.0) == pytest.approx(0.6, rel=1e-15)
    assert grad("gelu", 0.0) == 0.5
    assert grad("gelu", 1.0) == pytest.approx(1.0833154705876864, rel=1e-14)
    assert grad("gelu", 1.0, approximate="tanh") == pytest.approx(1.0829640838457826, rel=1e-14)
    assert grad("silu", 1.0) == pytest.approx(0.9276705118714869, rel=1e-14)
    assert grad("mish", 1.0) == pytest.approx(1.0490362200997922, rel=1e-14)
    assert grad("threshold", 0.5, threshold=0.5, value=3.0) == 0
    assert value("threshold", 0.5, threshold=0.5, value=3.0) == 3.0
    assert value("selu", -1.0) == pytest.approx(-1.1113307378125625, rel=1e-15)
    assert value("selu", 1.0) == pytest.approx(1.0507009873554805, rel=1e-15)
    assert value("celu", -1.0, alpha=2.0) == pytest.approx(-0.7869386805747332, rel=1e-15)
    assert value("mish", 1.0) == pytest.approx(0.8650983882673103, rel=1e-15)
    assert value("gelu", 1.0) == pytest.approx(0.841344746068543, rel=1e-15)
    assert value("gelu", 1.0, approximate="tanh") == pytest.approx(0.8411919906082768, rel=1e-15)
    assert value("logsigmoid", -800.0) == -800.0 and grad("logsigmoid", -800.0) == 1.0
    assert grad("rrelu", 0.0) == pytest.approx(11 / 48, rel=1e-15)


def test_heaviside_and_sign_against_their_definitions():
    """Steps: heaviside(x, values) is 0 / values / 1, sign is -1 / 0 / 1, gradients are 0."""
    for dtype in DTYPES:
        tiny = float(np.finfo(dtype).smallest_subnormal)
        x = np.array([-np.inf, -5.0, -tiny, -0.0, 0.0, tiny, 5.0, np.inf, np.nan], dtype=dtype)
        g = upstream(x.shape, dtype)
        for values in (1.0, 0.5, -2.0):
            want = [0, 0, 0, values, values, 1, 1, 1, np.nan]
            np.testing.assert_array_equal(K.heaviside_forward(x, values=values), want)
            ref = torch.heaviside(torch.tensor(x[:-1]), torch.tensor(np.array(values, dtype)))
            np.testing.assert_array_equal(K.heaviside_forward(x[:-1], values=values), ref)
        np.testing.assert_array_equal(K.sign_forward(x), [-1, -1, -1, 0, 0, 1, 1, 1, np.nan])
        np.testing.assert_array_equal(K.sign_forward(x[:-1]), torch.sign(torch.tensor(x[:-1])))
        for name in ("heaviside", "sign"):
            gx = getattr(K, f"{name}_backward")(g, x=x)
            np.testing.assert_array_equal(gx[:-1], np.zeros(8))
            assert np.isnan(gx[-1])


# ------------------------------------------------------------------ gelu: a string option


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_against_torch(approximate, dtype):
    rng = np.random.default_rng(3)
    points = [0.0, 1.0, -1.0, 3.0, -3.0, 9.99, 10.0, -10.0, 10.01, -10.01, 5.6, -5.6, 1e13, -1e13]
    x = np.concatenate([rng.normal(0, 3, 200), points, EDGES]).astype(dtype)
    g = upstream(x.shape, dtype)
    y_ref, g_ref, _ = torch_grads(lambda t: F.gelu(t, approximate=approximate), x, g)
    y = K.gelu_forward(x, approximate=approximate)
    assert_close(y, y_ref, dtype, f"gelu({approximate}) forward")
    gx = K.gelu_backward(g, x=x, approximate=approximate)
    assert_close(gx, g_ref, dtype, f"gelu({approximate}) backward")
    y2, g2 = K.gelu_forward_backward(x, g, approximate=approximate)
    assert_close(y2, y_ref, dtype, f"gelu({approximate}) fused forward")
    assert_close(g2, g_ref, dtype, f"gelu({approximate}) fused backward")
    # Where torch's own formula overflows (x³, x²) the kernels stay finite and exact.
    big = np.array([1e30, -1e30, float(np.finfo(dtype).max) / 4], dtype=dtype)
    yb, gb = K.gelu_forward_backward(big, np.ones_like(big), approximate=approximate)
    np.testing.assert_array_equal(yb, [big[0], 0, big[2]])
    np.testing.assert_array_equal(gb, [1, 0, 1])
    assert np.isnan(K.gelu_forward(np.array([np.nan], dtype), approximate=approximate)).all()


def test_gelu_option_selects_a_derivation():
    d = derive(REGISTRY["gelu"])
    assert [choice for choice, _ in d.variants] == ["none", "tanh"]
    titles = [s.title for s in d.steps]
    assert any(t.startswith("approximate='none'") for t in titles)
    assert any(t.startswith("approximate='tanh'") for t in titles)
    with pytest.raises(ValueError, match="approximate must be one of"):
        K.gelu_forward(np.ones(2), approximate="erf")


# ------------------------------------------------------------------ learnable parameters


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,w_shape", [((4, 3, 2, 5), (3,)), ((4, 3, 2, 5), (1,)),
                                             ((6, 3), (3,)), ((7,), (1,)), ((), (1,))])
def test_prelu_against_torch(x_shape, w_shape, dtype):
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, x_shape).astype(dtype)
    if x.size > 3:
        x.flat[:3] = [0.0, -0.0, -1000.0]  # x = 0 takes the weight branch and adds 0 to dw
    w = rng.uniform(-0.5, 0.5, w_shape).astype(dtype)
    g = upstream(x.shape, dtype)
    y_ref, gx_ref, (gw_ref,) = torch_grads(F.prelu, x, g, w)
    y = K.prelu_forward(x, w)
    assert_close(y, y_ref, dtype, "prelu forward")
    gx, gw = K.prelu_backward(g, x=x, weight=w)
    assert gw.shape == w.shape and gw.dtype == dtype
    assert_close(gx, gx_ref, dtype, "prelu grad x")
    assert_close(gw, gw_ref, dtype, "prelu grad weight")
    y2, gx2, gw2 = K.prelu_forward_backward(x, g, w)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(gx2, gx)
    assert_close(gw2, gw_ref, dtype, "prelu fused grad weight")


def test_prelu_semantics_example_and_channels_last_layout():
    """dw(w=0.25, x=[[-1,0,2],[-3,0,4]]) = -4 (semantics §2); a transposed view works too."""
    x = np.array([[-1.0, 0.0, 2.0], [-3.0, 0.0, 4.0]])
    _, gx, gw = K.prelu_forward_backward(x, np.ones_like(x), np.array([0.25]))
    assert gw.tolist() == [-4.0] and gx.tolist() == [[0.25, 0.25, 1.0], [0.25, 0.25, 1.0]]
    big = np.random.default_rng(2).normal(size=(8, 3, 64, 32))  # parallel kernels
    w = np.array([0.1, 0.2, 0.3])
    g = upstream(big.shape, np.float64)
    y_ref, gx_ref, (gw_ref,) = torch_grads(F.prelu, big, g, w)
    view = big.transpose(0, 1, 3, 2)  # non-contiguous input
    y, gx, gw = K.prelu_forward_backward(view, g.transpose(0, 1, 3, 2), w)
    assert_close(y, y_ref.transpose(0, 1, 3, 2), np.float64, "prelu view forward")
    assert_close(gw, gw_ref, np.float64, "prelu parallel grad weight")
    assert_close(gx, gx_ref.transpose(0, 1, 3, 2), np.float64, "prelu view grad x")


def _mp_swish(x, beta):
    s = 1 / (1 + mpmath.exp(-beta * x))
    return x * s, s + beta * x * s * (1 - s), x * x * s * (1 - s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swish_against_mpmath(dtype):
    """y = x·σ(βx), dy/dx = σ + βxσ(1-σ), dy/dβ = x²σ(1-σ), β scalar or one per channel."""
    rng = np.random.default_rng(6)
    x = rng.normal(0, 3, (5, 3, 4)).astype(dtype)
    x.flat[:6] = [0.0, 100.0, -100.0, 1000.0, -1000.0, 1e-30]
    g = upstream(x.shape, dtype)
    for beta in (1.0, 1.7, np.array([[0.5], [1.0], [-2.0]], dtype=dtype)):
        b = np.broadcast_to(beta, x.shape)
        with mpmath.workdps(30):
            ref = [_mp_swish(mpmath.mpf(float(v)), mpmath.mpf(float(bb)))
                   for v, bb in zip(x.flat, b.flat, strict=True)]
        y_ref, gx_ref, gb_el = (np.array([float(r[k]) for r in ref]).reshape(x.shape)
                                for k in range(3))
        gb_ref = (g.astype(np.float64) * gb_el).sum(axis=(0, 2)).reshape(3, 1) \
            if isinstance(beta, np.ndarray) else (g * gb_el).sum()
        y, gx, gb = K.swish_forward_backward(x, g, beta)
        assert_close(y, y_ref, dtype, "swish forward")
        assert_close(gx, g * gx_ref, dtype, "swish grad x")
        assert gb.shape == np.shape(beta)
        assert_close(gb, gb_ref, dtype, "swish grad beta")
        np.testing.assert_array_equal(K.swish_forward(x, beta), y)
    assert_close(K.swish_forward(x), K.silu_forward(x), dtype, "swish(beta=1) is silu")


def _mp_srelu(x, tl, al, tr, ar, trp):
    """keras-contrib: t_l + clip(relu(x - t_l), 0, t_r' - t_l) - a_l relu(t_l - x)
    + a_r relu(x - t_r') with t_r' = t_l + |t_r| (passed in, rounded as the kernel rounds it,
    so that a tie is a tie), and its gradients (semantics §2b)."""
    relu = lambda v: max(v, 0)  # noqa: E731
    y = tl + min(relu(x - tl), trp - tl) - al * relu(tl - x) + ar * relu(x - trp)
    left, right = x <= tl, x >= trp  # the paper's closed outer regions at the ties
    dx = al if left else (ar if right else 1)
    d_tl = (1 - al) if left else ((1 - ar) if right else 0)
    d_al = (x - tl) if left else 0
    d_tr = mpmath.sign(tr) * (1 - ar) if right and not left else 0
    d_ar = (x - trp) if right and not left else 0
    return y, dx, d_tl, d_al, d_tr, d_ar


@pytest.mark.parametrize("dtype", DTYPES)
def test_srelu_against_mpmath(dtype):
    """Per-element parameters (keras-contrib: shape x.shape[1:]) and a shared axis."""
    rng = np.random.default_rng(8)
    x = rng.normal(0, 3, (6, 4, 3)).astype(dtype)
    shapes = {"per element": (4, 3), "shared axis 2": (4, 1)}
    for label, shape in shapes.items():
        t_left = rng.uniform(-1, 0, shape).astype(dtype)
        a_left = rng.uniform(0, 1, shape).astype(dtype)
        t_right = rng.uniform(-3, 3, shape).astype(dtype)
        a_right = rng.uniform(0.5, 1.5, shape).astype(dtype)
        params = (t_left, a_left, t_right, a_right)
        x[0] = np.broadcast_to(t_left, (4, 3))  # ties at t_left ...
        x[1] = np.broadcast_to(t_left + np.abs(t_right), (4, 3))  # ... and at t_left + |t_right|
        g = upstream(x.shape, dtype)
        full = [np.broadcast_to(p, x.shape) for p in (*params, t_left + np.abs(t_right))]
        with mpmath.workdps(30):
            ref = np.array([[float(v) for v in _mp_srelu(*(mpmath.mpf(float(a.flat[i]))
                                                         for a in (x, *full)))]
                            for i in range(x.size)]).T.reshape(6, *x.shape)
        y, gx, *gp = K.srelu_forward_backward(x, g, *params)
        assert_close(y, ref[0], dtype, f"srelu forward ({label})")
        assert_close(gx, g * ref[1], dtype, f"srelu grad x ({label})")
        for k, name in enumerate(("t_left", "a_left", "t_right", "a_right")):
            want = (g * ref[2 + k]).sum(axis=0)
            want = want.sum(axis=1, keepdims=True) if shape[1] == 1 else want
            assert gp[k].shape == shape
            assert_close(gp[k], want, dtype, f"srelu grad {name} ({label})")
        gx_alone, *gp_alone = K.srelu_backward(g, x=x, t_left=t_left, a_left=a_left,
                                               t_right=t_right, a_right=a_right)
        assert_close(gx_alone, gx, dtype, "srelu backward alone")
        for a, b in zip(gp_alone, gp, strict=True):
            assert_close(a, b, dtype, "srelu parameter gradients alone")


def test_learnable_gradients_come_from_sympy():
    d = derive(REGISTRY["prelu"])
    assert str(d.grad_params[0]) == "Piecewise((0, x > 0), (x, True))"
    d = derive(REGISTRY["srelu"])
    assert "sign(t_right)" in str(d.grad_params[2])


# ------------------------------------------------------------------ rrelu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bounds", [{}, {"lower": 0.05, "upper": 0.6}])
def test_rrelu_eval_against_torch(bounds, dtype):
    x = np.concatenate([np.random.default_rng(9).normal(0, 3, 100), EDGES]).astype(dtype)
    g = upstream(x.shape, dtype)
    y_ref, g_ref, _ = torch_grads(lambda t: F.rrelu(t, training=False, **bounds), x, g)
    y, gx = K.rrelu_forward_backward(x, g, **bounds)
    assert_close(y, y_ref, dtype, "rrelu eval forward")
    assert_close(gx, g_ref, dtype, "rrelu eval backward")
    np.testing.assert_array_equal(K.rrelu_backward(g, x=x, **bounds), gx)


def test_rrelu_training_draws():
    """Slopes lie in [lower, upper] with U's mean and variance; a seed fixes them; backward
    redraws the forward's slopes (x = 0 included, as torch); any layout, either loop."""
    lower, upper = 0.1, 0.4
    x = -np.abs(np.random.default_rng(4).normal(size=(300, 200))) - 0.5  # parallel size
    x[0, :3] = [0.0, 2.0, -0.0]
    kw = {"lower": lower, "upper": upper, "training": True}
    y = K.rrelu_forward(x, seed=7, **kw)
    gx = K.rrelu_backward(np.ones_like(x), x=x, seed=7, **kw)
    neg = x <= 0
    assert ((gx[neg] >= lower) & (gx[neg] <= upper)).all() and (gx[~neg] == 1).all()
    np.testing.assert_array_equal(y[neg], gx[neg] * x[neg])  # y = r·x with the same r
    assert abs(gx[neg].mean() - (lower + upper) / 2) < 2e-3
    assert abs(gx[neg].var() - (upper - lower) ** 2 / 12) < 5e-4
    np.testing.assert_array_equal(K.rrelu_forward(x, seed=7, **kw), y)
    assert (K.rrelu_forward(x, seed=8, **kw)[neg] != y[neg]).mean() > 0.99
    y2, g2 = K.rrelu_forward_backward(x, np.ones_like(x), seed=7, **kw)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(g2, gx)
    # The draw of an element depends on its flat index only: a small (serial) prefix agrees.
    np.testing.assert_array_equal(K.rrelu_forward(x[:10], seed=7, **kw), y[:10])
    f32 = K.rrelu_backward(np.ones(x.shape, np.float32), x=x.astype(np.float32), seed=7, **kw)
    np.testing.assert_allclose(f32[neg], gx[neg], rtol=1e-6)
    assert ((f32[neg] >= np.float32(lower)) & (f32[neg] <= np.float32(upper))).all()


# ------------------------------------------------------------------ glu, crelu, maxout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((4, 6), -1), ((4, 6), 1), ((6, 3, 2), 0),
                                       ((2, 4, 3), 1), ((8,), 0)])
def test_glu_against_torch(shape, dim, dtype):
    x = np.random.default_rng(10).normal(0, 3, shape).astype(dtype)
    x.flat[:4] = [0.0, 100.0, -1000.0, 1000.0]
    out_shape = list(shape)
    out_shape[dim] //= 2
    g = upstream(tuple(out_shape), dtype)
    y_ref, g_ref, _ = torch_grads(lambda t: F.glu(t, dim), x, g)
    y, gx = K.glu_forward_backward(x, g, dim)
    assert_close(y, y_ref, dtype, "glu forward")
    assert_close(gx, g_ref, dtype, "glu backward")
    assert_close(K.glu_forward(x, dim), y_ref, dtype, "glu forward alone")
    assert_close(K.glu_backward(g, x=x, dim=dim), g_ref, dtype, "glu backward alone")


@pytest.mark.parametrize("dtype", DTYPES)
def test_crelu_against_its_definition(dtype):
    """concat(relu(x), relu(-x)) along dim; dx = g1·[x > 0] - g2·[x < 0], 0 at x = 0."""
    x = np.random.default_rng(11).normal(0, 2, (3, 4, 2)).astype(dtype)
    x[0, 0] = [0.0, -0.0]
    x[0, 1] = [np.inf, -np.inf]
    for dim in (1, -1):
        g = upstream(K.crelu_forward(x, dim).shape, dtype)
        g1, g2 = np.split(g, 2, axis=dim)
        y, gx = K.crelu_forward_backward(x, g, dim)
        np.testing.assert_array_equal(y, np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)],
                                                        axis=dim))
        np.testing.assert_array_equal(gx, g1 * (x > 0) - g2 * (x < 0))
        np.testing.assert_array_equal(K.crelu_backward(g, x=x, dim=dim), gx)
    y = K.crelu_forward(np.array([np.nan, 1.0], dtype))
    assert np.isnan(y[[0, 2]]).all() and y[[1, 3]].tolist() == [1, 0]


def _maxout_reference(x, num_units, grouping):
    """Explicit loops over the last axis: (y, argmax channel) with the first max at a tie."""
    k = x.shape[-1] // num_units
    y = np.empty(x.shape[:-1] + (num_units,))
    arg = np.empty(y.shape, dtype=int)
    for idx in np.ndindex(x.shape[:-1]):
        for i in range(num_units):
            members = [j * num_units + i if grouping == "strided" else i * k + j
                       for j in range(k)]
            values = [x[idx][c] for c in members]
            best = next((c for c, v in zip(members, values, strict=True) if np.isnan(v)),
                        members[int(np.argmax(values))])
            y[idx + (i,)], arg[idx + (i,)] = x[idx][best], best
    return y, arg


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grouping", ["strided", "contiguous"])
def test_maxout_against_reference(grouping, dtype):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 12)).astype(dtype)
    x[0] = 1.0  # every member tied: the first one takes the gradient
    x[1, 3] = np.nan
    x[2, :] = -np.inf
    y_ref, arg = _maxout_reference(x, 4, grouping)
    g = upstream(y_ref.shape, dtype)
    y, gx = K.maxout_forward_backward(x, g, 4, grouping=grouping)
    np.testing.assert_array_equal(y, y_ref)
    want = np.zeros_like(x)
    for idx in np.ndindex(arg.shape):
        want[idx[0], arg[idx]] += g[idx]
    np.testing.assert_array_equal(gx, want)
    np.testing.assert_array_equal(K.maxout_backward(g, x=x, num_units=4, grouping=grouping), gx)
    if grouping == "contiguous":  # the PyTorch idiom, with torch.max(dim)'s gradient
        finite = x[3:]
        y_t, g_t, _ = torch_grads(lambda t: t.view(2, 4, 3).max(-1).values, finite, g[3:])
        assert_close(y[3:], y_t, dtype, "maxout vs torch view.max")
        assert_close(gx[3:], g_t, dtype, "maxout grad vs torch")


def test_maxout_on_a_channel_dim():
    x = np.random.default_rng(13).normal(size=(2, 6, 3, 3))
    y = K.maxout_forward(x, 2, 1)
    np.testing.assert_array_equal(y, np.maximum.reduce([x[:, j * 2:(j + 1) * 2] for j in
                                                        range(3)]))
    assert K.maxout_forward(x, 3, 1, grouping="contiguous").shape == (2, 3, 3, 3)


# ------------------------------------------------------------------ softmin


def test_softmin_against_mpmath():
    x = np.random.default_rng(14).normal(0, 3, (3, 5))
    x[0, 1] = -700.0  # exp(700) would overflow without the max shift
    y = K.softmin_forward(x, dim=1)
    g = upstream(x.shape, np.float64)
    gx = K.softmin_backward(g, y=y, dim=1)
    with mpmath.workdps(30):
        for row, y_row, g_row, gx_row in zip(x, y, g, gx, strict=True):
            e = [mpmath.exp(-mpmath.mpf(float(v))) for v in row]
            s = [v / mpmath.fsum(e) for v in e]
            dot = mpmath.fsum(float(a) * b for a, b in zip(g_row, s, strict=True))
            want = [-b * (float(a) - dot) for a, b in zip(g_row, s, strict=True)]
            assert_close(y_row, np.array([float(v) for v in s]), np.float64, "softmin", 1e-14)
            assert_close(gx_row, np.array([float(v) for v in want]), np.float64,
                         "softmin backward", 1e-13)


# ------------------------------------------------------------------ layouts and dtypes


def test_empty_zero_d_and_parallel_inputs():
    e = np.empty((0, 4))
    assert K.gelu_forward(e, approximate="tanh").shape == (0, 4)
    _, gx, gw = K.prelu_forward_backward(e, e, np.ones(4))
    assert gx.shape == (0, 4) and gw.tolist() == [0, 0, 0, 0]
    assert K.rrelu_forward(e, training=True).shape == (0, 4)
    assert K.glu_forward(e).shape == (0, 2)
    assert K.crelu_backward(np.empty((0, 8)), x=e).shape == e.shape
    assert K.maxout_forward(e, 2).shape == (0, 2)
    y, gx, gb = K.swish_forward_backward(np.array(2.0), np.array(1.0))
    assert y.shape == gx.shape == gb.shape == () and gb == pytest.approx(4 * 0.8807970779778823
                                                                          * 0.11920292202211755)
    # Arrays past the parallel threshold agree with the serial kernels on slices.
    big = np.random.default_rng(15).normal(size=(64, 24, 32))
    g = upstream((64, 12, 32), np.float64)
    y, gx = K.glu_forward_backward(big, g, 1)
    parts = [K.glu_forward_backward(big[i:i + 8], g[i:i + 8], 1) for i in range(0, 64, 8)]
    np.testing.assert_array_equal(y, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(gx, np.concatenate([p[1] for p in parts]))
    y, gx = K.maxout_forward_backward(big, g, 12, 1)
    parts = [K.maxout_forward_backward(big[i:i + 8], g[i:i + 8], 12, 1) for i in range(0, 64, 8)]
    np.testing.assert_array_equal(y, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(gx, np.concatenate([p[1] for p in parts]))


# gelu's approximate='none' float32 kernels are left out on purpose: their helpers xncdf_f32 and
# ncdf_xpdf_f32 compute in float64 and round once (templates/cpu/vecmath.py).
@pytest.mark.parametrize("module,kernel,extra", [
    ("gelu", "_forward_backward_v1_ser_float32", ()),
    ("rrelu", "_forward_backward_train_ser_float32",
     (np.float32(0.1), np.float32(0.3), np.uint64(5))),
])
def test_float32_kernels_do_no_float64_arithmetic(module, kernel, extra):
    """As tests/test_elementwise.py checks for the elementwise kind, for these kinds' loops."""
    import importlib
    import re

    import numba

    x = np.linspace(-3, 3, 16, dtype=np.float32)
    fn = getattr(importlib.import_module(f"symgrad_kernels.{module}"), kernel)
    fresh = numba.njit(error_model="numpy")(fn.py_func)  # the on-disk cache hides the IR
    fresh(x, x, np.empty_like(x), np.empty_like(x), *extra, x.size)
    ir = fresh.inspect_llvm(fresh.signatures[0])
    assert not re.search(r"fpext float .* to double|f(add|sub|mul|div) double", ir)


# ------------------------------------------------------------------ bad input and the CLI


def test_bad_input_names_the_argument():
    x = np.ones((2, 5))
    with pytest.raises(ValueError, match="dim -1 of x has size 5"):
        K.glu_forward(x)
    with pytest.raises(ValueError, match="dim 0 of x has size 3"):
        K.glu_backward(np.ones((1, 5)), x=np.ones((3, 5)), dim=0)
    with pytest.raises(ValueError, match="grad_output has shape"):
        K.glu_backward(np.ones((2, 5)), x=np.ones((2, 4)))
    with pytest.raises(ValueError, match="needs a dimension"):
        K.crelu_forward(np.array(1.0))
    with pytest.raises(ValueError, match="num_units=3 does not divide the 5 channels"):
        K.maxout_forward(x, 3)
    with pytest.raises(ValueError, match="num_units must be >= 1"):
        K.maxout_forward(x, 0)
    with pytest.raises(TypeError, match="num_units must be an int"):
        K.maxout_forward(x, 2.5)
    with pytest.raises(ValueError, match="grouping must be one of"):
        K.maxout_forward(x, 5, grouping="blocks")
    with pytest.raises(ValueError, match="weight has shape"):
        K.prelu_forward(x, np.ones(3))
    with pytest.raises(ValueError, match="weight has shape"):
        K.prelu_forward(np.ones(3), np.ones(3))  # like torch: 1-D input has one channel
    with pytest.raises(TypeError, match="weight has dtype float32 but x has dtype float64"):
        K.prelu_forward(x, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'weight'"):
        K.prelu_backward(x, x=x)
    with pytest.raises(TypeError, match="needs x"):
        K.swish_backward(x)
    with pytest.raises(ValueError, match="t_left has shape .* does not broadcast"):
        K.srelu_forward(x, np.ones(4), 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="lower must be <= upper"):
        K.rrelu_forward(x, lower=0.5, upper=0.1)
    with pytest.raises(TypeError, match="seed must be an int"):
        K.rrelu_forward(x, training=True, seed=1.5)
    with pytest.raises(TypeError, match="training must be a bool"):
        K.rrelu_forward(x, training="yes")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        K.celu_forward(x, alpha=0.0)
    with pytest.raises(ValueError, match="lambd must be >= 0"):
        K.softshrink_forward(x, lambd=-1.0)
    with pytest.raises(TypeError, match="needs x"):
        K.gelu_backward(x, y=x)


def test_list_shows_the_new_activations_with_their_arguments(capsys):
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ")}
    assert "weight" in lines["prelu"] and "num_units" in lines["maxout"]
    assert "t_left, a_left, t_right, a_right" in lines["srelu"]
    assert "approximate='none'" in lines["gelu"] and "seed=0" in lines["rrelu"]
    assert "min_val=-1.0, max_val=1.0" in lines["hardtanh"] and "dim=-1" in lines["softmin"]
