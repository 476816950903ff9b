"""Losses over class logits with integer targets (cross_entropy): chain rule through log-sum-exp."""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from symgrad.context import param_context, sstr
from symgrad.derive import TI, VX, DerivationError, K, Proof, Step, collapse_delta_sums, indexed_lse
from symgrad.kinds import Kind, register_kind
from symgrad.printer import DTYPES, print_expr
from symgrad.spec import LSE, XT, ClassIndexLoss


@dataclass(frozen=True)
class ClassIndexLossDerivation:
    spec: ClassIndexLoss
    loss: sp.Expr  # in XT and LSE
    coeff_target: sp.Expr  # ∂ℓ/∂x_t (holds only at the target class)
    coeff_softmax: sp.Expr  # ∂ℓ/∂L (multiplies softmax_k, through ∂L/∂x_k = p_k)
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...] = ()


def _derive_class_index_loss(spec: ClassIndexLoss) -> ClassIndexLossDerivation:
    lse = indexed_lse(1)
    loss_v = spec.loss.subs(XT, VX[TI]).subs(LSE, lse)
    grad_v = collapse_delta_sums(sp.diff(loss_v, VX[K]))
    coeff_target = sp.diff(spec.loss, XT)
    coeff_softmax = sp.diff(spec.loss, LSE)
    p = sp.IndexedBase("p", real=True)
    chain = coeff_target * sp.KroneckerDelta(K, TI) + coeff_softmax * p[K]
    # Prove the chain-rule form against the indexed derivative: substitute p_k = e^{x_k}/Σe^{x_j}.
    check = grad_v - chain.subs(p[K], sp.exp(VX[K]) / lse.args[0])
    proof_method = "symbolic" if sp.simplify(check) == 0 else None
    if proof_method is None:
        raise DerivationError(f"{spec.name}: chain rule through log-sum-exp does not match")
    steps = (
        Step("Definition", rf"\ell = {sp.latex(loss_v)} = "
             rf"-\log \operatorname{{softmax}}(x)TI" if spec.loss == LSE - XT
             else rf"\ell = {sp.latex(loss_v)}"),
        Step("Derivative, as differentiated",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(sp.diff(loss_v, VX[K]))}"),
        Step("Sums over Kronecker deltas collapsed",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(grad_v)}"),
        Step("Simplified, with p = softmax(x)",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(sp.simplify(chain))}"),
        Step("With class weights, ignored targets and the reduction",
             r"\frac{\partial L}{\partial x_{ik}} = g_i\, w_{t_i} [t_i \neq \text{ignore}]\,"
             rf"\left({sp.latex(sp.simplify(chain.subs(TI, sp.Symbol('t_i'))))}\right) / D,"
             r"\quad D = \sum_{i:\,t_i\neq\text{ignore}} w_{t_i}\text{ for mean, else }1"),
    )
    return ClassIndexLossDerivation(spec, spec.loss, coeff_target, coeff_softmax, steps,
                                    (Proof("chain rule through L = logsumexp(x)", "symbolic"),))


# --------------------------------------------------------------------------------------------


def _class_index_loss_context(d: ClassIndexLossDerivation) -> dict:
    exprs: dict[str, dict[str, str]] = {"loss": {}, "a": {}, "b": {}}
    for dt in DTYPES:
        exprs["loss"][dt] = print_expr(d.loss, dt)
        exprs["a"][dt] = print_expr(d.coeff_target, dt)
        exprs["b"][dt] = print_expr(d.coeff_softmax, dt)
    reduction = d.spec.param("reduction")
    text = {"loss": sstr(d.loss.subs({LSE: sp.Symbol("logsumexp(x)")})),
            "grad": f"({sstr(d.coeff_target)})*onehot(t) + ({sstr(d.coeff_softmax)})*softmax(x)"}
    return {"e": exprs, "text": text, "reduction_default": repr(reduction.default),
            "params": param_context(d.spec)}


register_kind(Kind(ClassIndexLoss, _derive_class_index_loss, "class_index_loss.py.j2",
                   _class_index_loss_context))
