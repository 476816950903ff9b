"""softmax-type ops at +inf entries: the limit, where torch gives nan (issue: ±inf in ⇒ the
mathematical limit). As an entry grows, softmax puts all the mass on it; with k entries at
+inf each gets 1/k, and log_softmax gives them -log k and -inf to the others."""

from __future__ import annotations

import math

import numpy as np
import pytest
import symgrad_kernels as K

DTYPES = (np.float32, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,sign", [("softmax", 1), ("log_softmax", 1), ("softmin", -1)])
@pytest.mark.parametrize("n", [3, 40000])  # serial and parallel kernels
def test_rows_with_inf_entries_take_the_limit(name, sign, dtype, n):
    x = np.zeros((2, n // 2 if n > 3 else 3), dtype=dtype)
    x[0, :3] = [np.inf, 1.0, 2.0]
    x[1, :3] = [np.inf, np.inf, 0.0]
    x *= sign
    counts = np.array([1, 2])
    hit = np.isinf(x)
    if name == "log_softmax":
        want = np.where(hit, -np.log(counts)[:, None], -np.inf).astype(dtype)
    else:
        want = np.where(hit, 1.0 / counts[:, None], 0.0).astype(dtype)
    forward = getattr(K, f"{name}_forward")
    np.testing.assert_allclose(forward(x), want, rtol=1e-6)
    g = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype)
    y, grad = getattr(K, f"{name}_forward_backward")(x, g)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, getattr(K, f"{name}_backward")(g, y=y), rtol=1e-6,
                               atol=1e-6)
    # the VJP of the limit: softmax's y ⊙ (g - <g, y>), log_softmax's g - e^y Σg
    s = np.exp(want.astype(np.float64)) if name == "log_softmax" else want.astype(np.float64)
    gs = g.astype(np.float64)
    if name == "log_softmax":
        vjp = gs - s * gs.sum(axis=1, keepdims=True)
    else:
        vjp = s * (gs - (gs * s).sum(axis=1, keepdims=True))
        vjp = -vjp if name == "softmin" else vjp
    np.testing.assert_allclose(grad, vjp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_without_a_limit_stay_nan(dtype):
    """All entries -inf (0/0) or a nan entry: no limit, nan as in torch."""
    y = K.softmax_forward(np.array([[-np.inf, -np.inf], [np.nan, 1.0]], dtype=dtype))
    assert np.isnan(y).all()
    assert math.isnan(float(K.log_softmax_forward(np.array([np.nan, np.inf], dtype=dtype))[1]))
