"""Structural checks behind the CPU speed work (issue 5); no timings.

* Library functions with a _vecmath implementation use it, and the loops that call the library
  helpers vectorize (packed instructions in the assembly, as tests/test_vecmath.py checks for
  the helpers alone).
* Importing the package loads no op module: each op module is imported on first use.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import symgrad_kernels as K

from symgrad.functions import LIBRARY
from symgrad.render import vecmath_names

GENERATED = Path(K.__file__).resolve().parent.parent


@pytest.mark.parametrize("fn", LIBRARY, ids=lambda f: f.__name__)
def test_library_helper_is_vecmath_where_vecmath_has_it(fn):
    from symgrad_kernels import _functions, _vecmath

    for suffix in ("f32", "f64"):
        name = f"{fn.__name__}_{suffix}"
        helper = getattr(_functions, name)
        if name in vecmath_names():
            assert helper is getattr(_vecmath, name)
        else:
            assert helper.__module__ == _functions.__name__


def _fresh_asm(kernel, *args) -> str:
    """Assembly of a kernel compiled anew (cached code cannot be inspected)."""
    fresh = numba.njit(error_model="numpy")(kernel.py_func)
    fresh(*args)
    return fresh.inspect_asm(fresh.signatures[0])


@pytest.mark.skipif(not re.match(r"x86|AMD64|i.86", platform.machine()),
                    reason="x86 mnemonics")
@pytest.mark.parametrize("op", ["sigmoid", "softplus", "logsigmoid", "silu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_library_function_loops_vectorize(op, dtype):
    module = importlib.import_module(f"symgrad_kernels.{op}")
    suffix = "float32" if dtype == np.float32 else "float64"
    n = 64
    x = np.linspace(-30, 30, n).astype(dtype)
    params = tuple(dtype(v) for v in ((1.0, 20.0) if op == "softplus" else ()))
    p = "s" if dtype == np.float32 else "d"
    for name, args in [("_forward", (x, np.empty_like(x), *params, n)),
                       ("_forward_backward", (x, x, np.empty_like(x), np.empty_like(x),
                                              *params, n))]:
        asm = _fresh_asm(getattr(module, f"{name}_ser_{suffix}"), *args)
        # fused multiply-adds count: the polynomials contract into them
        packed = re.findall(rf"\bv?(?:mul|add|sub|f(?:n?m)(?:add|sub)\d*)p{p}\s+%[xyz]mm", asm)
        assert len(packed) >= 8, f"{op}{name} {suffix}: only {len(packed)} packed instructions"


def test_import_loads_no_op_module():
    code = ("import sys, symgrad_kernels as K\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('symgrad_kernels.'))\n"
            "assert loaded == [], loaded\n"
            "K.tanh_forward\n"
            "assert 'symgrad_kernels.tanh' in sys.modules and 'symgrad_kernels.relu' not in "
            "sys.modules\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(GENERATED), *sys.path])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr


def test_every_public_name_resolves():
    for name in K.__all__:
        assert getattr(K, name) is not None, name
    assert set(K.__all__) <= set(dir(K))
    for op in K.OPS:  # the op modules stay reachable as attributes, as with an eager import
        assert getattr(K, op).__name__ == f"symgrad_kernels.{op}"
    with pytest.raises(AttributeError, match="no attribute 'no_such_op_forward'"):
        K.no_such_op_forward  # noqa: B018
