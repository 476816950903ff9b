"""Activation specs. Each op is its forward formula and parameters; derivatives are derived.

Piecewise conditions follow PyTorch's tie conventions (../shared/semantics.md §1-§2): the branch
that contains the kink decides its derivative, e.g. relu uses ``x > 0`` so relu'(0) = 0, and elu
puts 0 in the exponential branch so elu'(0) = alpha.
"""

import sympy as sp

from symgrad.functions import sigmoid as _sigmoid
from symgrad.functions import softplus as _softplus
from symgrad.spec import LSE, Elementwise, LogSumExpRowwise, Param, TorchRef, X, register

F = "torch.nn.functional."


def _p(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


register(Elementwise(
    name="sigmoid", family="activation", summary="Logistic sigmoid 1/(1+e^-x).",
    forward=_sigmoid(X), torch=TorchRef("torch.sigmoid"), latex_name=r"\sigma",
))

register(Elementwise(
    name="tanh", family="activation", summary="Hyperbolic tangent.",
    forward=sp.tanh(X), torch=TorchRef("torch.tanh"), latex_name=r"\tanh",
))

register(Elementwise(
    name="relu", family="activation", summary="max(x, 0); relu'(0) = 0.",
    forward=sp.Piecewise((X, X > 0), (0, True)),
    torch=TorchRef(F + "relu"), latex_name=r"\operatorname{relu}",
))

register(Elementwise(
    name="leaky_relu", family="activation",
    summary="x for x > 0, else negative_slope·x; the slope holds at 0.",
    params=(Param("negative_slope", 0.01, "slope for x <= 0"),),
    forward=sp.Piecewise((X, X > 0), (_p("negative_slope") * X, True)),
    torch=TorchRef(F + "leaky_relu"), latex_name=r"\operatorname{leaky\_relu}",
))

register(Elementwise(
    name="elu", family="activation",
    summary="x for x > 0, else alpha·(e^x - 1); elu'(0) = alpha.",
    params=(Param("alpha", 1.0, "saturation value for x -> -inf is -alpha", minimum=0.0),),
    forward=sp.Piecewise((X, X > 0), (_p("alpha") * (sp.exp(X) - 1), True)),
    torch=TorchRef(F + "elu"), latex_name=r"\operatorname{elu}",
))

_beta, _threshold = _p("beta"), _p("threshold")
register(Elementwise(
    name="softplus", family="activation",
    summary="log(1 + e^(beta·x))/beta, linear once beta·x > threshold.",
    params=(
        Param("beta", 1.0, "sharpness", minimum=0.0, strict=True),
        Param("threshold", 20.0, "beta·x above which the op is the identity"),
    ),
    forward=sp.Piecewise((X, _beta * X > _threshold), (_softplus(_beta * X) / _beta, True)),
    torch=TorchRef(F + "softplus"), latex_name=r"\operatorname{softplus}",
))

register(LogSumExpRowwise(
    name="softmax", family="activation", summary="exp(x_i) / Σ_j exp(x_j) along dim.",
    forward=sp.exp(X - LSE), torch=TorchRef(F + "softmax"), latex_name=r"\operatorname{softmax}",
))

register(LogSumExpRowwise(
    name="log_softmax", family="activation", summary="x_i - log Σ_j exp(x_j) along dim.",
    forward=X - LSE, torch=TorchRef(F + "log_softmax"),
    latex_name=r"\operatorname{log\_softmax}",
))
