"""Loss specs: the per-element (or per-sample) loss formula; reductions are the kind's job."""

from symgrad.functions import logsigmoid
from symgrad.spec import (
    LSE,
    XT,
    ClassIndexLoss,
    ElementwiseLoss,
    T,
    TensorParam,
    TorchRef,
    X,
    reduction_param,
    register,
)

F = "torch.nn.functional."

register(ElementwiseLoss(
    name="mse_loss", family="loss", summary="Mean squared error (x - t)^2.",
    params=(reduction_param(),),
    loss=(X - T) ** 2,
    torch=TorchRef(F + "mse_loss"), latex_name=r"\operatorname{mse}",
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
    torch=TorchRef(F + "binary_cross_entropy_with_logits"), latex_name=r"\operatorname{bce}",
))

register(ClassIndexLoss(
    name="cross_entropy", family="loss",
    summary="Softmax cross-entropy from logits with class-index targets: L - x_t.",
    params=(reduction_param(),),
    loss=LSE - XT,
    torch=TorchRef(F + "cross_entropy"), latex_name=r"\operatorname{CE}",
))
