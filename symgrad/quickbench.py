"""`python -m symgrad bench OP`: a quick side-by-side timing of one op.

symgrad's kernels against the same formula in NumPy (lambdified from the spec, forward only) and
PyTorch's own function (forward, and backward through autograd) when torch is installed and the
op names one. Inputs are fed by the generated wrappers' argument names, so no op or kind is known
here by name. For maintained numbers use scripts/bench.py; this is for a look at one op.
"""

from __future__ import annotations

import importlib
import inspect
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sympy as sp

from symgrad.functions import elementary_form
from symgrad.spec import LSE, XT, OpSpec, T, X


class NotBenchable(ValueError):
    """The op's functions are not the forward/backward shape bench knows how to feed."""


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: compiles, fills caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _kernels(spec: OpSpec, ops) -> object:
    """The generated package holding ``spec``: the catalog's, or a user package built now."""
    if not ops.user:
        return importlib.import_module(ops.package)
    from symgrad.userops import generate

    folder = Path(tempfile.mkdtemp(prefix="symgrad-bench-"))
    return generate([spec], package=f"bench_{spec.name}", out=folder).load()


def _inputs(spec: OpSpec, forward: Callable, n: int, dtype: str,
            rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An array for each argument the forward wrapper requires, by its name: the input is
    standard normal; a target holds class indices if the formula reads the target's logit
    (x_t), else values in [0, 1]; any other operand is standard normal too."""
    rows = max(n // 1000, 1) if LSE in spec.formula_symbols or XT in spec.formula_symbols else n
    shape = (rows, n // rows) if rows != n else (n,)
    x = rng.standard_normal(shape).astype(dtype)
    arrays = {"x": x, "input": x, "grad_output": np.ones_like(x)}
    for p in inspect.signature(forward).parameters.values():
        if p.default is not inspect.Parameter.empty or p.kind is p.KEYWORD_ONLY \
                or p.name in arrays:
            continue
        if p.name == "target" and XT in spec.formula_symbols:  # class indices along dim 1
            arrays["target"] = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64)
        elif p.name == "target":
            arrays["target"] = rng.uniform(0, 1, shape).astype(dtype)
        else:
            arrays[p.name] = rng.standard_normal(shape).astype(dtype)
    return arrays


def _call(fn: Callable, arrays: dict[str, np.ndarray], keyword: dict[str, object]) -> Callable:
    args = []
    kwargs = dict(keyword)
    for p in inspect.signature(fn).parameters.values():
        if p.default is not inspect.Parameter.empty or p.name in kwargs:
            continue
        if p.name not in arrays:
            raise NotBenchable(f"bench cannot feed argument {p.name!r} of {fn.__name__}")
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = arrays[p.name]
        else:
            args.append(arrays[p.name])
    return lambda: fn(*args, **kwargs)


def _numpy_forward(spec: OpSpec, arrays: dict[str, np.ndarray]) -> Callable | None:
    formulas = list(spec.formulas().values())
    if len(formulas) != 1 or XT in formulas[0].free_symbols:
        return None
    formula = formulas[0]
    subs = {p.symbol: p.default for p in spec.numeric_params}
    subs.update({p.symbol: p.default for p in getattr(spec, "tensor_params", ())})
    expr = elementary_form(formula.subs(subs))
    f = sp.lambdify([X, T, LSE], expr, modules="numpy")
    x = arrays["x"]
    t = arrays.get("target", x)
    if not expr.free_symbols <= {X, T, LSE}:
        return None

    def run():
        with np.errstate(all="ignore"):
            lse = None
            if LSE in expr.free_symbols:
                m = x.max(axis=-1, keepdims=True)
                lse = np.log(np.exp(x - m).sum(axis=-1, keepdims=True)) + m
            return f(x, t, lse)

    return run


def _torch(spec: OpSpec, arrays: dict[str, np.ndarray], positional: list[str],
           forward_kw: dict) -> tuple | None:
    if spec.torch is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    module, _, name = spec.torch.function.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    rename = dict(spec.torch.rename)
    kw = {rename.get(k, k): v for k, v in forward_kw.items() if rename.get(k, k) is not None}
    try:  # only what torch's function takes (our seed=, for one, it does not)
        accepted = inspect.signature(fn).parameters
        kw = {k: v for k, v in kw.items() if k in accepted}
    except (TypeError, ValueError):  # a builtin without a signature
        kw = {k: v for k, v in kw.items() if k == "dim"}
    x = torch.from_numpy(arrays[positional[0]])
    extra = [torch.from_numpy(arrays[name]) for name in positional[1:]]
    g = torch.from_numpy(arrays["grad_output"])

    def forward():
        with torch.no_grad():
            return fn(x, *extra, **kw)

    def both():
        xg = x.detach().requires_grad_(True)
        y = fn(xg, *extra, **kw)
        (y * g).sum().backward() if y.shape == g.shape else y.sum().backward()
        return xg.grad

    return forward, both


def bench_op(spec: OpSpec, ops, *, size: int = 1_000_000, dtype: str = "float32",
             repeat: int = 20) -> str:
    """A small table: forward / backward / fused times of symgrad, NumPy and PyTorch."""
    from symgrad.kinds import kind_of

    names = [f"{spec.name}_{part}" for part in ("forward", "backward", "forward_backward")]
    missing = [n for n in names if n not in kind_of(spec).exports(spec)]
    if missing:
        raise NotBenchable(f"bench times <op>_forward/_backward; {spec.name} exports "
                         f"{', '.join(kind_of(spec).exports(spec))} instead")
    kernels = _kernels(spec, ops)
    rng = np.random.default_rng(0)
    forward, backward, fused = (getattr(kernels, n) for n in names)
    arrays = _inputs(spec, forward, size, dtype, rng)
    forward_params = inspect.signature(forward).parameters
    positional = [p.name for p in forward_params.values()
                  if p.default is inspect.Parameter.empty and p.kind is not p.KEYWORD_ONLY]
    keyword: dict[str, object] = {"dim": -1} if "dim" in forward_params else {}
    if "seed" in forward_params:  # random ops regenerate their noise from a seed
        keyword["seed"] = 0
    try:
        arrays["y"] = forward(*[arrays[n] for n in positional], **keyword)
    except ValueError:  # an operand such as a learnable weight: one value for all
        for name in positional[1:]:
            if name != "target":
                arrays[name] = arrays[name].reshape(-1)[:1].copy()
        arrays["y"] = forward(*[arrays[n] for n in positional], **keyword)
    if isinstance(arrays["y"], np.ndarray):  # the upstream gradient has the output's shape
        arrays["grad_output"] = np.ones_like(arrays["y"])
    back_kw = dict(keyword)
    from symgrad.derive import derive

    needs = getattr(derive(spec), "backward_needs", None)  # "y" or "x" where the kind says
    back_params = inspect.signature(backward).parameters
    if needs in ("x", "y") and needs in back_params:
        back_kw[needs] = arrays[needs]
    rows = [("symgrad (Numba)", _median_ms(_call(forward, arrays, keyword), repeat),
             _median_ms(_call(backward, arrays, back_kw), repeat),
             _median_ms(_call(fused, arrays, keyword), repeat))]
    numpy_forward = _numpy_forward(spec, arrays)
    if numpy_forward is not None:
        rows.append(("NumPy (the formula)", _median_ms(numpy_forward, repeat), None, None))
    torch_fns = _torch(spec, arrays, positional, keyword)
    if torch_fns is not None:
        rows.append(("PyTorch (CPU)", _median_ms(torch_fns[0], repeat), None,
                     _median_ms(torch_fns[1], repeat)))
    shape = "x".join(map(str, arrays["x"].shape))
    lines = [f"{spec.name}: {shape} {dtype}, median of {repeat} runs after a warm-up (ms)",
             f"  {'':<22}{'forward':>10}{'backward':>10}{'fwd+bwd':>10}"]
    for name, *times in rows:
        cells = "".join(f"{t:>10.3f}" if t is not None else f"{'-':>10}" for t in times)
        lines.append(f"  {name:<22}{cells}")
    if torch_fns is None:
        lines.append("  PyTorch: not installed, or the op names no PyTorch function")
    return "\n".join(lines)


__all__ = ["NotBenchable", "bench_op"]
