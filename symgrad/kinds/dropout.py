"""Dropout: y = f(x, keep) with keep ~ Bernoulli(1 - p) drawn from a counter-based hash.

A spec gives the forward as a SymPy expression in ``x``, the mask bit ``keep`` (1 keeps) and
per-call scalars of ``p`` (the scale, alpha dropout's affine constants). The derivation
* differentiates it with SymPy; the derivative must be free of x (it is keep·scale or keep·a), so
  the backward needs neither x nor y, only the seed: it regenerates the mask instead of storing it;
* proves what the spec claims of the output's moments (dropout keeps the mean; alpha dropout keeps
  mean 0 and variance 1 of a standard input), taking the expectation over keep symbolically.

The mask bit of mask element m is ``splitmix64(key + (m + 1)·γ) >> 11 < (1 - p)·2^53`` with
``key = splitmix64(seed)``: a function of (seed, m) only, so any thread count and any pass
(forward, backward, mask output) sees the same mask.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from symgrad.derive import DerivationError, Proof, Step
from symgrad.kinds import Kind, register_kind
from symgrad.kinds.optimizer import ScalarHoister
from symgrad.printer import DTYPES, print_expr
from symgrad.spec import OpSpec, SpecError, X

KEEP = sp.Symbol("keep", nonnegative=True)  # the mask bit as a number: 1 keeps, 0 drops
P = sp.Symbol("p", real=True)  # drop probability
MEAN = sp.Symbol(r"\mathbb{E}[x]", real=True)  # moments of the input, for the proofs
SECOND = sp.Symbol(r"\mathbb{E}[x^2]", nonnegative=True)

MASKS = ("element", "channel")


@dataclass(frozen=True)
class Moment:
    """A claim about E[y^order] over the mask (``order`` 1 or 2), in MEAN, SECOND and p, when the
    input's moments are ``assume`` (e.g. a standard input: MEAN = 0, SECOND = 1)."""

    title: str
    order: int
    equals: sp.Expr
    assume: tuple[tuple[sp.Symbol, float], ...] = ()


@dataclass(frozen=True)
class Dropout(OpSpec):
    """y = forward(x, keep) elementwise, keep ~ Bernoulli(1 - p) per mask element.

    ``mask`` is "element" (one bit per element) or "channel" (one per (N, C), broadcast over the
    rest). For channel masks, an input whose rank is not ``batched_rank`` (when given) has no
    batch dimension and gets one bit per C; ``ranks`` limits the accepted ranks (torch raises on
    others); a channel mask needs its leading (N, C), or C, dimensions to exist.
    """

    forward: sp.Expr = sp.S.Zero
    scalars: tuple[tuple[str, sp.Expr], ...] = ()
    mask: str = "element"
    batched_rank: int | None = None
    ranks: tuple[int, ...] = ()
    training_default: bool = True
    moments: tuple[Moment, ...] = ()

    kind: ClassVar[str] = "dropout"

    def __post_init__(self) -> None:
        if self.family != "dropout":
            raise SpecError(f"op {self.name!r}, field 'family': a Dropout spec has family "
                            f"'dropout', got {self.family!r}. Fix: pass family='dropout'.")
        if self.mask not in MASKS:
            raise SpecError(f"op {self.name!r}, field 'mask': {self.mask!r} is not one of "
                            f"{MASKS}. Fix: use one of them.")
        if [p.name for p in self.params] != ["p"]:
            raise SpecError(f"op {self.name!r}, field 'params': a dropout has exactly one "
                            "parameter, p. Fix: params=(Param('p', 0.5, ..., 0.0, 1.0),).")
        super().__post_init__()

    def allowed_symbols(self) -> set[sp.Symbol]:
        return ({X, KEEP, P} | {sp.Symbol(n, real=True) for n, _ in self.scalars}
                | super().allowed_symbols())

    def formulas(self) -> dict[str, sp.Expr]:
        return {"forward": self.forward, **{f"scalars {n}": e for n, e in self.scalars}}


@dataclass(frozen=True)
class DropoutDerivation:
    spec: Dropout
    forward: sp.Expr  # hoisted: per-call constants as _k symbols
    grad_x: sp.Expr  # dy/dx, hoisted; free of x
    constants: tuple[tuple[sp.Symbol, sp.Expr], ...]  # _k symbol -> expression of the scalars
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]
    backward_needs: str = "the seed only: the mask is regenerated, never stored"


def _expand_scalars(spec: Dropout, expr: sp.Expr) -> sp.Expr:
    """Substitute the named scalars (latest first) so that only x, keep and p remain."""
    for name, value in reversed(spec.scalars):
        expr = expr.subs(sp.Symbol(name, real=True), value)
    return expr


def _moment(spec: Dropout, order: int) -> sp.Expr:
    """E over keep ~ Bernoulli(1 - p) of y^order, y linear in x, in MEAN and SECOND."""
    y = _expand_scalars(spec, spec.forward)
    total = sp.S.Zero
    for keep, prob in ((1, 1 - P), (0, P)):
        branch = sp.expand(y.subs(KEEP, keep) ** order)
        poly = sp.Poly(branch, X)
        moments = {0: sp.S.One, 1: MEAN, 2: SECOND}
        total += prob * sum(c * moments[m[0]] for m, c in zip(poly.monoms(), poly.coeffs(),
                                                              strict=True))
    return total


def _prove_moment(spec: Dropout, claim: Moment, points: int = 20) -> Proof:
    expected = _moment(spec, claim.order).subs(dict(claim.assume))
    target = sp.sympify(claim.equals).subs(dict(claim.assume))
    title = rf"\text{{{claim.title}}}"
    if sp.simplify(expected - target) == 0:
        return Proof(title, "symbolic")
    rng = random.Random(5)
    for _ in range(points):  # SymPy may not simplify nested radicals: check at 40 digits
        point = {P: sp.Float(rng.uniform(0.01, 0.99), 40), MEAN: sp.Float(rng.uniform(-2, 2), 40),
                 SECOND: sp.Float(rng.uniform(0, 4), 40)}
        diff = (expected - target).xreplace(point).evalf(40)
        if abs(complex(diff)) > 1e-30:
            raise DerivationError(f"{spec.name}: {claim.title} is false: off by {diff} at {point}")
    return Proof(title, f"40 digits at {points} random points")


def _derive_dropout(spec: Dropout) -> DropoutDerivation:
    if sp.diff(spec.forward, X, 2) != 0:
        raise DerivationError(f"{spec.name}: the forward is not linear in x")
    grad = sp.diff(spec.forward, X)
    if X in grad.free_symbols:
        raise DerivationError(f"{spec.name}: dy/dx = {grad} depends on x, so the backward would "
                              "need x; the dropout kind regenerates only the mask")
    proofs = [Proof(r"\frac{\partial y}{\partial x} \text{ is free of } x", "symbolic")]
    proofs += [_prove_moment(spec, m) for m in spec.moments]
    if len(proofs) < 2:
        raise DerivationError(f"{spec.name}: state at least one Moment the dropout preserves")

    hoister = ScalarHoister({X, KEEP})
    forward_k, grad_k = hoister(spec.forward), hoister(grad)
    used = forward_k.free_symbols | grad_k.free_symbols
    constants = tuple((s, e) for e, s in hoister.constants.items() if s in used)
    constants += tuple((s, s) for s in sorted(used - {X, KEEP} - {s for s, _ in constants},
                                              key=str))
    expectation = r"\mathbb{E}_{keep}"
    steps = [
        Step("Mask", r"keep \sim \operatorname{Bernoulli}(1 - p)\text{, one bit per "
             + ("element" if spec.mask == "element" else "(N, C) channel")
             + r"; } keep = [\operatorname{splitmix64}(key + (m+1)\gamma) \gg 11 < (1-p) 2^{53}]"),
    ]
    if spec.scalars:
        steps.append(Step("Per-call scalars", r"\begin{aligned}" + r" \\ ".join(
            rf"{sp.latex(sp.Symbol(n))} &= {sp.latex(e)}" for n, e in spec.scalars)
            + r"\end{aligned}"))
    steps += [
        Step("Definition (training)", rf"y = {sp.latex(spec.forward)}"),
        Step("Derivative, as differentiated",
             rf"\frac{{\partial y}}{{\partial x}} = {sp.latex(grad)}"),
        Step("Backward needs only the seed",
             r"\frac{\partial \ell}{\partial x} = g \cdot " + sp.latex(grad)
             + r"\text{, with } keep \text{ regenerated from (seed, index)}"),
        Step("Mean over the mask",
             rf"{expectation}[y] = {sp.latex(sp.simplify(_moment(spec, 1)))}"),
        Step("Eval mode, p = 0", r"y = x\text{ (the input itself)}"),
        Step("p = 1", r"y = x \cdot 0"),
    ]
    return DropoutDerivation(spec, forward_k, grad_k, constants, tuple(steps), tuple(proofs))


def _dropout_context(d: DropoutDerivation) -> dict:
    spec = d.spec
    keep_f = {dt: ("np.float32(1.0)" if dt == "float32" else "1.0") for dt in DTYPES}
    drop_f = {dt: ("np.float32(0.0)" if dt == "float32" else "0.0") for dt in DTYPES}
    return {
        "forward_code": {dt: print_expr(d.forward, dt) for dt in DTYPES},
        "grad_code": {dt: print_expr(d.grad_x, dt) for dt in DTYPES},
        "keep_one": keep_f, "keep_zero": drop_f,
        "scalar_lines": [f"{n} = {print_expr(e, 'float64')}" for n, e in spec.scalars],
        "constants": [{"name": s.name, "code": print_expr(e, "float64")} for s, e in d.constants],
        "constant_args": "".join(f", {s.name}" for s, _ in d.constants),
        "text": {"forward": sp.sstr(spec.forward), "grad": sp.sstr(sp.diff(spec.forward, X)),
                 "scalars": [f"{n} = {sp.sstr(e)}" for n, e in spec.scalars]},
        "p": spec.param("p"),
        "training_default": repr(spec.training_default),
        "mask": spec.mask, "batched_rank": repr(spec.batched_rank), "ranks": repr(spec.ranks),
        "torch_name": spec.torch.function if spec.torch else "",
    }


register_kind(Kind(Dropout, _derive_dropout, "dropout.py.j2", _dropout_context))

__all__ = ["KEEP", "MEAN", "P", "SECOND", "Dropout", "Moment"]
