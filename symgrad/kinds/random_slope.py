"""Elementwise ops with per-element uniform noise in training, its mean in eval (e.g. rrelu).

The spec's formula uses a noise symbol r ~ U(low, high), where low and high are two of its
Params. In training every element draws its own r from a counter-based hash of (seed, flat
index), so backward recomputes exactly the forward's draws without storing them; in eval r is
replaced by its mean, which SymPy integrates. Both derivatives come from sp.diff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from symgrad.context import block, indent, needs_nan_guard, param_context, sstr
from symgrad.derive import (
    DerivationError,
    G,
    Proof,
    Step,
    function_proofs,
    is_zero,
    simplify_branches,
    stabilize,
)
from symgrad.functions import explicit_form
from symgrad.kinds import Kind, register_kind
from symgrad.printer import DTYPES
from symgrad.spec import RESERVED_NAMES, OpSpec, SpecError, X

# Arguments every op of this kind has besides its Params, and the kernels' hash key.
KIND_ARGUMENTS = ("training", "seed", "key")
STORES = {"forward": ["out[i] = y"], "backward": ["out[i] = gx"],
          "forward_backward": ["out_y[i] = y", "out_g[i] = gx"]}


@dataclass(frozen=True)
class UniformNoise:
    """A noise symbol drawn per element from U(low, high); low/high name two Params."""

    symbol_name: str
    low: str
    high: str

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.symbol_name, real=True)


@dataclass(frozen=True)
class RandomElementwise(OpSpec):
    """y = f(x, r) per element, r ~ U(low, high) in training and r = E[r] in eval."""

    forward: sp.Expr = sp.S.Zero
    noise: UniformNoise = UniformNoise("r", "low", "high")

    kind: ClassVar[str] = "random_elementwise"
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset({X})

    def __post_init__(self) -> None:
        names = {p.name for p in self.numeric_params}
        where = f"op {self.name!r}, field 'noise'"
        for bound in (self.noise.low, self.noise.high):
            if bound not in names:
                raise SpecError(f"{where}: bound {bound!r} is not a numeric Param of the op. "
                                "Fix: declare it in params.")
        symbol = self.noise.symbol_name
        taken = names | set(KIND_ARGUMENTS) | RESERVED_NAMES
        if symbol in taken or not symbol.isidentifier() or symbol.startswith("_"):
            raise SpecError(f"{where}: symbol {self.noise.symbol_name!r} is not a free "
                            "identifier. Fix: pick a name no Param uses, not starting with '_'.")
        clash = names & set(KIND_ARGUMENTS)
        if clash:
            raise SpecError(f"op {self.name!r}, field 'params': {sorted(clash)} are arguments "
                            "of every op of this kind. Fix: rename them.")
        super().__post_init__()

    def allowed_symbols(self) -> set[sp.Symbol]:
        return super().allowed_symbols() | {self.noise.symbol}

    def formulas(self) -> dict[str, sp.Expr]:
        return {"forward": self.forward}

    def signature_params(self) -> list[str]:
        """The wrapper's arguments after x (for `list`)."""
        return [f"{p.name}={p.default!r}" for p in self.params] + ["training=False", "seed=0"]


@dataclass(frozen=True)
class RandomDerivation:
    spec: RandomElementwise
    mean: sp.Expr  # E[r] in the bounds' symbols
    forward_train: sp.Expr  # kernel forms
    forward_eval: sp.Expr
    grad_train: sp.Expr
    grad_eval: sp.Expr
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        return "x"


def _derive_random(spec: RandomElementwise) -> RandomDerivation:
    r, noise = spec.noise.symbol, spec.noise
    low, high = sp.Symbol(noise.low, real=True), sp.Symbol(noise.high, real=True)
    mean = sp.factor(sp.integrate(r, (r, low, high)) / (high - low))
    forward_eval = spec.forward.subs(r, mean)
    symbols = [X, r, *[p.symbol for p in spec.numeric_params]]
    proofs = function_proofs(spec.forward)
    grads = []
    for mode, forward in (("training", spec.forward), ("eval", forward_eval)):
        grad = sp.piecewise_fold(sp.diff(forward, X))
        proof = is_zero(explicit_form(grad) - sp.diff(explicit_form(forward), X), symbols)
        if proof is None:
            raise DerivationError(f"{spec.name}: library-form derivative ({mode}) does not match")
        proofs.append(Proof(rf"\frac{{dy}}{{dx}}\text{{ ({mode}, library form)}} = "
                            r"\text{as differentiated}", proof.method))
        grads.append(grad)
    r_tex, lo_tex, hi_tex = sp.latex(r), sp.latex(low), sp.latex(high)
    steps = (
        Step("Definition", rf"y = {sp.latex(explicit_form(spec.forward))},\quad {r_tex} \sim "
             rf"U({lo_tex}, {hi_tex})\text{{ per element in training}}"),
        Step("Eval: the noise is replaced by its mean",
             rf"E[{r_tex}] = \frac{{1}}{{{hi_tex} - {lo_tex}}}\int_{{{lo_tex}}}^{{{hi_tex}}} "
             rf"{r_tex}\,d{r_tex} = {sp.latex(mean)},\quad y = {sp.latex(forward_eval)}"),
        Step("Derivative in training, as differentiated",
             rf"\frac{{dy}}{{dx}} = {sp.latex(simplify_branches(grads[0]))}"),
        Step("Derivative in eval", rf"\frac{{dy}}{{dx}} = {sp.latex(simplify_branches(grads[1]))}"),
        Step("Noise in the kernels",
             rf"{r_tex}_i = {lo_tex} + ({hi_tex} - {lo_tex})\,u(\text{{seed}}, i),\ u \in [0, 1)"
             r"\text{ a counter-based hash of the flat index: backward redraws forward's } "
             + r_tex),
        Step("Kernel evaluates (training)", rf"y = {sp.latex(stabilize(spec.forward))},\quad "
             rf"\frac{{\partial \ell}}{{\partial x}} = g \cdot \left({sp.latex(grads[0])}\right)"),
    )
    return RandomDerivation(spec, mean, stabilize(spec.forward), stabilize(forward_eval),
                            stabilize(grads[0]), stabilize(grads[1]), steps, tuple(proofs))


def _random_context(d: RandomDerivation) -> dict:
    modes = {"train": (d.forward_train, d.grad_train), "eval": (d.forward_eval, d.grad_eval)}
    noise = d.spec.noise
    body: dict[str, dict[str, dict[str, str]]] = {}
    for mode, (forward, grad) in modes.items():
        guard = needs_nan_guard(forward, grad)
        body[mode] = {"forward": {}, "backward": {}, "forward_backward": {}}
        for dt in DTYPES:
            draw = [f"{noise.symbol_name} = _uniform_{dt}(key, i, {noise.low}, {noise.high})"]
            for part, outputs in (("forward", {"y": forward}), ("backward", {"gx": G * grad}),
                                  ("forward_backward", {"y": forward, "gx": G * grad})):
                lines, ops = block(outputs, dt)
                loads = ["x = xs[i]"] + (["g = gs[i]"] if part != "forward" else [])
                lines = [*loads, *(draw if mode == "train" else []),
                         f"# {part} ({mode}): {ops} ops", *lines]
                if guard:  # a nan falls through every branch test: keep it nan
                    lines += [f"{name} = x if x != x else {name}" for name in outputs]
                lines += STORES[part]
                body[mode][part][dt] = indent(lines)
    text = {"forward": sstr(d.forward_train), "forward_eval": sstr(d.forward_eval),
            "grad_train": sstr(d.grad_train), "grad_eval": sstr(d.grad_eval),
            "mean": sstr(d.mean)}
    return {"body": body, "text": text, "params": param_context(d.spec),
            "noise": {"name": noise.symbol_name, "low": noise.low, "high": noise.high}}


def _signature(spec) -> str:
    return ", ".join(spec.signature_params())


register_kind(Kind(RandomElementwise, _derive_random, "random_elementwise.py.j2",
                   _random_context,
                   signature=_signature))
