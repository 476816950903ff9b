"""Dropout specs: the training-mode formula in x and the mask bit ``keep``, as torch computes it.

Semantics follow torch (../shared/semantics.md §5): dropout scales kept elements by 1/(1 - p);
alpha dropout keeps SELU's fixed point (mean 0, variance 1) with the affine a·x + b of the mask;
feature and 1d/2d/3d variants drop whole channels. The derivation proves the moments each claims.
"""

from __future__ import annotations

import sympy as sp

from symgrad.kinds.dropout import KEEP, MEAN, SECOND, Dropout, Moment
from symgrad.spec import Param, TorchRef, X, register

F = "torch.nn.functional."


def p_param(what: str) -> Param:
    return Param("p", 0.5, f"probability of {what} to be dropped", 0.0, 1.0)


scale = sp.Symbol("scale", real=True)
SCALED = dict(
    forward=X * (KEEP * scale),  # torch multiplies x by the pre-scaled mask
    scalars=(("scale", 1 / (1 - sp.Symbol("p", real=True))),),
    moments=(Moment("E[y] = E[x]: the scale 1/(1 - p) keeps the mean", 1, MEAN),),
)

register(Dropout(
    name="dropout", family="dropout", summary="Zero each element with probability p, scale the "
    "rest by 1/(1 - p).", params=(p_param("an element"),), mask="element",
    torch=TorchRef(F + "dropout"), **SCALED,
))
register(Dropout(
    name="dropout1d", family="dropout", summary="Zero whole channels of (N, C, L) or (C, L) "
    "input with probability p, scale the rest by 1/(1 - p).", params=(p_param("a channel"),),
    mask="channel", batched_rank=3, ranks=(2, 3), torch=TorchRef(F + "dropout1d"), **SCALED,
))
register(Dropout(
    name="dropout2d", family="dropout", summary="Zero whole channels of (N, C, H, W) input with "
    "probability p (3-D input is taken as (N, C, L), as torch does), scale the rest by 1/(1 - p).",
    params=(p_param("a channel"),), mask="channel", torch=TorchRef(F + "dropout2d"), **SCALED,
))
register(Dropout(
    name="dropout3d", family="dropout", summary="Zero whole channels of (N, C, D, H, W) or "
    "(C, D, H, W) input with probability p, scale the rest by 1/(1 - p).",
    params=(p_param("a channel"),), mask="channel", batched_rank=5,
    torch=TorchRef(F + "dropout3d"), **SCALED,
))

# Alpha dropout: dropped elements go to SELU's saturation -lambda·alpha, then an affine a·y + b
# restores mean 0 and variance 1. torch's literal for lambda·alpha:
SELU_SATURATION = sp.Float("1.7580993408473766", 17)
p = sp.Symbol("p", real=True)
saturation, a, alpha_a, alpha_a_p = (sp.Symbol(n, real=True)
                                     for n in ("saturation", "a", "alpha_a", "alpha_a_p"))
ALPHA = dict(
    # torch: noise = keep·a, b = (keep - 1)·(A·a) + A·a·p, y = x·noise + b
    forward=X * (KEEP * a) + (KEEP - 1) * alpha_a + alpha_a_p,
    scalars=(("saturation", SELU_SATURATION),
             ("a", 1 / sp.sqrt((saturation * saturation * p + 1) * (1 - p))),
             ("alpha_a", saturation * a), ("alpha_a_p", alpha_a * p)),
    moments=(Moment("standard input: E[y] = 0", 1, sp.S.Zero, ((MEAN, 0), (SECOND, 1))),
             Moment("standard input: E[y^2] = 1 (variance 1)", 2, sp.S.One,
                    ((MEAN, 0), (SECOND, 1)))),
    training_default=False,  # F.alpha_dropout and F.feature_alpha_dropout default to eval
)
register(Dropout(
    name="alpha_dropout", family="dropout", summary="Alpha dropout (SELU networks): dropped "
    "elements take SELU's saturation value, then an affine map keeps mean 0 and variance 1.",
    params=(p_param("an element"),), mask="element", torch=TorchRef(F + "alpha_dropout"),
    **ALPHA,
))
register(Dropout(
    name="feature_alpha_dropout", family="dropout", summary="Alpha dropout of whole channels "
    "(N, C, ...): one mask bit per (n, c).", params=(p_param("a channel"),), mask="channel",
    torch=TorchRef(F + "feature_alpha_dropout"), **ALPHA,
))
