"""Elementwise losses l(x, t) with optional tensor operands and a reduction."""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from symgrad.context import block, indent, param_context, sstr
from symgrad.derive import (
    DerivationError,
    Proof,
    Step,
    function_proofs,
    is_zero,
    spec_rewrites,
    stabilize,
)
from symgrad.functions import LibraryFunction, canonical_library, explicit_form
from symgrad.kinds import Kind, register_kind
from symgrad.printer import DTYPES
from symgrad.spec import ElementwiseLoss, T, X


@dataclass(frozen=True)
class ElementwiseLossDerivation:
    spec: ElementwiseLoss
    loss: sp.Expr
    grad: sp.Expr  # ∂ℓ/∂x
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]


def _derive_elementwise_loss(spec: ElementwiseLoss) -> ElementwiseLossDerivation:
    definition = explicit_form(spec.loss)
    differentiated = sp.diff(definition, X)
    grad = sp.diff(spec.loss, X)
    symbols = [X, T, *[p.symbol for p in spec.tensor_params]]
    proofs = function_proofs(spec.loss)
    proof = is_zero(explicit_form(grad) - differentiated, symbols)
    if proof is None:
        raise DerivationError(f"{spec.name}: the library-function derivative does not match")
    proofs.append(Proof(r"\partial\ell/\partial x\text{ (library form)} = \text{as differentiated}",
                        proof.method))
    defaults = {p.symbol: sp.nsimplify(p.default) for p in spec.tensor_params}
    plain_lib = sp.factor(canonical_library(grad.subs(defaults)))
    steps = [
        Step("Definition", rf"\ell(x, t) = {sp.latex(definition)}"),
        Step("Derivative, as differentiated", rf"\frac{{\partial\ell}}{{\partial x}} = "
                                              rf"{sp.latex(differentiated)}"),
        Step("In library functions", rf"\frac{{\partial\ell}}{{\partial x}} = {sp.latex(grad)}"),
    ]
    if spec.tensor_params:
        names = ", ".join(f"{p.name} = {p.default:g}" for p in spec.tensor_params)
        steps.append(Step(f"Simplified, with {names}",
                          rf"\frac{{\partial\ell}}{{\partial x}} = {sp.latex(plain_lib)}"))
    else:
        steps.append(Step("Simplified", rf"\frac{{\partial\ell}}{{\partial x}} = "
                                        rf"{sp.latex(plain_lib)}"))
    steps += [
        Step("Reduction", r"\text{none: } \ell_i;\quad \text{sum: } \sum_i \ell_i;\quad "
                          r"\text{mean: } \frac{1}{N}\sum_i \ell_i"),
        Step("Kernel evaluates (backward)", r"\frac{\partial L}{\partial x_i} = g_i \cdot "
             rf"{sp.latex(stabilize(grad, spec_rewrites(spec)))}\cdot c,\quad c = \tfrac{{1}}{{N}}"
             r"\text{ for mean, else } 1"),
    ]
    extra = spec_rewrites(spec)
    return ElementwiseLossDerivation(spec, stabilize(spec.loss, extra), stabilize(grad, extra),
                                     tuple(steps), tuple(proofs))


def _elementwise_loss_context(d: ElementwiseLossDerivation) -> dict:
    spec = d.spec
    grad = canonical_library(d.grad) if d.grad.has(LibraryFunction) else d.grad
    grad = sp.factor(grad) if grad.has(LibraryFunction) else grad
    body = {"loss": {}, "grad": {}, "both": {}}
    ops = {}
    for dt in DTYPES:
        lines, ops["loss"] = block({"l": d.loss}, dt)
        body["loss"][dt] = indent([f"# loss: {ops['loss']} ops", *lines], 0)
        lines, ops["grad"] = block({"dl": grad}, dt)
        body["grad"][dt] = indent([f"# gradient: {ops['grad']} ops", *lines], 0)
        lines, ops["both"] = block({"l": d.loss, "dl": grad}, dt)
        body["both"][dt] = indent([f"# loss and gradient: {ops['both']} ops", *lines], 0)
    tensor = [{"name": p.name, "doc": p.doc or p.name, "default": repr(p.default)}
              for p in spec.tensor_params]
    reduction = spec.param("reduction")
    text = {"loss": sstr(d.loss), "grad": sstr(grad)}
    return {"body": body, "tensor": tensor, "text": text,
            "reduction_default": repr(reduction.default), "params": param_context(spec)}


register_kind(Kind(ElementwiseLoss, _derive_elementwise_loss, "elementwise_loss.py.j2",
                   _elementwise_loss_context))
