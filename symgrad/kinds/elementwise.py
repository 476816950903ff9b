"""Elementwise ops, y = f(x): derivative, output-form search, and the kernel context."""

from __future__ import annotations

import random
from dataclasses import dataclass

import mpmath
import sympy as sp

from symgrad.context import block, indent, needs_nan_guard, param_context, sstr
from symgrad.derive import (
    DerivationError,
    G,
    Proof,
    Step,
    function_proofs,
    is_zero,
    sample_params,
    simplify_branches,
    stabilize,
)
from symgrad.functions import elementary_form, explicit_form
from symgrad.kinds import Kind, register_kind
from symgrad.printer import DTYPES
from symgrad.spec import Elementwise, X, Y


@dataclass(frozen=True)
class ElementwiseDerivation:
    spec: Elementwise
    forward: sp.Expr  # kernel form of y = f(x)
    grad_x: sp.Expr  # kernel form of dy/dx in terms of x
    grad_y: sp.Expr | None  # dy/dx in terms of the output y, where it exists for every parameter
    output_form_note: str  # why grad_y is what it is
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        return "y" if self.grad_y is not None else "x"


def _branches(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Basic]]:
    if isinstance(expr, sp.Piecewise):
        return list(expr.args)
    return [(expr, sp.true)]


def _branch_output_form(f: sp.Expr, d: sp.Expr) -> sp.Expr | None:
    """Find g with d(x) = g(f(x)) on one smooth branch, or None."""
    if X not in d.free_symbols:
        return d
    # 1. The derivative may already be written in terms of f itself (sigmoid, tanh).
    if f != X:
        g = d.subs(f, Y)
        if X not in g.free_symbols:
            return g
    # 2. Invert y = f(x) and substitute (elu's exponential branch, softplus, ...).
    try:
        inverses = sp.solve(sp.Eq(Y, explicit_form(f)), X)
    except (NotImplementedError, TypeError):
        inverses = []
    for inverse in inverses:
        g = sp.simplify(explicit_form(d).subs(X, inverse))
        if X not in g.free_symbols and not g.has(sp.I):
            return g
    return None


def _condition_in_y(cond: sp.Basic) -> sp.Basic:
    """Rewrite a branch condition on x as the same test on y (valid only where f keeps signs)."""
    return cond.subs(X, Y) if cond not in (sp.true, sp.false) else cond


def _output_form_holds(spec: Elementwise, grad_y: sp.Expr, grad_x: sp.Expr) -> bool:
    """Check g(f(x)) == f'(x), branch conditions included, over x and the params' domains."""
    rng = random.Random(1)
    xs = [0.0, -0.0, 1e-9, -1e-9, 1.0, -1.0, 3.0, -3.0, 25.0, -25.0]
    xs += [rng.uniform(-30, 30) for _ in range(40)]
    fwd = elementary_form(spec.forward)
    for params in sample_params(spec, rng, 6):
        f = sp.lambdify([X], fwd.subs(params), modules="mpmath")
        gy = sp.lambdify([Y], elementary_form(grad_y).subs(params), modules="mpmath")
        gx = sp.lambdify([X], elementary_form(grad_x).subs(params), modules="mpmath")
        # Branch boundaries: where each condition flips, and just beside it.
        for _, cond in _branches(fwd.subs(params)):
            if isinstance(cond, sp.core.relational.Relational):
                for root in sp.solve(cond.lhs - cond.rhs, X):
                    if root.is_real:
                        r = float(root)
                        xs_here = [r, r + 1e-7, r - 1e-7]
                        break
                else:
                    xs_here = []
                xs = xs + xs_here
        with mpmath.workdps(40):
            for x in xs:
                mx = mpmath.mpf(x)
                want, got = gx(mx), gy(f(mx))
                if abs(want - got) > mpmath.mpf(10) ** -20 * (1 + abs(want)):
                    return False
    return True


def _find_output_form(spec: Elementwise, grad_x: sp.Expr) -> tuple[sp.Expr | None, str]:
    branches = _branches(spec.forward)
    grads = _branches(grad_x)
    if len(branches) != len(grads):
        return None, "the derivative's branches do not line up with the forward's"
    pieces = []
    for (f, cond), (d, _) in zip(branches, grads, strict=True):
        g = _branch_output_form(f, d)
        if g is None:
            return None, f"no g with f'(x) = g(f(x)) on the branch {sp.sstr(cond)}"
        pieces.append((g, _condition_in_y(cond)))
    grad_y = pieces[0][0] if len(pieces) == 1 else sp.Piecewise(*pieces)
    if not _output_form_holds(spec, grad_y, grad_x):
        return None, ("an output form exists on each branch, but the branch conditions cannot "
                      "be read off y for every parameter value (checked in mpmath)")
    return grad_y, "found and checked in mpmath over x and the parameters' domains"


def _derive_elementwise(spec: Elementwise) -> ElementwiseDerivation:
    definition = explicit_form(spec.forward)
    differentiated = sp.diff(definition, X)
    simplified = simplify_branches(differentiated)
    grad_x = sp.piecewise_fold(sp.diff(spec.forward, X))
    symbols = [X, *[p.symbol for p in spec.numeric_params]]

    proofs = function_proofs(spec.forward)
    proof = is_zero(explicit_form(grad_x) - differentiated, symbols)
    if proof is None:
        raise DerivationError(f"{spec.name}: the library-function derivative does not match")
    proofs.append(Proof(r"\frac{dy}{dx}\text{ (library form)} = \text{as differentiated}",
                        proof.method))

    grad_y, note = _find_output_form(spec, grad_x)
    forward_k, grad_x_k = stabilize(spec.forward), stabilize(grad_x)
    grad_y_k = stabilize(grad_y) if grad_y is not None else None

    steps = [
        Step("Definition", rf"y = {sp.latex(definition)}"),
        Step("Derivative, as differentiated", rf"\frac{{dy}}{{dx}} = {sp.latex(differentiated)}"),
        Step("Simplified", rf"\frac{{dy}}{{dx}} = {sp.latex(simplified)}"),
        Step("In library functions", rf"\frac{{dy}}{{dx}} = {sp.latex(grad_x)}"),
    ]
    if grad_y is not None:
        steps.append(Step("Output form (backward needs only y)",
                          rf"\frac{{dy}}{{dx}} = {sp.latex(grad_y)}"))
    else:
        steps.append(Step("Output form", rf"\text{{none: {note}; backward needs }} x"))
    steps.append(Step("Kernel evaluates (forward)", rf"y = {sp.latex(forward_k)}"))
    steps.append(Step("Kernel evaluates (backward)", rf"\frac{{\partial \ell}}{{\partial x}} = g "
                      rf"\cdot \left({sp.latex(grad_y_k if grad_y_k is not None else grad_x_k)}"
                      r"\right)"))
    return ElementwiseDerivation(spec, forward_k, grad_x_k, grad_y_k, note, tuple(steps),
                                 tuple(proofs))


def _elementwise_context(d: ElementwiseDerivation) -> dict:
    guard = needs_nan_guard(d.forward, d.grad_x)
    body: dict[str, dict[str, str] | None] = {
        "forward": {}, "backward_x": {}, "forward_backward": {},
        "backward_y": {} if d.grad_y is not None else None}
    ops: dict[str, int] = {}
    for dt in DTYPES:
        fwd, ops["forward"] = block({"y": d.forward}, dt)
        lines = ["x = xs[i]", f"# forward: {ops['forward']} ops", *fwd]
        if guard:
            lines.append("y = x if x != x else y  # nan in, nan out")
        body["forward"][dt] = indent(lines + ["out[i] = y"])

        bx, ops["backward_x"] = block({"gx": G * d.grad_x}, dt)
        lines = ["x = xs[i]", "g = gs[i]", f"# backward from x: {ops['backward_x']} ops", *bx]
        if guard:
            lines.append("gx = x if x != x else gx")
        body["backward_x"][dt] = indent(lines + ["out[i] = gx"])

        if d.grad_y is not None:
            by, ops["backward_y"] = block({"gx": G * d.grad_y}, dt)
            lines = ["y = ys[i]", "g = gs[i]", f"# backward from y: {ops['backward_y']} ops", *by]
            if guard:
                lines.append("gx = y if y != y else gx")
            body["backward_y"][dt] = indent(lines + ["out[i] = gx"])
        # Fused: x is at hand, so the x-form derivative (never less accurate than the output
        # form, e.g. elu's y + alpha cancels for x << 0), sharing subexpressions with forward.
        fb, n_fb = block({"y": d.forward, "gx": G * d.grad_x}, dt)
        lines = ["x = xs[i]", "g = gs[i]", f"# fused: {n_fb} ops", *fb]
        if guard:
            lines += ["y = x if x != x else y", "gx = x if x != x else gx"]
        body["forward_backward"][dt] = indent(lines + ["out_y[i] = y", "out_g[i] = gx"])

    text = {"forward": sstr(d.forward), "grad_x": sstr(d.grad_x),
            "grad_y": sstr(d.grad_y) if d.grad_y is not None else "",
            "output_note": d.output_form_note}
    return {"body": body, "text": text, "params": param_context(d.spec)}


register_kind(Kind(Elementwise, _derive_elementwise, "elementwise.py.j2", _elementwise_context))
