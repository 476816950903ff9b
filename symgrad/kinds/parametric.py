"""Elementwise ops with learnable parameters: y = f(x, w₁, w₂, ...), e.g. prelu, swish(β), srelu.

Each learnable parameter is an array broadcast against x (or a Python number). SymPy derives
∂y/∂x and ∂y/∂w for every parameter; the backward kernel evaluates them per element and reduces
each parameter's gradient over the elements that share its value, in one pass.

Broadcasting: a parameter lines up with x's trailing dims as in NumPy (``channel_dim=None``), or
a 1-D parameter of size C lines up with x's dim ``channel_dim`` (torch's prelu: C = x.shape[1]).
The wrapper views x as (outer, M, inner) where every parameter varies only along M.
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

# Locals of the generated kernels a parameter name must not shadow (they all start with "_"
# otherwise, and parameter names cannot).
_KERNEL_NAMES = RESERVED_NAMES | {"numbers", "outer", "inner", "size"}


@dataclass(frozen=True)
class Learnable:
    """A learnable parameter: an array (or number) the op reads per element and returns a
    gradient for. ``default=None`` makes it a required argument."""

    name: str
    default: float | None = None
    doc: str = ""
    channel_dim: int | None = None  # a 1-D parameter of size C lines up with this dim of x

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, real=True)


@dataclass(frozen=True)
class Parametric(OpSpec):
    """y = forward(x, learnable..., params...) per element; backward returns the gradients of x
    and of every learnable parameter, reduced to that parameter's shape."""

    forward: sp.Expr = sp.S.Zero
    learnable: tuple[Learnable, ...] = ()

    kind: ClassVar[str] = "parametric"
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset({X})

    def __post_init__(self) -> None:
        if not self.learnable:
            raise SpecError(f"op {self.name!r}, field 'learnable': empty. Fix: declare the "
                            "learnable parameters, or make the op an Elementwise spec.")
        taken = {p.name for p in self.params}
        seen_default = False
        for w in self.learnable:
            where = f"op {self.name!r}, field 'learnable'"
            if not w.name.isidentifier() or w.name.startswith("_") or w.name in _KERNEL_NAMES:
                raise SpecError(f"{where}: {w.name!r} is not a usable parameter name. Fix: use "
                                "an identifier that does not start with '_' and is not one of "
                                f"{sorted(_KERNEL_NAMES)}.")
            if w.name in taken:
                raise SpecError(f"{where}: {w.name!r} is declared twice. Fix: rename one.")
            taken.add(w.name)
            if w.default is None and seen_default:
                raise SpecError(f"{where}: required {w.name!r} follows a parameter with a "
                                "default. Fix: declare required parameters first.")
            seen_default |= w.default is not None
            if w.channel_dim is not None and (not isinstance(w.channel_dim, int)
                                              or w.channel_dim < 0):
                raise SpecError(f"{where}: channel_dim of {w.name!r} must be a non-negative "
                                "int or None.")
        super().__post_init__()

    def allowed_symbols(self) -> set[sp.Symbol]:
        return super().allowed_symbols() | {w.symbol for w in self.learnable}

    def formulas(self) -> dict[str, sp.Expr]:
        return {"forward": self.forward}

    def signature_params(self) -> list[str]:
        """The wrapper's arguments after x, as ``name`` or ``name=default`` (for `list`)."""
        return [w.name if w.default is None else f"{w.name}={w.default!r}"
                for w in self.learnable] + [f"{p.name}={p.default!r}" for p in self.params]


@dataclass(frozen=True)
class ParametricDerivation:
    spec: Parametric
    forward: sp.Expr  # kernel forms (library functions kept, stability rewrites applied)
    grad_x: sp.Expr
    grad_params: tuple[sp.Expr, ...]  # ∂y/∂w per learnable, in declaration order
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        return "x"


def _derivative(spec: Parametric, var: sp.Symbol, symbols: list[sp.Symbol],
                proofs: list[Proof]) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """(as differentiated from the definition, simplified, in library functions) for d/d var."""
    differentiated = sp.diff(explicit_form(spec.forward), var)
    in_library = sp.piecewise_fold(sp.diff(spec.forward, var))
    proof = is_zero(explicit_form(in_library) - differentiated, symbols)
    if proof is None:
        raise DerivationError(f"{spec.name}: the library-function form of dy/d{var} does not "
                              "match the derivative of the definition")
    proofs.append(Proof(rf"\frac{{\partial y}}{{\partial {sp.latex(var)}}}\text{{ (library "
                        r"form)} = \text{as differentiated}", proof.method))
    return differentiated, simplify_branches(differentiated), in_library


def _derive_parametric(spec: Parametric) -> ParametricDerivation:
    symbols = [X, *[w.symbol for w in spec.learnable], *[p.symbol for p in spec.numeric_params]]
    proofs = function_proofs(spec.forward)
    steps = [Step("Definition", rf"y = {sp.latex(explicit_form(spec.forward))}")]
    grads = []
    for var in [X, *[w.symbol for w in spec.learnable]]:
        differentiated, simplified, in_library = _derivative(spec, var, symbols, proofs)
        d = rf"\frac{{\partial y}}{{\partial {sp.latex(var)}}}"
        steps += [Step(f"Derivative in {var}, as differentiated", rf"{d} = "
                       rf"{sp.latex(differentiated)}"),
                  Step(f"Derivative in {var}, simplified", rf"{d} = {sp.latex(simplified)}")]
        if in_library != simplified:
            steps.append(Step(f"Derivative in {var}, in library functions",
                              rf"{d} = {sp.latex(in_library)}"))
        grads.append(in_library)
    shared = ", ".join(sp.latex(w.symbol) for w in spec.learnable)
    steps.append(Step("Parameter gradients, reduced over the elements sharing a value",
                      rf"\frac{{\partial \ell}}{{\partial w_j}} = \sum_{{i:\, w(i) = j}} g_i\, "
                      rf"\frac{{\partial y_i}}{{\partial w}},\quad w \in \{{{shared}\}}"))
    forward_k = stabilize(spec.forward)
    grads_k = [stabilize(e) for e in grads]
    steps.append(Step("Kernel evaluates (forward)", rf"y = {sp.latex(forward_k)}"))
    for var, e in zip([X, *[w.symbol for w in spec.learnable]], grads_k, strict=True):
        steps.append(Step(f"Kernel evaluates (backward, {var})",
                          rf"\frac{{\partial \ell}}{{\partial {sp.latex(var)}}} \mathrel{{+}}= g "
                          rf"\cdot \left({sp.latex(e)}\right)"))
    return ParametricDerivation(spec, forward_k, grads_k[0], tuple(grads_k[1:]), tuple(steps),
                                tuple(proofs))


def _parametric_context(d: ParametricDerivation) -> dict:
    learn = [w.name for w in d.spec.learnable]
    guard = needs_nan_guard(d.forward, d.grad_x, *d.grad_params)
    grads = {"gx": G * d.grad_x, **{f"gp{k}": G * e for k, e in enumerate(d.grad_params)}}
    body: dict[str, dict[str, str]] = {"forward": {}, "backward": {}, "forward_backward": {}}
    for dt in DTYPES:
        for part, outputs in (("forward", {"y": d.forward}), ("backward", grads),
                              ("forward_backward", {"y": d.forward, **grads})):
            lines, ops = block(outputs, dt)
            lines = [f"# {part}: {ops} ops", *lines]
            if guard:  # a nan falls through every branch test: keep it nan
                lines += [f"{name} = x if x != x else {name}" for name in outputs]
            body[part][dt] = indent(lines, 12 if part == "forward" else 16)
    text = {"forward": sstr(d.forward), "grad_x": sstr(d.grad_x),
            "grad_params": [{"name": n, "expr": sstr(e)} for n, e in
                            zip(learn, d.grad_params, strict=True)]}
    learnable = [{"name": w.name, "required": w.default is None, "default_repr": repr(w.default),
                  "doc": w.doc or w.name, "channel_dim": repr(w.channel_dim)}
                 for w in d.spec.learnable]
    return {"body": body, "text": text, "params": param_context(d.spec), "learnable": learnable}


def _signature(spec) -> str:
    return ", ".join(spec.signature_params())


register_kind(Kind(Parametric, _derive_parametric, "parametric.py.j2", _parametric_context,
                   signature=_signature))
