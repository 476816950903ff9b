"""Pointwise losses over several operands: ℓ(x, t, ...) per element of their broadcast shape.

The general elementwise loss. Operands are named arrays in torch's order (input, target, var,
input2...); any of them may be *differentiable* (its gradient is returned, summed back to its own
shape). Boolean options (``log_input``, ``full``...) appear in the formula as Boolean symbols:
each combination is a *variant*, derived and compiled on its own, so a kernel never branches on
an option. Besides the formula a spec may give
* ``grad_of``: the form torch differentiates when its backward ignores a clamp of the forward
  (binary_cross_entropy's log clamped at -100), with ``grad_floor`` guarding the derivative's
  denominator as torch does (max(p(1-p), 1e-12));
* ``Operand.load``: a value substituted when the operand is read, invisible to the derivative
  (gaussian_nll_loss's var.clamp(min=eps) under no_grad);
* ``mean_weight``: an operand whose sum is the 'mean' denominator (mse/l1 with ``weight``);
  'batchmean' (kl_div) divides by the input's first dimension;
* ``shared`` and ``shared_rules``: named intermediates (symbol, expression in the operands) that
  the kernel computes once per element before the formulas, and the substitutions (pattern ->
  form in them, applied in order) that write the kernel forms in them: gaussian_nll_loss's
  r = (x - t)/var and h = r/2 turn (x - t)²/(2 var) into (x - t)·h and (x - t)²/(2 var²) into
  r·h, so that no square overflows where the loss and its gradients are finite. Each rewritten
  form is proven equal to the kernel form by substituting the intermediates back.
All derivatives are sp.diff of the spec's formula.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import ClassVar

import mpmath
import sympy as sp

from symgrad.context import block, param_context, sstr
from symgrad.derive import (
    DerivationError,
    Proof,
    Step,
    function_proofs,
    spec_rewrites,
    stabilize,
)
from symgrad.functions import LibraryFunction, canonical_library, elementary_form, explicit_form
from symgrad.kinds import Kind, register_kind
from symgrad.printer import DTYPES, print_expr
from symgrad.spec import OpSpec, Param, ParamValue, _fail

SHAPE_RULES = ("broadcast", "input", "homoscedastic")
# Names the pointwise template uses; operand symbols must not take them.
_TEMPLATE_NAMES = frozenset({"i", "n", "b", "lo", "hi", "buf", "blocks", "partial", "l", "gs",
                             "g_stride", "scale", "want_grad", "store", "losses", "math", "np",
                             "_fn"})


@dataclass(frozen=True)
class Operand:
    """One array argument of a pointwise loss.

    ``shape``: "broadcast" (NumPy broadcasting with the other operands), "input" (exactly the
    input's shape, as torch demands of mse/l1/huber ``weight``), or "homoscedastic" (the input's
    shape, the input's shape without its last dim, or the input's shape with one dim of size 1:
    torch's rule for gaussian_nll_loss's var). ``optional`` operands are keyword arguments that
    default to None, read as ``default``. ``minimum``/``maximum`` bound every element (ValueError
    naming the operand otherwise); ``load`` is what the kernel substitutes for the element when it
    reads it, outside the derivative.
    """

    name: str
    symbol: sp.Symbol
    differentiable: bool = False
    shape: str = "broadcast"
    optional: bool = False
    default: float = 1.0
    scalar_ok: bool = False
    minimum: float | None = None
    maximum: float | None = None
    load: sp.Expr | None = None
    doc: str = ""


def flag(name: str, default: bool, doc: str) -> tuple[Param, sp.Symbol]:
    """A Boolean option and the Boolean symbol a formula uses for it in Piecewise conditions."""
    return Param(name, default, doc, choices=(True, False)), sp.Symbol(name)


def is_flag(p: Param) -> bool:
    return set(p.choices) == {True, False}


@dataclass(frozen=True)
class PointwiseLoss(OpSpec):
    """ℓ = loss(operands) per element of the operands' broadcast shape, then reduced."""

    operands: tuple[Operand, ...] = ()
    loss: sp.Expr = sp.S.Zero
    grad_of: sp.Expr | None = None
    grad_floor: sp.Expr | None = None
    mean_weight: str | None = None
    constraints: tuple[tuple[sp.Basic, str], ...] = ()
    shared: tuple[tuple[sp.Symbol, sp.Expr], ...] = ()
    shared_rules: tuple[tuple[sp.Expr, sp.Expr], ...] = ()

    kind: ClassVar[str] = "pointwise_loss"

    def __post_init__(self) -> None:
        names = [o.name for o in self.operands]
        if not self.operands or not any(o.differentiable for o in self.operands):
            raise _fail(self.name, "operands", "no differentiable operand",
                        "mark the input Operand(differentiable=True)")
        if len(set(names)) != len(names):
            raise _fail(self.name, "operands", "an operand name is repeated", "rename it")
        for o in self.operands:
            if o.symbol.name in _TEMPLATE_NAMES:
                raise _fail(self.name, f"operands.{o.name}.symbol", f"{o.symbol} is a template "
                            "name", "pick another symbol")
            if o.shape not in SHAPE_RULES:
                raise _fail(self.name, f"operands.{o.name}.shape", f"unknown rule {o.shape!r}",
                            f"use one of {SHAPE_RULES}")
        if self.operands[0].optional or self.operands[0].shape != "broadcast":
            raise _fail(self.name, "operands", "the first operand must be the required input",
                        "put the input first")
        taken = {o.symbol for o in self.operands} | {p.symbol for p in self.numeric_params}
        for sym, expr in self.shared:
            if sym.name in _TEMPLATE_NAMES or sym in taken:
                raise _fail(self.name, f"shared.{sym}", f"{sym} is a template name or taken",
                            "pick another symbol")
            if not expr.free_symbols <= taken:
                raise _fail(self.name, f"shared.{sym}", "uses symbols other than the operands "
                            "and parameters", "write it in the operands")
        if self.mean_weight is not None and self.mean_weight not in names:
            raise _fail(self.name, "mean_weight", f"{self.mean_weight!r} is not an operand",
                        f"name one of {names}")
        if "reduction" not in {p.name for p in self.params}:
            raise _fail(self.name, "params", "no reduction parameter", "add reduction_param()")
        super().__post_init__()

    def flag_symbols(self) -> dict[str, sp.Symbol]:
        return {p.name: sp.Symbol(p.name) for p in self.params if is_flag(p)}

    def allowed_symbols(self) -> set[sp.Symbol]:
        return (super().allowed_symbols() | {o.symbol for o in self.operands}
                | set(self.flag_symbols().values()))

    def formulas_shared(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` written in the shared intermediates by ``shared_rules`` (SymPy's subs)."""
        for pattern, form in self.shared_rules:
            expr = expr.subs(pattern, form)
        return expr

    def formulas(self) -> dict[str, sp.Expr]:
        out = {"loss": self.loss}
        if self.grad_of is not None:
            out["grad_of"] = self.grad_of
        for o in self.operands:
            if o.load is not None:
                out[f"operands.{o.name}.load"] = o.load
        return out


# ------------------------------------------------------------------------------- derivation


@dataclass(frozen=True)
class Variant:
    options: tuple[tuple[str, ParamValue], ...]  # flag values that select this variant
    loss: sp.Expr  # kernel form of ℓ
    grads: tuple[sp.Expr, ...]  # kernel form of ∂ℓ/∂operand, one per differentiable operand
    # The same in the spec's shared intermediates (what is printed); () without any.
    shared_forms: tuple[sp.Expr, ...] = ()


@dataclass(frozen=True)
class PointwiseLossDerivation:
    spec: PointwiseLoss
    variants: tuple[Variant, ...]
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]
    loss: sp.Expr  # the kernel forms with the default options (what `show` prints)
    grads: sp.Tuple


def _variant_options(spec: PointwiseLoss) -> list[dict[str, bool]]:
    used = [name for name, s in spec.flag_symbols().items()
            if any(e.has(s) for e in spec.formulas().values())]
    return [dict(zip(used, values, strict=True))
            for values in itertools.product((True, False), repeat=len(used))]


def _sample_point(spec: PointwiseLoss, rng: random.Random) -> dict[sp.Symbol, mpmath.mpf]:
    """A random point inside every operand's and parameter's domain."""
    point = {}
    for o in spec.operands:
        lo = o.minimum if o.minimum is not None else -3.0
        hi = o.maximum if o.maximum is not None else lo + 6.0
        point[o.symbol] = mpmath.mpf(rng.uniform(lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo)))
    for p in spec.numeric_params:
        lo = p.minimum if p.minimum is not None else 0.1
        hi = p.maximum if p.maximum is not None else lo + 3.0
        point[p.symbol] = mpmath.mpf(rng.uniform(lo, hi)) if lo < hi else mpmath.mpf(lo)
    return point


def _agree(spec: PointwiseLoss, a: sp.Expr, b: sp.Expr, points: int = 24) -> str | None:
    """``a == b`` symbolically, else in mpmath at random points of the operands' domains."""
    diff = elementary_form(a - b)
    if sp.simplify(diff) == 0:
        return "symbolic"
    symbols = sorted(diff.free_symbols, key=str)
    f = sp.lambdify(symbols, diff, modules="mpmath")
    rng = random.Random(0)
    checked = 0
    with mpmath.workdps(40):
        for _ in range(points * 4):
            point = _sample_point(spec, rng)
            if any(s not in point for s in symbols):
                return None
            try:
                value = f(*[point[s] for s in symbols])
            except (ZeroDivisionError, ValueError, TypeError):
                continue
            if not isinstance(value, mpmath.mpf):  # complex (log of a negative): skip
                continue
            if abs(value) > mpmath.mpf(10) ** -25:
                return None
            checked += 1
            if checked == points:
                break
    return f"mpmath at {checked} points, 40 digits" if checked else None


def _floor_denominator(spec: PointwiseLoss, expr: sp.Expr, floor: sp.Expr) -> sp.Expr:
    """n/d -> n/max(d, floor), with d > 0 inside the domain: torch's guard of a denominator."""
    num, den = sp.fraction(sp.factor(sp.together(expr)))
    if den == 1:
        raise DerivationError(f"grad_floor given but the derivative {expr} has no denominator")
    point = _sample_point(spec, random.Random(1))
    if den.subs(point) < 0:
        num, den = -num, sp.factor(-den)
    return num / sp.Max(den, floor)


def merge_powers(expr: sp.Expr) -> sp.Expr:
    """b**g / b -> b**(g - 1) where g is symbolic: at b = 0 the quotient is 0/0, the power 0."""

    def merge(product: sp.Mul) -> sp.Expr:
        powers = product.as_powers_dict()
        if all(e.is_Number for e in powers.values()):
            return product
        return sp.Mul(*[b**e for b, e in powers.items()])

    return expr.replace(lambda e: isinstance(e, sp.Mul), merge)


def _derive_variant(spec: PointwiseLoss, options: dict[str, bool],
                    proofs: list[Proof]) -> tuple[Variant, list[Step]]:
    flags = {spec.flag_symbols()[k]: sp.true if v else sp.false for k, v in options.items()}
    loss = sp.piecewise_fold(spec.loss.subs(flags))
    grad_source = loss if spec.grad_of is None else sp.piecewise_fold(spec.grad_of.subs(flags))
    # Labels go into \text{}: escape the underscores of option names.
    label = ", ".join(f"{k}={v}" for k, v in options.items()).replace("_", r"\_")
    where = rf"\quad\text{{({label})}}" if label else ""
    steps = [Step(f"Definition{f' ({label})' if label else ''}",
                  rf"\ell = {sp.latex(explicit_form(loss))}{where}")]
    if spec.grad_of is not None:
        method = _agree(spec, loss, grad_source)
        if method is None:
            raise DerivationError(f"{spec.name}: grad_of does not equal the loss in its domain")
        proofs.append(Proof(rf"\ell = {sp.latex(grad_source)}\text{{ inside the clamps{where}}}",
                            method))
        steps.append(Step("Differentiated form (torch's backward ignores the clamps)",
                          rf"\ell = {sp.latex(grad_source)}"))
    grads = []
    for o in spec.operands:
        if not o.differentiable:
            continue
        s = o.symbol
        as_diff = sp.diff(explicit_form(grad_source), s)
        grad = sp.piecewise_fold(sp.diff(grad_source, s))
        method = _agree(spec, explicit_form(grad), as_diff)
        if method is None:
            raise DerivationError(f"{spec.name}: the library-function derivative in {s} "
                                  "does not match")
        proofs.append(Proof(rf"\partial\ell/\partial {sp.latex(s)}\text{{ (library form)}} = "
                            rf"\text{{as differentiated{where}}}", method))
        shown = sp.factor(canonical_library(grad)) if grad.has(LibraryFunction) else grad
        if not shown.has(sp.Piecewise):
            shown = sp.simplify(shown)
        name = sp.latex(s)
        steps.append(Step(f"Derivative in {o.name}, as differentiated",
                          rf"\frac{{\partial\ell}}{{\partial {name}}} = {sp.latex(as_diff)}"))
        steps.append(Step(f"Simplified, in {o.name}",
                          rf"\frac{{\partial\ell}}{{\partial {name}}} = {sp.latex(shown)}"))
        if spec.grad_floor is not None:
            grad = _floor_denominator(spec, grad, spec.grad_floor)
            steps.append(Step("Denominator floored as torch's backward does",
                              rf"\frac{{\partial\ell}}{{\partial {name}}} = {sp.latex(grad)}"))
        grads.append(stabilize(merge_powers(grad), spec_rewrites(spec)))
    loss = stabilize(loss, spec_rewrites(spec))
    shared_forms: tuple[sp.Expr, ...] = ()
    if spec.shared:
        shared_forms = tuple(spec.formulas_shared(e) for e in (loss, *grads))
        back = {sym: value for sym, value in spec.shared}
        for form, kernel in zip(shared_forms, (loss, *grads), strict=True):
            if sp.simplify(form.subs(back) - kernel) != 0:
                raise DerivationError(f"{spec.name}: the form in the shared intermediates "
                                      "does not equal the kernel form")
        names = ", ".join(rf"{sp.latex(s)} = {sp.latex(v)}" for s, v in spec.shared)
        proofs.append(Proof(rf"\text{{kernel forms written in }} {names}{where}", "symbolic"))
        steps.append(Step("Kernel forms, through the shared intermediates",
                          rf"{names}:\quad " + r",\quad ".join(sp.latex(f)
                                                                for f in shared_forms)))
    return Variant(tuple(options.items()), loss, tuple(grads), shared_forms), steps


def _reduction_step(spec: PointwiseLoss) -> Step:
    choices = spec.param("reduction").choices
    mean = (rf"\frac{{\sum_i {spec.mean_weight}_i\,\ell_i}}{{\sum_i {spec.mean_weight}_i}}"
            if spec.mean_weight else r"\frac{1}{N}\sum_i \ell_i")
    parts = [r"\text{none: } \ell_i", r"\text{sum: } \sum_i \ell_i", rf"\text{{mean: }} {mean}"]
    if "batchmean" in choices:
        parts.append(r"\text{batchmean: } \frac{1}{B}\sum_i \ell_i\ (B = \text{input.shape[0]})")
    note = r",\quad N = \text{numel of the broadcast loss}" if not spec.mean_weight else ""
    return Step("Reduction", r";\quad ".join(parts) + note)


def _derive_pointwise_loss(spec: PointwiseLoss) -> PointwiseLossDerivation:
    proofs = function_proofs(spec.loss)
    variants, steps = [], []
    for options in _variant_options(spec):
        variant, variant_steps = _derive_variant(spec, options, proofs)
        variants.append(variant)
        steps += variant_steps
    steps.append(_reduction_step(spec))
    grads = ", ".join(rf"\frac{{\partial L}}{{\partial {sp.latex(o.symbol)}_i}}"
                      for o in spec.operands if o.differentiable)
    scale = (rf"c = 1/\sum_i {spec.mean_weight}_i" if spec.mean_weight else r"c = 1/N")
    steps.append(Step("Kernel evaluates (backward)",
                      rf"{grads} = g_i\cdot\frac{{\partial\ell}}{{\partial\,\cdot}}(i)"
                      r"\cdot c,\quad "
                      rf"{scale}\text{{ for mean, else }} 1"
                      r"\text{; summed over broadcast dims}"))
    default = next(v for v in variants
                   if all(spec.param(k).default == value for k, value in v.options))
    return PointwiseLossDerivation(spec, tuple(variants), tuple(steps), tuple(proofs),
                                   default.loss, sp.Tuple(*default.grads))


# ------------------------------------------------------------------------------- template context


def _load_lines(o: Operand, dt: str, index: str) -> list[str]:
    """Read an operand's element at ``index`` (applying its ``load``)."""
    s = o.symbol.name
    lines = [f"{s} = {o.name}_arr[{index}]"]
    if o.load is not None:
        lines.append(f"{s} = {print_expr(o.load, dt)}  # read as; not differentiated")
    return lines


def _layouts(spec: PointwiseLoss, dt: str) -> list[dict[str, str]]:
    """The loop versions, by the operands' strides (0 or 1, set by the wrapper), first match wins.

    A load at ``i * stride`` with a run-time stride keeps LLVM from vectorizing the loop, as does
    Numba's wraparound select on a signed index (so the unit-stride loops index with uint64):
    every operand at unit stride; the optional / scalar_ok operands at stride 0 (mse's default
    weight, a number for gaussian_nll's var) read once before the loop, the rest at unit stride;
    and the general loop for any other mix.
    """
    hoist = [o for o in spec.operands if o.optional or o.scalar_ok]
    u = "np.uint64(i)"
    unit = {"test": " and ".join(f"{o.name}_stride == 1" for o in spec.operands),
            "pre": "", "index": u, "load": "\n".join(line for o in spec.operands
                                                    for line in _load_lines(o, dt, u))}
    general = {"test": "True", "pre": "", "index": "i", "load": "\n".join(
        line for o in spec.operands for line in _load_lines(o, dt, f"i * {o.name}_stride"))}
    if not hoist:
        return [unit, general]
    hoisted = {"test": " and ".join(f"{o.name}_stride == {0 if o in hoist else 1}"
                                    for o in spec.operands),
               "pre": "\n".join(line for o in hoist for line in _load_lines(o, dt, "0")),
               "index": u, "load": "\n".join(line for o in spec.operands if o not in hoist
                                             for line in _load_lines(o, dt, u))}
    return [unit, hoisted, general]


def _nan_guard(spec: PointwiseLoss, names: list[str]) -> list[str]:
    """Branches compare false on nan and would hide it: a nan input gives a nan loss."""
    out = []
    for o in spec.operands:
        if o.differentiable:
            s = o.symbol.name
            out += [f"{n} = {s} if {s} != {s} else {n}" for n in names]
    return out


def _shared_lines(spec: PointwiseLoss, exprs: list[sp.Expr], dt: str) -> list[str]:
    """The shared intermediates the printed forms use, computed first."""
    return [f"{sym.name} = {print_expr(value, dt)}" for sym, value in spec.shared
            if any(e.has(sym) for e in exprs)]


def _pointwise_loss_context(d: PointwiseLossDerivation) -> dict:
    spec = d.spec
    diff_ops = [o for o in spec.operands if o.differentiable]
    grad_names = [f"d_{o.name}" for o in diff_ops]
    variants = []
    for v in d.variants:
        guard = v.loss.has(sp.Piecewise, sp.Max, sp.Min)
        loss, grads = (v.shared_forms[0], v.shared_forms[1:]) if v.shared_forms else (v.loss,
                                                                                     v.grads)
        body: dict[str, dict[str, str]] = {"loss": {}, "both": {}}
        for dt in DTYPES:
            lines, ops = block({"l": loss}, dt)
            body["loss"][dt] = "\n".join([f"# loss: {ops} ops", *_shared_lines(spec, [loss], dt),
                                          *lines] + (_nan_guard(spec, ["l"]) if guard else []))
            outputs = {"l": loss, **dict(zip(grad_names, grads, strict=True))}
            lines, ops = block(outputs, dt)
            body["both"][dt] = "\n".join([f"# loss and gradient: {ops} ops",
                                          *_shared_lines(spec, list(outputs.values()), dt),
                                          *lines] + (_nan_guard(spec, ["l"]) if guard else []))
        variants.append({
            "index": len(variants),
            "key": tuple(value for _, value in v.options),
            "body": body,
            "text": {"loss": sstr(v.loss),
                     "grads": [f"dl/d{o.name} = {sstr(g)}" for o, g in
                               zip(diff_ops, v.grads, strict=True)]},
            "label": ", ".join(f"{k}={val}" for k, val in v.options) or "all",
        })
    flags = [p for p in spec.params if is_flag(p)]
    used = [name for name, _ in d.variants[0].options]
    operands = [{
        "name": o.name, "symbol": o.symbol.name, "differentiable": o.differentiable,
        "shape": o.shape, "optional": o.optional, "default": repr(float(o.default)),
        "scalar_ok": o.scalar_ok, "minimum": repr(o.minimum), "maximum": repr(o.maximum),
        "doc": o.doc or o.name,
    } for o in spec.operands]
    constraints = [{"test": print_expr(cond, "float64"), "message": message}
                   for cond, message in spec.constraints]
    reduction = spec.param("reduction")
    names = [o.name for o in spec.operands]
    return {
        "variants": variants, "operands": operands, "flags": [
            {"name": p.name, "default": repr(p.default), "doc": p.doc or p.name} for p in flags],
        "variant_flags": used, "diff": [o["name"] for o in operands if o["differentiable"]],
        "params": param_context(spec), "constraints": constraints,
        "reduction_default": repr(reduction.default), "reductions": list(reduction.choices),
        "mean_weight": spec.mean_weight or "",
        "mean_weight_index": names.index(spec.mean_weight) if spec.mean_weight else None,
        "diff_index": tuple(i for i, o in enumerate(spec.operands) if o.differentiable),
        "keywords": [(p.name, repr(p.default)) for p in spec.params],
        "layouts": {dt: _layouts(spec, dt) for dt in DTYPES},
        "store_g": {g: "\n".join(f"out_{o.name}[I_] = d_{o.name} * {g}" for o in diff_ops)
                    for g in ("scale", "gs[I_]")},
    }


register_kind(Kind(PointwiseLoss, _derive_pointwise_loss, "pointwise_loss.py.j2",
                   _pointwise_loss_context))

__all__ = ["Operand", "PointwiseLoss", "flag", "is_flag", "merge_powers"]
