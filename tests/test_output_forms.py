"""The output-form search: f'(x) = g(f(x)) found, proven and checked, or shown not to exist.

Scratch specs (independent of the catalog) pin the expected finds; the registry sweep checks
every elementwise op's result, whatever the catalog holds; the kernels' backward from y is
compared with PyTorch.
"""

from __future__ import annotations

import math
import random
import re

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
from conftest import DTYPES, assert_close, kernel, ops_of, torch_fn

from symgrad.derive import default_subs, derive, find_output_form, mp_lambdify, stabilize
from symgrad.functions import logsigmoid, sigmoid, softplus
from symgrad.kinds.elementwise import condition_text
from symgrad.spec import Elementwise, Param, X, Y

ALPHA = sp.Symbol("alpha", real=True)
SLOPE = sp.Symbol("negative_slope", real=True)
BETA, THRESHOLD = sp.Symbol("beta", real=True), sp.Symbol("threshold", real=True)


def op(name: str, forward: sp.Expr, *params: Param) -> Elementwise:
    return Elementwise(name=name, family="activation", summary="scratch op", forward=forward,
                       params=params)


SCRATCH = {
    "sigmoid": op("sigmoid", sigmoid(X)),
    "tanh": op("tanh", sp.tanh(X)),
    "relu": op("relu", sp.Piecewise((X, X > 0), (0, True))),
    "leaky_relu": op("leaky_relu", sp.Piecewise((X, X > 0), (SLOPE * X, True)),
                     Param("negative_slope", 0.01)),
    "elu": op("elu", sp.Piecewise((X, X > 0), (ALPHA * (sp.exp(X) - 1), True)),
              Param("alpha", 1.0, minimum=0.0)),
    "celu": op("celu", sp.Piecewise((X, X > 0), (ALPHA * (sp.exp(X / ALPHA) - 1), True)),
               Param("alpha", 1.0, minimum=0.0, strict=True)),
    "selu": op("selu", sp.Float(1.0507009873554805) * sp.Piecewise(
        (X, X > 0), (sp.Float(1.6732632423543772) * (sp.exp(X) - 1), True))),
    "softplus": op("softplus", sp.Piecewise((X, BETA * X > THRESHOLD),
                                            (softplus(BETA * X) / BETA, True)),
                   Param("beta", 1.0, minimum=0.0, strict=True), Param("threshold", 20.0)),
    "softplus_plain": op("softplus_plain", softplus(X)),
    "logsigmoid": op("logsigmoid", logsigmoid(X)),
    "softsign": op("softsign", X / (1 + sp.Abs(X))),
    "hardtanh": op("hardtanh", sp.Piecewise((-1, X <= -1), (1, X >= 1), (X, True))),
    "relu6": op("relu6", sp.Min(sp.Max(X, 0), 6)),
    "silu": op("silu", X * sigmoid(X)),
    "gelu": op("gelu", X * (1 + sp.erf(X / sp.sqrt(2))) / 2),
    "mish": op("mish", X * sp.tanh(softplus(X))),
    "hardswish": op("hardswish", sp.Piecewise((0, X <= -3), (X, X >= 3), (X * (X + 3) / 6, True))),
    "tanhshrink": op("tanhshrink", X - sp.tanh(X)),
}

# op -> g(y) expected (up to simplification), with the conditions read off y.
EXPECTED = {
    "sigmoid": Y * (1 - Y),
    "tanh": 1 - Y**2,
    "relu": sp.Piecewise((1, Y > 0), (0, True)),
    "elu": sp.Piecewise((1, Y > 0), (Y + ALPHA, True)),
    "celu": sp.Piecewise((1, Y > 0), ((Y + ALPHA) / ALPHA, True)),
    "softplus_plain": 1 - sp.exp(-Y),
    "logsigmoid": 1 - sp.exp(Y),
    "softsign": (1 - sp.Abs(Y)) ** 2,
    "hardtanh": sp.Piecewise((0, (Y <= -1) | (Y >= 1)), (1, True)),
    "relu6": sp.Piecewise((0, (Y <= 0) | (Y >= 6)), (1, True)),
}


def _same(a: sp.Expr, b: sp.Expr) -> bool:
    if isinstance(a, sp.Piecewise) or isinstance(b, sp.Piecewise):
        return sp.piecewise_fold(a - b).simplify() == 0 or all(
            _g_close(a, b, y) for y in (-7.5, -1.0, -0.25, 0.0, 0.3, 0.9, 1.0, 3.0, 6.0, 8.0))
    return sp.simplify(a - b) == 0


def _g_close(a: sp.Expr, b: sp.Expr, y: float) -> bool:
    subs = {Y: y, ALPHA: 1.5}
    return abs(float(a.subs(subs)) - float(b.subs(subs))) < 1e-12


@pytest.mark.parametrize("name", list(EXPECTED))
def test_expected_output_forms_are_found_and_proven(name):
    spec = SCRATCH[name]
    out = find_output_form(spec, spec.forward, X, Y)
    assert out.expr is not None and out.exact and out.usable, (name, out.note)
    assert _same(out.expr, EXPECTED[name]), (name, out.expr)
    assert out.proofs and all(p.method for p in out.proofs)


def test_float_constants_survive_the_search():
    """selu's constants: y + λα on the exponential branch, λ on the linear one."""
    out = find_output_form(SCRATCH["selu"], SCRATCH["selu"].forward, X, Y)
    assert out.usable
    low, high = out.expr.subs(Y, -0.5), out.expr.subs(Y, 2.0)
    assert float(high) == 1.0507009873554805
    assert abs(float(low) - (-0.5 + 1.0507009873554805 * 1.6732632423543772)) < 1e-15


def test_leaky_relu_form_holds_only_for_non_negative_slopes():
    """A negative slope maps x < 0 to y > 0: y > 0 no longer tells the branches apart."""
    out = find_output_form(SCRATCH["leaky_relu"], SCRATCH["leaky_relu"].forward, X, Y)
    assert out.exact and not out.usable
    assert out.requires == (SLOPE >= 0)
    assert _same(out.expr, sp.Piecewise((1, Y > 0), (SLOPE, True)))


def test_softplus_threshold_makes_the_form_approximate_with_a_proven_bound():
    """Just below β·x = threshold the log branch already gives y > threshold/β: y cannot tell
    the branches apart there, and the y-form is off by at most e^-threshold."""
    spec = SCRATCH["softplus"]
    out = find_output_form(spec, spec.forward, X, Y)
    assert out.expr is not None and not out.exact
    assert sp.simplify(out.error_bound - sp.exp(-THRESHOLD)) == 0
    assert not out.usable  # needs the wrapper to check e^-threshold <= 2^-24 first
    # The bound is attained: x just below the threshold, in the log branch.
    g = mp_lambdify([Y], out.expr.subs({BETA: 1, THRESHOLD: 20}))
    with mpmath.workdps(40):
        x = mpmath.mpf(20) - mpmath.mpf(10) ** -12
        y = mpmath.log1p(mpmath.exp(x))
        gap = abs(g(y) - 1 / (1 + mpmath.exp(-x)))
    assert 0.5 * math.exp(-20) < gap <= math.exp(-20)


@pytest.mark.parametrize("name", ["silu", "gelu", "mish", "hardswish"])
def test_non_monotone_ops_have_no_output_form_and_a_counterexample(name):
    spec = SCRATCH[name]
    out = find_output_form(spec, spec.forward, X, Y)
    assert out.expr is None and out.counterexample is not None, out.note
    x1, x2 = out.counterexample
    f = mp_lambdify([X], spec.forward)
    d = mp_lambdify([X], sp.diff(spec.forward, X))
    with mpmath.workdps(30):
        assert abs(f(x1) - f(x2)) < 1e-12 and abs(d(x1) - d(x2)) > 1e-3


def test_monotone_op_without_closed_form_says_so():
    out = find_output_form(SCRATCH["tanhshrink"], SCRATCH["tanhshrink"].forward, X, Y)
    assert out.expr is None and "monotone" in out.note


@pytest.mark.parametrize("spec", ops_of("elementwise"))
def test_registry_output_forms_hold_or_are_refuted(spec):
    """Every elementwise op in the catalog: a usable form equals f' at random points (mpmath,
    default parameters); a missing one comes with a reason."""
    d = derive(spec)
    out = d.output_form
    if out.expr is None:
        assert out.note
        return
    subs = default_subs(spec)
    f = mp_lambdify([X], stabilize(spec.forward).subs(subs))
    df = mp_lambdify([X], stabilize(sp.diff(spec.forward, X)).subs(subs))
    g = mp_lambdify([Y], stabilize(out.expr).subs(subs))
    rng = random.Random(4)
    # Float constants (selu's λ, α) come back from the exact search rounded to 17 digits.
    exact_tol = 1e-16 if spec.forward.atoms(sp.Float) else 1e-25
    tol = exact_tol if out.exact else float(out.error_bound.subs(subs).evalf()) * 1.01
    with mpmath.workdps(40):
        for _ in range(60):
            x = mpmath.mpf(rng.uniform(-12, 12))
            want, got = df(x), g(f(x))
            assert abs(want - got) <= tol * (1 + abs(want)), (spec.name, x, want, got)
    if out.usable:
        assert d.grad_y is not None and d.backward_needs == "y"


@pytest.mark.parametrize("spec", ops_of("elementwise"))
def test_backward_choice_is_measured_per_dtype(spec):
    d = derive(spec)
    assert set(d.backward_choice) == {"float32", "float64"}
    for choice in d.backward_choice.values():
        assert choice.form in ("x", "y") and choice.reason
        if choice.form == "y":  # only where the y-form costs nothing in accuracy
            assert d.grad_y is not None and choice.y_form_ulps <= 1.0


def test_sigmoid_y_form_is_measured_ill_conditioned():
    """y(1-y) at x = 17 in float32: y rounds to 1, g(y) = 0 instead of 4.1e-8."""
    d = derive(SCRATCH["sigmoid"])
    assert d.backward_choice["float32"].form == "x"
    assert d.backward_choice["float32"].y_form_ulps > 1e6
    with np.errstate(all="ignore"):
        y = np.float32(1) / (np.float32(1) + np.exp(np.float32(-17)))
    assert y == 1 and y * (1 - y) == 0


Y_OPS = [p for p in ops_of("elementwise") if derive(p.values[0]).grad_y is not None
         and p.values[0].torch is not None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", Y_OPS)
def test_backward_from_y_matches_torch(spec, dtype):
    """The memory-saving kernel (only y kept) against torch autograd in float32, and against
    our own backward from x in float64 (which tests/test_elementwise.py holds to torch; specs
    may deliberately differ from torch's float64 constants, e.g. hardsigmoid's exact 1/6)."""
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(0, 2, 300), np.linspace(-4, 4, 41)]).astype(dtype)
    g = rng.uniform(0.5, 2, x.shape).astype(dtype)
    y = kernel(spec, "forward")(x)
    got = kernel(spec, "backward")(g, y=y)
    assert got.dtype == dtype
    if dtype == np.float32:
        xt = torch.tensor(x, requires_grad=True)
        torch_fn(spec)(xt).backward(torch.tensor(g))
        want = xt.grad.numpy()
    else:
        want = kernel(spec, "backward")(g, x=x)
    # The y-form inherits y's rounding (σ' = y(1-y) near y = 1): relative to the largest value.
    rtol = {np.float32: 2e-5, np.float64: 1e-12}[dtype]
    assert_close(got, want, dtype, f"{spec.name} backward(y=)", rtol=rtol)


# -- conditional output forms and the per-dtype default when both x and y are given -------------

COND_OPS = [p for p in ops_of("elementwise") if derive(p.values[0]).grad_y_conditional is not None]

# op -> parameters under which its conditional output form does not hold (dtype -> params)
BREAKS = {
    "leaky_relu": {"negative_slope": -0.5},
    "hardshrink": {"lambd": -0.5},
    "threshold": {"threshold": 0.0, "value": 1.0},
    "softplus": {"threshold": 10.0},  # e^-10 > 2^-24: the approximate form is too coarse
}


def test_conditional_forms_cover_the_expected_ops():
    assert {"leaky_relu", "softplus"} <= {p.values[0].name for p in COND_OPS}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", COND_OPS)
def test_conditional_output_form_backward_from_y(spec, dtype):
    """Where the condition holds (the defaults, except softplus in float64) backward takes y
    and matches backward from x; where it fails, y alone is refused with a ValueError naming
    the condition, and y with x uses x."""
    d = derive(spec)
    x = np.concatenate([np.linspace(-6, 6, 97), [0.0, -0.0, 25.0, -25.0]]).astype(dtype)
    g = np.random.default_rng(2).uniform(0.5, 2, x.shape).astype(dtype)
    bwd = kernel(spec, "backward")
    defaults = default_subs(spec)
    holds = bool(d.y_requires[np.dtype(dtype).name].subs(defaults))
    y = kernel(spec, "forward")(x)
    if holds:
        assert_close(bwd(g, y=y), bwd(g, x=x), dtype, f"{spec.name} backward(y=)",
                     rtol={np.float32: 2e-6, np.float64: 1e-15}[dtype])
    else:
        with pytest.raises(ValueError, match="from y needs .*; pass x="):
            bwd(g, y=y)
    bad = BREAKS[spec.name]
    assert not bool(d.y_requires[np.dtype(dtype).name].subs(
        {**defaults, **{sp.Symbol(k, real=True): v for k, v in bad.items()}}))
    y = kernel(spec, "forward")(x, **bad)
    text = condition_text(d.y_requires[np.dtype(dtype).name])
    with pytest.raises(ValueError, match=re.escape(f"{spec.name}_backward from y needs {text}")):
        bwd(g, y=y, **bad)
    np.testing.assert_array_equal(bwd(g, x=x, y=y, **bad), bwd(g, x=x, **bad))


def test_leaky_relu_backward_from_y_with_a_positive_slope_matches_torch():
    x = np.linspace(-3, 3, 61).astype(np.float32)
    g = np.random.default_rng(5).uniform(0.5, 2, x.shape).astype(np.float32)
    import symgrad_kernels as K

    y = K.leaky_relu_forward(x, negative_slope=0.2)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.leaky_relu(xt, 0.2).backward(torch.tensor(g))
    np.testing.assert_array_equal(K.leaky_relu_backward(g, y=y, negative_slope=0.2),
                                  xt.grad.numpy())


Y_FORM_OPS = [p for p in ops_of("elementwise") if derive(p.values[0]).grad_y is not None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", Y_FORM_OPS)
def test_both_x_and_y_use_the_measured_default(spec, dtype):
    """With x and y both passed, backward uses the form the measurement chose for the dtype
    (the one the fused kernel uses too), not y unconditionally."""
    d = derive(spec)
    x = np.concatenate([np.linspace(-40, 40, 161), [17.0, 37.0, -17.0]]).astype(dtype)
    g = np.random.default_rng(6).uniform(0.5, 2, x.shape).astype(dtype)
    bwd = kernel(spec, "backward")
    y = kernel(spec, "forward")(x)
    form = d.backward_default[np.dtype(dtype).name]
    want = bwd(g, y=y) if form == "y" else bwd(g, x=x)
    np.testing.assert_array_equal(bwd(g, x=x, y=y), want)


def test_sigmoid_with_x_and_y_keeps_the_digits_y_loses():
    """σ(18) rounds to 1 in float32 (1 - 1.5e-8 is nearer 1 than 1 - 2^-24): y(1-y) is 0, the
    x-form gives σ'(18) = 1.5e-8."""
    import symgrad_kernels as K

    x = np.array([18.0, 20.0], np.float32)
    g = np.ones_like(x)
    y = K.sigmoid_forward(x)
    assert (K.sigmoid_backward(g, y=y) == 0).all()
    got = K.sigmoid_backward(g, x=x, y=y)
    want = [float(mpmath.exp(-v) / (1 + mpmath.exp(-v)) ** 2) for v in (18, 20)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
