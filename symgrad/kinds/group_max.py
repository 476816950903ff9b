"""Reductions over groups of channels, e.g. maxout: y_i = max of the channels in group i.

The channels of ``dim`` (C of them) form ``num_units`` groups of k = C / num_units members.
Grouping "strided" (tfa.layers.Maxout) puts channel j·num_units + i in group i; "contiguous"
(the PyTorch idiom x.view(..., num_units, k).max(-1)) puts channel i·k + j there. SymPy's
derivative of Max is a product of Heaviside steps: 1 for the largest member, 0 for the rest;
at a tie the kernels give the whole gradient to the first largest member, as torch.max(dim) does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from symgrad.derive import Proof, Step
from symgrad.kinds import Kind, register_kind
from symgrad.spec import OpSpec, SpecError

GROUPINGS = ("strided", "contiguous")
_REDUCERS = {sp.Max: ">", sp.Min: "<"}  # reducer -> "is the candidate better" comparison


@dataclass(frozen=True)
class GroupReduce(OpSpec):
    """y[..., i, ...] = reducer over the members of channel group i along dim."""

    reducer: type = sp.Max
    default_dim: int = -1
    default_grouping: str = "strided"

    kind: ClassVar[str] = "group_max"

    def __post_init__(self) -> None:
        if self.reducer not in _REDUCERS:
            raise SpecError(f"op {self.name!r}, field 'reducer': {self.reducer!r} is not "
                            "supported. Fix: use sympy.Max or sympy.Min.")
        if self.default_grouping not in GROUPINGS:
            raise SpecError(f"op {self.name!r}, field 'default_grouping': "
                            f"{self.default_grouping!r}. Fix: use one of {GROUPINGS}.")
        if self.params:
            raise SpecError(f"op {self.name!r}, field 'params': this kind takes num_units, "
                            "dim and grouping only. Fix: declare no Params.")
        super().__post_init__()

    def formulas(self) -> dict[str, sp.Expr]:
        return {}

    def signature_params(self) -> list[str]:
        """The wrapper's arguments after x (for `list`)."""
        return ["num_units", f"dim={self.default_dim}",
                f"grouping={self.default_grouping!r}"]


@dataclass(frozen=True)
class GroupDerivation:
    spec: GroupReduce
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        return "x"


def _selection_rule_proof(reducer: type, k: int = 3) -> Proof:
    """SymPy's derivative of reducer(z_1..z_k) is 1 for the selected member, 0 elsewhere."""
    zs = sp.symbols(f"z1:{k + 1}", real=True)
    value = reducer(*zs)
    rng = random.Random(5)
    pick = max if reducer is sp.Max else min
    for _ in range(12):
        point = {z: sp.Rational(rng.randint(-900, 900), 100) for z in zs}
        if len(set(point.values())) < k:
            continue  # ties: the rule there is a convention, checked by the kernel tests
        chosen = pick(zs, key=lambda z: point[z])
        for z in zs:
            got = sp.diff(value, z).subs(point)
            if got != (1 if z == chosen else 0):
                raise SpecError(f"the derivative of {reducer.__name__} is not a selector: {got}")
    return Proof(rf"\frac{{\partial}}{{\partial z_j}} \{reducer.__name__.lower()}_i z_i = "
                 r"[j = \text{selected}]", f"SymPy derivative evaluated at 12 random points, k={k}")


def _derive_group(spec: GroupReduce) -> GroupDerivation:
    zs = sp.symbols("z1:4", real=True)
    value = spec.reducer(*zs)
    name = spec.reducer.__name__.lower()
    steps = (
        Step("Definition", rf"y_i = \{name}_{{j=1}}^{{k}} z_{{ij}},\quad k = C / "
             r"\text{num\_units},\quad z_{ij} = x_{j \cdot \text{num\_units} + i}\text{ "
             r"(strided) or } x_{i k + j}\text{ (contiguous)}"),
        Step("Derivative, as differentiated (k = 3)",
             rf"\frac{{\partial y}}{{\partial z_1}} = {sp.latex(sp.diff(value, zs[0]))}"),
        Step("Kernel evaluates", rf"\frac{{\partial \ell}}{{\partial z_{{ij}}}} = g_i \cdot "
             rf"[j = \operatorname{{arg{name}}}_j z_{{ij}}]\text{{ (the first, at a tie; a nan "
             r"member is selected and propagates)}"),
    )
    return GroupDerivation(spec, steps, (_selection_rule_proof(spec.reducer),))


def _group_context(d: GroupDerivation) -> dict:
    return {"better": _REDUCERS[d.spec.reducer], "default_dim": d.spec.default_dim,
            "default_grouping": repr(d.spec.default_grouping), "groupings": GROUPINGS,
            "reducer": d.spec.reducer.__name__.lower()}


def _signature(spec) -> str:
    return ", ".join(spec.signature_params())


register_kind(Kind(GroupReduce, _derive_group, "group_max.py.j2", _group_context,
                   signature=_signature))
