"""Shared helpers: the registry as test parameters, references and tolerances."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import sympy as sp

import symgrad.ops  # noqa: F401  (registers the catalog)
from symgrad.spec import REGISTRY

DTYPES = (np.float32, np.float64)
# Tolerances relative to the largest magnitude of the reference: gradients such as
# softmax's y*(g - <g, y>) cancel, and elementwise relative error says nothing there.
RTOL = {np.float32: 2e-5, np.float64: 1e-10}


def ops_of(kind: str) -> list:
    return [pytest.param(s, id=s.name) for s in REGISTRY if s.kind == kind]


def kernels():
    return importlib.import_module("symgrad_kernels")


def kernel(spec, which: str):
    return getattr(kernels(), f"{spec.name}_{which}")


def torch_fn(spec):
    module, _, name = spec.torch.function.rpartition(".")
    return getattr(importlib.import_module(module), name)


def assert_close(actual, expected, dtype, what: str, rtol: float | None = None) -> None:
    """Elementwise |a - e| <= rtol·(|e| + max|e|), nan where nan, inf where inf."""
    rtol = RTOL[dtype] if rtol is None else rtol
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), f"{what}: nan at {np.argwhere(nan_a != nan_e)[:5]}"
    inf = np.isinf(e)
    assert np.array_equal(a[inf], e[inf]), f"{what}: infinities differ"
    ok = ~(nan_e | inf)
    if not ok.any():
        return
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.max(np.abs(e[ok]))
        err = np.abs(a[ok] - e[ok])
        bound = rtol * (np.abs(e[ok]) + scale) + np.finfo(dtype).tiny
    worst = np.argmax(err / bound)
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3e} > {bound[worst]:.3e} at expected {e[ok][worst]!r}, "
        f"got {a[ok][worst]!r}")


def param_values(spec) -> dict[str, float]:
    """Non-default parameter values inside each domain, to test parameters really flow through."""
    out = {}
    for p in spec.numeric_params:
        v = float(p.default)
        v = v * 1.5 + 0.25 if p.minimum is None or v * 1.5 + 0.25 > p.minimum else v
        out[p.name] = v
    return out


def mp_function(expr, symbols):
    """A 30-digit mpmath evaluator of a SymPy expression (library functions expanded)."""
    from symgrad.functions import elementary_form

    return sp.lambdify(symbols, elementary_form(expr), modules="mpmath")
