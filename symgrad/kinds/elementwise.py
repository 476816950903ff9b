"""Elementwise ops, y = f(x): derivative, output-form search, backward-form choice, context.

The output form (f'(x) = g(f(x)), so that backward needs only the saved y) is found by
``symgrad.derive.find_output_form``. Where it exists, both backward forms are generated; which
one the fused kernel (and a caller passing both x and y) should use is decided per dtype by a
measurement (``_choose_backward``): the y-form inherits the rounding of y, amplified by the
condition number |y·g'(y)/g(y)| (y(1-y) loses every digit once σ(x) rounds to 1), so it is the
default only where that costs nothing and it is cheaper than the x-form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mpmath
import numpy as np
import sympy as sp

from symgrad.context import block, indent, needs_nan_guard, param_context, sstr
from symgrad.derive import (
    DerivationError,
    G,
    OutputForm,
    Proof,
    Step,
    default_subs,
    find_output_form,
    function_proofs,
    is_zero,
    mp_lambdify,
    simplify_branches,
    spec_rewrites,
    stabilize,
)
from symgrad.functions import explicit_form
from symgrad.kinds import Kind, register_kind
from symgrad.printer import DTYPES, print_expr
from symgrad.spec import Elementwise, X, Y

# Points per dtype for the backward-form measurement (log-uniform magnitudes, both signs).
CHOICE_POINTS = 160


@dataclass(frozen=True)
class BackwardChoice:
    """Which backward form to use when x is at hand, per dtype, and the measurement behind it."""

    form: str  # "x" or "y"
    y_form_ulps: float  # max error of g(round(y)) vs f'(x), in ULPs (inf where no y-form)
    reason: str


@dataclass(frozen=True)
class ElementwiseDerivation:
    spec: Elementwise
    forward: sp.Expr  # kernel form of y = f(x)
    grad_x: sp.Expr  # kernel form of dy/dx in terms of x
    grad_y: sp.Expr | None  # kernel form of dy/dx in terms of y, where usable for every param
    output_form_note: str  # why grad_y is what it is
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]
    output_form: OutputForm | None = None
    # dtype -> the form the fused kernel uses and the measurement that chose it
    backward_choice: dict[str, BackwardChoice] = field(default_factory=dict)
    # kernel form of an output form that holds only under a parameter condition (leaky_relu's
    # needs negative_slope >= 0): the wrapper takes y only where ``y_requires`` holds
    grad_y_conditional: sp.Expr | None = None
    # dtype -> the condition on the parameters under which grad_y_conditional may be used
    y_requires: dict[str, sp.Basic] = field(default_factory=dict)
    # "forward"/"grad_x" -> {+1/-1: the limit at ±inf}, where the kernel form gives nan there
    # (inf·0, inf/inf) although the limit exists: the kernels return the limit instead
    inf_limits: dict[str, dict[int, sp.Expr]] = field(default_factory=dict)

    @property
    def backward_needs(self) -> str:
        return "y" if self.grad_y is not None else "x"

    @property
    def backward_default(self) -> dict[str, str]:
        """dtype -> "x" or "y": the form to use when both are available."""
        return {dt: c.form for dt, c in self.backward_choice.items()}


def _cost(expr: sp.Expr) -> int:
    """Rough cost of evaluating ``expr``: a function call (exp, a helper) counts as ten."""
    calls = sum(1 for e in sp.preorder_traversal(expr) if isinstance(e, sp.Function))
    return int(sp.count_ops(expr)) + 9 * calls


def _choice_points(dtype: str) -> list[float]:
    """Log-uniform magnitudes over the dtype's finite range, both signs, and small integers."""
    fi = np.finfo(dtype)
    lo, hi = math.log10(float(fi.tiny)), math.log10(float(fi.max))
    rng = np.random.default_rng(3)
    mags = 10.0 ** rng.uniform(lo, hi, CHOICE_POINTS // 2)
    near = rng.uniform(-40, 40, CHOICE_POINTS // 2)
    pts = np.concatenate([mags, -mags, near, [0.0, 0.5, -0.5, 1.0, -1.0, 17.0, 37.0]])
    return [float(v) for v in pts.astype(dtype)]


def _ulps(got: mpmath.mpf, want: mpmath.mpf, dtype: str) -> float:
    """|got - want| in units in the last place of ``want`` in ``dtype`` (normal results only)."""
    fi = np.finfo(dtype)
    if not mpmath.isfinite(want) or abs(want) < float(fi.tiny) or abs(want) > float(fi.max):
        return 0.0
    if not mpmath.isfinite(got):
        return math.inf
    ulp = mpmath.ldexp(1, int(mpmath.floor(mpmath.log(abs(want), 2))) - (fi.nmant))
    return float(abs(got - want) / ulp)


def _measure_y_form(spec: Elementwise, grad_y: sp.Expr, dtype: str) -> float:
    """Max error in ULPs of g(round(f(x))) against f'(x): what the y-form costs on top of its
    own evaluation, because y is rounded to ``dtype`` before backward sees it. Evaluated in
    mpmath in the stabilized forms (proven equal), which keep their digits."""
    params = default_subs(spec)
    f = mp_lambdify([X], stabilize(spec.forward).subs(params))
    d = mp_lambdify([X], stabilize(sp.diff(spec.forward, X)).subs(params))
    g = mp_lambdify([Y], stabilize(grad_y).subs(params))
    cast = np.float32 if dtype == "float32" else np.float64
    worst = 0.0
    with mpmath.workdps(30):
        for v in _choice_points(dtype):
            x = mpmath.mpf(v)
            with np.errstate(over="ignore"):
                y = float(cast(float(f(x))))
            if not math.isfinite(y):
                continue
            worst = max(worst, _ulps(g(mpmath.mpf(y)), d(x), dtype))
    return worst


def _choose_backward(spec: Elementwise, out: OutputForm | None, grad_x_k: sp.Expr,
                     grad_y_k: sp.Expr | None) -> dict[str, BackwardChoice]:
    choice = {}
    for dt in DTYPES:
        if grad_y_k is None or out is None or not out.exact:
            why = "no exact output form" if grad_y_k is None or out is None else \
                "the output form is approximate"
            choice[dt] = BackwardChoice("x", math.inf, why)
            continue
        if grad_y_k.has(sp.Piecewise):
            # Conditions on a rounded y flip at the kinks where x's do not: hardsigmoid's
            # x/6 + 1/2 rounds to 0 just above x = -3, and [y > 0] then gives 0 for 1/6.
            choice[dt] = BackwardChoice("x", math.inf, "the y-form's branch conditions read a "
                                        "rounded y, which can land on a kink; x's are exact")
            continue
        lost = _measure_y_form(spec, out.expr, dt)
        cheaper = _cost(grad_y_k) < _cost(grad_x_k)
        if lost <= 1.0 and cheaper:
            choice[dt] = BackwardChoice("y", lost, f"g(round(y)) is within {lost:.2g} ULP of "
                                        "f'(x) and the y-form is cheaper")
        elif lost <= 1.0:
            choice[dt] = BackwardChoice("x", lost, f"g(round(y)) is within {lost:.2g} ULP, but "
                                        "the y-form is no cheaper")
        else:
            choice[dt] = BackwardChoice("x", lost, f"g(round(y)) is off by up to {lost:.3g} ULP "
                                        "(the rounding of y, amplified by |y·g'(y)/g(y)|)")
    return choice


def _tail_branch(expr: sp.Expr, sign: int) -> sp.Expr:
    """Each Piecewise replaced by the branch it takes as x -> sign·oo (ValueError if unknown)."""
    def pick(pw: sp.Piecewise) -> sp.Expr:
        for e, cond in pw.args:
            taken = cond.subs(X, sign * sp.oo)
            if taken == sp.true:
                return e
            if taken != sp.false:
                raise ValueError("a branch condition at infinity depends on the parameters")
        raise ValueError("no branch at infinity")

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), pick)


def _limit_at_infinity(spec: Elementwise, expr: sp.Expr, sign: int) -> sp.Expr | None:
    """lim expr as x -> sign·oo: SymPy's limit, accepted only where mpmath confirms it at
    x = sign·10^400 (default parameters; SymPy gets silu' at +oo wrong, 0 for 1); where they
    differ and the expression has no parameters, the mpmath value. None where neither holds."""
    params = default_subs(spec)
    f = mp_lambdify([X], stabilize(expr).subs(params))
    ref = None
    # From 10^150 where mpmath cannot go to 10^400 (its erfc overflows a float inside)
    for power, big in ((400, 300), (150, 140)):
        with mpmath.workdps(50):
            try:
                ref = f(mpmath.mpf(10) ** power * sign)
            except (ZeroDivisionError, ValueError, OverflowError, TypeError):
                continue
        if isinstance(ref, mpmath.mpf) and abs(ref) > mpmath.mpf(10) ** big:
            ref = mpmath.inf * mpmath.sign(ref)
        break
    if not isinstance(ref, mpmath.mpf) or mpmath.isnan(ref):
        return None
    try:
        lim = sp.limit(_tail_branch(explicit_form(expr), sign), X, sign * sp.oo)
    except (ValueError, TypeError, NotImplementedError):
        lim = None
    if lim is not None and not lim.has(sp.Limit, sp.AccumBounds, X, sp.nan, sp.zoo):
        value = lim.subs(params)
        if value.is_number and (value == sp.oo * int(mpmath.sign(ref)) if mpmath.isinf(ref)
                                else abs(float(value) - float(ref)) <= 1e-20 * (1 + abs(ref))):
            return lim
    if expr.free_symbols - {X}:
        return None
    return sp.oo * int(mpmath.sign(ref)) if mpmath.isinf(ref) else sp.Float(ref, 30)


def _inf_limits(spec: Elementwise, kernel: sp.Expr, definition: sp.Expr) -> dict[int, sp.Expr]:
    """{sign: limit} for the sides where the kernel form, evaluated as IEEE arithmetic does
    (mpmath follows it: inf·0 and inf/inf are nan), gives nan at ±inf but the limit exists."""
    f = mp_lambdify([X], kernel.subs(default_subs(spec)))
    out = {}
    for sign in (1, -1):
        try:
            value = f(mpmath.inf * sign)
        except (ZeroDivisionError, ValueError, OverflowError, TypeError):
            value = mpmath.nan
        if isinstance(value, mpmath.mpf) and not mpmath.isnan(value):
            continue
        lim = _limit_at_infinity(spec, definition, sign)
        if lim is not None:
            out[sign] = lim
    return out


def _derive_elementwise(spec: Elementwise) -> ElementwiseDerivation:
    extra = spec_rewrites(spec)
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

    out = find_output_form(spec, spec.forward, X, Y)
    proofs += out.proofs
    grad_y = out.expr if out.usable else None
    forward_k, grad_x_k = stabilize(spec.forward, extra), stabilize(grad_x, extra)
    grad_y_k = stabilize(grad_y, extra) if grad_y is not None else None
    choice = _choose_backward(spec, out, grad_x_k, grad_y_k)
    conditional = grad_y is None and out.expr is not None
    grad_y_cond = stabilize(out.expr, extra) if conditional else None
    y_requires = {dt: _y_requires(out, dt) for dt in DTYPES} if conditional else {}
    if conditional:
        when = "; ".join(f"{dt}: {condition_text(c)}" for dt, c in y_requires.items()) \
            if len(set(y_requires.values())) > 1 else condition_text(y_requires[DTYPES[0]])
        kind = "holds" if out.exact else (f"is approximate (off by up to "
                                           f"{sp.sstr(out.error_bound)})")
        note = (f"the output form dy/dx = {sp.sstr(out.expr)} {kind}; backward takes y "
                f"only when {when} (x always works)")
    else:
        note = out.note

    steps = [
        Step("Definition", rf"y = {sp.latex(definition)}"),
        Step("Derivative, as differentiated", rf"\frac{{dy}}{{dx}} = {sp.latex(differentiated)}"),
        Step("Simplified", rf"\frac{{dy}}{{dx}} = {sp.latex(simplified)}"),
        Step("In library functions", rf"\frac{{dy}}{{dx}} = {sp.latex(grad_x)}"),
        *_output_form_steps(out),
        Step("Kernel evaluates (forward)", rf"y = {sp.latex(forward_k)}"),
        Step("Kernel evaluates (backward from x)",
             rf"\frac{{\partial \ell}}{{\partial x}} = g \cdot \left({sp.latex(grad_x_k)}\right)"),
    ]
    if grad_y_k is not None:
        steps.append(Step("Kernel evaluates (backward from y)",
                          rf"\frac{{\partial \ell}}{{\partial x}} = g \cdot "
                          rf"\left({sp.latex(grad_y_k)}\right)"))
    steps.append(Step("Backward form when x is at hand (fused kernel), by measurement",
                      r"\text{" + "; ".join(f"{dt}: from {c.form} ({c.reason})"
                                            for dt, c in choice.items()) + "}"))
    limits = {"forward": _inf_limits(spec, forward_k, spec.forward),
              "grad_x": _inf_limits(spec, grad_x_k, grad_x)}
    limits = {k: v for k, v in limits.items() if v}
    for what, sides in limits.items():
        steps.append(Step(f"At ±inf ({what}): the kernel form is inf·0 or inf/inf there, so the "
                          "kernels return the limit", r",\; ".join(
                              rf"\lim_{{x \to {'+' if sg > 0 else '-'}\infty}} = {sp.latex(v)}"
                              for sg, v in sides.items())))
    return ElementwiseDerivation(spec, forward_k, grad_x_k, grad_y_k, note, tuple(steps),
                                 tuple(proofs), out, choice, grad_y_cond, y_requires, limits)


def condition_text(cond: sp.Basic) -> str:
    """A parameter condition as text, powers of two as such (2**-24, not 1/16777216)."""
    text = sp.sstr(cond)
    for r in cond.atoms(sp.Rational):
        if r.p == 1 and r.q > 2 and r.q & (r.q - 1) == 0:
            text = text.replace(f"1/{r.q}", f"2**-{r.q.bit_length() - 1}")
    return text


def _y_requires(out: OutputForm, dtype: str) -> sp.Basic:
    """Where a conditional output form may be used in ``dtype``: an exact form wherever its
    parameter condition holds; an approximate one (softplus near its threshold) where its
    proven error bound is within half an ULP of 1 in the dtype (f' is about 1 where the
    branches overlap), which is stricter in float64 than the search's float32 bound."""
    if out.exact:
        return out.requires
    return sp.Le(out.error_bound, sp.Rational(1, 2 ** (np.finfo(dtype).nmant + 1)))


def _output_form_steps(out: OutputForm) -> list[Step]:
    """The search, branch by branch: condition on x, the same on y, g there and how found."""
    steps = []
    if len(out.branches) > 1:
        rows = []
        for b in out.branches:
            cond_y = sp.latex(b.cond_y) if b.cond_y is not None else r"\text{--}"
            g = sp.latex(b.g) if b.g is not None else r"\text{none}"
            rows.append(rf"{sp.latex(b.cond_x)} \;\to\; {cond_y}: & \quad g = {g} "
                        rf"\quad\text{{({b.method})}}")
        steps.append(Step("Output-form search, branch by branch (x-condition to y-condition)",
                          r"\begin{array}{ll}" + r" \\ ".join(rows) + r"\end{array}"))
    if out.expr is None:
        steps.append(Step("Output form", rf"\text{{{out.note}; backward needs }} x"))
        return steps
    title = "Output form (backward needs only y)" if out.usable else \
        "Output form (conditional: backward takes y where the condition holds)"
    latex = rf"\frac{{dy}}{{dx}} = {sp.latex(out.expr)}"
    if out.requires != sp.true:
        latex += rf"\quad\text{{valid when }} {sp.latex(out.requires)}"
    if not out.exact:
        latex += rf",\quad \left|g(f(x)) - f'(x)\right| \le {sp.latex(out.error_bound)}"
    steps.append(Step(title, latex))
    return steps


def _elementwise_context(d: ElementwiseDerivation) -> dict:
    guard = needs_nan_guard(d.forward, d.grad_x)

    def at_inf(name: str, what: str, dt: str) -> list[str]:
        # ±inf in: the limit where the formula would give inf·0 or inf/inf (silu(-inf) = 0)
        scale = G if what == "grad_x" else sp.S.One  # gx = g·f'(x)
        return [f"{name} = {print_expr(scale * v, dt)} if x == {print_expr(sg * sp.oo, dt)} "
                f"else {name}" for sg, v in d.inf_limits.get(what, {}).items()]

    # The y-kernel: the output form where it always holds, else the conditional one (the
    # wrapper checks its parameter condition before calling it).
    grad_y = d.grad_y if d.grad_y is not None else d.grad_y_conditional
    body: dict[str, dict[str, str] | None] = {
        "forward": {}, "backward_x": {}, "forward_backward": {},
        "backward_y": {} if grad_y is not None else None}
    ops: dict[str, int] = {}
    for dt in DTYPES:
        fwd, ops["forward"] = block({"y": d.forward}, dt)
        lines = ["x = xs[i]", f"# forward: {ops['forward']} ops", *fwd]
        lines += at_inf("y", "forward", dt)
        if guard:
            lines.append("y = x if x != x else y  # nan in, nan out")
        body["forward"][dt] = indent(lines + ["out[i] = y"])

        bx, ops["backward_x"] = block({"gx": G * d.grad_x}, dt)
        lines = ["x = xs[i]", "g = gs[i]", f"# backward from x: {ops['backward_x']} ops", *bx]
        lines += at_inf("gx", "grad_x", dt)
        if guard:
            lines.append("gx = x if x != x else gx")
        body["backward_x"][dt] = indent(lines + ["out[i] = gx"])

        if grad_y is not None:
            by, ops["backward_y"] = block({"gx": G * grad_y}, dt)
            lines = ["y = ys[i]", "g = gs[i]", f"# backward from y: {ops['backward_y']} ops", *by]
            if guard:
                lines.append("gx = y if y != y else gx")
            body["backward_y"][dt] = indent(lines + ["out[i] = gx"])
        # Fused: x is at hand. The form chosen by measurement: the x-form shares subexpressions
        # with forward; the y-form (where as accurate and cheaper) reads the y just computed.
        if d.backward_default.get(dt) == "y" and d.grad_y is not None:
            fy, n_y = block({"y": d.forward}, dt)
            fg, n_g = block({"gx": G * d.grad_y}, dt)
            lines = ["x = xs[i]", "g = gs[i]", f"# fused, backward from y: {n_y + n_g} ops",
                     *fy, *fg]
        else:
            fb, n_fb = block({"y": d.forward, "gx": G * d.grad_x}, dt)
            lines = ["x = xs[i]", "g = gs[i]", f"# fused: {n_fb} ops", *fb]
        lines += at_inf("y", "forward", dt) + at_inf("gx", "grad_x", dt)
        if guard:
            lines += ["y = x if x != x else y", "gx = x if x != x else gx"]
        body["forward_backward"][dt] = indent(lines + ["out_y[i] = y", "out_g[i] = gx"])

    text = {"forward": sstr(d.forward), "grad_x": sstr(d.grad_x),
            "grad_y": sstr(grad_y) if grad_y is not None else "",
            "output_note": d.output_form_note}
    choice = d.backward_choice
    return {
        "body": body, "text": text, "params": param_context(d.spec),
        "constraints": [{"test": print_expr(c, "float64"), "message": m}
                        for c, m in d.spec.constraints],
        # With both x and y passed, the wrapper uses the form measured best per dtype.
        "prefer_y": {dt: choice[dt].form == "y" for dt in DTYPES} if choice else
        dict.fromkeys(DTYPES, False),
        "choice_text": {dt: f"uses {choice[dt].form}: {choice[dt].reason}" for dt in DTYPES}
        if choice and d.grad_y is not None else {},
        # A conditional output form: the parameter test the wrapper runs before taking y.
        "y_condition": {
            "test": {dt: sp.pycode(c, fully_qualified_modules=True)
                     for dt, c in d.y_requires.items()},
            "text": {dt: condition_text(c) for dt, c in d.y_requires.items()},
            "message": {dt: repr(condition_text(c) + (
                f" in {dt}" if len(set(d.y_requires.values())) > 1 else ""))
                for dt, c in d.y_requires.items()},
        } if d.grad_y_conditional is not None else None,
    }


register_kind(Kind(Elementwise, _derive_elementwise, "elementwise.py.j2", _elementwise_context))
