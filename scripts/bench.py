#!/usr/bin/env python
"""Side-by-side timings: symgrad's generated kernels beside NumPy, PyTorch, JAX and SymPy.

Every library runs in this one process on the same input arrays; each time is the median of
repeated calls after a warm-up call (which compiles Numba and XLA code). A plain memory copy of the
input (np.copyto) is timed as the floor no pass can beat. The symgrad result of each pass is the
reference: a library whose result disagrees, or comes back in another dtype, is flagged.
Optimizer steps also time a kernel with the step's memory traffic and no arithmetic (the notes
give each step's multiple of it): an in-place step over 10^7 parameters cannot beat that floor.

    python scripts/bench.py                   # every op, 10^3, 10^5 and 10^7 elements
    python scripts/bench.py --quick           # 10^3 and 10^5 only: a smoke run
    python scripts/bench.py --markdown        # also write BENCHMARKS.md
    python scripts/bench.py --ops sigmoid softmax --sizes 1e5 --dtypes float32

Adding an op is one entry in UNARY_OPS or LOSSES; entries whose kernels symgrad_kernels does not
have yet are skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numba
import numpy as np
import symgrad_kernels
import sympy as sp
from symgrad_kernels._runtime import PARALLEL_MIN_SIZE

import symgrad.ops  # noqa: F401  (importing the catalog registers every op)
from symgrad.derive import derive
from symgrad.functions import elementary_form
from symgrad.spec import LSE, REGISTRY, XT, T, X, Y

# Optional libraries: a missing one turns its column into "n/a".
try:
    import torch
    import torch.nn.functional as F  # noqa: N812
except ImportError:
    torch = F = None
try:
    import jax
    import jax.numpy as jnp
except ImportError:
    jax = jnp = None
try:
    from scipy.special import erf  # NumPy has no erf; only the gelu entry needs it
except ImportError:
    erf = None

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = ROOT / "BENCHMARKS.md"

SIZES = (10**3, 10**5, 10**7)
QUICK_SIZES = (10**3, 10**5)
DTYPES = ("float32", "float64")
CLASSES = 1000  # cross_entropy logits are (N, CLASSES)

PASSES = ("forward", "backward", "fwd+bwd")
KERNEL_SUFFIX = {"forward": "forward", "backward": "backward", "fwd+bwd": "forward_backward"}
COLUMNS = ("symgrad", "numpy", "torch", "jax", "sympy")

# Timing: a sample repeats the call until it lasts MIN_SAMPLE_S (timer resolution and loop
# overhead vanish for 10^3 elements); samples are taken until the budget is spent, at least
# MIN_SAMPLES of them, so a 10^7 pass costs a handful of calls rather than a fixed count.
MIN_SAMPLE_S = 2e-3
MIN_SAMPLES = 5
MAX_SAMPLES = 50
BUDGET_S = 0.1

Fn = Callable[..., Any]
Call = Callable[[], Any]

G = sp.Symbol("g", real=True)  # the upstream gradient, in the lambdified VJPs


def aten() -> Any:
    """PyTorch's functional backward ops, e.g. aten().sigmoid_backward(grad, output)."""
    return torch.ops.aten


# --------------------------------------------------------------------------------------------
# The ops: how NumPy, PyTorch and JAX spell each one. symgrad's own kernels are found by name
# in symgrad_kernels, and SymPy's expressions are symgrad's derivation of the op's spec.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unary:
    """An activation y = f(x), elementwise or (``rows`` given) along the last axis of rows.

    numpy_vjp and torch_backward take (g, x, y) and return g·dy/dx; torch_backward is torch's
    functional backward (aten), None where torch has none.
    """

    name: str
    numpy: Fn
    numpy_vjp: Fn
    torch: Fn
    torch_backward: Fn | None
    jax: Fn
    rows: tuple[int, ...] = ()  # row lengths for a rowwise op; () for elementwise


@dataclass(frozen=True)
class Loss:
    """A loss with reduction='mean', timed as forward and backward fused (grad_output = 1).

    numpy takes (x, t) and returns (loss, grad); torch and jax return the loss only (autograd
    and jax.vjp supply the gradient). ``target`` is "real", "probability" or "class".
    """

    name: str
    target: str
    numpy: Fn
    torch: Fn
    jax: Fn


def _np_softplus(x: np.ndarray) -> np.ndarray:
    # torch's threshold: the identity once x > 20 (log1p(exp(x)) would overflow first).
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_mse(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = x - t
    return np.mean(d * d), d * (2 / x.size)


def _np_bce(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # -t·log σ(x) - (1-t)·log σ(-x) = softplus(x) - t·x
    loss = np.mean(np.logaddexp(0, x) - t * x)
    return loss, (1 / (1 + np.exp(-x)) - t) / x.size


def _np_cross_entropy(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(t))
    p = _np_softmax(x)
    loss = -np.mean(np.log(p[rows, t]))
    p[rows, t] -= 1
    return loss, p / len(t)


_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)

UNARY_OPS: tuple[Unary, ...] = (
    Unary("sigmoid", lambda x: 1 / (1 + np.exp(-x)), lambda g, x, y: g * y * (1 - y),
          lambda x: torch.sigmoid(x), lambda g, x, y: aten().sigmoid_backward(g, y),
          lambda x: jax.nn.sigmoid(x)),
    Unary("tanh", np.tanh, lambda g, x, y: g * (1 - y * y),
          lambda x: torch.tanh(x), lambda g, x, y: aten().tanh_backward(g, y),
          lambda x: jnp.tanh(x)),
    Unary("relu", lambda x: np.maximum(x, 0), lambda g, x, y: g * (x > 0),
          lambda x: torch.relu(x), lambda g, x, y: aten().threshold_backward(g, y, 0),
          lambda x: jax.nn.relu(x)),
    Unary("gelu", lambda x: 0.5 * x * (1 + erf(x * _SQRT1_2)),
          lambda g, x, y: g * (0.5 * (1 + erf(x * _SQRT1_2))
                               + x * np.exp(-0.5 * x * x) * _INV_SQRT_2PI),
          lambda x: F.gelu(x), lambda g, x, y: aten().gelu_backward(g, x),
          lambda x: jax.nn.gelu(x, approximate=False)),
    Unary("silu", lambda x: x / (1 + np.exp(-x)),
          lambda g, x, y: g * (s := 1 / (1 + np.exp(-x))) * (1 + x * (1 - s)),
          lambda x: F.silu(x), lambda g, x, y: aten().silu_backward(g, x),
          lambda x: jax.nn.silu(x)),
    Unary("softplus", _np_softplus, lambda g, x, y: g * np.where(x > 20, 1, 1 / (1 + np.exp(-x))),
          lambda x: F.softplus(x), lambda g, x, y: aten().softplus_backward(g, x, 1.0, 20.0),
          lambda x: jax.nn.softplus(x)),
    Unary("elu", lambda x: np.where(x > 0, x, np.expm1(x)),
          lambda g, x, y: g * np.where(y > 0, 1, y + 1),
          lambda x: F.elu(x), lambda g, x, y: aten().elu_backward(g, 1.0, 1, 1, True, y),
          lambda x: jax.nn.elu(x)),
    Unary("softmax", _np_softmax,
          lambda g, x, y: y * (g - (g * y).sum(axis=-1, keepdims=True)),
          lambda x: torch.softmax(x, -1),
          lambda g, x, y: aten()._softmax_backward_data(g, y, -1, y.dtype),
          lambda x: jax.nn.softmax(x, axis=-1), rows=(1000, 32)),
    Unary("log_softmax", _np_log_softmax,
          lambda g, x, y: g - np.exp(y) * g.sum(axis=-1, keepdims=True),
          lambda x: torch.log_softmax(x, -1),
          lambda g, x, y: aten()._log_softmax_backward_data(g, y, -1, y.dtype),
          lambda x: jax.nn.log_softmax(x, axis=-1), rows=(1000, 32)),
)

LOSSES: tuple[Loss, ...] = (
    Loss("cross_entropy", "class", _np_cross_entropy,
         lambda x, t: F.cross_entropy(x, t),
         lambda x, t: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(x), t[:, None], axis=1))),
    Loss("binary_cross_entropy_with_logits", "probability", _np_bce,
         lambda x, t: F.binary_cross_entropy_with_logits(x, t),
         lambda x, t: jnp.mean(jax.nn.softplus(x) - t * x)),
    Loss("mse_loss", "real", _np_mse, lambda x, t: F.mse_loss(x, t),
         lambda x, t: jnp.mean((x - t) ** 2)),
)


@dataclass(frozen=True)
class Step:
    """An optimizer step on n parameters (defaults), timed against each torch.optim path.

    numpy(param, grad, m, v, t) updates in place; torch's single-tensor, foreach and fused
    implementations each get a row of their own, since which is fastest varies.
    """

    name: str
    numpy: Fn
    torch_class: str
    torch_paths: tuple[tuple[str, dict], ...] = (
        ("default", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))


def _np_adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int) -> None:
    b1, b2, lr, eps = 0.9, 0.999, 1e-3, 1e-8
    m += (1 - b1) * (g - m)
    v *= b2
    v += (1 - b2) * g * g
    p -= (lr / (1 - b1**t)) * m / (np.sqrt(v) / math.sqrt(1 - b2**t) + eps)


STEPS: tuple[Step, ...] = (Step("adam", _np_adam, "Adam"),)


@numba.njit(parallel=True)
def _parallel_copy(src: np.ndarray, dst: np.ndarray) -> None:
    """The copy floor on Numba's threads: one thread's np.copyto does not saturate the memory
    bus, so a 2-thread kernel could beat it (torch's relu did)."""
    for i in numba.prange(src.size):
        dst[i] = src[i]


@numba.njit(parallel=True)
def _adam_traffic(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray) -> None:
    """An in-place update with Adam's memory traffic (read p, g, m, v; write p, m, v) and next
    to no arithmetic, on Numba's threads: the floor a fused Adam step can approach."""
    for i in numba.prange(p.size):
        gi = g[i]
        m[i] = m[i] * 0.5 + gi
        v[i] = v[i] * 0.5 + gi
        p[i] = p[i] * 0.5 + gi


def step_cases(step: Step, io: Inputs, sy: dict[str, Fn] | None) -> Iterator[Case]:
    x, g = io.np("x", (io.n,)), io.np("g", (io.n,))
    ours = getattr(symgrad_kernels, f"{step.name}_step")
    state = {"p": x.copy(), "m": np.zeros_like(x), "v": np.zeros_like(x), "t": 0}
    np_state = {"p": x.copy(), "m": np.zeros_like(x), "v": np.zeros_like(x), "t": 0}

    def symgrad_step() -> np.ndarray:
        state["t"] += 1
        ours(state["p"], g, state["m"], state["v"], None, state["t"])
        return state["p"]

    def numpy_step() -> np.ndarray:
        np_state["t"] += 1
        step.numpy(np_state["p"], g, np_state["m"], np_state["v"], np_state["t"])
        return np_state["p"]

    floor_state = [np.zeros_like(x) for _ in range(3)]

    def traffic() -> None:
        _adam_traffic(floor_state[0], g, floor_state[1], floor_state[2])

    for label, options in step.torch_paths if torch is not None else (("n/a", {}),):
        calls = {"symgrad": symgrad_step, "numpy": numpy_step, TRAFFIC: traffic}
        if torch is not None:
            param = torch.nn.Parameter(torch.tensor(x))
            param.grad = torch.tensor(g)
            try:
                opt = getattr(torch.optim, step.torch_class)([param], **options)
                opt.step()
            except (RuntimeError, ValueError, TypeError):  # e.g. no fused path on this build
                continue
            calls["torch"] = lambda opt=opt, param=param: (opt.step(), param.detach())[1]
        # Results drift apart as each call takes another step: compare nothing here.
        yield Case(f"{step.name} step (torch {label})", "step", x.size, calls)


def missing_kernels(name: str, passes: Iterable[str]) -> str | None:
    """Why op ``name`` cannot be benchmarked yet, or None if it can."""
    absent = [f"{name}_{KERNEL_SUFFIX[p]}" for p in passes
              if not hasattr(symgrad_kernels, f"{name}_{KERNEL_SUFFIX[p]}")]
    if absent:
        return f"no {absent[0]} in symgrad_kernels yet"
    if name not in REGISTRY:
        return "not in symgrad's op registry"
    return None


def kernel(name: str, pass_: str) -> Fn:
    return getattr(symgrad_kernels, f"{name}_{KERNEL_SUFFIX[pass_]}")


# --------------------------------------------------------------------------------------------
# SymPy: lambdify symgrad's own derivation of each op (NumPy code, library functions expanded)
# --------------------------------------------------------------------------------------------


def _lambdify(args: list[sp.Symbol], expr: sp.Basic, cse: bool = False) -> Fn:
    # scipy only supplies what NumPy lacks (erf); everything else prints as NumPy.
    return sp.lambdify(args, elementary_form(expr), modules=["numpy", "scipy"], cse=cse)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


@functools.cache
def sympy_passes(name: str) -> dict[str, Fn]:
    """pass -> function of arrays: (x) forward, (saved, g) backward, (x, g) or (x, t) fused."""
    spec = REGISTRY[name]
    d = derive(spec)  # its fields depend on the spec's kind
    defaults = {p.symbol: p.default for p in spec.numeric_params}
    if spec.kind == "variants":  # one elementwise derivation per formula: take the default's
        d = dict(d.variants)[next(p.default for p in spec.params if p.name == spec.option)]
    if spec.kind in ("elementwise", "variants"):
        fwd, grad_x = d.forward.subs(defaults), d.grad_x.subs(defaults)
        # Backward reads what symgrad's backward reads: y where an output form exists, else x.
        saved, grad = (Y, d.grad_y.subs(defaults)) if d.grad_y is not None else (X, grad_x)
        return {
            "forward": _lambdify([X], fwd),
            "backward": _lambdify([saved, G], G * grad),
            "fwd+bwd": _lambdify([X, G], sp.Tuple(fwd, G * grad_x), cse=True),
        }
    if spec.kind == "rowwise":
        y_of = _lambdify([X, LSE], d.forward)
        diag, left, right = (_lambdify([Y], e) for e in (d.jac_diag, d.jac_left, d.jac_right))

        def forward(x: np.ndarray) -> np.ndarray:
            return y_of(x, _logsumexp(x, -1))

        def backward(y: np.ndarray, g: np.ndarray) -> np.ndarray:
            # J_ik = δ_ik·D(y_k) + U(y_i)·V(y_k), so grad_k = g_k·D(y_k) + V(y_k)·Σ_i g_i·U(y_i)
            return g * diag(y) + right(y) * (g * left(y)).sum(axis=-1, keepdims=True)

        def fused(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            y = forward(x)
            return y, backward(y, g)

        return {"forward": forward, "backward": backward, "fwd+bwd": fused}
    if spec.kind in ("elementwise_loss", "pointwise_loss"):
        if spec.kind == "elementwise_loss":
            defaults |= {p.symbol: p.default for p in spec.tensor_params}
            loss, grad = d.loss, d.grad
        else:  # the variant for the default flags; optional operands (weight) at their default
            options = {p.name: p.default for p in spec.params}
            v = next(v for v in d.variants if all(options[k] == val for k, val in v.options))
            defaults |= {o.symbol: o.default for o in spec.operands if o.symbol not in (X, T)}
            loss, grad = v.loss, v.grads[0]
        loss_grad = _lambdify([X, T], sp.Tuple(loss.subs(defaults), grad.subs(defaults)),
                              cse=True)

        def elementwise_loss(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            loss, grad = loss_grad(x, t)
            return np.mean(loss), grad / x.size

        return {"fwd+bwd": elementwise_loss}
    if spec.kind == "class_index_loss":
        loss_of, c_target, c_softmax = (
            _lambdify([XT, LSE], e) for e in (d.loss, d.coeff_target, d.coeff_softmax))

        def class_index_loss(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rows = np.arange(len(t))
            lse, x_t = _logsumexp(x, 1), x[rows, t][:, None]
            # ∂ℓ/∂x_k = coeff_softmax·softmax_k + coeff_target·[k = t]
            grad = c_softmax(x_t, lse) * np.exp(x - lse)
            grad[rows, t] += np.broadcast_to(c_target(x_t, lse), x_t.shape)[:, 0]
            return np.mean(loss_of(x_t, lse)), grad / len(t)

        return {"fwd+bwd": class_index_loss}
    raise TypeError(f"{name}: no SymPy reference for ops of kind {spec.kind!r}")


# --------------------------------------------------------------------------------------------
# Inputs and the calls timed on them
# --------------------------------------------------------------------------------------------


class Inputs:
    """The arrays of one (size, dtype), shared by every op and library.

    Ops see leading slices reshaped to their shape; torch tensors share the NumPy memory and
    JAX arrays are copied once and cached.
    """

    def __init__(self, n: int, dtype: str, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.dtype = n, np.dtype(dtype)
        self.arrays = {
            "x": (3 * rng.standard_normal(n)).astype(dtype),  # both sides of every kink
            "g": rng.standard_normal(n).astype(dtype),
            "real": rng.standard_normal(n).astype(dtype),
            "probability": rng.random(n).astype(dtype),
            "class": rng.integers(0, CLASSES, max(1, n // CLASSES), dtype=np.int64),
        }
        self._jax: dict[tuple[str, tuple[int, ...]], Any] = {}

    def np(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        a = self.arrays[name]
        return a if shape is None else a[: math.prod(shape)].reshape(shape)

    def torch(self, name: str, shape: tuple[int, ...] | None = None) -> Any:
        return torch.from_numpy(self.np(name, shape))

    def jax(self, name: str, shape: tuple[int, ...] | None = None) -> Any:
        key = (name, shape or self.arrays[name].shape)
        if key not in self._jax:
            self._jax[key] = jnp.asarray(self.np(name, shape))
        return self._jax[key]


def _jax_ready(f: Fn) -> Fn:
    """A jitted function that waits for its result (JAX dispatches asynchronously)."""
    jitted = jax.jit(f)
    return lambda *args: jax.block_until_ready(jitted(*args))


@functools.cache
def jax_unary(f: Fn) -> dict[str, Fn]:
    def backward(x: Any, g: Any) -> Any:
        return jax.vjp(f, x)[1](g)[0]

    def fused(x: Any, g: Any) -> tuple[Any, Any]:
        y, vjp = jax.vjp(f, x)
        return y, vjp(g)[0]

    return {"forward": _jax_ready(f), "backward": _jax_ready(backward),
            "fwd+bwd": _jax_ready(fused)}


@functools.cache
def jax_loss(f: Fn) -> Fn:
    def fused(x: Any, t: Any) -> tuple[Any, Any]:
        loss, vjp = jax.vjp(lambda x: f(x, t), x)
        return loss, vjp(jnp.ones_like(loss))[0]

    return _jax_ready(fused)


def torch_autograd(f: Fn, x: Any, g: Any = None) -> Call:
    """Eager forward, then y.backward(g) (g None for a scalar loss)."""
    leaf = x.detach().requires_grad_()

    def run() -> tuple[Any, Any]:
        leaf.grad = None
        y = f(leaf)
        y.backward(g)
        return y.detach(), leaf.grad

    return run


TRAFFIC = "traffic floor"  # an extra call of step cases, reported in the notes


@dataclass
class Case:
    """One table row before timing: column -> zero-argument call (absent: n/a)."""

    op: str
    pass_: str
    numel: int
    calls: dict[str, Call] = field(default_factory=dict)


def unary_cases(op: Unary, io: Inputs, sy: dict[str, Fn] | None) -> Iterator[Case]:
    shapes = [(max(1, io.n // r), r) for r in op.rows] if op.rows else [(io.n,)]
    for shape in shapes:
        label = f"{op.name} (N,{shape[1]})" if op.rows else op.name
        calls = unary_calls(op, io, shape, sy)
        for pass_ in PASSES:
            yield Case(label, pass_, math.prod(shape),
                       {col: by_pass[pass_] for col, by_pass in calls.items() if pass_ in by_pass})


def unary_calls(op: Unary, io: Inputs, shape: tuple[int, ...],
                sy: dict[str, Fn] | None) -> dict[str, dict[str, Call]]:
    """column -> pass -> call, on io's arrays viewed as ``shape`` (sy: SymPy's passes)."""
    x, g = io.np("x", shape), io.np("g", shape)
    fwd, bwd, fused = (kernel(op.name, p) for p in PASSES)
    y = fwd(x)  # the saved output that backward passes read
    from_y = bool(op.rows) or derive(REGISTRY[op.name]).backward_needs == "y"
    saved = y if from_y else x
    calls: dict[str, dict[str, Call]] = {
        "symgrad": {"forward": lambda: fwd(x),
                    "backward": (lambda: bwd(g, y=y)) if from_y else (lambda: bwd(g, x=x)),
                    "fwd+bwd": lambda: fused(x, g)},
        "numpy": {"forward": lambda: op.numpy(x),
                  "backward": lambda: op.numpy_vjp(g, x, y),
                  "fwd+bwd": lambda: (y_ := op.numpy(x), op.numpy_vjp(g, x, y_))},
    }
    if sy is not None:
        calls["sympy"] = {"forward": lambda: sy["forward"](x),
                          "backward": lambda: sy["backward"](saved, g),
                          "fwd+bwd": lambda: sy["fwd+bwd"](x, g)}
    if torch is not None:
        tx, tg, ty = io.torch("x", shape), io.torch("g", shape), torch.from_numpy(y)
        calls["torch"] = {"forward": lambda: op.torch(tx),
                          "fwd+bwd": torch_autograd(op.torch, tx, tg)}
        if op.torch_backward is not None:
            calls["torch"]["backward"] = lambda: op.torch_backward(tg, tx, ty)
    if jax is not None:
        jx, jg, jf = io.jax("x", shape), io.jax("g", shape), jax_unary(op.jax)
        calls["jax"] = {"forward": lambda: jf["forward"](jx),
                        "backward": lambda: jf["backward"](jx, jg),
                        "fwd+bwd": lambda: jf["fwd+bwd"](jx, jg)}
    return calls


def loss_cases(loss: Loss, io: Inputs, sy: dict[str, Fn] | None) -> Iterator[Case]:
    if loss.target == "class":
        shape, label = (max(1, io.n // CLASSES), CLASSES), f"{loss.name} (N,{CLASSES})"
    else:
        shape, label = (io.n,), loss.name
    x, t = io.np("x", shape), io.np(loss.target)
    fused = kernel(loss.name, "fwd+bwd")
    calls = {"symgrad": lambda: fused(x, t), "numpy": lambda: loss.numpy(x, t)}
    if sy is not None:
        calls["sympy"] = lambda: sy["fwd+bwd"](x, t)
    if torch is not None:
        tt = io.torch(loss.target)
        calls["torch"] = torch_autograd(lambda x: loss.torch(x, tt), io.torch("x", shape))
    if jax is not None:
        jx, jt, jf = io.jax("x", shape), io.jax(loss.target), jax_loss(loss.jax)
        calls["jax"] = lambda: jf(jx, jt)
    yield Case(label, "fwd+bwd", x.size, calls)


# --------------------------------------------------------------------------------------------
# Timing and checking
# --------------------------------------------------------------------------------------------


def measure(calls: dict[str, Call], budget: float) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per call of each call, and the result of its warm-up call.

    Each call is sampled in a block of its own, after a warm-up call: interleaved with the
    others, a call ran while the previous library's idle threads still spun (XLA's pool keeps
    both cores busy for milliseconds after a call: measured, a 3 ms symgrad pass took 8.5 ms
    right after a JAX call). A call that raises is left out of both dicts; its exception is in
    the results instead.
    """
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    gc_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection is not part of the op
    try:
        for col, call in calls.items():
            try:
                results[col] = call()  # compiles (Numba, XLA) and faults the pages in
                start = time.perf_counter()
                call()
                once = time.perf_counter() - start
            except Exception as exc:  # a failing library must not stop the run
                results[col] = exc
                continue
            number = max(1, int(MIN_SAMPLE_S / max(once, 1e-9)))
            samples: list[float] = []
            deadline = time.perf_counter() + budget
            while len(samples) < MIN_SAMPLES or (len(samples) < MAX_SAMPLES
                                                 and time.perf_counter() < deadline):
                start = time.perf_counter()
                for _ in range(number):
                    call()
                samples.append((time.perf_counter() - start) / number)
            seconds[col] = statistics.median(samples)
    finally:
        if gc_enabled:
            gc.enable()
    return seconds, results


def as_arrays(result: Any) -> list[np.ndarray]:
    if isinstance(result, tuple | list):
        return [a for r in result for a in as_arrays(r)]
    if torch is not None and isinstance(result, torch.Tensor):
        return [result.detach().numpy()]
    return [np.asarray(result)]


def check(got: list[np.ndarray], want: list[np.ndarray] | None, dtype: np.dtype) -> str:
    """'' if the result matches symgrad's; '†' for another dtype, '≠' for other values."""
    flag = "†" if any(a.dtype != dtype for a in got) else ""
    if want is None:
        return flag
    tol = 1e-3 if dtype == np.float32 else 1e-6
    for a, b in zip(got, want, strict=True):
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol * scale,
                                                 equal_nan=True):
            return flag + "≠"
    return flag


@dataclass
class Row:
    op: str
    pass_: str
    dtype: str
    numel: int
    copy: float
    seconds: dict[str, float]
    flags: dict[str, str]


class Bench:
    def __init__(self, ops: list[Unary | Loss | Step], budget: float, notes: list[str]) -> None:
        self.ops, self.budget = ops, budget
        self.rows: list[Row] = []
        self.notes = list(notes)  # skipped ops first; failures are appended while timing

    def run(self, sizes: list[int], dtypes: list[str], out: Callable[[Row], None]) -> None:
        sympy = {op.name: None if isinstance(op, Step) else self.sympy_or_none(op.name)
                 for op in self.ops}
        for n in sizes:
            for dtype in dtypes:
                io = Inputs(n, dtype)
                for op in self.ops:
                    sy = sympy[op.name]
                    cases = (unary_cases(op, io, sy) if isinstance(op, Unary)
                             else step_cases(op, io, sy) if isinstance(op, Step)
                             else loss_cases(op, io, sy))
                    try:
                        for case in cases:
                            row = self.time_case(case, io)
                            self.rows.append(row)
                            out(row)
                    except Exception as exc:  # setting up one op failed: report it, go on
                        self.notes.append(f"{op.name} {dtype} n={n}: not timed, "
                                          f"{type(exc).__name__}: {exc}")
                del io
                gc.collect()  # free 10^7-element arrays before the next size

    def sympy_or_none(self, name: str) -> dict[str, Fn] | None:
        """SymPy's passes for op ``name``, or None (its column n/a) if they cannot be built."""
        try:
            return sympy_passes(name)
        except Exception as exc:  # e.g. a spec kind this script does not know yet
            self.notes.append(f"{name}: sympy column n/a ({type(exc).__name__}: {exc})")
            return None

    def time_case(self, case: Case, io: Inputs) -> Row:
        # The floor: copy the case's input into a preallocated array (read n, write n).
        src = io.arrays["x"][: case.numel]
        dst = np.empty_like(src)
        serial = src.size < PARALLEL_MIN_SIZE  # as symgrad's kernels
        calls = {"copy": (lambda: np.copyto(dst, src)) if serial
                 else (lambda: _parallel_copy(src, dst))} | case.calls
        with np.errstate(all="ignore"):  # naive NumPy/SymPy forms overflow harmlessly
            seconds, results = measure(calls, self.budget)
        flags: dict[str, str] = {}
        reference = None
        for col in COLUMNS:  # symgrad first: its result is the reference
            result = results.get(col)
            if isinstance(result, Exception):
                flags[col] = "err"
                self.notes.append(f"{case.op} {case.pass_} {io.dtype} n={case.numel} {col}: "
                                  f"{type(result).__name__}: {str(result).splitlines()[0]}")
            elif col in results and case.pass_ == "step":
                flags[col] = ""  # each call takes another step: states drift apart by design
            elif col in results:
                arrays = as_arrays(result)
                reference = arrays if col == "symgrad" else reference
                flags[col] = check(arrays, reference, io.dtype)
        copy = seconds.pop("copy")
        traffic = seconds.pop(TRAFFIC, None)
        if traffic is not None:
            ratios = ", ".join(f"{col} {seconds[col] / traffic:.2f}x"
                               for col in ("symgrad", "torch") if col in seconds)
            self.notes.append(f"{case.op} {io.dtype} n={case.numel}: the same memory traffic "
                              f"(4 arrays read, 3 written in place, Numba threads) takes "
                              f"{traffic * 1e3:.3g} ms; {ratios} of it")
        return Row(case.op, case.pass_, str(io.dtype), case.numel, copy, seconds, flags)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

HEADER = ["op", "pass", "dtype", "n", "copy ms", *(f"{c} ms" for c in COLUMNS),
          "symgrad/copy", *(f"{c}/symgrad" for c in COLUMNS[1:])]
WIDTHS = [34, 8, 7, 6, 8, 11, 10, 10, 10, 10, 12, 13, 13, 11, 13]


def _num(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _count(n: int) -> str:
    k = round(math.log10(n))
    return f"1e{k}" if 10**k == n else str(n)


def cells(row: Row) -> list[str]:
    ms = {c: _num(s * 1e3) + row.flags.get(c, "") for c, s in row.seconds.items()}
    sg = row.seconds.get("symgrad")
    ratios = [_num(sg / row.copy) if sg else "n/a"]
    for c in COLUMNS[1:]:
        ratios.append(_num(row.seconds[c] / sg) if sg and c in row.seconds else "n/a")
    times = [ms.get(c, row.flags.get(c) or "n/a") for c in COLUMNS]
    return [row.op, row.pass_, row.dtype, _count(row.numel), _num(row.copy * 1e3), *times,
            *ratios]


def text_line(values: list[str]) -> str:
    return "  ".join(v.ljust(w) if i < 3 else v.rjust(w)
                     for i, (v, w) in enumerate(zip(values, WIDTHS, strict=True)))


def threads() -> dict[str, str]:
    """Give PyTorch Numba's thread count, and describe what every library runs on."""
    n = numba.config.NUMBA_NUM_THREADS
    if torch is not None:
        torch.set_num_threads(n)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPUs available": str(cpus),
        "symgrad (Numba prange)": f"{n} threads (numba.config.NUMBA_NUM_THREADS), "
                                  f"SVML {'on' if numba.config.USING_SVML else 'off'}",
        "PyTorch": (f"{torch.get_num_threads()} intra-op threads (set to Numba's count)"
                    if torch is not None else "not installed"),
        "JAX": (f"XLA's own CPU thread pool, sized by XLA to the machine ({os.cpu_count()} CPUs)"
                if jax is not None else "not installed"),
        "NumPy, SymPy lambdify": "single-threaded (NumPy ufuncs)",
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("symgrad", "numpy", "numba", "torch", "jax", "jaxlib", "sympy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


METHOD = """\
- Every library runs in one process on the same arrays: x ~ 3·N(0, 1) (both sides of every kink),
  g ~ N(0, 1), targets N(0, 1) (mse), U(0, 1) (bce) and class indices (cross_entropy). Rowwise ops
  use shape (N, row) with N·row elements; cross_entropy logits are (N, 1000).
- Each time is the median over repeated calls after two warm-up calls (the first compiles Numba
  and XLA code). A sample repeats the call until it lasts 2 ms; samples go on for {budget} s per
  library, at least 5 and at most 50 of them, so 10^7-element passes run a handful of times and
  10^3-element ones thousands. Each library is sampled in a block of its own: interleaved, a call
  ran while the previous library's idle threads still spun (after a JAX call XLA's pool keeps
  both cores busy for milliseconds: a 3 ms symgrad pass took 8.5 ms right after one).
- Every library allocates its outputs, as in normal use; the copy floor (the input copied into a
  preallocated array: read n elements, write n; np.copyto below symgrad's parallel threshold,
  above it a Numba prange loop on the same threads as symgrad) does not. The script re-executes
  itself with glibc keeping freed memory in the process, in one arena for all threads, and
  touches 6 GiB of heap before timing (see Allocator above), so a 10^7-element output reuses
  pages already mapped, as the floor's does, for every library alike. With glibc's defaults
  each output above 32 MiB comes fresh from the kernel, page-faulted and zeroed on every call
  (about 2 ms per 40 MB here, 10 ms for torch's 4 KiB pages), and on this VM, which hands freed
  pages back to its host, some calls stall for 50-100 ms: `--system-malloc` measures that.
- symgrad: the generated kernels (`symgrad_kernels.OP_forward`, `OP_backward` from the saved output
  y where the op has an output form, else from x, `OP_forward_backward`).
- numpy: a plain NumPy expression of the same math (scipy.special.erf for gelu).
- torch: eager ops for forward; the functional backward (`torch.ops.aten.*_backward`, n/a where
  torch has none) for backward; eager forward + autograd `y.backward(g)` for fwd+bwd.
- jax: `jax.jit` of the forward, of `jax.vjp` (from x: JAX has no backward from a saved output)
  and of forward + vjp, each followed by `.block_until_ready()`; float64 via `jax_enable_x64`.
- sympy: `sympy.lambdify` (NumPy printer) of symgrad's own derivation (`symgrad.derive`), library
  functions expanded by `elementary_form`; rowwise ops and cross_entropy add the NumPy reductions
  (log-sum-exp, row sums) around the lambdified expressions.
- Losses use reduction='mean' and are timed forward+backward fused (grad_output = 1).
- OpenMP runs with its default (spinning) waits. OMP_WAIT_POLICY=PASSIVE was tried: it did not
  remove the swings of the 10^7 fused rows, and every library's 10^5 calls (torch's and Numba's
  parallel regions alike) became ~60 us slower from waking sleeping threads.
- Optimizer steps (Adam, torch.optim's default, foreach and fused paths) update the same
  parameters in place, one step per call. Their floor is not the copy but a Numba kernel with the
  step's memory traffic (read param, grad and both moments; write param and both moments) and next
  to no arithmetic; the notes give each step's time as a multiple of it.
- Ratios: symgrad/copy is how far symgrad is from the memory floor; LIB/symgrad > 1 means symgrad is
  faster. Flags: † the result came back in another dtype than the input's; ≠ the result differs
  from symgrad's (relative tolerance 1e-3 for float32, 1e-6 for float64, scaled by the largest
  value); err the call raised (see the notes).
"""


# The issues' speed targets, checked on every run: (name, which rows, symgrad must be at
# least this many times faster than each column; "copy" is a ceiling on symgrad/copy instead).
Target = tuple[str, Callable[[Row], bool], dict[str, float]]


def _rowwise(row: Row) -> bool:
    return row.op.split(" (N,")[0] in {op.name for op in UNARY_OPS if op.rows}


def _elementwise(row: Row) -> bool:
    return any(row.op == op.name for op in UNARY_OPS)


TARGETS: tuple[Target, ...] = (
    ("10^7 elementwise forward: >= PyTorch, <= 1.3x the copy",
     lambda r: r.numel == 10**7 and _elementwise(r) and r.pass_ == "forward",
     {"torch": 1.0, "copy": 1.3}),
    ("10^7 fused forward+backward: >= 3x PyTorch autograd, >= 1.5x JAX",
     lambda r: r.numel == 10**7 and (_elementwise(r) or _rowwise(r)) and r.pass_ == "fwd+bwd",
     {"torch": 3.0, "jax": 1.5}),
    ("10^7 softmax / log_softmax forward: >= 1.5x PyTorch, >= JAX",
     lambda r: r.numel == 10**7 and _rowwise(r) and r.pass_ == "forward",
     {"torch": 1.5, "jax": 1.0}),
    ("10^7 cross_entropy forward+backward: >= 3x PyTorch, >= 2x JAX",
     lambda r: r.numel == 10**7 and r.op.startswith("cross_entropy"),
     {"torch": 3.0, "jax": 2.0}),
    ("10^7 Adam step: >= 1.5x the fastest torch.optim path",
     lambda r: r.numel == 10**7 and r.pass_ == "step" and "fused" in r.op,
     {"torch": 1.5}),
    ("10^3 elements, every pass: no slower than PyTorch per call",
     lambda r: r.numel == 10**3, {"torch": 1.0}),
)


def floor_seconds(row: Row) -> float | None:
    """The time of the pass's array traffic at the copy's speed: the copy moves 2 arrays of n
    (read, write); a forward moves 2, a backward 3 (g, y, grad), a fused pass 4 (x, g, y,
    grad), a loss's forward+backward its operands and gradient (cross_entropy: logits and
    gradient). None for optimizer steps (their own floor is in the notes)."""
    if row.pass_ == "step":
        return None
    streams = {"forward": 2, "backward": 3}.get(row.pass_, 4)
    if not (_elementwise(row) or _rowwise(row)):
        streams = 2 if row.op.startswith("cross_entropy") else 3
    return row.copy * streams / 2


def target_lines(rows: list[Row]) -> list[str]:
    """Per target: how many rows meet it, and each row that misses, with its ratios and the
    best ratio the memory traffic would allow (LIB / floor)."""
    lines = ["| target | rows | met | missed: LIB/symgrad (LIB/floor: the most any kernel "
             "could reach) |", "|---|---:|---:|---|"]
    for name, selects, bounds in TARGETS:
        chosen = [r for r in rows if selects(r) and "symgrad" in r.seconds]
        if not chosen:
            continue
        missed = []
        for r in chosen:
            sg = r.seconds["symgrad"]
            misses = []
            for col, bound in bounds.items():
                if col == "copy" and sg / r.copy > bound:
                    misses.append(f"{sg / r.copy:.2g}x copy")
                elif col != "copy" and col in r.seconds and r.seconds[col] / sg < bound:
                    floor = floor_seconds(r)
                    best = f" ({r.seconds[col] / floor:.2g}x)" if floor else ""
                    misses.append(f"{col} {r.seconds[col] / sg:.2g}x{best}")
            if misses:
                missed.append(f"{r.op} {r.pass_} {r.dtype}: {', '.join(misses)}")
        shown = "; ".join(missed) if missed else "none"
        lines.append(f"| {name} | {len(chosen)} | {len(chosen) - len(missed)} | {shown} |")
    return lines if len(lines) > 2 else ["No target applies to the sizes and ops of this run."]


WHY_MISSED = """\
Why the misses are missed (measured on this machine, 2026-11-23; rerun the commands to check):

- Memory traffic. A pass cannot beat its array traffic; the LIB/floor ratio in the table is the
  most any kernel could reach in this run. A fused forward+backward moves 4 arrays and torch's
  forward then autograd backward 5, so where torch's kernels are fast (sigmoid, relu, silu) the
  floor allows well under 3x. The floor itself moves (on this VM a float32 copy of 10^7
  elements took 0.65-1.9 ms within one run): read the ratios to one digit. The Adam step runs
  at its own traffic floor (the notes: symgrad 1.0x of a kernel with the same 7 array streams and
  no arithmetic, torch's fused step 1.0-1.1x), so no in-place step can be 1.5x faster than
  torch's fused one at 10^7.
- Arithmetic. The transcendental forwards are compute-bound on 2 cores, hence their distance from
  the copy: per element in an in-cache loop (single thread, float32) sigmoid costs 0.26 ns, erfc
  0.78 ns, gelu's x·Φ(x) 0.82 ns (computed in float64 so that it is within 0.54 ULP; it was
  181 ULP) against 0.17 ns for the copy; softplus's log1p(e^-|x|) to 1.4 ULP about 1 ns. torch's
  float32 gelu is a float32 erf, 1.7e7 ULP off at worst (2.2e3 within [-3, 3]; scipy's ndtr in
  float64 as reference): 0.6-0.7x here is the price of the accuracy (ACCURACY.md). A
  float32-arithmetic x·Φ(x) (the same Mills-ratio polynomial, exp(-x²/2) from a split x²) ran
  1.7x faster in cache but was 6.9 ULP off at worst (mean 0.5; 1.2·10^7 points against
  scipy's ndtr in float64), over the 4-ULP target. relu, sigmoid and silu at 0.7-1.1x of torch
  (across runs) are at the floor together with it.
- Softmax and log_softmax forwards are a max pass, an exp pass, a sum and a scaling pass, as
  torch's. In cache (one thread, float32, rows of 1000) the exp pass takes 0.24 of the 0.36 ns
  per element (the max 0.035, the float64 sum 0.04, the division 0.05): the 1.5x target needs
  an exp twice as fast per element as torch's, and ours spends the difference on accuracy (the
  TwoSum correction of x - max: 63 -> 2.2 ULP). Short rows are no longer behind: the kernels
  take blocks of rows a pass at a time (a row at a time, a row of 32's max, exp, sum and log1p
  made one dependency chain; log_softmax (N,32) went from 0.5x to about 1x torch).
- cross_entropy: 2.3-2.8x torch (float32, across runs) against the 3x target. The kernel reads
  the logits twice (max, then exp, sum and gradient) and now also sums the row without the
  target's term (so that a dominant target's loss is exact, not 0).
- 10^3 elements: softplus's float64 forward and backward are kernel time (log1p and exp to
  1.4 ULP), not call overhead: a wrapper costs about 0.6 us and checks its parameters once per
  value (scripts/call_overhead.py).
"""


def markdown(bench: Bench, thread_info: dict[str, str], run_info: dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `python scripts/bench.py --markdown`; rerun it rather than editing this file.",
        "Timings come from a shared, noisy machine: read ratios to one significant digit.",
        "",
        "## Setup",
        "",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()}",
        *(f"- Threads, {k}: {v}" for k, v in thread_info.items()),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        *(f"- {k}: {v}" for k, v in run_info.items()),
        "",
        "## Method",
        "",
        METHOD.format(budget=bench.budget),
        "## Targets",
        "",
        "The speed targets of the issues, checked against this run (ratios: LIB/symgrad; the",
        "README says why the misses are missed).",
        "",
        *target_lines(bench.rows),
        "",
        WHY_MISSED,
        "## Results",
        "",
        "Times in milliseconds.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEADER))) + "|",
        *("| " + " | ".join(cells(row)) + " |" for row in bench.rows),
    ]
    if bench.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in bench.notes)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


# glibc serves every allocation above its mmap threshold (32 MiB at most by default) with fresh
# pages from the kernel and returns them on free, so every 10^7-element output is page-faulted and
# zeroed anew and, on a VM that reports freed pages to its host, now and then stalls 50-100 ms
# while the host backs them again. That is the allocator and the machine, not the op, and it
# swamps the 10^7 rows at random. So the script re-executes itself with glibc keeping freed memory
# in the process (its tunables are read only at start-up); --system-malloc keeps the defaults.
RETAINED_HEAP = ("glibc.malloc.mmap_threshold=34359738368:glibc.malloc.trim_threshold=68719476736:"
                 "glibc.malloc.arena_max=1")


def _reexec_with_retained_heap() -> None:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if ("--system-malloc" in sys.argv[1:] or "glibc.malloc.mmap_threshold" in tunables
            or not sys.platform.startswith("linux")):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, RETAINED_HEAP])))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


PREFAULT_BYTES = 6 << 30


def prefault_heap() -> None:
    """Touch PREFAULT_BYTES of heap once and free it: with freed memory kept in the process, later
    outputs reuse pages the VM's host already backs. Without it a library whose allocations grow
    the heap stalled on fresh pages for a whole row (torch's float64 softmax backward: 5 ms once
    the heap was grown, 130 ms per call before)."""
    if "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        block = np.ones(PREFAULT_BYTES // 8)
        del block


def allocator() -> str:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in tunables:
        return (f"glibc, freed memory kept in the process, one arena, {PREFAULT_BYTES >> 30} GiB "
                f"of heap touched before the run (GLIBC_TUNABLES={tunables})")
    return "the C library's defaults (--system-malloc, or not glibc on Linux)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [op.name for op in (*UNARY_OPS, *LOSSES, *STEPS)]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", metavar="N", type=lambda s: int(float(s)),
                        help="element counts, e.g. 1e3 1e5 (default: 1e3 1e5 1e7)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--ops", nargs="+", choices=names, metavar="OP",
                        help=f"ops to time (default: all): {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="only 1e3 and 1e5 elements")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                        help=f"time spent sampling each measurement (default {BUDGET_S})")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default allocator (fresh pages for every large "
                             "output) instead of a heap that keeps freed memory")
    parser.add_argument("--markdown", nargs="?", const=MARKDOWN, type=Path, metavar="PATH",
                        help=f"also write the table to PATH (default {MARKDOWN.name})")
    args = parser.parse_args(argv)
    if args.sizes and args.quick:
        parser.error("--quick and --sizes are exclusive")
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    if min(args.sizes) < 1:
        parser.error("sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else "bench.main(...)"
    if jax is not None:
        jax.config.update("jax_enable_x64", True)  # else float64 arrays silently become float32
    thread_info = threads()
    prefault_heap()

    chosen = [op for op in (*UNARY_OPS, *LOSSES, *STEPS)
              if args.ops is None or op.name in args.ops]
    ops, notes = [], []
    for op in chosen:
        if isinstance(op, Step):
            ops.append(op)
            continue
        reason = missing_kernels(op.name, PASSES if isinstance(op, Unary) else ("fwd+bwd",))
        if reason is None:
            ops.append(op)
        else:
            notes.append(f"{op.name}: skipped ({reason})")
    notes += [f"{lib} is not installed: its column shows n/a" for lib, mod in
              (("torch", torch), ("jax", jax)) if mod is None]
    for k, v in thread_info.items():
        print(f"# threads, {k}: {v}")
    print(f"# allocator: {allocator()}")
    for note in notes:
        print(f"# {note}")

    bench = Bench(ops, args.budget, notes)
    print(text_line(HEADER))
    load_before, start = os.getloadavg()[0], time.perf_counter()
    bench.run(args.sizes, args.dtypes, lambda row: print(text_line(cells(row)), flush=True))
    elapsed, load_after = time.perf_counter() - start, os.getloadavg()[0]
    for note in bench.notes[len(notes):]:
        print(f"# {note}")
    print(f"# {len(bench.rows)} rows in {elapsed:.0f} s; 1-minute load average "
          f"{load_before:.2f} before, {load_after:.2f} after")

    if args.markdown:
        try:
            layer = numba.threading_layer()  # known only once a parallel kernel has run
            thread_info["symgrad (Numba prange)"] += f", threading layer {layer}"
        except ValueError:
            pass
        run_info = {"Command": f"`{command}` (took {elapsed / 60:.1f} min)",
                    "Allocator": allocator(),
                    "Load average (1 min)": f"{load_before:.2f} before the run, "
                                            f"{load_after:.2f} after"}
        args.markdown.write_text(markdown(bench, thread_info, run_info))
        print(f"# wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    _reexec_with_retained_heap()
    sys.exit(main())
