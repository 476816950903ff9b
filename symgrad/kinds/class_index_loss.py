"""Losses over class logits with class-index (or probability) targets: cross_entropy, nll_loss.

The spec gives the per-class loss f(x_c, L) with L = logsumexp(x). This kind derives the chain
rule through log-sum-exp on an indexed symbolic vector (∂ℓ/∂x_k = a·δ_kt + b·softmax_k, proven
against sp.diff), then states the whole op as a row loss (``symgrad/kinds/row_loss.py``)::

    L = log Σ_j exp(x_j),   A_t = Σ_j w_j t_j f(x_j, L),   A_s = Σ_j w_j f(x_j, L)
    ℓ = (1 - ε)·A_t + (ε / C)·A_s        ('mean' divides by Σ_rows w_t)

which that kind differentiates, proves and prints. With class indices A_t is gathered at the
target (torch reads x_t alone), and ε = 0 is its own variant, so no 0·inf appears.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from symgrad.derive import TI, VX, DerivationError, K, Proof, Step, collapse_delta_sums, indexed_lse
from symgrad.kinds import Kind, register_kind
from symgrad.kinds.row_loss import (
    Aggregate,
    C,
    RowLoss,
    RowLossDerivation,
    RowOperand,
    _derive_row_loss,
    _row_loss_context,
)
from symgrad.spec import LSE, XT, ClassIndexLoss, T, X

W = sp.Symbol("w", real=True)  # the class weight of element j
A_T, A_S, A_W = sp.symbols("A_t A_s A_w", real=True)


@dataclass(frozen=True)
class ClassIndexLossDerivation:
    spec: ClassIndexLoss
    loss: sp.Expr  # in XT and LSE
    coeff_target: sp.Expr  # ∂ℓ/∂x_t (holds only at the target class)
    coeff_softmax: sp.Expr  # ∂ℓ/∂L (multiplies softmax_k, through ∂L/∂x_k = p_k)
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]
    row: RowLossDerivation


def as_row_loss(spec: ClassIndexLoss) -> RowLoss:
    """The same op as a row loss over aggregates."""
    per_class = spec.loss.subs(XT, X)
    aggregates = []
    if spec.loss.has(LSE):
        aggregates.append(Aggregate(LSE, X, "logsumexp"))
    aggregates += [Aggregate(A_T, W * T * per_class), Aggregate(A_W, W * T)]
    loss: sp.Expr = A_T
    zero: tuple[str, ...] = ()
    if spec.smoothing_param is not None:
        eps = spec.param(spec.smoothing_param).symbol
        aggregates.append(Aggregate(A_S, W * per_class))
        loss = (1 - eps) * A_T + eps / C * A_S
        zero = (spec.smoothing_param,)
    return RowLoss(
        name=spec.name, family=spec.family, summary=spec.summary, params=spec.params,
        torch=spec.torch, latex_name=spec.latex_name,
        operands=(RowOperand("input", X, differentiable=True, doc="logits, (C), (N, C) or "
                             "(N, C, d1, ...)"),
                  RowOperand("weight", W, role="class", optional=True,
                             doc="a weight per class, shape (C,)")),
        targets="index_or_dense" if spec.probability_targets else "index", target_symbol=T,
        target_doc=("class indices of shape (), (N) or (N, d1, ...)" + (
            ", or class probabilities of the input's shape" if spec.probability_targets
            else "")),
        ignore_index=True, aggregates=tuple(aggregates), loss=loss, index_mean_weight=A_W,
        zero_variants=zero, class_dim="torch",
    )


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
    if sp.simplify(check) != 0:
        raise DerivationError(f"{spec.name}: chain rule through log-sum-exp does not match")
    row = _derive_row_loss(as_row_loss(spec))
    steps = [
        Step("Definition", rf"\ell = {sp.latex(loss_v)} = "
             rf"-\log \operatorname{{softmax}}(x)_t" if spec.loss == LSE - XT
             else rf"\ell = {sp.latex(loss_v)}"),
        Step("Derivative, as differentiated",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(sp.diff(loss_v, VX[K]))}"),
        Step("Sums over Kronecker deltas collapsed",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(grad_v)}"),
        Step("Simplified, with p = softmax(x)",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(sp.simplify(chain))}"),
    ]
    def per_class(index: str) -> str:
        return rf"\left({sp.latex(spec.loss.subs(XT, sp.Symbol(f'x_{index}')))}\right)"

    eps = r"\varepsilon"
    if spec.smoothing_param is not None:
        steps.append(Step(f"Class weights and label smoothing "
                          f"(${eps}$ = {spec.smoothing_param.replace('_', ' ')})",
                          rf"\ell = (1 - {eps})\, w_t\, {per_class('t')} + "
                          rf"\frac{{{eps}}}{{C}}\sum_c w_c\, {per_class('c')}"))
    else:
        steps.append(Step("Class weights", rf"\ell = w_t\, {per_class('t')}"))
    if spec.probability_targets:
        steps.append(Step("Probability targets (a float target of the input's shape)",
                          rf"\ell = \sum_c w_c\, t'_c\, {per_class('c')},\quad t' = "
                          + (rf"(1 - {eps})\,t + {eps}/C" if spec.smoothing_param else "t")))
    steps += [s for s in row.steps if s.title.startswith(("Adjoints", "Chain rule"))]
    steps.append(Step(
        "Reduction", r"\text{mean: } \frac{\sum_i [t_i \neq \text{ignore}]\,\ell_i}"
        r"{\sum_i [t_i\neq\text{ignore}]\, w_{t_i}}"
        + (r"\text{ (class indices)};\quad \frac{1}{N}\sum_i \ell_i\text{ (probabilities)}"
           if spec.probability_targets else "")
        + r";\quad \text{sum: } \sum_i \ell_i;\quad \text{none: } \ell_i"))
    proofs = (Proof("chain rule through L = logsumexp(x)", "symbolic"), *row.proofs)
    return ClassIndexLossDerivation(spec, spec.loss, coeff_target, coeff_softmax, tuple(steps),
                                    proofs, row)


def _class_index_loss_context(d: ClassIndexLossDerivation) -> dict:
    return _row_loss_context(d.row)


register_kind(Kind(ClassIndexLoss, _derive_class_index_loss, "row_loss.py.j2",
                   _class_index_loss_context))
