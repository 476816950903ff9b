"""Ops that cut x into equal blocks along ``dim`` and concatenate formula blocks: glu, crelu.

Along ``dim`` the input is the concatenation of the blocks named in ``blocks_in`` (glu: a, b;
crelu: just x); the output is the concatenation of the ``blocks_out`` formulas, each evaluated
elementwise on the input blocks at the same position. SymPy differentiates every output block
by every input block; backward is the vector-Jacobian product Σ_j g_j ∂y_j/∂x_k per position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from symgrad.context import block, indent, needs_nan_guard, sstr
from symgrad.derive import (
    DerivationError,
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
from symgrad.spec import RESERVED_NAMES, OpSpec, SpecError


def _symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


@dataclass(frozen=True)
class SplitConcat(OpSpec):
    """y = concat(f_1(a, b, ...), f_2(a, b, ...), ...) along dim, where x = concat(a, b, ...)."""

    blocks_in: tuple[str, ...] = ("x",)
    blocks_out: tuple[sp.Expr, ...] = ()
    default_dim: int = -1

    kind: ClassVar[str] = "split"

    def __post_init__(self) -> None:
        where = f"op {self.name!r}, field 'blocks_in'"
        if not self.blocks_in or len(set(self.blocks_in)) != len(self.blocks_in):
            raise SpecError(f"{where}: {self.blocks_in!r} must name one or more distinct blocks."
                            " Fix: e.g. ('a', 'b') for two halves.")
        for name in self.blocks_in:
            if not name.isidentifier() or name.startswith("_") or (
                    name in RESERVED_NAMES and name != "x"):
                raise SpecError(f"{where}: {name!r} is not a usable block name. Fix: use an "
                                "identifier not starting with '_' and not reserved.")
        if not self.blocks_out:
            raise SpecError(f"op {self.name!r}, field 'blocks_out': empty. Fix: give the "
                            "formula of every output block.")
        if self.params:
            raise SpecError(f"op {self.name!r}, field 'params': this kind takes no Params yet. "
                            "Fix: write constants into the formulas.")
        super().__post_init__()

    @property
    def inputs(self) -> list[sp.Symbol]:
        return [_symbol(n) for n in self.blocks_in]

    def allowed_symbols(self) -> set[sp.Symbol]:
        return super().allowed_symbols() | set(self.inputs)

    def formulas(self) -> dict[str, sp.Expr]:
        return {f"blocks_out[{j}]": e for j, e in enumerate(self.blocks_out)}

    def signature_params(self) -> list[str]:
        """The wrapper's arguments after x (for `list`)."""
        return [f"dim={self.default_dim}"]


@dataclass(frozen=True)
class SplitDerivation:
    spec: SplitConcat
    outputs: tuple[sp.Expr, ...]  # kernel forms of the output blocks
    jacobian: tuple[tuple[sp.Expr, ...], ...]  # [j][k] = ∂y_j/∂x_k, kernel forms
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        return "x"


def _derive_split(spec: SplitConcat) -> SplitDerivation:
    inputs = spec.inputs
    proofs: list[Proof] = []
    for e in spec.blocks_out:
        proofs += [p for p in function_proofs(e) if p not in proofs]
    jac = []
    for j, out in enumerate(spec.blocks_out):
        row = []
        for var in inputs:
            grad = sp.piecewise_fold(sp.diff(out, var))
            proof = is_zero(explicit_form(grad) - sp.diff(explicit_form(out), var), inputs)
            if proof is None:
                raise DerivationError(f"{spec.name}: library form of dy_{j}/d{var} is wrong")
            proofs.append(Proof(rf"\frac{{\partial y_{{{j + 1}}}}}{{\partial {sp.latex(var)}}}"
                                r"\text{ (library form)} = \text{as differentiated}",
                                proof.method))
            row.append(grad)
        jac.append(row)
    y_tex = r",\ ".join(rf"y_{{{j + 1}}} = {sp.latex(explicit_form(e))}"
                        for j, e in enumerate(spec.blocks_out))
    parts_in = "; ".join(sp.latex(v) for v in inputs)
    parts_out = "; ".join(f"y_{{{j + 1}}}" for j in range(len(spec.blocks_out)))
    steps = [Step("Definition", rf"x = \left[{parts_in}\right]\text{{ along dim}},\quad "
                  rf"y = \left[{parts_out}\right],\quad {y_tex}")]
    for j, row in enumerate(jac):
        for var, grad in zip(inputs, row, strict=True):
            steps.append(Step(f"Block derivative dy{j + 1}/d{var}",
                              rf"\frac{{\partial y_{{{j + 1}}}}}{{\partial {sp.latex(var)}}} = "
                              rf"{sp.latex(simplify_branches(grad))}"))
    vjp = r",\quad ".join(
        rf"\frac{{\partial \ell}}{{\partial {sp.latex(var)}}} = " + " + ".join(
            rf"g_{{{j + 1}}} \frac{{\partial y_{{{j + 1}}}}}{{\partial {sp.latex(var)}}}"
            for j in range(len(jac)) if jac[j][k] != 0)
        for k, var in enumerate(inputs))
    steps.append(Step("Vector-Jacobian product, per position", vjp))
    outputs = tuple(stabilize(e) for e in spec.blocks_out)
    jacobian = tuple(tuple(stabilize(e) for e in row) for row in jac)
    steps.append(Step("Kernel evaluates (forward)", r",\ ".join(
        rf"y_{{{j + 1}}} = {sp.latex(e)}" for j, e in enumerate(outputs))))
    return SplitDerivation(spec, outputs, jacobian, tuple(steps), tuple(proofs))


def _split_context(d: SplitDerivation) -> dict:
    n_in, n_out = len(d.spec.blocks_in), len(d.outputs)
    ups = [_symbol(f"_g{j}") for j in range(n_out)]
    vjp = {f"_gx{k}": sum((ups[j] * d.jacobian[j][k] for j in range(n_out)), sp.S.Zero)
           for k in range(n_in)}
    values = {f"_y{j}": e for j, e in enumerate(d.outputs)}
    guard = needs_nan_guard(*d.outputs, *vjp.values())
    names = d.spec.blocks_in
    nan_test = " or ".join(f"{n} != {n}" for n in names)
    body: dict[str, dict[str, str]] = {"forward": {}, "backward": {}, "forward_backward": {}}
    for dt in DTYPES:
        for part, outputs in (("forward", values), ("backward", vjp),
                              ("forward_backward", {**values, **vjp})):
            lines, ops = block(outputs, dt)
            lines = [f"# {part}: {ops} ops", *lines]
            if guard:  # a nan falls through every branch test: keep it nan
                lines += [f"_bad = {nan_test}"] + [
                    f"{name} = np.{dt}(np.nan) if _bad else {name}" for name in outputs]
            body[part][dt] = indent(lines, 12)
    text = {"outputs": [sstr(e) for e in d.outputs],
            "jacobian": [[sstr(e) for e in row] for row in d.jacobian]}
    return {"body": body, "text": text, "blocks_in": list(names), "n_in": n_in, "n_out": n_out,
            "default_dim": d.spec.default_dim}


def _signature(spec) -> str:
    return ", ".join(spec.signature_params())


register_kind(Kind(SplitConcat, _derive_split, "split.py.j2", _split_context,
                   signature=_signature))
