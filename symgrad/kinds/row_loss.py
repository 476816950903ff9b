"""Row losses: one loss per row along a class/feature dim, from aggregates over the row.

A row is the vector along ``class_dim`` (torch's dim 1, or 0 for 1-D input; or the last dim, as
Keras and pairwise distances use). The spec names *aggregates*, each a reduction over the row of an
expression in the row's elements::

    A = Σ_j a(x_j, t_j, w_j, ...)        reduce="sum"
    M = max_j a(...)                     reduce="max"        (ties share the gradient evenly)
    L = log Σ_j exp(a(...))              reduce="logsumexp"  (computed with the max shifted out)

and the per-row loss ℓ = F(aggregates, row operands, params, C) with C the row length. A sum may
use earlier aggregates (a later pass over the row), which is how x_t, norms and log-sum-exp feed
margins, cosines and cross-entropies. The gradient is reverse-mode over this small graph, every
partial from sp.diff:

    ∂ℓ/∂u_j = Σ_A adj(A) · sel_A(j) · ∂a_A/∂u_j,   adj(A) = ∂F/∂A + Σ_B adj(B) · Σ_j ∂a_B/∂A

with sel = 1 for sums, softmax for log-sum-exp, the tie-shared indicator for max.

Targets are dense (an element operand), class indices (t_j is then the one-hot [j = target]) or
either, chosen by shape as torch's cross_entropy does. With class indices, a sum whose terms
vanish at t = 0 is *gathered*, evaluated at the target class only: torch reads x_t alone, so a
-inf logit elsewhere must not turn 0·inf into nan. ``ignore_index`` rows give 0 and leave the mean.

Every e_j = exp(a_j - max) adds back the exact rounding error of a_j - max (TwoSum). With class
indices, a log-sum-exp that a gathered aggregate reads is summed without the target (r) and read
relative to it: L - x_t = log1p(r) where x_t is the max, and the target's gradient entry is
-r/Σe, not softmax_t - 1 (see ``_relative``): no cancellation where the target dominates.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from symgrad.context import block as _block
from symgrad.context import param_context, sstr
from symgrad.derive import DerivationError, Proof, Step, function_proofs, stabilize
from symgrad.functions import explicit_form
from symgrad.kinds import Kind, register_kind
from symgrad.kinds.pointwise_loss import is_flag, merge_powers
from symgrad.printer import DTYPES, print_expr
from symgrad.spec import OpSpec, _fail

ROLES = ("element", "class", "row")
TARGETS = ("none", "dense", "index", "index_or_dense")
REDUCES = ("sum", "max", "logsumexp")
CLASS_DIMS = ("torch", "last")

C = sp.Symbol("C", positive=True)  # the row length (number of classes / features)
J_, TGT_ = sp.symbols("j_ tgt_", integer=True)  # kernel loop index and the row's class index
# Names the row template uses; spec symbols must not take them.
_TEMPLATE_NAMES = frozenset({
    "o_", "c_", "r_", "j_", "n_", "tgt_", "gr_", "outer_", "inner_", "shape", "losses",
    "total_", "weight_", "b_", "h_", "i_", "q_",
    "want_grad", "gs", "g_stride", "ignore_index", "math", "np", "_fn", "_vecmath", "C", "l",
})


@dataclass(frozen=True)
class RowOperand:
    """An array argument. ``role``: "element" (the input's shape; non-differentiable ones are
    broadcast to it), "class" (shape (C,), one value per class, like torch's class ``weight``) or
    "row" (one value per row, like cosine_embedding_loss's target)."""

    name: str
    symbol: sp.Symbol
    role: str = "element"
    differentiable: bool = False
    optional: bool = False
    default: float = 1.0
    doc: str = ""


@dataclass(frozen=True)
class Aggregate:
    symbol: sp.Symbol
    expr: sp.Expr
    reduce: str = "sum"


@dataclass(frozen=True)
class RowLoss(OpSpec):
    """ℓ_row = loss(aggregates over the row), then reduced over the rows."""

    operands: tuple[RowOperand, ...] = ()
    targets: str = "none"
    target_name: str = "target"
    target_symbol: sp.Symbol | None = None
    target_position: int = 1  # where the target sits among the positional arguments
    target_doc: str = ""
    ignore_index: bool = False
    aggregates: tuple[Aggregate, ...] = ()
    loss: sp.Expr = sp.S.Zero
    index_mean_weight: sp.Expr | None = None
    zero_variants: tuple[str, ...] = ()
    target_flags: tuple[tuple[str, sp.Basic], ...] = ()
    class_dim: str = "torch"
    constraints: tuple[tuple[sp.Basic, str], ...] = ()

    kind: ClassVar[str] = "row_loss"

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise _fail(self.name, "targets", f"unknown mode {self.targets!r}", f"use {TARGETS}")
        if self.class_dim not in CLASS_DIMS:
            raise _fail(self.name, "class_dim", f"{self.class_dim!r}", f"use {CLASS_DIMS}")
        if self.target_flags and self.targets != "dense":
            raise _fail(self.name, "target_flags", "needs dense targets", "set targets='dense'")
        for name in self.zero_variants:
            if name not in {p.name for p in self.numeric_params}:
                raise _fail(self.name, "zero_variants", f"{name!r} is not a numeric parameter",
                            "name a Param")
        if self.targets != "none" and self.target_symbol is None:
            raise _fail(self.name, "target_symbol", "targets need a symbol", "pass T")
        if self.ignore_index and self.targets not in ("index", "index_or_dense"):
            raise _fail(self.name, "ignore_index", "needs class-index targets",
                        "set targets='index' or 'index_or_dense'")
        for o in self.operands:
            if o.role not in ROLES:
                raise _fail(self.name, f"operands.{o.name}.role", f"{o.role!r}", f"use {ROLES}")
            if o.differentiable and o.role != "element":
                raise _fail(self.name, f"operands.{o.name}", "only element operands get "
                            "gradients", "make it an element operand")
        if not any(o.differentiable for o in self.operands):
            raise _fail(self.name, "operands", "no differentiable operand", "mark the input")
        for a in self.aggregates:
            if a.reduce not in REDUCES:
                raise _fail(self.name, f"aggregates.{a.symbol}", f"reduce {a.reduce!r}",
                            f"use {REDUCES}")
        names = {str(s) for s in self._symbols()}
        clash = names & _TEMPLATE_NAMES - {"C"}
        if clash:
            raise _fail(self.name, "symbols", f"{sorted(clash)} are template names", "rename")
        super().__post_init__()

    def _symbols(self) -> set[sp.Symbol]:
        out = {o.symbol for o in self.operands} | {a.symbol for a in self.aggregates}
        return out | ({self.target_symbol} if self.target_symbol is not None else set())

    def flag_symbols(self) -> dict[str, sp.Symbol]:
        """Boolean options, and the target-wide flags (true iff every target satisfies a test)."""
        return {**{p.name: sp.Symbol(p.name) for p in self.params if is_flag(p)},
                **{name: sp.Symbol(name) for name, _ in self.target_flags}}

    def allowed_symbols(self) -> set[sp.Symbol]:
        return (super().allowed_symbols() | self._symbols() | {C}
                | set(self.flag_symbols().values()))

    def formulas(self) -> dict[str, sp.Expr]:
        out = {f"aggregates.{a.symbol}": a.expr for a in self.aggregates}
        out["loss"] = self.loss
        if self.index_mean_weight is not None:
            out["index_mean_weight"] = self.index_mean_weight
        return out

    @property
    def modes(self) -> tuple[str, ...]:
        return {"index_or_dense": ("index", "dense")}.get(self.targets, (self.targets,))


# ------------------------------------------------------------------------------- derivation


@dataclass(frozen=True)
class AggregatePlan:
    """One aggregate in one variant and target mode, ready to print."""

    symbol: sp.Symbol
    reduce: str
    expr: sp.Expr  # the term a_j (with t = 1 for a gathered aggregate)
    level: int
    gathered: bool
    partials: tuple[sp.Expr, ...]  # ∂a_j/∂u_j, one per differentiable operand
    dsums: tuple[tuple[sp.Symbol, sp.Symbol, sp.Expr], ...]  # (dsum name, of aggregate, ∂a/∂B)
    # A gathered aggregate's value with each log-sum-exp L it reads written through
    # lt_L = L - a_L(target) (see ``relative_lse``), where that cancels the target's own term.
    value: sp.Expr | None = None
    # A log-sum-exp whose sum pass leaves the target out: r_L = Σ_{j≠t} e_j, s_L = r_L + e_t.
    relative: bool = False


@dataclass(frozen=True)
class RowPlan:
    mode: str
    aggregates: tuple[AggregatePlan, ...]
    loss: sp.Expr
    mean_weight: sp.Expr
    adjoints: tuple[tuple[sp.Symbol, sp.Expr], ...]  # in evaluation order
    grads: tuple[sp.Expr, ...]  # per element, one per differentiable operand
    # The same gradients with each log-sum-exp selection exp(a_j - L) written as sc_L·e_L, where
    # e_L = exp(a_j - max) is what the sum pass stored and sc_L = adj_L / Σ e (the fast path's
    # gradient loop then reads e instead of computing exp again).
    stored_grads: tuple[sp.Expr, ...] = ()
    # With a relative log-sum-exp: the gradient at the target class, written through r_L / s_L
    # (e_t/s_L - 1 = -r_L/s_L, no cancellation where the target dominates), and the loop's
    # gradients without their target-only terms (the target entry is written after the loop).
    target_grads: tuple[sp.Expr, ...] = ()
    loop_grads: tuple[sp.Expr, ...] = ()


def relative_lse(symbol: sp.Symbol) -> tuple[sp.Symbol, sp.Symbol, sp.Symbol]:
    """(lt_L, r_L, s_L): L - a_L(target) computed without cancellation, the sum of
    e_j = exp(a_j - max) over j != target, and Σ_j e_j = r_L + e_target."""
    return (sp.Symbol(f"lt_{symbol.name}", real=True),
            sp.Symbol(f"r_{symbol.name}", nonnegative=True),
            sp.Symbol(f"s_{symbol.name}", positive=True))


def stored_exp(symbol: sp.Symbol) -> tuple[sp.Symbol, sp.Symbol]:
    """(e_L, sc_L): the stored exp(a_j - max) and adj_L / Σ_j exp(a_j - max)."""
    return (sp.Symbol(f"e_{symbol.name}", positive=True),
            sp.Symbol(f"sc_{symbol.name}", real=True))


@dataclass(frozen=True)
class RowVariant:
    options: tuple[tuple[str, bool], ...]
    plans: tuple[RowPlan, ...]  # one per target mode


@dataclass(frozen=True)
class RowLossDerivation:
    spec: RowLoss
    variants: tuple[RowVariant, ...]
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]
    loss: sp.Expr  # the per-row loss and element gradients with the default options (`show`)
    grads: sp.Tuple


def adjoint(symbol: sp.Symbol) -> sp.Symbol:
    return sp.Symbol(f"adj_{symbol.name}", real=True)


def _levels(spec: RowLoss, aggregates: list[Aggregate]) -> dict[sp.Symbol, int]:
    levels: dict[sp.Symbol, int] = {}
    for a in aggregates:
        deps = [b for b in levels if a.expr.has(b)]
        unknown = [b.symbol for b in aggregates if a.expr.has(b.symbol) and b.symbol not in levels]
        if unknown:
            raise DerivationError(f"{spec.name}: aggregate {a.symbol} uses {unknown} before "
                                  "they are defined; list aggregates in order")
        if deps and a.reduce != "sum":
            raise DerivationError(f"{spec.name}: {a.reduce} aggregate {a.symbol} may not use "
                                  "other aggregates; only sums can")
        levels[a.symbol] = 1 + max((levels[b] for b in deps), default=-1)
    return levels


def _plan(spec: RowLoss, aggregates: list[Aggregate], loss: sp.Expr, mean_weight: sp.Expr,
          mode: str) -> RowPlan:
    T = spec.target_symbol
    diff_syms = [o.symbol for o in spec.operands if o.differentiable]
    # Only the aggregates the loss or the mean weight reach are computed.
    needed = {a.symbol for a in aggregates if loss.has(a.symbol) or mean_weight.has(a.symbol)}
    for a in reversed(aggregates):
        if a.symbol in needed:
            needed |= {b.symbol for b in aggregates if a.expr.has(b.symbol)}
    aggregates = [a for a in aggregates if a.symbol in needed]
    agg_syms = [a.symbol for a in aggregates]
    levels = _levels(spec, aggregates)
    plans: list[AggregatePlan] = []
    for a in aggregates:
        gathered = (mode == "index" and a.reduce == "sum" and a.expr.has(T)
                    and sp.simplify(a.expr.subs(T, 0)) == 0)
        expr = a.expr.subs(T, 1) if gathered else a.expr
        partials = tuple(merge_powers(sp.piecewise_fold(sp.diff(expr, u))) for u in diff_syms)
        dsums = tuple((sp.Symbol(f"dsum_{a.symbol.name}_{b.name}", real=True), b,
                       sp.piecewise_fold(sp.diff(expr, b)))
                      for b in agg_syms if expr.has(b))
        plans.append(AggregatePlan(a.symbol, a.reduce, expr, levels[a.symbol], gathered,
                                   partials, dsums))
    # Reverse mode over the aggregate graph: a later aggregate's adjoint feeds the earlier
    # ones it reads, so the adjoints are listed (and evaluated) last aggregate first.
    g_row = sp.Symbol("gr_", real=True)
    adjoints: list[tuple[sp.Symbol, sp.Expr]] = []
    for a in reversed(plans):
        total = g_row * sp.diff(loss, a.symbol)
        for b in plans:
            for name, of, _ in b.dsums:
                if of == a.symbol:
                    total += adjoint(b.symbol) * name
        adjoints.append((adjoint(a.symbol), total))
    grads, stored_grads = [], []
    for k in range(len(diff_syms)):
        total = stored = sp.S.Zero
        for a in plans:
            part = a.partials[k]
            if part == 0:
                continue
            adj = adjoint(a.symbol)
            if a.reduce == "logsumexp":
                term = adj * sp.exp(a.expr - a.symbol) * part
                e, scale = stored_exp(a.symbol)
                stored += scale * e * part
                total += term
                continue
            elif a.reduce == "max":
                count = sp.Symbol(f"cnt_{a.symbol.name}", positive=True)
                term = sp.Piecewise((adj * part / count, sp.Eq(a.expr, a.symbol)), (0, True))
            elif a.gathered:
                term = sp.Piecewise((adj * part, sp.Eq(J_, TGT_)), (0, True))
            else:
                term = adj * part
            total += term
            stored += term
        grads.append(merge_powers(total))
        stored_grads.append(merge_powers(stored))
    target_grads: tuple[sp.Expr, ...] = ()
    loop_grads: tuple[sp.Expr, ...] = ()
    if mode == "index":
        plans, target_grads = _relative(plans, adjoints, stored_grads, T)
        if target_grads:
            loop_grads = tuple(_without_target_terms(g) for g in stored_grads)
    return RowPlan(mode, tuple(plans), loss, mean_weight, tuple(adjoints), tuple(grads),
                   tuple(stored_grads), target_grads, loop_grads)


def _relative(plans: list[AggregatePlan], adjoints: list[tuple[sp.Symbol, sp.Expr]],
              stored_grads: list[sp.Expr], target: sp.Symbol
              ) -> tuple[list[AggregatePlan], tuple[sp.Expr, ...]]:
    """Where the target class dominates a log-sum-exp row (x_t the max, the others far below),
    L - x_t = log(1 + Σ_{j≠t} e_j) and softmax_t - 1 = -Σ_{j≠t} e_j / Σ_j e_j are tiny, and
    computing them as differences of the rounded L or softmax_t cancels to 0. So, with class
    indices, each log-sum-exp L that a gathered aggregate reads sums r_L = Σ_{j≠t} e_j (the
    target left out; s_L = r_L + e_t), and:

    * a gathered aggregate that simplifies when L = a_L(target) + lt_L is computed from
      lt_L = (max - a_L(t)) + (log1p(r_L) if a_L(t) is the max else log(s_L));
    * the gradient at the target, with e_t = s_L - r_L and the adjoints and gathered partials
      substituted, is kept where it vanishes with r_L (the cancelling form): it is then written
      after the row's gradient loop, which drops its target-only terms.
    """
    lses = [a for a in plans if a.reduce == "logsumexp" and not a.gathered]
    gathered = [a for a in plans if a.gathered]
    if not lses or not gathered:
        return plans, ()
    relative: set[sp.Symbol] = set()
    out = []
    for a in plans:
        value = None
        if a.gathered:
            expr = a.expr
            for lse in lses:
                if not expr.has(lse.symbol):
                    continue
                tried = expr.subs(lse.symbol, lse.expr + relative_lse(lse.symbol)[0])
                if not tried.has(lse.symbol) and sp.count_ops(tried) < sp.count_ops(expr):
                    expr = tried
                    relative.add(lse.symbol)
            value = expr if expr != a.expr else None
        out.append(a if value is None else dataclasses.replace(a, value=value))
    # The target's gradient entry, every log-sum-exp read relative to the target.
    subs: dict[sp.Symbol, sp.Expr] = {}
    zero: dict[sp.Symbol, sp.Expr] = {}
    for lse in lses:
        _, r, s = relative_lse(lse.symbol)
        e, scale = stored_exp(lse.symbol)
        subs.update({e: s - r, scale: adjoint(lse.symbol) / s})
        zero[r] = sp.S.Zero
    at_target = {name: expr for a in gathered for name, _, expr in a.dsums}
    target_grads = []
    for g in stored_grads:
        t = g.subs(J_, TGT_).subs(target, 1).subs(subs)
        for _ in range(len(adjoints) + 1):
            t = t.subs(dict(adjoints))
        t = sp.factor(sp.simplify(t.subs(at_target)))
        if t.has(*subs) or sp.simplify(t.subs(zero)) != 0:
            target_grads = []
            break
        target_grads.append(t)
    if target_grads:
        relative |= {lse.symbol for lse in lses}
    out = [dataclasses.replace(a, relative=True) if a.symbol in relative else a for a in out]
    return out, tuple(target_grads)


def _without_target_terms(expr: sp.Expr) -> sp.Expr:
    """The gradient at j != target: the target-only Piecewise terms dropped."""
    def only_target(e: sp.Basic) -> bool:
        return (isinstance(e, sp.Piecewise) and len(e.args) == 2
                and e.args[0].cond == sp.Eq(J_, TGT_) and e.args[1].cond == sp.true)
    return expr.replace(only_target, lambda e: e.args[1].expr)


def _variant_options(spec: RowLoss) -> list[dict[str, bool]]:
    """Flag values, and for each ``zero_variants`` parameter whether it is 0 (then the terms it
    multiplies are dropped symbolically, as torch skips them: no 0·inf)."""
    used = [name for name, s in spec.flag_symbols().items()
            if any(e.has(s) for e in spec.formulas().values())]
    used += [f"{name}_is_zero" for name in spec.zero_variants]
    return [dict(zip(used, values, strict=True))
            for values in itertools.product((True, False), repeat=len(used))]


def _substitutions(spec: RowLoss, options: dict[str, bool]) -> dict[sp.Symbol, sp.Basic]:
    subs: dict[sp.Symbol, sp.Basic] = {}
    for name, value in options.items():
        if name.endswith("_is_zero") and name[:-len("_is_zero")] in spec.zero_variants:
            if value:
                subs[spec.param(name[:-len("_is_zero")]).symbol] = sp.S.Zero
        else:
            subs[spec.flag_symbols()[name]] = sp.true if value else sp.false
    return subs


def _tex_title(text: str) -> str:
    """Step titles are set in \\text{}: escape the underscores of names."""
    return text.replace("_", r"\_")


def _steps(spec: RowLoss, variant: RowVariant) -> list[Step]:
    label = ", ".join(f"{k}={v}" for k, v in variant.options)
    suffix = _tex_title(f" ({label})" if label else "")
    plan = variant.plans[-1]  # the dense form when there is one: t_j as given
    reduce_tex = {"sum": r"\sum_{j=1}^{C}", "max": r"\max_{j}",
                  "logsumexp": r"\log\sum_{j=1}^{C}\exp"}
    defs = []
    for a in spec.aggregates:
        expr = a.expr.subs(_substitutions(spec, dict(variant.options)))
        defs.append(rf"{sp.latex(a.symbol)} = {reduce_tex[a.reduce]} "
                    rf"\left[{sp.latex(explicit_form(expr))}\right]_j")
    steps = [Step(f"Aggregates over the row{suffix}", r",\quad ".join(defs)),
             Step(f"Per-row loss{suffix}", rf"\ell = {sp.latex(explicit_form(plan.loss))}")]
    for a in plan.aggregates:
        d = sp.diff(plan.loss, a.symbol)
        if d != 0:
            steps.append(Step(f"Derivative in ${sp.latex(a.symbol)}${suffix}",
                              rf"\frac{{\partial\ell}}{{\partial {sp.latex(a.symbol)}}} = "
                              rf"{sp.latex(d)}"))
    bars = {adjoint(a.symbol): sp.Symbol(rf"\overline{{{sp.latex(a.symbol)}}}")
            for a in plan.aggregates}
    bars.update({J_: sp.Symbol("j"), TGT_: sp.Symbol(r"\mathrm{target}")})
    upstream = {sp.Symbol("gr_", real=True): sp.Symbol("g")}
    if plan.adjoints:
        steps.append(Step(f"Adjoints, last aggregate first (g: upstream gradient){suffix}",
                          r",\quad ".join(rf"{sp.latex(bars[s])} = "
                                          rf"{sp.latex(e.subs(bars).subs(upstream))}"
                                          for s, e in plan.adjoints)))
    diff_ops = [o for o in spec.operands if o.differentiable]
    for o, grad in zip(diff_ops, plan.grads, strict=True):
        steps.append(Step(f"Chain rule through the aggregates, in {_tex_title(o.name)}{suffix}",
                          rf"\frac{{\partial\ell}}{{\partial {{{sp.latex(o.symbol)}}}_j}} = "
                          rf"{sp.latex(grad.subs(bars))}"))
    return steps


def _reduction_step(spec: RowLoss) -> Step:
    rows = r"N = \text{number of rows}"
    parts = [r"\text{none: } \ell_r", r"\text{sum: } \sum_r \ell_r"]
    if "index" in spec.modes and spec.index_mean_weight is not None:
        ignored = r"[t_r \neq \text{ignore\_index}]\," if spec.ignore_index else ""
        weight = sp.latex(spec.index_mean_weight)
        parts.append(rf"\text{{mean (class indices): }} \frac{{\sum_r {ignored}\ell_r}}"
                     rf"{{\sum_r {ignored}{weight}}}")
        if "dense" in spec.modes:
            parts.append(r"\text{mean (dense targets): } \frac{1}{N}\sum_r \ell_r")
    elif spec.ignore_index:
        parts.append(r"\text{mean: } \frac{\sum_r [t_r\neq\text{ignore\_index}]\,\ell_r}"
                     r"{\sum_r [t_r\neq\text{ignore\_index}]}")
    else:
        parts.append(r"\text{mean: } \frac{1}{N}\sum_r \ell_r")
    return Step("Reduction", r";\quad ".join(parts) + rf",\quad {rows}")


def _derive_row_loss(spec: RowLoss) -> RowLossDerivation:
    proofs: list[Proof] = []
    for expr in spec.formulas().values():
        proofs += [p for p in function_proofs(expr) if p not in proofs]
    variants = []
    steps: list[Step] = []
    for options in _variant_options(spec):
        flags = _substitutions(spec, options)
        aggregates = [Aggregate(a.symbol, sp.piecewise_fold(a.expr.subs(flags)), a.reduce)
                      for a in spec.aggregates]
        loss = sp.piecewise_fold(spec.loss.subs(flags))
        weight = spec.index_mean_weight if spec.index_mean_weight is not None else sp.S.One
        plans = tuple(_plan(spec, aggregates, loss, weight if mode == "index" else sp.S.One,
                            mode) for mode in spec.modes)
        variant = RowVariant(tuple(options.items()), plans)
        variants.append(variant)
        steps += _steps(spec, variant)
        for plan in plans:
            proofs.append(_prove_chain_rule(spec, aggregates, plan, tuple(options.items())))
    steps.append(_reduction_step(spec))
    default = next(v for v in variants
                   if all(_is_default(spec, k, value) for k, value in v.options))
    plan = default.plans[-1]
    return RowLossDerivation(spec, tuple(variants), tuple(steps), tuple(proofs), plan.loss,
                             sp.Tuple(*plan.grads))


def _is_default(spec: RowLoss, option: str, value: bool) -> bool:
    """Whether a variant switch holds for the parameters' defaults (target flags: any)."""
    if option in dict(spec.target_flags):
        return not value
    if option.endswith("_is_zero") and option[:-len("_is_zero")] in spec.zero_variants:
        return value == (spec.param(option[:-len("_is_zero")]).default == 0)
    return spec.param(option).default == value


def _prove_chain_rule(spec: RowLoss, aggregates: list[Aggregate], plan: RowPlan,
                      options: tuple) -> Proof:
    """Expand the aggregates over a row of 3 symbolic elements, differentiate the whole row with
    sp.diff, and compare with what the kernel evaluates (gathers, adjoints, selections), at three
    points (per-row operands 1, -1 and a random value, so each branch of a ±1 target is seen)."""
    worst = max(_chain_rule_error(spec, aggregates, plan, seed, row)
                for seed, row in ((2, 1.0), (3, -1.0), (4, None)))
    if worst > 1e-18:
        raise DerivationError(f"{spec.name}: the chain rule through the aggregates does not "
                              f"match sp.diff of the expanded row ({plan.mode} targets)")
    label = ", ".join(f"{k}={v}" for k, v in options)
    return Proof(rf"\partial\ell/\partial u_j\text{{ via the aggregates}} = \text{{sp.diff of "
                 rf"the expanded row ({plan.mode} targets{', ' + label if label else ''})}}",
                 "exact at three points of a 3-element row, 25 digits")


def _chain_rule_error(spec: RowLoss, aggregates: list[Aggregate], plan: RowPlan, seed: int,
                      row_value: float | None) -> float:
    n, target = 3, 1
    rng = random.Random(seed)
    diff_ops = [o for o in spec.operands if o.differentiable]
    elements = {o.symbol: [sp.Dummy(f"{o.symbol.name}_{k}", real=True) for k in range(n)]
                for o in diff_ops}
    point = {s: sp.Float(rng.uniform(-0.9, 0.9), 30) for syms in elements.values() for s in syms}
    values: dict[sp.Symbol, list[sp.Expr]] = {}
    for o in spec.operands:
        if o.symbol in elements:
            continue
        if o.role == "row":
            values[o.symbol] = [sp.Float(row_value if row_value is not None
                                         else rng.uniform(0.2, 0.9), 30)]
        else:
            values[o.symbol] = [sp.Float(rng.uniform(0.2, 0.9), 30) for _ in range(n)]
    if spec.target_symbol is not None:
        values[spec.target_symbol] = (
            [sp.S.One if j == target else sp.S.Zero for j in range(n)] if plan.mode == "index"
            else [sp.Float(rng.uniform(0.1, 0.9), 30) for _ in range(n)])
    params = {p.symbol: sp.Float(rng.uniform(0.3, 0.7) if p.maximum is not None and
                                 p.maximum <= 1 else rng.uniform(1.2, 2.0), 30)
              for p in spec.numeric_params}

    def at(j: int) -> dict:
        out = {s: v[min(j, len(v) - 1)] for s, v in values.items()}
        out.update({s: elements[s][j] for s in elements})
        return {**out, **params, C: n, J_: j, TGT_: target}

    def reduce(kind: str, terms: list[sp.Expr]) -> sp.Expr:
        if kind == "sum":
            return sp.Add(*terms)
        if kind == "logsumexp":
            return sp.log(sp.Add(*[sp.exp(t) for t in terms]))
        return sp.Max(*terms)

    truth: dict[sp.Symbol, sp.Expr] = {}
    for a in aggregates:
        truth[a.symbol] = reduce(a.reduce, [a.expr.subs(truth).subs(at(j)) for j in range(n)])
    full = plan.loss.subs(truth).subs(at(0))
    # What the kernel computes, at the point.
    env: dict[sp.Symbol, sp.Expr] = {}
    for a in plan.aggregates:
        rows = [target] if a.gathered else range(n)
        terms = [a.expr.subs(env).subs(at(j)).subs(point) for j in rows]
        env[a.symbol] = reduce(a.reduce, terms)
        for name, _, expr in a.dsums:
            env[name] = sp.Add(*[expr.subs(env).subs(at(j)).subs(point) for j in rows])
        if a.reduce == "max":
            env[sp.Symbol(f"cnt_{a.symbol.name}", positive=True)] = sum(
                1 for t in terms if abs(sp.N(t - env[a.symbol])) < 1e-25)
    # The relative log-sum-exp (shift 0): r = Σ_{j≠t} e^{a_j}, s = Σ_j e^{a_j}, lt = L - a_t;
    # a gathered aggregate's value through lt must equal the aggregate.
    relative: dict[sp.Symbol, sp.Expr] = {}
    for a in plan.aggregates:
        if a.relative:
            lt, r, s = relative_lse(a.symbol)
            terms = [sp.exp(a.expr.subs(at(j)).subs(point)) for j in range(n)]
            relative.update({r: sp.Add(*terms) - terms[target], s: sp.Add(*terms),
                             lt: env[a.symbol] - a.expr.subs(at(target)).subs(point)})
    for a in plan.aggregates:
        if a.value is not None:
            got = a.value.subs(env).subs(relative).subs(at(target)).subs(point)
            if abs(complex(sp.N(got - env[a.symbol], 25))) > 1e-18:
                raise DerivationError(f"{spec.name}: {a.symbol} through L - a_L(target) does "
                                      "not match the aggregate")
    env[sp.Symbol("gr_", real=True)] = sp.S.One
    for name, expr in plan.adjoints:
        env[name] = expr.subs(env).subs(at(0)).subs(point)
    worst = 0.0
    for k, o in enumerate(diff_ops):
        for j in range(n):
            exact = sp.diff(full, elements[o.symbol][j]).subs(point)
            kernel = plan.grads[k].subs(env).subs(at(j)).subs(point)
            worst = max(worst, abs(complex(sp.N(exact - kernel, 25))))
            # The fast path's form, with the stored e = exp(a_j - shift) for a shift of 0.
            stored_env = dict(env)
            for a in plan.aggregates:
                if a.reduce == "logsumexp":
                    e, scale = stored_exp(a.symbol)
                    stored_env[e] = sp.exp(a.expr.subs(at(j)).subs(point))
                    stored_env[scale] = env[adjoint(a.symbol)] / sp.exp(env[a.symbol])
            kernel = plan.stored_grads[k].subs(stored_env).subs(at(j)).subs(point)
            worst = max(worst, abs(complex(sp.N(exact - kernel, 25))))
            if plan.target_grads:  # the target's entry through r and s, the others' loop
                form = plan.target_grads[k] if j == target else plan.loop_grads[k]
                kernel = form.subs(stored_env).subs(relative).subs(at(j)).subs(point)
                worst = max(worst, abs(complex(sp.N(exact - kernel, 25))))
    return worst


# ------------------------------------------------------------------------------- template context


def _loads(spec: RowLoss, mode: str, dt: str, index: str, contig: bool = False) -> list[str]:
    """Read element ``index`` of the row: element operands, class values, the target.

    ``contig``: element arrays are (rows, C) with unit stride along the row (the fast path).
    Its indices are unsigned: a signed index that LLVM cannot prove non-negative (a loop from a
    block start) gets Numba's negative-index wraparound, which keeps the loop scalar."""
    lines = []
    u = f"np.uint64({index})" if contig else index
    at = f"[o_, {u}]" if contig else f"[o_, {index}, c_]"
    for o in spec.operands:
        s = o.symbol.name
        if o.role == "element":
            lines.append(f"{s} = {o.name}_arr{at}")
        elif o.role == "class":
            lines.append(f"{s} = {o.name}_arr[{u}]")
    if mode == "dense":
        lines.append(f"{spec.target_symbol.name} = {spec.target_name}_arr{at}")
    elif mode == "index" and index != "tgt_":
        one, zero = print_expr(sp.S.One, dt), print_expr(sp.S.Zero, dt)
        lines.append(f"{spec.target_symbol.name} = {one} if {index} == tgt_ else {zero}")
    return lines


def indent(lines: list[str], by: int) -> str:
    """Indent generated lines, keeping their relative indentation (nested loops)."""
    return "\n".join(" " * by + line if line.strip() else "" for line in lines)


def block(outputs: dict[str, sp.Expr], dt: str) -> tuple[list[str], int]:
    """Printed statements, with the named stability rewrites (log1p, expm1) applied."""
    return _block({k: stabilize(v) for k, v in outputs.items()}, dt)


# The max of a log-sum-exp row (here and in the rowwise kind) runs on integer keys: the float's
# bits with the magnitude bits flipped where the sign is set order like the floats, and an
# integer max vectorizes where a float compare-and-select one does not (LLVM needs no-nans for
# that): 0.06 against 0.18 ns per float32 element in cache. A nan is then skipped or taken as
# the max; either way exp(nan - m) or exp(x - nan) makes the sum nan.
# Per dtype: (integer type, sign shift, magnitude mask, lowest key).
ORDER_KEYS = {"float32": ("np.int32", "np.int32(31)", "np.int32(0x7FFFFFFF)", "np.int32(-2**31)"),
              "float64": ("np.int64", "np.int64(63)", "np.int64(0x7FFFFFFFFFFFFFFF)",
                          "np.int64(-2**63)")}
# Sums over a row run in blocks of this many elements: in the dtype within a block (a reduction
# LLVM vectorizes at the dtype's full width), in float64 across blocks.
ROW_BLOCK = 256


def shifted_exp(dst: str, u: str, m: str, dt: str) -> list[str]:
    """dst = e^(u - m) for u <= m (m the row max, or nan) from the rounded difference d and
    its exact rounding error (TwoSum): e^(d + err) = e^d (1 + err). exp amplifies the rounding
    of d by |d| (33 ULP of a float32 softmax term at d near -80) otherwise."""
    f = "f32" if dt == "float32" else "f64"
    return [f"dd_{dst} = {u} - {m}",
            f"dv_{dst} = dd_{dst} - {u}",
            f"de_{dst} = ({u} - (dd_{dst} - dv_{dst})) + (-{m} - dv_{dst})",
            f"pe_{dst} = _vecmath.exp_nonpos_{f}(dd_{dst})  # d <= 0",
            # err is nan where d is ±inf or nan
            f"{dst} = pe_{dst} if de_{dst} != de_{dst} else pe_{dst} + pe_{dst} * de_{dst}"]


def _block_sums(spec: RowLoss, plan: RowPlan, dt: str, names: list[str], body: list[str],
                extra: list[str]) -> list[str]:
    """The fast path's sum pass: ``body`` computes v_<name> for each sum; ``extra`` after it."""
    cast = f"np.{dt}"
    lines = [f"for b_ in range(0, n_, {ROW_BLOCK}):",
             f"    h_ = min(b_ + {ROW_BLOCK}, n_)"]
    lines += [f"    p_{s} = {cast}(0.0)" for s in names]
    lines.append("    for j_ in range(b_, h_):")
    lines += ["        " + x for x in _loads(spec, plan.mode, dt, "j_", True) + body + extra]
    lines += [f"        p_{s} = _add(p_{s}, v_{s})" for s in names]
    lines += [f"    acc_{s} += np.float64(p_{s})" for s in names]
    return lines


def _row_body(spec: RowLoss, plan: RowPlan, dt: str, grad_names: list[str],
              contig: bool = False) -> str:
    """The per-row kernel body (after the row's target was read and ignore handled).

    ``contig``: the fast path for rows contiguous in memory (class dim last): unit-stride loads,
    the log-sum-exp max on integer keys, sums in dtype blocks, and with one differentiable
    operand and one log-sum-exp, exp(a_j - max) stored in the gradient row by the sum pass and
    read back by the gradient pass instead of computed again.
    """
    cast = f"np.{dt}"
    diff_ops = [o for o in spec.operands if o.differentiable]
    lses = [a for a in plan.aggregates if a.reduce == "logsumexp"]
    store = contig and len(lses) == 1 and len(diff_ops) == 1
    buf = f"out_{diff_ops[0].name}"
    lines: list[str] = [f"C = {cast}(n_)"]
    for o in spec.operands:
        if o.role == "row":
            lines.append(f"{o.symbol.name} = {o.name}_arr[o_, c_]")
    levels = sorted({a.level for a in plan.aggregates})
    for level in levels:
        group = [a for a in plan.aggregates if a.level == level]
        looped = [a for a in group if not a.gathered]
        shifted = [a for a in looped if a.reduce in ("max", "logsumexp")]
        keyed = [a for a in shifted if contig and a.reduce == "logsumexp"]
        compared = [a for a in shifted if a not in keyed]
        if compared:  # first pass: the maxima (nan taken as the max)
            for a in compared:
                lines.append(f"m_{a.symbol.name} = {cast}(-np.inf)")
            body, _ = block({f"v_{a.symbol.name}": a.expr for a in compared}, dt)
            lines.append("for j_ in range(n_):")
            lines += ["    " + x for x in _loads(spec, plan.mode, dt, "j_", contig) + body]
            for a in compared:
                s = a.symbol.name
                lines.append(f"    if v_{s} > m_{s} or v_{s} != v_{s}:")
                lines.append(f"        m_{s} = v_{s}")
        if keyed:
            ity, shift, mask, low = ORDER_KEYS[dt]
            for a in keyed:
                lines.append(f"k_{a.symbol.name} = {low}")
            body, _ = block({f"v_{a.symbol.name}": a.expr for a in keyed}, dt)
            lines.append("for j_ in range(n_):")
            lines += ["    " + x for x in _loads(spec, plan.mode, dt, "j_", True) + body]
            for a in keyed:
                s = a.symbol.name
                # max(), not a conditional: parfor's lookup fails on the latter under prange
                lines += [f"    q_ = {cast}(v_{s}).view({ity})",
                          f"    i_ = {ity}(q_ ^ ((q_ >> {shift}) & {mask}))",
                          f"    k_{s} = max(k_{s}, i_)"]
            for a in keyed:
                s = a.symbol.name
                lines.append(f"m_{s} = {ity}(k_{s} ^ ((k_{s} >> {shift}) & {mask}))"
                             f".view({cast})")
        sums = [a for a in looped if a.reduce in ("sum", "logsumexp")]
        if sums:
            outputs = {}
            names = []
            for a in sums:
                s = a.symbol.name
                lines.append(f"acc_{s} = 0.0  # float64 accumulation")
                names.append(s)
                outputs[f"v_{s}" if a.reduce == "sum" else f"u_{s}"] = a.expr
                for name, _, expr in a.dsums:
                    lines.append(f"acc_{name.name} = 0.0")
                    outputs[f"v_{name.name}"] = expr
                    names.append(name.name)
            body, _ = block(outputs, dt)
            for a in sums:
                if a.reduce == "logsumexp":
                    body += shifted_exp(f"v_{a.symbol.name}", f"u_{a.symbol.name}",
                                         f"m_{a.symbol.name}", dt)
            # A relative log-sum-exp sums the row without its target (the target's e_j is
            # still stored for the gradient pass).
            skip = [f"v_{a.symbol.name} = v_{a.symbol.name} if j_ != tgt_ else {cast}(0.0)"
                    for a in sums if a.relative]
            if not contig:
                lines.append("for j_ in range(n_):")
                lines += ["    " + x for x in _loads(spec, plan.mode, dt, "j_") + body + skip]
                lines += [f"    acc_{s} += v_{s}" for s in names]
            elif store and lses[0] in sums:
                # e_j = exp(a_j - max) goes to the gradient row, which the gradient pass reads.
                lines.append("if want_grad:")
                lines += ["    " + x for x in _block_sums(
                    spec, plan, dt, names, body,
                    [f"{buf}[o_, np.uint64(j_)] = v_{lses[0].symbol.name}", *skip])]
                lines.append("else:")
                lines += ["    " + x for x in _block_sums(spec, plan, dt, names, body, skip)]
            else:
                lines += _block_sums(spec, plan, dt, names, body, skip)
            for a in sums:
                s = a.symbol.name
                if a.reduce == "sum":
                    lines.append(f"{s} = {cast}(acc_{s})")
                elif a.relative:
                    # r = Σ_{j≠t} e_j, s = r + e_t; lt = L - a(target) without cancellation:
                    # log1p(r) where the target is the max (m - a_t = 0), else m - a_t >= 0
                    # plus log(s) >= 0 (inf - inf stays nan, as torch's L - x_t).
                    body_t, _ = block({f"u_{s}": a.expr}, dt)
                    lines += _loads(spec, plan.mode, dt, "tgt_", contig) + body_t
                    lines += shifted_exp(f"et_{s}", f"u_{s}", f"m_{s}", dt)
                    lines += [f"r_{s} = {cast}(acc_{s})",
                              f"s_{s} = {cast}(acc_{s} + np.float64(et_{s}))",
                              f"{s} = m_{s} + math.log(s_{s})",
                              f"lt_{s} = (m_{s} - u_{s}) + (math.log1p(r_{s}) if u_{s} == m_{s} "
                              f"else math.log(s_{s}))"]
                else:
                    lines += [f"s_{s} = {cast}(acc_{s})", f"{s} = m_{s} + math.log(s_{s})"]
                for name, _, _ in a.dsums:
                    lines.append(f"{name.name} = {cast}(acc_{name.name})")
        for a in group:
            if a.reduce == "max":
                lines.append(f"{a.symbol.name} = m_{a.symbol.name}")
        gathered = [a for a in group if a.gathered]
        if gathered:
            outputs = {a.symbol.name: a.expr if a.value is None else a.value for a in gathered}
            for a in gathered:
                outputs.update({name.name: expr for name, _, expr in a.dsums})
            body, _ = block(outputs, dt)
            lines += _loads(spec, plan.mode, dt, "tgt_", contig) + body
    body, _ = block({"l": plan.loss, "mw_": plan.mean_weight}, dt)
    lines += body
    aggs = [a.symbol.name for a in plan.aggregates]
    if plan.loss.has(sp.Piecewise, sp.Max, sp.Min) and aggs:
        nan = " or ".join(f"{s} != {s}" for s in aggs)
        lines.append(f"if {nan}:  # branches compare false on nan: keep it")
        lines.append(f"    l = {cast}(np.nan)")
    lines += ["losses[o_, c_] = l", "total_ += l", "weight_ += mw_",
              "if not want_grad:", "    continue", "gr_ = gs[r_ * g_stride]"]
    body, _ = block({s.name: e for s, e in plan.adjoints}, dt)
    lines += body
    # The softmax as e/Σe (e = exp(a_j - max)) in every path, never exp(a_j - L): L = max +
    # log Σe rounds to max in a row such as [max, max] (float32 max), which gave [1, 1].
    for a in lses:
        e, scale = stored_exp(a.symbol)
        lines.append(f"{scale.name} = {adjoint(a.symbol).name} / s_{a.symbol.name}")
    for a in plan.aggregates:
        if a.reduce == "max" and any(p != 0 for p in a.partials):
            s = a.symbol.name
            body, _ = block({f"v_{s}": a.expr}, dt)
            lines += [f"cnt_{s} = {cast}(0.0)", "for j_ in range(n_):"]
            lines += ["    " + x for x in _loads(spec, plan.mode, dt, "j_", contig) + body]
            lines += [f"    if v_{s} == {s}:", f"        cnt_{s} += {cast}(1.0)"]
    grads = plan.loop_grads or (plan.stored_grads if lses else plan.grads)
    exps: list[str] = []
    if not store and lses:
        body, _ = block({f"u_{a.symbol.name}": a.expr for a in lses}, dt)
        exps = body + [x for a in lses for x in shifted_exp(
            stored_exp(a.symbol)[0].name, f"u_{a.symbol.name}", f"m_{a.symbol.name}", dt)]
    body, _ = block(dict(zip(grad_names, grads, strict=True)), dt)
    lines.append("for j_ in range(n_):")
    loads = _loads(spec, plan.mode, dt, "j_", contig)
    if store:
        loads.append(f"{stored_exp(lses[0].symbol)[0].name} = {buf}[o_, j_]")
    lines += ["    " + x for x in loads + exps + body]
    at = "[o_, j_]" if contig else "[o_, j_, c_]"
    for o, name in zip(diff_ops, grad_names, strict=True):
        lines.append(f"    out_{o.name}{at} = {name}")
    if plan.target_grads:
        # The target's entry, e_t/s - 1 written as -r/s (see _relative): after the loop.
        body, _ = block(dict(zip(grad_names, plan.target_grads, strict=True)), dt)
        lines += _loads(spec, plan.mode, dt, "tgt_", contig) + body
        at = "[o_, tgt_]" if contig else "[o_, tgt_, c_]"
        for o, name in zip(diff_ops, grad_names, strict=True):
            lines.append(f"out_{o.name}{at} = {name}")
    return indent(lines, 8)


def _variant_test(spec: RowLoss, name: str) -> str:
    """The wrapper's Python test for one variant switch."""
    if name.endswith("_is_zero") and name[:-len("_is_zero")] in spec.zero_variants:
        return f"bool({name[:-len('_is_zero')]} == 0)"
    if name in dict(spec.target_flags):
        return f"_all_{name}(t.reshape(-1))"
    return f"bool({name})"


def _mean_fold(spec: RowLoss) -> int | str | None:
    """How the wrapper gets the index mode's 'mean' denominator before the kernel runs: "rows"
    (a weight of 1 per row), the position of the class operand w when the mean weight is w at
    the target (Σ w[target]), or None (only the kernel's rows know it: scaled afterwards)."""
    if spec.index_mean_weight is None:
        return "rows"
    target = spec.target_symbol
    for a in spec.aggregates:
        if a.symbol != spec.index_mean_weight:
            continue
        for i, o in enumerate(spec.operands):
            if o.role == "class" and target is not None and a.expr == o.symbol * target:
                return i
    return None


def _row_loss_context(d: RowLossDerivation) -> dict:
    spec = d.spec
    diff_ops = [o for o in spec.operands if o.differentiable]
    grad_names = [f"d_{o.name}" for o in diff_ops]
    variants = []
    for v in d.variants:
        bodies = {plan.mode: {dt: _row_body(spec, plan, dt, grad_names) for dt in DTYPES}
                  for plan in v.plans}
        fast = {plan.mode: {dt: _row_body(spec, plan, dt, grad_names, True) for dt in DTYPES}
                for plan in v.plans}
        plan = v.plans[-1]
        variants.append({
            "key": tuple(value for _, value in v.options), "bodies": bodies, "fast": fast,
            "label": ", ".join(f"{k}={val}" for k, val in v.options) or "all",
            "text": {"loss": sstr(plan.loss), "aggregates": [
                f"{a.symbol} = {a.reduce}_j({sstr(a.expr)})"
                + (" (at the target class)" if a.gathered else "") for a in plan.aggregates]},
        })
    flags = [p for p in spec.params if is_flag(p)]
    positional = [o for o in spec.operands if not o.optional]
    if spec.targets != "none":
        positional.insert(spec.target_position, None)  # type: ignore[arg-type]
    reference = next(o for o in spec.operands if o.differentiable)
    return {
        "variants": variants, "modes": list(spec.modes),
        "operands": [{"name": o.name, "role": o.role, "differentiable": o.differentiable,
                      "optional": o.optional, "default": repr(float(o.default)),
                      "doc": o.doc or o.name} for o in spec.operands],
        "positional": [spec.target_name if o is None else o.name for o in positional],
        "keyword_operands": [o.name for o in spec.operands if o.optional],
        "reference": reference.name,
        "tsym": spec.target_symbol.name if spec.target_symbol is not None else "t",
        "target": {"name": spec.target_name, "mode": spec.targets,
                   "doc": spec.target_doc or "targets"},
        "ignore_index": spec.ignore_index,
        "mean_fold": _mean_fold(spec),
        "class_dim": spec.class_dim,
        "flags": [{"name": p.name, "default": repr(p.default), "doc": p.doc or p.name}
                  for p in flags],
        "variant_flags": [name for name, _ in d.variants[0].options],
        "variant_tests": [_variant_test(spec, name) for name, _ in d.variants[0].options],
        "target_flags": [{"name": name, "test": {dt: print_expr(cond, dt) for dt in DTYPES}}
                         for name, cond in spec.target_flags],
        "diff": [o.name for o in diff_ops],
        "params": param_context(spec),
        "constraints": [{"test": print_expr(c, "float64"), "message": m}
                        for c, m in spec.constraints],
        "keywords": [(p.name, repr(p.default)) for p in spec.params],
        "reductions": list(spec.param("reduction").choices),
        "reduction_default": repr(spec.param("reduction").default),
    }


register_kind(Kind(RowLoss, _derive_row_loss, "row_loss.py.j2", _row_loss_context))

__all__ = ["C", "Aggregate", "RowLoss", "RowOperand"]
