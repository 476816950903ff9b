"""The symbolic side: derivatives, output forms, structured Jacobians and stable forms."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

from symgrad.derive import derive, is_zero
from symgrad.functions import LIBRARY, elementary_form
from symgrad.spec import REGISTRY, Y


def test_seed_worked_example():
    """f = (x + y)·z: ∂f/∂x = ∂f/∂y = z and ∂f/∂z = x + y."""
    x, y, z = sp.symbols("x y z")
    f = (x + y) * z
    assert sp.diff(f, x) == z and sp.diff(f, y) == z
    assert sp.expand(sp.diff(f, z) - (x + y)) == 0


def test_sigmoid_and_tanh_output_forms():
    assert sp.expand(derive(REGISTRY["sigmoid"]).grad_y - Y * (1 - Y)) == 0
    assert sp.expand(derive(REGISTRY["tanh"]).grad_y - (1 - Y**2)) == 0
    assert derive(REGISTRY["relu"]).grad_y == sp.Piecewise((1, Y > 0), (0, True))
    assert derive(REGISTRY["elu"]).backward_needs == "y"
    # leaky_relu with a negative slope maps x < 0 to y > 0: the sign test on y would be wrong.
    assert derive(REGISTRY["leaky_relu"]).grad_y is None


def test_softmax_jacobian_is_diag_minus_outer_product():
    """Explicit 3-vector, differentiated by SymPy, equals diag(s) - s sᵀ entry by entry."""
    xs = sp.symbols("x0:3", real=True)
    total = sum(sp.exp(v) for v in xs)
    s = sp.Matrix([sp.exp(v) / total for v in xs])
    jac = s.jacobian(xs)
    assert sp.simplify(jac - (sp.diag(*s) - s * s.T)) == sp.zeros(3, 3)
    d = derive(REGISTRY["softmax"])
    assert (d.jac_diag, d.jac_left, d.jac_right) == (Y, -Y, Y)
    d = derive(REGISTRY["log_softmax"])
    assert (d.jac_diag, d.jac_left, d.jac_right) == (1, -1, sp.exp(Y))


def test_cross_entropy_gradient_is_softmax_minus_one_hot():
    d = derive(REGISTRY["cross_entropy"])
    assert (d.coeff_target, d.coeff_softmax) == (-1, 1)
    assert "p" in d.steps[3].latex and r"\delta_{k t}" in d.steps[3].latex


def test_bce_with_logits_gradient_simplifies_to_sigmoid_minus_target():
    steps = {s.title: s.latex for s in derive(REGISTRY["binary_cross_entropy_with_logits"]).steps}
    simplified = next(v for k, v in steps.items() if k.startswith("Simplified"))
    assert simplified.endswith(r"- t + \sigma\left(x\right)")


def _stable_numpy(expr, z):
    """Numpy evaluator of an expression with every library function in its stable form."""
    from symgrad.functions import LibraryFunction

    expr = expr.replace(lambda e: isinstance(e, LibraryFunction),
                        lambda e: type(e).stable(e.args[0]))
    return sp.lambdify(z, expr, "numpy")


@pytest.mark.parametrize("fn", LIBRARY, ids=lambda f: f.__name__)
def test_library_function_stable_form_is_identity_and_removes_overflow(fn):
    z = sp.Symbol("z", real=True)
    stable, naive = fn.stable(z), fn.explicit(z)
    assert is_zero(elementary_form(stable) - naive, [z]) is not None
    assert is_zero(sp.diff(naive, z) - elementary_form(fn.derivative(z)), [z]) is not None
    # The hazard: the naive value or its naive derivative is inf/nan/wrong at the function's
    # hazard points (±1000 for the overflow-prone ones, -10 for gelu's cancelling 1 + erf).
    pairs = [(naive, _stable_numpy(fn(z), z)),
             (sp.diff(naive, z), _stable_numpy(fn.derivative(z), z))]
    naive_failed = False
    with mpmath.workdps(60):  # the naive gelu forms cancel 23 digits at -10
        for naive_expr, stable_np in pairs:
            exact = sp.lambdify(z, naive_expr, "mpmath")
            naive_np = sp.lambdify(z, naive_expr, "numpy")
            for v in fn.hazard_points:
                ref = float(exact(mpmath.mpf(v)))
                with np.errstate(all="ignore"):
                    got, bad = float(stable_np(np.float64(v))), float(naive_np(np.float64(v)))
                assert got == pytest.approx(ref, rel=fn.hazard_rtol, abs=1e-300), (naive_expr, v)
                naive_failed |= not np.isclose(bad, ref, rtol=1e-12, atol=1e-300)
    assert naive_failed, f"the naive {fn.__name__} never failed at {fn.hazard_points}: no hazard"


@pytest.mark.parametrize("fn", LIBRARY, ids=lambda f: f.__name__)
def test_library_function_stable_form_is_identity_for_each_sign(fn):
    """A symbolic proof, not the mpmath fallback of is_zero: with z = p, -p (p > 0) and 0, the
    Max/Min/Abs/Piecewise of the stable form resolve and SymPy simplifies the difference to 0."""
    z, p = sp.Symbol("z", real=True), sp.Symbol("p", positive=True)
    diff = elementary_form(fn.stable(z)) - fn.explicit(z)
    for case in (p, -p, sp.S.Zero):
        assert sp.simplify(diff.subs(z, case)) == 0, (fn.__name__, case)


@pytest.mark.parametrize("fn", LIBRARY, ids=lambda f: f.__name__)
def test_library_function_stable_form_evaluates_once(fn):
    """No Piecewise branch per sign for the helpers printed from the stable form: a vectorized
    loop evaluates both sides of a select, so each exp/log1p would run twice. (sigmoid keeps its
    Piecewise as the symbolic truth; its helper is vecmath's branch-free sigmoid.)"""
    from symgrad.render import vecmath_names

    z = sp.Symbol("z", real=True)
    stable = fn.stable(z)
    if f"{fn.__name__}_f32" in vecmath_names():
        return
    assert not stable.has(sp.Piecewise), stable
    assert stable.count(sp.exp) <= 1, stable


def test_every_op_has_proofs_and_latex_steps():
    for spec in REGISTRY:
        d = derive(spec)
        assert d.steps and all(step.latex for step in d.steps), spec.name
        assert d.proofs, spec.name
