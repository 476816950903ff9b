"""Elementwise ops whose formula a string option selects, e.g. gelu(approximate="none"|"tanh").

The spec declares one ``choices`` Param and one forward formula per choice. Each formula is
derived exactly like an ``elementwise`` op (the elementwise kind does the work, so output forms,
stability rewrites and proofs are the same), and the generated wrapper maps the option to the
kernels of its formula once per call: no per-element branch, and nothing here knows an op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from symgrad.derive import Proof, Step, derive
from symgrad.kinds import KINDS, Kind, register_kind
from symgrad.spec import Elementwise, OpSpec, Param, SpecError, X


@dataclass(frozen=True)
class ElementwiseVariants(OpSpec):
    """y = f_v(x) elementwise, where the string Param named ``option`` picks the formula f_v.

    ``variants`` pairs every choice of that Param with its forward expression in X and the
    numeric params, in the order of the choices.
    """

    option: str = ""
    variants: tuple[tuple[str, sp.Expr], ...] = ()

    kind: ClassVar[str] = "variants"
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset({X})

    def __post_init__(self) -> None:
        options = [p for p in self.params if p.name == self.option]
        if not options or not options[0].choices:
            raise SpecError(f"op {self.name!r}, field 'option': {self.option!r} is not a "
                            "choices Param of this op. Fix: declare Param(option, default, "
                            "choices=(...)) and name it in option.")
        names = tuple(v for v, _ in self.variants)
        if names != options[0].choices:
            raise SpecError(f"op {self.name!r}, field 'variants': formulas for {names}, but "
                            f"{self.option} has choices {options[0].choices}. Fix: give one "
                            "formula per choice, in the same order.")
        other_options = [p.name for p in self.params if p.is_option and p.name != self.option]
        if other_options:
            raise SpecError(f"op {self.name!r}, field 'params': string options {other_options} "
                            "select nothing. Fix: declare only the selecting option.")
        super().__post_init__()

    @property
    def selector(self) -> Param:
        return self.param(self.option)

    def formulas(self) -> dict[str, sp.Expr]:
        return {f"variants[{v!r}]": expr for v, expr in self.variants}

    def signature_params(self) -> list[str]:
        """The wrapper's arguments after x (for `list`)."""
        return [f"{p.name}={p.default!r}" for p in self.params]

    def variant_spec(self, choice: str) -> Elementwise:
        """The plain elementwise op this choice selects (same name, numeric params and torch)."""
        expr = dict(self.variants)[choice]
        return Elementwise(name=self.name, family=self.family,
                           summary=f"{self.summary} ({self.option}={choice!r})",
                           params=self.numeric_params, forward=expr, torch=self.torch,
                           latex_name=self.latex_name)


@dataclass(frozen=True)
class VariantsDerivation:
    spec: ElementwiseVariants
    variants: tuple[tuple[str, object], ...]  # (choice, the elementwise derivation)
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        # The wrapper can take y only if every formula has an output form.
        return "y" if all(d.grad_y is not None for _, d in self.variants) else "x"


def _derive_variants(spec: ElementwiseVariants) -> VariantsDerivation:
    derived = tuple((choice, derive(spec.variant_spec(choice))) for choice in spec.selector.choices)
    cases = r" \\ ".join(rf"{sp.latex(expr)} & \text{{{spec.option} = '{choice}'}}"
                         for choice, expr in spec.variants)
    steps = [Step(f"The option {spec.option} selects the formula",
                  rf"y = \begin{{cases}} {cases} \end{{cases}}")]
    proofs: list[Proof] = []
    for choice, d in derived:
        steps += [Step(f"{spec.option}='{choice}': {s.title}", s.latex) for s in d.steps]
        proofs += [Proof(rf"\text{{({spec.option}='{choice}') }}{p.claim}", p.method)
                   for p in d.proofs if p not in proofs]
    return VariantsDerivation(spec, derived, tuple(steps), tuple(proofs))


def _variants_context(d: VariantsDerivation) -> dict:
    inner = KINDS["elementwise"].context
    variants = []
    for code, (choice, derivation) in enumerate(d.variants):
        ctx = inner(derivation)
        # A conditional output form (y only under a parameter condition) is left to x here:
        # the variants wrapper has no per-formula parameter check.
        has_y = derivation.grad_y is not None
        body = ctx["body"] if has_y else {**ctx["body"], "backward_y": None}
        variants.append({"choice": choice, "code": code, "body": body, "text": ctx["text"],
                         "has_y": has_y, "prefer_y": ctx["prefer_y"]})
    params = inner(d.variants[0][1])["params"]
    selector = d.spec.selector
    return {"variants": variants, "params": params, "option": selector.name,
            "option_default": repr(selector.default), "needs_y_ok": d.backward_needs == "y"}


def _signature(spec) -> str:
    return ", ".join(spec.signature_params())


register_kind(Kind(ElementwiseVariants, _derive_variants, "variants.py.j2",
                   _variants_context,
                   signature=_signature))
