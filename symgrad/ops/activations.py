"""Activation specs. Each op is its forward formula and parameters; derivatives are derived.

Piecewise conditions follow PyTorch's tie conventions (../shared/semantics.md §1-§2): the branch
that contains the kink decides its derivative, e.g. relu uses ``x > 0`` so relu'(0) = 0, elu
puts 0 in the exponential branch so elu'(0) = alpha, and relu6/hardtanh put both bounds in the
constant branches so their gradient is 0 there.

Conventions picked where PyTorch has no op or sources disagree (semantics §2b):

* ``heaviside(x, values=1.0)``: 0 below 0, ``values`` at 0 (torch.heaviside's argument; the
  default 1 is the seeds' binary step [x >= 0]), 1 above; gradient 0 everywhere (torch has no
  backward for it). ``sign``: torch.sign, gradient 0. Both give nan for nan (torch.sign gives 0).
* ``threshold(x, threshold=0.0, value=0.0)``: torch requires both; the defaults make it relu,
  whose tie convention it shares (gradient 0 at x == threshold).
* ``swish(x, beta=1.0)``: x·σ(βx) with β learnable (a number or an array broadcast against x).
* ``srelu``: keras-contrib's parametrisation, t_r' = t_left + |t_right|, four learnable
  parameters broadcast against x (keras-contrib makes them per element: shape x.shape[1:]).
  Ties follow the paper's closed outer regions: dy/dx = a_left at x = t_left and a_right at
  x = t_r' (keras-contrib under TF gives 0 and 1 there).
* ``crelu(x, dim=-1)``: concat(relu(x), relu(-x)) along dim, TF's default axis; gradient 0 at 0.
* ``maxout(x, num_units, dim=-1, grouping="strided")``: tfa's strided grouping by default
  (unit i takes channels i, i + num_units, ...); "contiguous" is the x.view(..., num_units, k)
  idiom. A tie sends the gradient to the first maximum, as torch.max(dim) does.
* ±inf in gives the mathematical limit (issue 4), found by the elementwise kind (SymPy's limit,
  confirmed in mpmath) wherever the formula is inf·0 or inf/inf there. Departures from torch,
  which gives nan: softsign(±inf) = ±1, silu(-inf) = mish(-inf) = hardswish(-inf) = 0,
  gelu(-inf) = 0, and the derivatives silu'(+inf) = mish'(+inf) = gelu'(+inf) = 1,
  silu'(-inf) = mish'(-inf) = gelu'(-inf) = 0.
* ``hardsigmoid``/``hardswish``: the exact 1/6. In float32 it prints as float32(1/6), torch's
  constant; torch's float64 backward multiplies by float32(1/6) = 0.1666666716337204 while its
  forward divides by 6, so our float64 gradient is the true 1/6 (3e-8 relative from torch's).
"""

import sympy as sp

from symgrad.functions import logsigmoid as _logsigmoid
from symgrad.functions import sigmoid as _sigmoid
from symgrad.functions import softplus as _softplus
from symgrad.kinds.group_max import GroupReduce
from symgrad.kinds.parametric import Learnable, Parametric
from symgrad.kinds.random_slope import RandomElementwise, UniformNoise
from symgrad.kinds.split import SplitConcat
from symgrad.kinds.variants import ElementwiseVariants
from symgrad.spec import (
    LSE,
    Elementwise,
    LogSumExpRowwise,
    Param,
    TorchRef,
    X,
    register,
)

F = "torch.nn.functional."


def _p(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def _relu(z: sp.Expr) -> sp.Expr:
    return sp.Piecewise((z, z > 0), (0, True))


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
    forward=_relu(X), torch=TorchRef(F + "relu"), latex_name=r"\operatorname{relu}",
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

register(LogSumExpRowwise(
    name="softmin", family="activation", summary="exp(-x_i) / Σ_j exp(-x_j) along dim.",
    forward=sp.exp(-X - LSE), input_sign=-1, torch=TorchRef(F + "softmin"),
    latex_name=r"\operatorname{softmin}",
))

# ------------------------------------------------------------------ clamps, shrinks, steps

register(Elementwise(
    name="relu6", family="activation",
    summary="min(max(x, 0), 6); gradient 0 at both 0 and 6.",
    forward=sp.Piecewise((0, X <= 0), (6, X >= 6), (X, True)),
    torch=TorchRef(F + "relu6"), latex_name=r"\operatorname{relu6}",
))

_min_val, _max_val = _p("min_val"), _p("max_val")
register(Elementwise(
    name="hardtanh", family="activation",
    summary="clamp(x, min_val, max_val); gradient 0 at both bounds.",
    params=(Param("min_val", -1.0, "lower bound"), Param("max_val", 1.0, "upper bound")),
    forward=sp.Piecewise((_min_val, X <= _min_val), (_max_val, X >= _max_val), (X, True)),
    constraints=((_min_val <= _max_val, "min_val cannot be greater than max_val"),),
    torch=TorchRef(F + "hardtanh"), latex_name=r"\operatorname{hardtanh}",
))

register(Elementwise(
    name="hardsigmoid", family="activation",
    summary="min(max(x + 3, 0), 6)/6; gradient 1/6 strictly inside (-3, 3), 0 at ±3.",
    forward=sp.Piecewise((0, X <= -3), (1, X >= 3), (X / 6 + sp.Rational(1, 2), True)),
    torch=TorchRef(F + "hardsigmoid"), latex_name=r"\operatorname{hardsigmoid}",
))

# x times the hardsigmoid gate, as torch computes it; hardswish'(-3) = 0 and hardswish'(3) = 1
# come from the gate's closed outer branches. At x = -inf the formula is -inf·0; the kernels
# return the limit 0 there (torch gives nan: see the module docstring).
register(Elementwise(
    name="hardswish", family="activation",
    summary="x·min(max(x + 3, 0), 6)/6; hardswish'(-3) = 0, hardswish'(3) = 1.",
    forward=X * sp.Piecewise((0, X <= -3), (1, X >= 3), ((X + 3) / 6, True)),
    torch=TorchRef(F + "hardswish"), latex_name=r"\operatorname{hardswish}",
))

_lambd = _p("lambd")
register(Elementwise(
    name="softshrink", family="activation",
    summary="x - lambd above lambd, x + lambd below -lambd, else 0; gradient 0 at ±lambd.",
    params=(Param("lambd", 0.5, "half-width of the zero band", minimum=0.0),),
    forward=sp.Piecewise((X - _lambd, X > _lambd), (X + _lambd, X < -_lambd), (0, True)),
    torch=TorchRef(F + "softshrink"), latex_name=r"\operatorname{softshrink}",
))

register(Elementwise(
    name="hardshrink", family="activation",
    summary="x where |x| > lambd, else 0; gradient 0 at ±lambd.",
    params=(Param("lambd", 0.5, "half-width of the zero band"),),
    forward=sp.Piecewise((X, (X > _lambd) | (X < -_lambd)), (0, True)),
    torch=TorchRef(F + "hardshrink"), latex_name=r"\operatorname{hardshrink}",
))

register(Elementwise(
    name="threshold", family="activation",
    summary="x where x > threshold, else value; gradient 0 at x == threshold.",
    params=(Param("threshold", 0.0, "x must exceed it to pass"),
            Param("value", 0.0, "the output where x <= threshold")),
    forward=sp.Piecewise((X, X > _p("threshold")), (_p("value"), True)),
    torch=TorchRef(F + "threshold"), latex_name=r"\operatorname{threshold}",
))

register(Elementwise(
    name="sign", family="activation", summary="-1, 0 or 1 by the sign of x; gradient 0.",
    forward=sp.Piecewise((1, X > 0), (-1, X < 0), (0, True)),
    torch=TorchRef("torch.sign"), latex_name=r"\operatorname{sign}",
))

register(Elementwise(
    name="heaviside", family="activation",
    summary="Step: 0 for x < 0, values at 0, 1 for x > 0; gradient 0.",
    params=(Param("values", 1.0, "the output at x == 0"),),
    forward=sp.Piecewise((1, X > 0), (_p("values"), sp.Eq(X, 0)), (0, True)),
    latex_name=r"\operatorname{H}",
))

# ------------------------------------------------------------------ smooth activations

# SELU's constants, to more digits than float64 holds (the printer rounds them per dtype).
SELU_ALPHA = sp.Float("1.6732632423543772848170429916717", 32)
SELU_SCALE = sp.Float("1.0507009873554804934193349852946", 32)
register(Elementwise(
    name="selu", family="activation",
    summary="scale·(x for x > 0, else alpha·(e^x - 1)); selu'(0) = scale·alpha.",
    forward=sp.Piecewise((SELU_SCALE * X, X > 0),
                         (SELU_SCALE * SELU_ALPHA * (sp.exp(X) - 1), True)),
    torch=TorchRef(F + "selu"), latex_name=r"\operatorname{selu}",
))

_alpha = _p("alpha")
register(Elementwise(
    name="celu", family="activation",
    summary="x for x > 0, else alpha·(e^(x/alpha) - 1); celu'(0) = 1.",
    params=(Param("alpha", 1.0, "saturation value for x -> -inf is -alpha (alpha > 0)",
                  minimum=0.0, strict=True),),
    forward=sp.Piecewise((X, X > 0), (_alpha * (sp.exp(X / _alpha) - 1), True)),
    torch=TorchRef(F + "celu"), latex_name=r"\operatorname{celu}",
))

# tanh(u) is exactly ±1 in float32 and float64 once |x| >= 10 (u >= 43), so the outer branches
# are what the formula rounds to there; they also keep its derivative from forming 0·inf when
# x³ overflows (|x| > 1e13 in float32), where torch returns nan.
_u = sp.sqrt(2 / sp.pi) * (X + sp.Float("0.044715") * X**3)
register(ElementwiseVariants(
    name="gelu", family="activation",
    summary="x·Φ(x), Φ the standard normal CDF; approximate='tanh' uses the tanh formula.",
    params=(Param("approximate", "none", "the formula: exact erf, or the tanh approximation",
                  choices=("none", "tanh")),),
    option="approximate",
    variants=(("none", X * (1 + sp.erf(X / sp.sqrt(2))) / 2),
              ("tanh", sp.Piecewise((X, X >= 10), (0, X <= -10),
                                    (X * (1 + sp.tanh(_u)) / 2, True)))),
    torch=TorchRef(F + "gelu"), latex_name=r"\operatorname{gelu}",
))

register(Elementwise(
    name="silu", family="activation", summary="x·σ(x) (swish with beta = 1).",
    forward=X * _sigmoid(X), torch=TorchRef(F + "silu"), latex_name=r"\operatorname{silu}",
))

register(Elementwise(
    name="mish", family="activation", summary="x·tanh(softplus(x)); mish'(0) = 0.6.",
    forward=X * sp.tanh(_softplus(X)), torch=TorchRef(F + "mish"),
    latex_name=r"\operatorname{mish}",
))

register(Elementwise(
    name="softsign", family="activation", summary="x/(1 + |x|).",
    forward=X / (1 + sp.Abs(X)), torch=TorchRef(F + "softsign"),
    latex_name=r"\operatorname{softsign}",
))

register(Elementwise(
    name="logsigmoid", family="activation", summary="log σ(x) = -softplus(-x).",
    forward=_logsigmoid(X), torch=TorchRef(F + "logsigmoid"),
    latex_name=r"\operatorname{logsigmoid}",
))

register(Elementwise(
    name="tanhshrink", family="activation", summary="x - tanh(x).",
    forward=X - sp.tanh(X), torch=TorchRef(F + "tanhshrink"),
    latex_name=r"\operatorname{tanhshrink}",
))

# ------------------------------------------------------------------ learnable parameters

register(Parametric(
    name="prelu", family="activation",
    summary="x for x > 0, else weight·x, weight learnable (shared, or one per channel of dim 1).",
    forward=sp.Piecewise((X, X > 0), (_p("weight") * X, True)),
    learnable=(Learnable("weight", None, "the slope for x <= 0", channel_dim=1),),
    torch=TorchRef(F + "prelu"), latex_name=r"\operatorname{prelu}",
))

register(Parametric(
    name="swish", family="activation", summary="x·σ(beta·x) with beta learnable.",
    forward=X * _sigmoid(_beta * X),
    learnable=(Learnable("beta", 1.0, "the sharpness beta"),),
    latex_name=r"\operatorname{swish}",
))

_t_left, _a_left, _t_right, _a_right = (_p(n) for n in ("t_left", "a_left", "t_right", "a_right"))
_t_right_eff = _t_left + sp.Abs(_t_right)  # keras-contrib: t_right is an offset from t_left
register(Parametric(
    name="srelu", family="activation",
    summary="S-shaped ReLU: slope a_left below t_left, 1 between, a_right above "
            "t_left + |t_right|; all four learnable.",
    forward=sp.Piecewise((_t_left + _a_left * (X - _t_left), X <= _t_left),
                         (_t_right_eff + _a_right * (X - _t_right_eff), X >= _t_right_eff),
                         (X, True)),
    learnable=(Learnable("t_left", None, "the left threshold"),
               Learnable("a_left", None, "the slope below t_left"),
               Learnable("t_right", None, "the right threshold's offset from t_left (|.|)"),
               Learnable("a_right", None, "the slope above the right threshold")),
    latex_name=r"\operatorname{srelu}",
))

# ------------------------------------------------------------------ random, split, grouped

register(RandomElementwise(
    name="rrelu", family="activation",
    summary="x for x > 0, else r·x with r ~ U(lower, upper) per element in training "
            "(r = (lower + upper)/2 in eval).",
    params=(Param("lower", 1 / 8, "the lowest slope"), Param("upper", 1 / 3, "the highest slope")),
    forward=sp.Piecewise((X, X > 0), (_p("r") * X, True)),
    noise=UniformNoise("r", "lower", "upper"),
    torch=TorchRef(F + "rrelu"), latex_name=r"\operatorname{rrelu}",
))

_a, _b = _p("a"), _p("b")
register(SplitConcat(
    name="glu", family="activation",
    summary="a·σ(b), where a and b are the two halves of x along dim.",
    blocks_in=("a", "b"), blocks_out=(_a * _sigmoid(_b),), default_dim=-1,
    torch=TorchRef(F + "glu"), latex_name=r"\operatorname{glu}",
))

register(SplitConcat(
    name="crelu", family="activation",
    summary="concat(relu(x), relu(-x)) along dim: twice the channels.",
    blocks_in=("x",), blocks_out=(_relu(X), _relu(-X)), default_dim=-1,
    latex_name=r"\operatorname{crelu}",
))

register(GroupReduce(
    name="maxout", family="activation",
    summary="The max over each of num_units groups of channels along dim.",
    reducer=sp.Max, default_dim=-1, default_grouping="strided",
    latex_name=r"\operatorname{maxout}",
))
