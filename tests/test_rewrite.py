"""Every stability rewrite is an identity and removes the hazard it names.

For each rewrite in ``symgrad.rewrite.REWRITES``: it fires on its naive example; the result equals
the example (symbolically where SymPy can decide it, and in mpmath at random points always); at
the hazard points the naive example evaluated in float64 is inf, nan or wrong while the
rewritten form is right to 1e-14. Then the default chain that ``stabilize`` applies is checked on
the classic hazards of whole ops (tanh, sigmoid, elu, mish, softplus with its threshold).
"""

from __future__ import annotations

import random
import zlib

import mpmath
import numpy as np
import pytest
import sympy as sp

from symgrad.derive import stabilize
from symgrad.functions import LibraryFunction, elementary_form, sigmoid
from symgrad.rewrite import REWRITES, W, Z

RANDOM_POINTS = 40


def _stable_numpy(expr: sp.Expr, symbols: list[sp.Symbol]):
    """float64 evaluator; library functions through their stable forms, as the kernels do."""
    expr = expr.replace(lambda e: isinstance(e, LibraryFunction),
                        lambda e: type(e).stable(e.args[0]))
    return sp.lambdify(symbols, expr, "numpy")


def _mp(expr: sp.Expr, symbols: list[sp.Symbol]):
    return sp.lambdify(symbols, elementary_form(expr), "mpmath")


def _symbolically_equal(a: sp.Expr, b: sp.Expr) -> bool:
    """SymPy proof of a == b, case by case over the signs of z and w when Abs/Max/Min occur."""
    diff = elementary_form(a) - elementary_form(b)
    if any(sp.simplify(d) == 0 for d in (diff, diff.rewrite(sp.exp), diff.rewrite(sp.erf))):
        return True
    p, q = sp.symbols("p q", positive=True)
    cases = [{Z: sz * p, W: sw * q} for sz in (1, -1) for sw in (1, -1)]
    return all(sp.simplify(diff.subs(case)) == 0 for case in cases)


def _exact(f, *args) -> float:
    """f at 60, 120, 240... digits until two precisions agree: the naive forms cancel by as
    many digits as the hazard is large (1 - σ(1000) is 1e-435; 1 + erf(-26) is 5e-296)."""
    dps, previous = 60, None
    while dps <= 4000:
        with mpmath.workdps(dps):
            value = f(*[mpmath.mpf(a) for a in args])
        # 0 or ±inf at two precisions may both be cancellation: only a finite nonzero agrees.
        settled = mpmath.isfinite(value) and value != 0
        if previous is not None and settled and abs(value - previous) <= 1e-30 * abs(value):
            return float(value)
        previous, dps = value, 2 * dps
    return float(previous)


def _value(f, *args) -> float:
    with np.errstate(all="ignore"):
        return float(f(*[np.float64(a) for a in args]))


@pytest.mark.parametrize("name", list(REWRITES))
def test_rewrite_fires_and_is_an_identity(name):
    rw = REWRITES[name]
    naive = rw.example
    rewritten = rw(naive)
    assert rewritten != naive, f"{name} did not fire on its own example"
    symbols = [Z, W]
    proven = _symbolically_equal(rewritten, naive)
    # Always also in mpmath at random points, moderate and large magnitudes, both signs.
    f_naive, f_new = _mp(naive, symbols), _mp(rewritten, symbols)
    rng = random.Random(zlib.crc32(name.encode()))
    # Enough digits that the naive forms' own cancellation (1 - σ(300)) stays below 1e-40.
    with mpmath.workdps(200):
        for _ in range(RANDOM_POINTS):
            z, w = (rng.choice((-1, 1)) * 10 ** rng.uniform(-8, 2.5) for _ in range(2))
            if "bce" in name:
                w = rng.uniform(0, 1)  # a probability target
            args = (mpmath.mpf(z), mpmath.mpf(w))
            want, got = f_naive(*args), f_new(*args)
            assert abs(want - got) <= mpmath.mpf(10) ** -40 * (1 + abs(want)), (name, z, w)
    # Rewrites built from Max/Min/Abs/Piecewise may be beyond SymPy's simplify; those that are
    # not must be decided symbolically.
    if not rewritten.has(sp.Max, sp.Min, sp.Piecewise):
        assert proven, f"{name}: SymPy could not prove the identity"


@pytest.mark.parametrize("name", list(REWRITES))
def test_rewrite_removes_its_hazard(name):
    rw = REWRITES[name]
    symbols = [Z, W]
    naive, rewritten = rw.example, rw(rw.example)
    exact = _mp(naive, symbols)
    for z, w in rw.hazard_points:
        ref = _exact(exact, z, w)
        if rw.branch_free:
            # Every branch evaluated, as SIMD selects do: the naive form has an inf or nan branch.
            def branches(expr):
                pieces = expr.atoms(sp.Piecewise)
                return [e for pw in pieces for e, _ in pw.args]

            naive_values = [_value(_stable_numpy(e, symbols), z, w) for e in branches(naive)]
            new_values = [_value(_stable_numpy(e, symbols), z, w) for e in branches(rewritten)]
            assert not all(np.isfinite(naive_values)), (name, z, naive_values)
            assert all(np.isfinite(new_values)), (name, z, new_values)
        else:
            bad = _value(_stable_numpy(naive, symbols), z, w)
            assert not np.isclose(bad, ref, rtol=1e-6, atol=0), (
                f"{name}: the naive form is right at {z, w}: no hazard there")
        got = _value(_stable_numpy(rewritten, symbols), z, w)
        assert got == pytest.approx(ref, rel=1e-14, abs=1e-300), (name, z, w, got, ref)


x = sp.Symbol("x", real=True)
_alpha, _beta = sp.Symbol("alpha", positive=True), sp.Symbol("beta", positive=True)

# (op, naive textbook formula, points where it or its derivative fails in float64)
CLASSIC = [
    ("tanh", (sp.exp(x) - sp.exp(-x)) / (sp.exp(x) + sp.exp(-x)), (1000.0, -1000.0)),
    ("sigmoid", 1 / (1 + sp.exp(-x)), (-1000.0, 40.0)),
    ("elu", sp.Piecewise((x, x > 0), (_alpha * (sp.exp(x) - 1), True)), (-1e-20,)),
    ("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), (1000.0, 30.0)),
    ("softplus_threshold",
     sp.Piecewise((x, _beta * x > 20), (sp.log(1 + sp.exp(_beta * x)) / _beta, True)),
     (1000.0, 500.0)),
]


@pytest.mark.parametrize("op,naive,points", CLASSIC, ids=[c[0] for c in CLASSIC])
def test_default_chain_guards_classic_ops(op, naive, points):
    """The chain stabilize() applies fixes the forward and the SymPy derivative of each op,
    evaluated branch-free (every Piecewise branch computed, as vector code does)."""
    params = {_alpha: sp.Integer(1), _beta: sp.Integer(1)}
    naive_failed = False
    for expr in (naive, sp.diff(naive, x)):
        expr = expr.subs(params)
        fixed = stabilize(expr)
        exact = _mp(expr, [x])
        for v in points:
            ref = _exact(exact, v)
            naive_values = _branch_values(expr, v)
            fixed_values = _branch_values(fixed, v)
            naive_failed |= not (np.isclose(naive_values[0], ref, rtol=1e-12, atol=0)
                                 and np.all(np.isfinite(naive_values)))
            assert fixed_values[0] == pytest.approx(ref, rel=1e-13, abs=1e-300), (op, expr, v)
            assert np.all(np.isfinite(fixed_values)), (op, fixed, v, fixed_values)
    assert naive_failed, f"{op}: the naive form never failed: no hazard to remove"


def _branch_values(expr: sp.Expr, v: float) -> list[float]:
    """The value, then the value of every Piecewise branch, at x = v in float64."""
    values = [_value(_stable_numpy(expr, [x]), v)]
    for pw in expr.atoms(sp.Piecewise):
        values += [_value(_stable_numpy(e, [x]), v) for e, _ in pw.args]
    return values


def test_stabilize_applies_spec_rewrites_and_rejects_unknown_names():
    guarded = stabilize(sp.Piecewise((x, x > 0), (sp.exp(x) - 1, True)), ["branch_exp_guard"])
    assert guarded.has(sp.Min)
    with pytest.raises(ValueError, match="unknown rewrite 'nope'"):
        stabilize(x, ["nope"])


def test_rewrites_leave_safe_forms_alone():
    """No rewrite fires where its hazard cannot occur, and the chain is idempotent."""
    safe = [sp.exp(-2 * sp.Abs(x)) / (1 + sp.exp(-2 * sp.Abs(x))),  # e^v with v <= 0
            1 - sigmoid(-sp.Abs(x)),  # σ <= 1/2: no cancellation
            sp.log(x + 2), x**2 - 1]
    for expr in safe:
        assert stabilize(expr) == expr, expr
    once = stabilize(sp.diff(x * sp.tanh(sp.log(1 + sp.exp(x))), x))
    assert stabilize(once) == once


def test_default_chain_makes_tanh_backward_stable():
    """sech_squared is in the default chain: tanh' from x is 4e^(-2|x|) where 1 - tanh² is 0."""
    grad = stabilize(sp.diff(sp.tanh(x), x))
    assert not grad.has(sp.tanh), grad
    from symgrad_kernels import tanh as k

    for dtype, points in (("float32", (10.0, -20.0, 40.0)), ("float64", (20.0, -50.0, 300.0))):
        xs = np.array(points, dtype=dtype)
        got = k.tanh_backward(np.ones_like(xs), x=xs)
        naive = 1 - np.tanh(xs) ** 2
        for xi, gi, ni in zip(points, got, naive, strict=True):
            with mpmath.workdps(50):
                want = float(1 / mpmath.cosh(xi) ** 2)
            assert ni == 0.0  # the hazard: tanh rounds to ±1
            assert abs(gi - want) <= 4 * np.spacing(np.array(want, dtype=dtype)), (dtype, xi)


def test_printer_names_a_repeated_call_inside_a_power():
    """tanh(x)**2 prints as one tanh call squared (LLVM does not merge the two calls), but a
    base inside a Piecewise branch stays there (only the taken branch is evaluated)."""
    from symgrad.printer import print_block

    g = sp.Symbol("g", real=True)
    lines, _ = print_block({"gx": g * (1 - sp.tanh(x) ** 2)}, "float32")
    assert sum(line.count("tanh_f32") for line in lines) == 1, lines
    lines, _ = print_block({"y": sp.Piecewise((sp.log(x) ** 2, x > 0), (x, True))}, "float64")
    assert len(lines) == 1 and lines[0].count("log_f64") == 2, lines


def test_spec_rewrites_field_reaches_the_kernel_forms_and_is_validated():
    """OpSpec.rewrites names extra rewrites: the elementwise kernel forms get them (here the
    opt-in exp guard of an elu-like branch), and a typo fails when the spec is built."""
    from symgrad.derive import derive
    from symgrad.spec import Elementwise, SpecError, X

    formula = sp.Piecewise((X, X > 0), (sp.exp(X) - 1, True))
    plain = derive(Elementwise(name="elu_plain", family="activation", summary="t",
                               forward=formula))
    guarded = derive(Elementwise(name="elu_guarded", family="activation", summary="t",
                                 forward=formula, rewrites=["branch_exp_guard"]))
    assert not plain.forward.has(sp.Min)
    assert guarded.forward.has(sp.Min) and guarded.grad_x.has(sp.Min)
    assert guarded.spec.rewrites == ("branch_exp_guard",)
    with pytest.raises(SpecError, match="unknown rewrite 'nope'"):
        Elementwise(name="bad", family="activation", summary="t", forward=X, rewrites=("nope",))
    with pytest.raises(SpecError, match="not a list of names"):
        Elementwise(name="bad", family="activation", summary="t", forward=X,
                    rewrites="branch_exp_guard")
