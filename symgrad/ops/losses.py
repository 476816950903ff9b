"""Loss specs: the per-element or per-row formula; reductions, gradients and kernels are the kinds'.

Conventions at ties follow torch (``/work/shared/semantics.md`` §1, §7): clamp_min passes the
gradient at its tie (hinge_embedding, margin_ranking, cosine_embedding, triplet), strict hinges
give 0 (multi_margin), |·|'(0) = 0, torch.minimum splits a tie evenly (triplet's swap). Keras
losses use Keras 3's formulas with ε = 1e-7 and return the mean over the last axis per sample
before the reduction; where Keras's JAX backend splits a tie of max/clip 0.5/0.5 we keep torch's
convention instead (documented per spec).
"""

import numpy as np
import sympy as sp

from symgrad.functions import logsigmoid, sigmoid, softplus
from symgrad.kinds.pointwise_loss import Operand, PointwiseLoss, flag
from symgrad.kinds.row_loss import Aggregate, C, RowLoss, RowOperand
from symgrad.spec import (
    LSE,
    XT,
    ClassIndexLoss,
    ElementwiseLoss,
    Param,
    T,
    TensorParam,
    TorchRef,
    X,
    reduction_param,
    register,
)

F = "torch.nn.functional."
W = sp.Symbol("w", real=True)  # an element or class weight
V = sp.Symbol("v", real=True)  # a variance
RATIO, HALF_RATIO = sp.symbols("r h", real=True)  # gaussian_nll_loss's (x - t)/var, half that
X2 = sp.Symbol("x2", real=True)  # a second differentiable input
X3 = sp.Symbol("x3", real=True)  # a third one
Y = sp.Symbol("y", real=True)  # a per-row target (1 or -1)
D = X - T
# torch's `constexpr float EPSILON = 1e-12` (Loss.cpp), as the float32 value it is.
EPS12 = sp.Float(float(np.float32(1e-12)), 30)
KERAS_EPS = sp.Float(1e-7, 30)  # keras.config.epsilon()


def _branches(e: sp.Expr, build) -> sp.Expr:
    """``build(e)`` for each branch of a Piecewise ``e``, so no relational holds a Piecewise:
    SymPy 1.14 rewrites such a relational wrongly (the outer branches are dropped)."""
    e = sp.piecewise_fold(e)
    if isinstance(e, sp.Piecewise):
        return sp.Piecewise(*[(_branches(v, build), c) for v, c in e.args])
    return build(e)


def clamp_min0(e: sp.Expr) -> sp.Expr:
    """max(e, 0) as torch's clamp_min: the gradient passes at the tie e = 0."""
    return _branches(e, lambda v: sp.Piecewise((v, v >= 0), (0, True)))


def relu_strict(e: sp.Expr) -> sp.Expr:
    """max(e, 0) with gradient 0 at the tie (torch's strict hinges; Keras's ties, see above)."""
    return _branches(e, lambda v: sp.Piecewise((v, v > 0), (0, True)))


def clip(e: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr:
    """clip(e, lo, hi) with torch.clamp's gradient: 1 inside and at the bounds."""
    return _branches(e, lambda v: sp.Piecewise((lo, v < lo), (hi, v > hi), (v, True)))


def clip_min(e: sp.Expr, lo: sp.Expr) -> sp.Expr:
    return _branches(e, lambda v: sp.Piecewise((lo, v < lo), (v, True)))


def _input(doc: str = "predictions", name: str = "input") -> Operand:
    return Operand(name, X, differentiable=True, doc=doc)


def _target(doc: str = "targets", **kwargs) -> Operand:
    return Operand("target", T, doc=doc, **kwargs)


def _same_shape_weight() -> Operand:
    return Operand("weight", W, shape="input", optional=True,
                   doc="a weight per element, of the input's shape")


def _reduction(default: str = "mean", extra: tuple[str, ...] = ()) -> Param:
    return Param("reduction", default, "how to reduce the losses",
                 choices=("none", "mean", "sum", *extra))


# ------------------------------------------------------------------------------- regression

register(PointwiseLoss(
    name="mse_loss", family="loss", summary="Mean squared error w·(x - t)^2.",
    params=(reduction_param(),),
    operands=(_input(), _target(), _same_shape_weight()),
    loss=W * D**2, mean_weight="weight",
    torch=TorchRef(F + "mse_loss"), latex_name=r"\operatorname{mse}",
))

register(PointwiseLoss(
    name="l1_loss", family="loss", summary="Mean absolute error w·|x - t| (gradient 0 at x = t).",
    params=(reduction_param(),),
    operands=(_input(), _target(), _same_shape_weight()),
    loss=W * sp.Abs(D), mean_weight="weight",
    torch=TorchRef(F + "l1_loss"),
))

_beta = Param("beta", 1.0, "where the loss turns from quadratic to linear (0: l1_loss)",
              minimum=0.0)
register(PointwiseLoss(
    name="smooth_l1_loss", family="loss",
    summary="Smooth L1: d^2/(2 beta) where |d| < beta, else |d| - beta/2, with d = x - t.",
    params=(reduction_param(), _beta),
    operands=(_input(), _target()),
    loss=sp.Piecewise((D**2 / (2 * _beta.symbol), sp.Abs(D) < _beta.symbol),
                      (sp.Abs(D) - _beta.symbol / 2, True)),
    torch=TorchRef(F + "smooth_l1_loss"),
))

_delta = Param("delta", 1.0, "where the loss turns from quadratic to linear", minimum=0.0,
               strict=True)
register(PointwiseLoss(
    name="huber_loss", family="loss",
    summary="Huber: w·d^2/2 where |d| <= delta, else w·delta·(|d| - delta/2) ('mean' is /numel).",
    params=(reduction_param(), _delta),
    operands=(_input(), _target(), _same_shape_weight()),
    loss=W * sp.Piecewise((D**2 / 2, sp.Abs(D) <= _delta.symbol),
                          (_delta.symbol * (sp.Abs(D) - _delta.symbol / 2), True)),
    torch=TorchRef(F + "huber_loss"),
))

_gauss_full, _GAUSS_FULL = flag("full", False, "add the constant log(2 pi)/2")
_gauss_eps = Param("eps", 1e-6, "var is clamped below at eps (outside the derivative)",
                   minimum=0.0)
register(PointwiseLoss(
    name="gaussian_nll_loss", family="loss",
    summary="Gaussian negative log-likelihood (log var + (x - t)^2 / var) / 2, var differentiable.",
    params=(_gauss_full, _gauss_eps, reduction_param()),
    operands=(_input("means"), _target(),
              Operand("var", V, differentiable=True, shape="homoscedastic", scalar_ok=True,
                      minimum=0.0, load=sp.Max(V, _gauss_eps.symbol),
                      doc="variances (input's shape, one dim short, or one dim of size 1)")),
    loss=(sp.log(V) + D**2 / V) / 2 + sp.Piecewise((sp.log(2 * sp.pi) / 2, _GAUSS_FULL),
                                                   (0, True)),
    # r = (x - t)/var and h = r/2, computed once: ℓ = (x - t)·h + log(var)/2, ∂/∂x = r,
    # ∂/∂var = 1/(2 var) - r·h. (x - t)² overflows for |x - t| > 1.8e19 (float32) where the loss
    # is finite; r·h and (x - t)·h overflow only where the result does (no factor 1/2 after).
    shared=((RATIO, D / V), (HALF_RATIO, D / (2 * V))),
    shared_rules=((D**2 / V**2, 2 * RATIO * HALF_RATIO), (D**2 / V, 2 * D * HALF_RATIO),
                  (D / V, RATIO)),
    torch=TorchRef(F + "gaussian_nll_loss"),
))

_log_input, _LOG_INPUT = flag("log_input", True, "input is log(rate): l = exp(x) - t x")
_poisson_full, _POISSON_FULL = flag("full", False,
                                    "add Stirling's approximation of log(t!) where t > 1")
_poisson_eps = Param("eps", 1e-8, "added to the rate before its log when log_input=False",
                     minimum=0.0)
_stirling = T * sp.log(T) - T + sp.log(2 * sp.pi * T) / 2
register(PointwiseLoss(
    name="poisson_nll_loss", family="loss", summary="Poisson negative log-likelihood.",
    params=(_log_input, _poisson_full, _poisson_eps, reduction_param()),
    operands=(_input("log-rates (rates if log_input=False)"), _target("counts")),
    loss=sp.Piecewise((sp.exp(X) - T * X, _LOG_INPUT),
                      (X - T * sp.log(X + _poisson_eps.symbol), True))
    + sp.Piecewise((_stirling, _POISSON_FULL & (T > 1)), (0, True)),
    torch=TorchRef(F + "poisson_nll_loss"),
))

# ------------------------------------------------------------------------------- binary

register(PointwiseLoss(
    name="binary_cross_entropy", family="loss",
    summary="Binary cross-entropy of probabilities; each log clamped at -100 as torch does.",
    params=(reduction_param(),),
    operands=(Operand("input", X, differentiable=True, minimum=0.0, maximum=1.0,
                      doc="probabilities in [0, 1]"),
              _target("target probabilities in [0, 1]", minimum=0.0, maximum=1.0),
              Operand("weight", W, optional=True, doc="rescales each element's loss")),
    loss=-W * (T * sp.Max(sp.log(X), -100) + (1 - T) * sp.Max(sp.log(1 - X), -100)),
    # torch's backward is the derivative of the unclamped form over max(p(1 - p), 1e-12f).
    grad_of=-W * (T * sp.log(X) + (1 - T) * sp.log(1 - X)), grad_floor=EPS12,
    torch=TorchRef(F + "binary_cross_entropy"), latex_name=r"\operatorname{bce}",
))

_w, _pw = TensorParam("weight", 1.0, "rescales each element's loss"), TensorParam(
    "pos_weight", 1.0, "weight of positive examples, broadcast along the last dim")
register(ElementwiseLoss(
    name="binary_cross_entropy_with_logits", family="loss",
    summary="Sigmoid + binary cross-entropy on logits, computed through log σ.",
    params=(reduction_param(),),
    tensor_params=(_w, _pw),
    # ℓ = -w·[pw·t·log σ(x) + (1 - t)·log σ(-x)], with log σ(-x) = log σ(x) - x.
    loss=_w.symbol * ((1 - T) * X - (1 + (_pw.symbol - 1) * T) * logsigmoid(X)),
    # x < 0: (1 - t)·x and -log σ(x) ≈ -x cancel to -pw·t·x; computed as that one product, so a
    # target outside [0, 1] at |x| near the top of the range does not overflow (1 - t)·x.
    rewrites=("linear_logsigmoid",),
    torch=TorchRef(F + "binary_cross_entropy_with_logits"), latex_name=r"\operatorname{bce}",
))

register(PointwiseLoss(
    name="soft_margin_loss", family="loss",
    summary="Two-class logistic loss log(1 + exp(-t x)), as softplus(-t x): finite where "
            "torch's log1p(exp(.)) overflows.",
    params=(reduction_param(),),
    operands=(_input(), _target("1 or -1")),
    loss=softplus(-T * X),
    torch=TorchRef(F + "soft_margin_loss"),
))

_hinge_margin = Param("margin", 1.0, "margin for targets other than 1")
register(PointwiseLoss(
    name="hinge_embedding_loss", family="loss",
    summary="x where t != -1, plus max(0, margin - x) where t != 1 (other t get both terms).",
    params=(_hinge_margin, reduction_param()),
    operands=(_input(), _target("1 or -1")),
    loss=sp.Piecewise((X, sp.Ne(T, -1)), (0, True))
    + sp.Piecewise((clamp_min0(_hinge_margin.symbol - X), sp.Ne(T, 1)), (0, True)),
    torch=TorchRef(F + "hinge_embedding_loss"),
))

_log_target, _LOG_TARGET = flag("log_target", False, "target is given as log-probabilities")
register(PointwiseLoss(
    name="kl_div", family="loss",
    summary="KL(target || exp(input)) per element, input as log-probabilities; xlogy(0, 0) = 0.",
    params=(_reduction("mean", ("batchmean",)), _log_target),
    operands=(_input("log-probabilities"),
              _target("probabilities (log-probabilities if log_target)")),
    loss=sp.Piecewise((sp.exp(T) * (T - X), _LOG_TARGET),
                      (sp.Piecewise((0, sp.Eq(T, 0)), (T * sp.log(T), True)) - T * X, True)),
    torch=TorchRef(F + "kl_div"),
))

_ranking_margin = Param("margin", 0.0, "margin")
register(PointwiseLoss(
    name="margin_ranking_loss", family="loss",
    summary="max(0, -t (x1 - x2) + margin); both inputs get gradients.",
    params=(_ranking_margin, reduction_param()),
    operands=(_input("first scores", "input1"),
              Operand("input2", X2, differentiable=True, doc="second scores"),
              _target("1 or -1: which input should rank higher")),
    loss=clamp_min0(-T * (X - X2) + _ranking_margin.symbol),
    torch=TorchRef(F + "margin_ranking_loss"),
))

_focal_alpha = Param("alpha", 0.25, "weight of positives in [0, 1]; -1 disables it",
                     minimum=-1.0, maximum=1.0)
_focal_gamma = Param("gamma", 2.0, "focusing exponent", minimum=0.0)
_p = sigmoid(X)
_alpha_t = sp.Piecewise((_focal_alpha.symbol * T + (1 - _focal_alpha.symbol) * (1 - T),
                         _focal_alpha.symbol >= 0), (1, True))
register(PointwiseLoss(
    name="sigmoid_focal_loss", family="loss",
    summary="torchvision's focal loss on logits: alpha_t (1 - p_t)^gamma bce_with_logits.",
    params=(_focal_alpha, _focal_gamma, _reduction("none")),
    # Targets are labels (torchvision: 0 or 1, soft labels between): outside [0, 1] the loss
    # is meaningless and its terms overflow, so they are a ValueError rather than a nan.
    operands=(_input("logits", "inputs"),
              Operand("targets", T, minimum=0.0, maximum=1.0, doc="labels in [0, 1]")),
    # 1 - p_t = 1 - (p t + (1 - p)(1 - t)), written t σ(-x) + (1 - t) σ(x): no cancellation
    # when p saturates (torchvision's form loses all digits, and 0^(γ-1) turns into inf·0).
    loss=_alpha_t * ((1 - T) * X - logsigmoid(X)) * (T * sigmoid(-X) + (1 - T) * _p)
    ** _focal_gamma.symbol,
    constraints=((sp.Or(sp.Eq(_focal_alpha.symbol, -1), _focal_alpha.symbol >= 0),
                  "alpha must be in [0, 1], or -1 to disable it"),),
    rewrites=("linear_logsigmoid",),  # the cross-entropy factor, as in BCE-with-logits
    torch=TorchRef("torchvision.ops.sigmoid_focal_loss"),
))

# ------------------------------------------------------------------------------- multi-class

register(ClassIndexLoss(
    name="cross_entropy", family="loss",
    summary="Softmax cross-entropy from logits, L - x_t: class indices or probabilities, "
            "class weights, ignore_index, label smoothing.",
    params=(reduction_param(), Param("label_smoothing", 0.0, "mass moved from the target to a "
                                     "uniform distribution over the classes", minimum=0.0,
                                     maximum=1.0)),
    loss=LSE - XT, smoothing_param="label_smoothing", probability_targets=True,
    torch=TorchRef(F + "cross_entropy"), latex_name=r"\operatorname{CE}",
))

register(ClassIndexLoss(
    name="nll_loss", family="loss",
    summary="Negative log-likelihood of log-probabilities, -w_t x_t, with ignore_index.",
    params=(reduction_param(),), loss=-XT,
    torch=TorchRef(F + "nll_loss"), latex_name=r"\operatorname{NLL}",
))

_mm_p = Param("p", 1, "1 or 2: the power of the hinge", integer=True)
_mm_margin = Param("margin", 1.0, "margin")
XY, WY, HINGE = sp.symbols("x_y w_y H", real=True)
_mm_z = _mm_margin.symbol - XY + X
register(RowLoss(
    name="multi_margin_loss", family="loss",
    summary="Multi-class hinge: w_y Σ_{j != y} max(0, margin - x_y + x_j)^p / C (0 at the tie).",
    params=(_mm_p, _mm_margin, reduction_param()),
    operands=(RowOperand("input", X, differentiable=True, doc="scores, (N, C) or (C)"),
              RowOperand("weight", W, role="class", optional=True, doc="a weight per class")),
    targets="index", target_symbol=T, target_doc="class indices, (N) or ()",
    aggregates=(Aggregate(XY, T * X), Aggregate(WY, T * W),
                Aggregate(HINGE, (1 - T) * sp.Piecewise((_mm_z**_mm_p.symbol, _mm_z > 0),
                                                        (0, True)))),
    loss=WY * HINGE / C,
    constraints=((sp.Or(sp.Eq(_mm_p.symbol, 1), sp.Eq(_mm_p.symbol, 2)), "p must be 1 or 2"),),
    torch=TorchRef(F + "multi_margin_loss"),
))

SOFT = sp.Symbol("S", real=True)
register(RowLoss(
    name="multilabel_soft_margin_loss", family="loss",
    summary="Logistic loss per class, averaged over the classes (last dim), then reduced.",
    params=(reduction_param(),),
    operands=(RowOperand("input", X, differentiable=True, doc="logits"),
              RowOperand("weight", W, optional=True, doc="weights, broadcast to the input")),
    targets="dense", target_symbol=T, target_doc="labels in [0, 1], the input's shape",
    class_dim="last",
    aggregates=(Aggregate(SOFT, -W * (T * logsigmoid(X) + (1 - T) * logsigmoid(-X))),),
    loss=SOFT / C,
    torch=TorchRef(F + "multilabel_soft_margin_loss"),
))

# ------------------------------------------------------------------------------- embeddings

DOT, NORM1, NORM2 = sp.symbols("P N_1 N_2", real=True)
_cos_margin = Param("margin", 0.0, "margin for dissimilar pairs")
_cos = DOT / sp.sqrt((NORM1 + EPS12) * (NORM2 + EPS12))
register(RowLoss(
    name="cosine_embedding_loss", family="loss",
    summary="1 - cos(x1, x2) for y = 1, max(0, cos - margin) for y = -1; both inputs get "
            "gradients.",
    params=(_cos_margin, reduction_param()),
    operands=(RowOperand("input1", X, differentiable=True, doc="first embeddings, (N, D) or (D)"),
              RowOperand("input2", X2, differentiable=True, doc="second embeddings"),
              RowOperand("target", Y, role="row", doc="1 or -1 per pair, (N) or ()")),
    class_dim="last",
    aggregates=(Aggregate(DOT, X * X2), Aggregate(NORM1, X * X), Aggregate(NORM2, X2 * X2)),
    loss=sp.Piecewise((1 - _cos, sp.Eq(Y, 1)), (clamp_min0(_cos - _cos_margin.symbol),
                                                 sp.Eq(Y, -1)), (0, True)),
    torch=TorchRef(F + "cosine_embedding_loss"),
))

_tri_margin = Param("margin", 1.0, "margin", minimum=0.0, strict=True)
_tri_p = Param("p", 2.0, "degree of the norm", minimum=0.0, strict=True)
_tri_eps = Param("eps", 1e-6, "added to each difference before the norm")
_tri_swap, _SWAP = flag("swap", False, "use min(d(a, n), d(p, n)) as the negative distance")
D_AP, D_AN, D_PN = sp.symbols("D_ap D_an D_pn", real=True)


def _distance(u: sp.Symbol, v: sp.Symbol) -> sp.Expr:
    return sp.Abs(u - v + _tri_eps.symbol) ** _tri_p.symbol


_d_ap, _d_an, _d_pn = (d ** (1 / _tri_p.symbol) for d in (D_AP, D_AN, D_PN))
# torch.min(d_an, d_pn): a tie shares the gradient evenly.
_d_neg = sp.Piecewise((sp.Piecewise((_d_an, _d_an < _d_pn), ((_d_an + _d_pn) / 2,
                                                              sp.Eq(_d_an, _d_pn)),
                                    (_d_pn, True)), _SWAP), (_d_an, True))
register(RowLoss(
    name="triplet_margin_loss", family="loss",
    summary="max(0, margin + d(a, p) - d(a, n)), d(u, v) = ||u - v + eps||_p; all three inputs "
            "get gradients.",
    params=(_tri_margin, _tri_p, _tri_eps, _tri_swap, reduction_param()),
    operands=(RowOperand("anchor", X, differentiable=True, doc="anchors, (N, D) or (D)"),
              RowOperand("positive", X2, differentiable=True, doc="positives"),
              RowOperand("negative", X3, differentiable=True, doc="negatives")),
    class_dim="last",
    aggregates=(Aggregate(D_AP, _distance(X, X2)), Aggregate(D_AN, _distance(X, X3)),
                Aggregate(D_PN, _distance(X2, X3))),
    loss=clamp_min0(_tri_margin.symbol + _d_ap - _d_neg),
    torch=TorchRef(F + "triplet_margin_loss"),
))

# ------------------------------------------------------------------------------- Keras
# keras.losses.<name>(y_true, y_pred): a loss per sample over the last axis (mostly its mean),
# then reduced: 'mean' is Keras's default 'sum_over_batch_size'. ε = keras.config.epsilon().
# At exact ties of max/clip, where Keras's JAX backend splits the gradient 0.5/0.5, we keep
# torch's conventions (0 for a strict hinge, 1 at a clip bound).

AVG = sp.Symbol("S", real=True)  # the row sum that becomes a mean


def _keras(name: str, summary: str, term: sp.Expr, *, loss: sp.Expr | None = None,
           aggregates: tuple[Aggregate, ...] = (), params: tuple[Param, ...] = (),
           targets: str = "dense", target_flags: tuple = ()) -> RowLoss:
    """keras.losses.<name>: y_pred differentiable, y_true dense (or class indices)."""
    return RowLoss(
        name=name, family="loss", summary=f"Keras: {summary}",
        params=(*params, _reduction("mean")),
        operands=(RowOperand("y_pred", X, differentiable=True, doc="predictions"),),
        targets=targets, target_name="y_true", target_symbol=T, target_position=0,
        target_doc=("class indices, the shape of y_pred without its last axis"
                    if targets == "index" else "ground truth, the shape of y_pred"),
        aggregates=aggregates or (Aggregate(AVG, term),), loss=AVG / C if loss is None else loss,
        class_dim="last", target_flags=target_flags,
    )


register(_keras(
    "mean_absolute_percentage_error",
    "100 · mean |(y_true - y_pred) / max(|y_true|, ε)| over the last axis.",
    sp.Abs((T - X) / sp.Max(sp.Abs(T), KERAS_EPS)), loss=100 * AVG / C))

register(_keras(
    "mean_squared_logarithmic_error",
    "mean (log(max(y_pred, ε) + 1) - log(max(y_true, ε) + 1))^2 over the last axis.",
    (sp.log(clip_min(X, KERAS_EPS) + 1) - sp.log(sp.Max(T, KERAS_EPS) + 1)) ** 2))

_BINARY = sp.Symbol("binary_labels")  # every y_true is 0 or 1: Keras maps them to -1, 1
_hinge_labels = sp.Piecewise((2 * T - 1, _BINARY), (T, True))
_binary_test = (("binary_labels", sp.Or(sp.Eq(T, 0), sp.Eq(T, 1))),)
register(_keras(
    "hinge", "mean max(1 - y_true·y_pred, 0); labels in {0, 1} (all of them) become -1, 1.",
    relu_strict(1 - _hinge_labels * X), target_flags=_binary_test))
register(_keras(
    "squared_hinge", "mean max(1 - y_true·y_pred, 0)^2; labels in {0, 1} become -1, 1.",
    relu_strict(1 - _hinge_labels * X) ** 2, target_flags=_binary_test))

POS, NEG = sp.symbols("P_pos M_neg", real=True)
register(_keras(
    "categorical_hinge", "max(max_j (1 - y_true)·y_pred - Σ y_true·y_pred + 1, 0) per sample.",
    sp.S.Zero, aggregates=(Aggregate(POS, T * X), Aggregate(NEG, (1 - T) * X, "max")),
    loss=relu_strict(NEG - POS + 1)))

_from_logits, _FROM_LOGITS = flag("from_logits", False, "y_pred holds logits, not probabilities")
_keras_smoothing = Param("label_smoothing", 0.0, "y_true becomes y_true (1 - ls) + ls / C",
                         minimum=0.0, maximum=1.0)
TOTAL, CCE = sp.symbols("S_pred A_ce", real=True)
_smoothed = T * (1 - _keras_smoothing.symbol) + _keras_smoothing.symbol / C
_log_prob = sp.Piecewise((X - LSE, _FROM_LOGITS),
                         (sp.log(clip(X / TOTAL, KERAS_EPS, 1 - KERAS_EPS)), True))
register(_keras(
    "categorical_crossentropy",
    "-Σ y'·log p over the last axis, p = softmax(y_pred) from logits, else y_pred / Σ y_pred "
    "clipped to [ε, 1 - ε]; y' = y_true (1 - ls) + ls / C.",
    sp.S.Zero, params=(_from_logits, _keras_smoothing),
    aggregates=(Aggregate(LSE, X, "logsumexp"), Aggregate(TOTAL, X),
                Aggregate(CCE, -_smoothed * _log_prob)), loss=CCE))
register(_keras(
    "sparse_categorical_crossentropy",
    "-log p[y_true] with integer y_true; p as in categorical_crossentropy.",
    sp.S.Zero, params=(_from_logits,), targets="index",
    aggregates=(Aggregate(LSE, X, "logsumexp"), Aggregate(TOTAL, X),
                Aggregate(CCE, -T * _log_prob)), loss=CCE))

register(_keras(
    "kl_divergence", "Σ y·log(y / ŷ) over the last axis, both clipped to [ε, 1].",
    clip(T, KERAS_EPS, 1) * sp.log(clip(T, KERAS_EPS, 1) / clip(X, KERAS_EPS, 1)), loss=AVG))

DOT_TP, SQ_P, SQ_T = sp.symbols("P_tp Q_p Q_t", real=True)


def _inv_norm(square_sum: sp.Symbol) -> sp.Expr:
    """min(1/sqrt(Σv²), 1/ε), Keras's l2_normalize factor."""
    return sp.Piecewise((1 / sp.sqrt(square_sum), square_sum > KERAS_EPS**2), (1 / KERAS_EPS, True))


register(_keras(
    "cosine_similarity", "-Σ l2_normalize(y_true)·l2_normalize(y_pred) over the last axis.",
    sp.S.Zero, aggregates=(Aggregate(DOT_TP, T * X), Aggregate(SQ_P, X * X),
                           Aggregate(SQ_T, T * T)),
    loss=-DOT_TP * _inv_norm(SQ_P) * _inv_norm(SQ_T)))

register(_keras(
    "log_cosh", "mean log(cosh(y_pred - y_true)), as d + softplus(-2d) - log 2.",
    (X - T) + softplus(-2 * (X - T)) - sp.log(2)))

register(_keras(
    "poisson", "mean y_pred - y_true·log(y_pred + ε) over the last axis.",
    X - T * sp.log(X + KERAS_EPS)))

_balancing, _BALANCING = flag("apply_class_balancing", False,
                              "weight positives by alpha, negatives by 1 - alpha")
_bf_alpha = Param("alpha", 0.25, "class balance (used with apply_class_balancing)",
                  minimum=0.0, maximum=1.0)
_bf_gamma = Param("gamma", 2.0, "focusing exponent", minimum=0.0)
_bf_smoothing = Param("label_smoothing", 0.0, "y_true becomes y_true (1 - ls) + ls / 2",
                      minimum=0.0, maximum=1.0)
_bf_y = T * (1 - _bf_smoothing.symbol) + _bf_smoothing.symbol / 2
_bf_p = sp.Piecewise((sigmoid(X), _FROM_LOGITS), (X, True))
_bf_clipped = clip(_bf_p, KERAS_EPS, 1 - KERAS_EPS)
_bf_bce = -(_bf_y * sp.log(_bf_clipped) + (1 - _bf_y) * sp.log(1 - _bf_clipped))
_bf_weight = sp.Piecewise((_bf_y * _bf_alpha.symbol + (1 - _bf_y) * (1 - _bf_alpha.symbol),
                           _BALANCING), (1, True))
register(_keras(
    "binary_focal_crossentropy",
    "mean (1 - p_t)^gamma · bce(clip(p)) over the last axis, alpha-weighted if balancing.",
    _bf_weight * (1 - (_bf_y * _bf_p + (1 - _bf_y) * (1 - _bf_p))) ** _bf_gamma.symbol * _bf_bce,
    params=(_balancing, _bf_alpha, _bf_gamma, _from_logits, _bf_smoothing)))
