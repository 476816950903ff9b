"""Optimizer specs: each torch.optim update rule, once, in torch's order of operations.

Every rule is a list of per-element statements over ``param``, ``grad`` and the state buffers,
after per-step scalars (bias corrections). Semantics follow torch.optim's single-tensor path
(see ../shared/semantics.md §6): maximize negates the gradient before weight decay, EMAs of the
gradient use torch's ``lerp``, and eps sits where torch puts it. Each spec cites the textbook form
of its update; the derivation proves the statements equal to it.
"""

from __future__ import annotations

import sympy as sp

from symgrad.kinds.optimizer import (
    GRAD,
    PARAM,
    STEP,
    Flag,
    Optimizer,
    Reference,
    ScalarState,
    StateBuffer,
)
from symgrad.spec import Param, TorchRef, register


def sym(name: str) -> sp.Symbol:
    """A per-element temporary or a named per-step scalar."""
    return sp.Symbol(name, real=True)


def lerp(start: sp.Expr, end: sp.Expr, weight: sp.Expr) -> sp.Expr:
    """torch.lerp as its CPU kernel rounds it: from ``start`` when the weight is small, else from
    ``end``. Both branches equal start + weight·(end - start); which one runs changes rounding."""
    return sp.Piecewise((start + weight * (end - start), weight < sp.Rational(1, 2)),
                        (end - (end - start) * (1 - weight), True))


lr = sym("lr")
beta1, beta2 = sym("beta1"), sym("beta2")
eps, weight_decay = sym("eps"), sym("weight_decay")
maximize_flag = Flag("maximize", False, "minimise -objective: use -grad")
maximize = maximize_flag.symbol
has_decay = sp.Ne(weight_decay, 0)  # torch skips weight decay when it is 0 (0·inf would be nan)

NOTATION = (("param", r"\theta"), ("grad", "g"), ("step", "t"), ("lr", r"\eta"),
            ("beta1", r"\beta_1"), ("beta2", r"\beta_2"), ("eps", r"\epsilon"),
            ("weight_decay", r"\lambda"), ("exp_avg", "m"), ("exp_avg_sq", "v"),
            ("max_exp_avg_sq", r"v^{\max}"), ("bias_correction1", r"b_1"),
            ("bias_correction2", r"b_2"), ("bias_correction2_sqrt", r"\sqrt{b_2}"),
            ("step_size", r"\alpha_t"), ("denom", "D"), ("ratio", "r"),
            ("momentum_buffer", "B"), ("momentum", r"\mu"), ("dampening", r"\tau"),
            ("square_avg", "v"), ("grad_avg", r"\bar g"), ("acc_delta", "u"), ("rho", r"\rho"),
            ("alpha", r"\alpha"), ("exp_inf", "u"), ("sum", "S"), ("clr", r"\eta_t"),
            ("mu", r"\mu_t"), ("mu_next", r"\mu_{t+1}"), ("mu_product", r"\Pi_t"),
            ("mu_product_next", r"\Pi_{t+1}"), ("momentum_decay", r"\psi"),
            ("rho_inf", r"\rho_\infty"), ("rho_t", r"\rho_t"), ("rect", "r_t"))

LR = "learning rate"
WD = Param("weight_decay", 0.0, "L2 penalty added to the gradient", minimum=0.0)
EPS = "added to the denominator for numerical stability"


def _betas(b1: float = 0.9, b2: float = 0.999) -> tuple[Param, Param]:
    return (Param("beta1", b1, "decay of the gradient's running average", 0.0, 1.0),
            Param("beta2", b2, "decay of the squared gradient's running average", 0.0, 1.0))


BETAS_BELOW_ONE = ((beta1 < 1, "betas[0] must be < 1"), (beta2 < 1, "betas[1] must be < 1"))

# Statements most rules start with: maximize, then weight decay (coupled, or decoupled first).
MAXIMIZE = ("grad", sp.Piecewise((-GRAD, maximize), (GRAD, True)))
COUPLED_DECAY = ("grad", sp.Piecewise((GRAD + weight_decay * PARAM, has_decay), (GRAD, True)))


def decoupled_decay(decoupled: sp.Basic) -> tuple[tuple[str, sp.Expr], ...]:
    """AdamW-style decay θ·(1 - lr·λ) first when ``decoupled``, else L2 on the gradient."""
    return (("param", sp.Piecewise((PARAM * (1 - lr * weight_decay), decoupled & has_decay),
                                   (PARAM, True))),
            ("grad", sp.Piecewise((GRAD + weight_decay * PARAM, ~decoupled & has_decay),
                                  (GRAD, True))))


def _torch(name: str) -> TorchRef:
    return TorchRef(f"torch.optim.{name}")


# -- SGD ------------------------------------------------------------------------------------------
momentum, dampening = sym("momentum"), sym("dampening")
nesterov = Flag("nesterov", False, "Nesterov momentum: step along grad + momentum·buffer")
buf = sym("momentum_buffer")
has_momentum = sp.Ne(momentum, 0)
register(Optimizer(
    name="sgd", family="optimizer", class_name="SGD",
    summary="Stochastic gradient descent with momentum, dampening and Nesterov momentum.",
    params=(Param("lr", 1e-3, LR, minimum=0.0),
            Param("momentum", 0.0, "momentum factor", minimum=0.0),
            Param("dampening", 0.0, "dampening of the momentum's new gradient"), WD),
    flags=(nesterov, maximize_flag),
    buffers=(StateBuffer("momentum_buffer", "the velocity; the gradient itself at step 1",
                         exists=has_momentum),),
    requires=((~nesterov.symbol | ((momentum > 0) & sp.Eq(dampening, 0)),
               "Nesterov momentum requires a momentum and zero dampening"),),
    update=(
        MAXIMIZE, COUPLED_DECAY,
        # torch clones the gradient into a new buffer on the first step (no dampening there).
        ("momentum_buffer", sp.Piecewise(
            (sp.Piecewise((GRAD, sp.Eq(STEP, 1)), (momentum * buf + (1 - dampening) * GRAD,
                                                   True)), has_momentum), (buf, True))),
        ("grad", sp.Piecewise((sp.Piecewise((GRAD + momentum * buf, nesterov.symbol), (buf, True)),
                               has_momentum), (GRAD, True))),
        ("param", PARAM - lr * GRAD),
    ),
    references=(
        Reference("plain SGD: theta - lr (g + lambda theta)", "param",
                  PARAM - lr * (GRAD + weight_decay * PARAM), ((momentum, 0),)),
        Reference("heavy ball after step 1: theta - lr (mu B + (1 - tau) g)", "param",
                  PARAM - lr * (momentum * buf + (1 - dampening) * (GRAD + weight_decay * PARAM)),
                  ((STEP, 3),)),
        Reference("Nesterov: theta - lr (g + mu (mu B + g))", "param",
                  PARAM - lr * ((GRAD + weight_decay * PARAM) + momentum * (
                      momentum * buf + (GRAD + weight_decay * PARAM))),
                  ((STEP, 4), (dampening, 0), (nesterov.symbol, True))),
    ),
    torch=_torch("SGD"), notation=NOTATION,
))

# -- Adagrad --------------------------------------------------------------------------------------
lr_decay, state_sum = sym("lr_decay"), sym("sum")
clr, std, ratio = sym("clr"), sym("std"), sym("ratio")
register(Optimizer(
    name="adagrad", family="optimizer", class_name="Adagrad",
    summary="Adagrad: the step shrinks with the running sum of squared gradients.",
    params=(Param("lr", 1e-2, LR, minimum=0.0),
            Param("lr_decay", 0.0, "learning-rate decay per step", minimum=0.0), WD,
            Param("initial_accumulator_value", 0.0, "starting value of the sum", minimum=0.0),
            Param("eps", 1e-10, EPS, minimum=0.0)),
    flags=(maximize_flag,),
    buffers=(StateBuffer("sum", "running sum of squared gradients",
                         initial=sym("initial_accumulator_value")),),
    scalars=(("clr", lr / (1 + (STEP - 1) * lr_decay)),),
    update=(
        MAXIMIZE, COUPLED_DECAY,
        ("sum", state_sum + GRAD * GRAD),
        ("std", sp.sqrt(state_sum) + eps),
        ("ratio", GRAD / std),
        ("param", PARAM - clr * ratio),
    ),
    references=(Reference("theta - lr_t g / (sqrt(S + g^2) + eps)", "param",
                          PARAM - lr / (1 + (STEP - 1) * lr_decay) * GRAD
                          / (sp.sqrt(state_sum + GRAD**2) + eps), ((weight_decay, 0),)),),
    torch=_torch("Adagrad"), notation=NOTATION,
))

# -- RMSprop --------------------------------------------------------------------------------------
alpha = sym("alpha")
square_avg, grad_avg, avg = sym("square_avg"), sym("grad_avg"), sym("avg")
centered = Flag("centered", False, "normalise by the variance estimate v - mean(g)^2")
rms_momentum = sp.Gt(momentum, 0)
register(Optimizer(
    name="rmsprop", family="optimizer", class_name="RMSprop",
    summary="RMSprop: divide by the root of a running mean of squared gradients.",
    params=(Param("lr", 1e-2, LR, minimum=0.0),
            Param("alpha", 0.99, "smoothing constant", minimum=0.0),
            Param("eps", 1e-8, EPS, minimum=0.0), WD,
            Param("momentum", 0.0, "momentum factor", minimum=0.0)),
    flags=(centered, maximize_flag),
    buffers=(StateBuffer("square_avg", "running mean of squared gradients"),
             StateBuffer("momentum_buffer", "the velocity", exists=rms_momentum),
             StateBuffer("grad_avg", "running mean of gradients", exists=centered.symbol)),
    update=(
        MAXIMIZE, COUPLED_DECAY,
        ("square_avg", alpha * square_avg + (1 - alpha) * (GRAD * GRAD)),
        ("grad_avg", sp.Piecewise((lerp(grad_avg, GRAD, 1 - alpha), centered.symbol),
                                  (grad_avg, True))),
        # eps outside the square root.
        ("avg", sp.Piecewise((sp.sqrt(square_avg - grad_avg * grad_avg), centered.symbol),
                             (sp.sqrt(square_avg), True)) + eps),
        ("ratio", GRAD / avg),
        ("momentum_buffer", sp.Piecewise((momentum * buf + ratio, rms_momentum), (buf, True))),
        ("param", sp.Piecewise((PARAM - lr * buf, rms_momentum), (PARAM - lr * ratio, True))),
    ),
    references=(
        Reference("theta - lr g / (sqrt(alpha v + (1 - alpha) g^2) + eps)", "param",
                  PARAM - lr * GRAD / (sp.sqrt(alpha * square_avg + (1 - alpha) * GRAD**2) + eps),
                  ((weight_decay, 0), (momentum, 0))),
        Reference("centered, momentum: theta - lr (mu B + g / (sqrt(v' - gbar'^2) + eps))",
                  "param",
                  PARAM - lr * (momentum * buf + GRAD / (sp.sqrt(
                      alpha * square_avg + (1 - alpha) * GRAD**2
                      - (alpha * grad_avg + (1 - alpha) * GRAD)**2) + eps)),
                  ((weight_decay, 0), (centered.symbol, True))),
    ),
    torch=_torch("RMSprop"), notation=NOTATION,
))

# -- Adadelta -------------------------------------------------------------------------------------
rho, acc_delta, delta = sym("rho"), sym("acc_delta"), sym("delta")
register(Optimizer(
    name="adadelta", family="optimizer", class_name="Adadelta",
    summary="Adadelta: steps scaled by the ratio of running RMS of updates and of gradients.",
    params=(Param("lr", 1.0, "scales the delta before it is applied", minimum=0.0),
            Param("rho", 0.9, "decay of the running averages", 0.0, 1.0),
            Param("eps", 1e-6, "added inside both square roots", minimum=0.0), WD),
    flags=(maximize_flag,),
    buffers=(StateBuffer("square_avg", "running mean of squared gradients"),
             StateBuffer("acc_delta", "running mean of squared updates")),
    update=(
        MAXIMIZE, COUPLED_DECAY,
        ("square_avg", rho * square_avg + (1 - rho) * (GRAD * GRAD)),
        ("std", sp.sqrt(square_avg + eps)),  # eps inside both square roots
        ("delta", sp.sqrt(acc_delta + eps) / std),
        ("delta", delta * GRAD),
        ("acc_delta", rho * acc_delta + (1 - rho) * (delta * delta)),
        ("param", PARAM - lr * delta),
    ),
    references=(Reference("theta - lr sqrt(u + eps) / sqrt(v' + eps) g", "param",
                          PARAM - lr * sp.sqrt(acc_delta + eps) * GRAD
                          / sp.sqrt(rho * square_avg + (1 - rho) * GRAD**2 + eps),
                          ((weight_decay, 0),)),
                Reference("u' = rho u + (1 - rho) delta^2", "acc_delta",
                          rho * acc_delta + (1 - rho) * (acc_delta + eps) * GRAD**2
                          / (rho * square_avg + (1 - rho) * GRAD**2 + eps),
                          ((weight_decay, 0),))),
    torch=_torch("Adadelta"), notation=NOTATION,
))

# -- Adam and AdamW -------------------------------------------------------------------------------
exp_avg, exp_avg_sq, max_sq = sym("exp_avg"), sym("exp_avg_sq"), sym("max_exp_avg_sq")
bc1, bc2, bc2_sqrt = sym("bias_correction1"), sym("bias_correction2"), sym("bias_correction2_sqrt")
step_size, denom = sym("step_size"), sym("denom")
amsgrad = Flag("amsgrad", False, "normalise by the running maximum of v (AMSGrad)")
decoupled = Flag("decoupled_weight_decay", False, "decay theta·(1 - lr·weight_decay), as AdamW")
BIAS_CORRECTIONS = (("bias_correction1", 1 - beta1**STEP), ("bias_correction2", 1 - beta2**STEP))
SECOND_MOMENT = ("exp_avg_sq", beta2 * exp_avg_sq + (1 - beta2) * (GRAD * GRAD))
FIRST_MOMENT = ("exp_avg", lerp(exp_avg, GRAD, 1 - beta1))


def adam(name: str, class_name: str, weight_decay_default: float,
         decoupled_option: Flag | None) -> Optimizer:
    """Adam's rule; AdamW is the same rule with decoupled decay always on."""
    is_decoupled = decoupled_option.symbol if decoupled_option else sp.true
    ams = amsgrad.symbol
    m_hat = (beta1 * exp_avg + (1 - beta1) * GRAD) / (1 - beta1**STEP)
    v_new = beta2 * exp_avg_sq + (1 - beta2) * GRAD**2
    return Optimizer(
        name=name, family="optimizer", class_name=class_name,
        summary=("Adam" if decoupled_option else "AdamW (Adam with decoupled weight decay)")
        + ": steps m̂ / (√v̂ + eps) from bias-corrected moment estimates.",
        params=(Param("lr", 1e-3, LR, minimum=0.0), *_betas(),
                Param("eps", 1e-8, EPS + ", after bias-correcting sqrt(v)", minimum=0.0),
                Param("weight_decay", weight_decay_default, "weight decay", minimum=0.0)),
        flags=(amsgrad, maximize_flag, *((decoupled_option,) if decoupled_option else ())),
        groups=(("betas", ("beta1", "beta2")),),
        requires=BETAS_BELOW_ONE,
        buffers=(StateBuffer("exp_avg", "running mean of gradients (first moment)"),
                 StateBuffer("exp_avg_sq", "running mean of squared gradients (second moment)"),
                 StateBuffer("max_exp_avg_sq", "running maximum of exp_avg_sq", exists=ams)),
        scalars=(*BIAS_CORRECTIONS, ("step_size", lr / bc1), ("bias_correction2_sqrt",
                                                               sp.sqrt(bc2))),
        update=(
            MAXIMIZE, *decoupled_decay(is_decoupled), FIRST_MOMENT, SECOND_MOMENT,
            # AMSGrad keeps the maximum of the raw v, bias-corrected below like v.
            ("max_exp_avg_sq", sp.Piecewise((sp.Max(max_sq, exp_avg_sq), ams), (max_sq, True))),
            # eps is added after bias-correcting sqrt(v).
            ("denom", sp.Piecewise((sp.sqrt(max_sq), ams), (sp.sqrt(exp_avg_sq), True)) / bc2_sqrt
             + eps),
            ("ratio", exp_avg / denom),
            ("param", PARAM - step_size * ratio),
        ),
        references=(
            Reference("theta - lr m_hat / (sqrt(v_hat) + eps)", "param",
                      PARAM - lr * m_hat / (sp.sqrt(v_new / (1 - beta2**STEP)) + eps),
                      ((weight_decay, 0),)),
            Reference("decoupled: theta (1 - lr lambda) - lr m_hat / (sqrt(v_hat) + eps)",
                      "param",
                      PARAM * (1 - lr * weight_decay) - lr * m_hat
                      / (sp.sqrt(v_new / (1 - beta2**STEP)) + eps),
                      ((is_decoupled, True),) if decoupled_option else ()),
            Reference("AMSGrad: v_max' = max(v_max, v')", "max_exp_avg_sq",
                      sp.Max(max_sq, v_new), ((ams, True), (weight_decay, 0))),
        ),
        torch=_torch(class_name), notation=NOTATION,
    )


register(adam("adam", "Adam", 0.0, decoupled))
register(adam("adamw", "AdamW", 1e-2, None))

# -- Adamax ---------------------------------------------------------------------------------------
exp_inf, bias_correction = sym("exp_inf"), sym("bias_correction")
register(Optimizer(
    name="adamax", family="optimizer", class_name="Adamax",
    summary="Adamax: Adam with the infinity norm, u = max(beta2·u, |g| + eps).",
    params=(Param("lr", 2e-3, LR, minimum=0.0), *_betas(),
            Param("eps", 1e-8, "added to |g| inside the max", minimum=0.0), WD),
    flags=(maximize_flag,),
    groups=(("betas", ("beta1", "beta2")),),
    requires=BETAS_BELOW_ONE,
    buffers=(StateBuffer("exp_avg", "running mean of gradients"),
             StateBuffer("exp_inf", "exponentially weighted infinity norm")),
    scalars=(("bias_correction", 1 - beta1**STEP), ("clr", lr / bias_correction)),
    update=(
        MAXIMIZE, COUPLED_DECAY, FIRST_MOMENT,
        ("exp_inf", sp.Max(beta2 * exp_inf, sp.Abs(GRAD) + eps)),  # eps inside the max
        ("ratio", exp_avg / exp_inf),
        ("param", PARAM - clr * ratio),
    ),
    references=(Reference("theta - lr/(1 - beta1^t) m' / max(beta2 u, |g| + eps)", "param",
                          PARAM - lr / (1 - beta1**STEP) * (beta1 * exp_avg + (1 - beta1) * GRAD)
                          / sp.Max(beta2 * exp_inf, sp.Abs(GRAD) + eps), ((weight_decay, 0),)),),
    torch=_torch("Adamax"), notation=NOTATION,
))

# -- NAdam ----------------------------------------------------------------------------------------
momentum_decay = sym("momentum_decay")
mu, mu_next, mu_product = sym("mu"), sym("mu_next"), sym("mu_product")
mu_product_next = sym("mu_product_next")
grad_coeff, exp_avg_coeff = sym("grad_coeff"), sym("exp_avg_coeff")
nadam_decoupled = Flag("decoupled_weight_decay", False, "decay theta·(1 - lr·weight_decay)")


def _mu(t: sp.Expr) -> sp.Expr:
    """NAdam's momentum schedule mu_t = beta1·(1 - 0.96^(t·psi)/2)."""
    return beta1 * (1 - sp.Rational(1, 2) * sp.Rational(24, 25) ** (t * momentum_decay))


register(Optimizer(
    name="nadam", family="optimizer", class_name="NAdam",
    summary="NAdam: Adam with Nesterov momentum on a decaying momentum schedule.",
    params=(Param("lr", 2e-3, LR, minimum=0.0), *_betas(),
            Param("eps", 1e-8, EPS + ", outside sqrt(v / bc2)", minimum=0.0), WD,
            Param("momentum_decay", 4e-3, "psi in mu_t = beta1 (1 - 0.96^(t psi) / 2)",
                  minimum=0.0)),
    flags=(maximize_flag, nadam_decoupled),
    groups=(("betas", ("beta1", "beta2")),),
    requires=BETAS_BELOW_ONE,
    buffers=(StateBuffer("exp_avg", "running mean of gradients"),
             StateBuffer("exp_avg_sq", "running mean of squared gradients")),
    scalar_states=(ScalarState("mu_product", "product of the mu_i so far", 1.0, "float32"),),
    scalars=(
        ("bias_correction2", 1 - beta2**STEP),
        ("mu", _mu(STEP)), ("mu_next", _mu(STEP + 1)),
        ("mu_product", mu_product * mu),  # a float32 tensor in torch, rounded as one
        ("mu_product_next", mu_product * mu_next),
        ("grad_coeff", lr * (1 - mu) / (1 - mu_product)),
        ("exp_avg_coeff", lr * mu_next / (1 - mu_product_next)),
    ),
    update=(
        MAXIMIZE, *decoupled_decay(nadam_decoupled.symbol), FIRST_MOMENT, SECOND_MOMENT,
        ("denom", sp.sqrt(exp_avg_sq / bc2) + eps),  # the division inside the square root
        ("ratio", GRAD / denom),
        ("param", PARAM - grad_coeff * ratio),
        ("ratio", exp_avg / denom),
        ("param", PARAM - exp_avg_coeff * ratio),
    ),
    references=(Reference(
        "theta - lr (1 - mu_t) g / ((1 - Pi_t) D) - lr mu_{t+1} m' / ((1 - Pi_t mu_{t+1}) D)",
        "param",
        PARAM - lr * (1 - _mu(STEP)) / (1 - mu_product * _mu(STEP)) * GRAD / (
            sp.sqrt((beta2 * exp_avg_sq + (1 - beta2) * GRAD**2) / (1 - beta2**STEP)) + eps)
        - lr * _mu(STEP + 1) / (1 - mu_product * _mu(STEP) * _mu(STEP + 1))
        * (beta1 * exp_avg + (1 - beta1) * GRAD)
        / (sp.sqrt((beta2 * exp_avg_sq + (1 - beta2) * GRAD**2) / (1 - beta2**STEP)) + eps),
        ((weight_decay, 0),)),),
    torch=_torch("NAdam"), notation=NOTATION,
))

# -- RAdam ----------------------------------------------------------------------------------------
rho_inf, rho_t, rect, corrected = sym("rho_inf"), sym("rho_t"), sym("rect"), sym("corrected")
radam_decoupled = Flag("decoupled_weight_decay", False, "decay theta·(1 - lr·weight_decay)")
rectified = rho_t > 5  # the variance of the adaptive rate is tractable from here on


def _rho_t(t: sp.Expr) -> sp.Expr:
    inf = 2 / (1 - beta2) - 1
    return inf - 2 * t * beta2**t / (1 - beta2**t)


register(Optimizer(
    name="radam", family="optimizer", class_name="RAdam",
    summary="RAdam: Adam with the adaptive rate rectified once its variance is tractable.",
    params=(Param("lr", 1e-3, LR, minimum=0.0), *_betas(),
            Param("eps", 1e-8, EPS + ", added to the uncorrected sqrt(v)", minimum=0.0), WD),
    flags=(maximize_flag, radam_decoupled),
    groups=(("betas", ("beta1", "beta2")),),
    requires=BETAS_BELOW_ONE,
    buffers=(StateBuffer("exp_avg", "running mean of gradients"),
             StateBuffer("exp_avg_sq", "running mean of squared gradients")),
    scalars=(
        *BIAS_CORRECTIONS,
        ("rho_inf", 2 / (1 - beta2) - 1),
        ("rho_t", rho_inf - 2 * STEP * beta2**STEP / bc2),
        ("rect", sp.Piecewise((sp.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                                       / ((rho_inf - 4) * (rho_inf - 2) * rho_t)), rectified),
                              (1, True))),
        ("bias_correction2_sqrt", sp.sqrt(bc2)),
    ),
    update=(
        MAXIMIZE, *decoupled_decay(radam_decoupled.symbol), FIRST_MOMENT, SECOND_MOMENT,
        ("corrected", exp_avg / bc1),
        # eps on the uncorrected sqrt(v), unlike Adam.
        ("param", sp.Piecewise(
            (PARAM - corrected * lr * (bc2_sqrt / (sp.sqrt(exp_avg_sq) + eps)) * rect, rectified),
            (PARAM - corrected * lr, True))),
    ),
    references=(Reference(
        "rectified: theta - lr m_hat r_t sqrt(b2) / (sqrt(v) + eps); else theta - lr m_hat",
        "param",
        sp.Piecewise((PARAM - lr * (beta1 * exp_avg + (1 - beta1) * GRAD) / (1 - beta1**STEP)
                      * sp.sqrt((_rho_t(STEP) - 4) * (_rho_t(STEP) - 2) * (2 / (1 - beta2) - 1)
                                / ((2 / (1 - beta2) - 5) * (2 / (1 - beta2) - 3) * _rho_t(STEP)))
                      * sp.sqrt(1 - beta2**STEP)
                      / (sp.sqrt(beta2 * exp_avg_sq + (1 - beta2) * GRAD**2) + eps),
                      _rho_t(STEP) > 5),
                     (PARAM - lr * (beta1 * exp_avg + (1 - beta1) * GRAD) / (1 - beta1**STEP),
                      True)),
        ((weight_decay, 0),)),),
    torch=_torch("RAdam"), notation=NOTATION,
))
