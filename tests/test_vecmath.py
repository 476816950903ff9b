"""Tests for templates/cpu/vecmath.py: accuracy against mpmath, special values,
float32 purity and loop vectorization.

The module is loaded from its path, as the code generator copies it verbatim.  The
larger accuracy sweep is not part of the test run; run it with

    python tests/test_vecmath.py --points 100000
"""

import argparse
import importlib.util
import math
import platform
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import mpmath
import numba
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
VECMATH_PATH = REPO / "templates" / "cpu" / "vecmath.py"
MODULE_NAME = "symgrad_vecmath_under_test"

FUNCS = ["exp", "expm1", "log", "log1p", "tanh", "erf", "erfc", "sigmoid"]
# gelu's x Phi(x) and its derivative Phi(x) + x phi(x): their float32 versions compute in
# float64 (rounded once at the end), so they are left out of the float32 purity check
GELU_FUNCS = ["xncdf", "ncdf_xpdf"]
ALL_FUNCS = FUNCS + GELU_FUNCS
DTYPES = {"f32": np.float32, "f64": np.float64}
TEST_POINTS = 20_000  # per function and dtype
MAX_ULP = 2.0  # for exact results in the normal range
# erfc's tail is e^(-a^2) F(a): the rounded exponential, the polynomial (whose float32
# coefficients alone are 2^-24 off) and the product add up (the issue's target is 4)
MAX_ULP_OF = {"erfc": 4.0, "sigmoid": 2.5,  # sigmoid: e^-|x| carried once, see its docstring
              # gelu's issue targets: forward 4, derivative 8 (float32: < 0.6 measured)
              "xncdf": 4.0, "ncdf_xpdf": 8.0}
MAX_SUBNORMAL_STEPS = 1.0  # for exact results in the subnormal range
MAX_SUBNORMAL_STEPS_OF = {"erfc": 2.0}  # its 2-3 ULP relative error shows near 2^-126


def _load_vecmath() -> ModuleType:
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, VECMATH_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # numba's on-disk cache re-imports the defining module by name
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


vm = _load_vecmath()


def _sigmoid_ref(v: mpmath.mpf) -> mpmath.mpf:
    return 1 / (1 + mpmath.exp(-v))


def _erfc_ref(v: mpmath.mpf) -> mpmath.mpf:
    # mpmath's erfc overflows internally for huge arguments; beyond 30 it is below every
    # subnormal (erfc(30) = 2.6e-393), so 0 and 2 are exact enough there
    if abs(v) > 30:
        return mpmath.mpf(0) if v > 0 else mpmath.mpf(2)
    return mpmath.erfc(v)


def _ncdf_ref(v: mpmath.mpf) -> mpmath.mpf:
    return _erfc_ref(-v / mpmath.sqrt(2)) / 2


def _xncdf_ref(v: mpmath.mpf) -> mpmath.mpf:
    return v * _ncdf_ref(v)


def _ncdf_xpdf_ref(v: mpmath.mpf) -> mpmath.mpf:
    # the two terms cancel near -0.7518: extra digits keep the difference exact
    with mpmath.extradps(40):
        v = mpmath.mpf(v)
        if abs(v) > 60:
            return mpmath.mpf(0) if v < 0 else mpmath.mpf(1)
        return _ncdf_ref(v) + v * mpmath.exp(-v * v / 2) / mpmath.sqrt(2 * mpmath.pi)


REFERENCE = {
    "exp": mpmath.exp,
    "expm1": mpmath.expm1,
    "log": mpmath.log,
    "log1p": mpmath.log1p,
    "tanh": mpmath.tanh,
    "erf": mpmath.erf,
    "erfc": _erfc_ref,
    "sigmoid": _sigmoid_ref,
    "xncdf": _xncdf_ref,
    "ncdf_xpdf": _ncdf_xpdf_ref,
    "exp_nonpos": mpmath.exp,  # swept over x <= 0 only (test_exp_nonpos_sweep)
}

# Where each function is not trivially constant/overflowing: half of the sweep points
# are uniform in this interval, the other half log-uniform over the whole range.
CORE = {
    "exp": {"f32": (-104.0, 89.0), "f64": (-746.0, 710.0)},
    "expm1": {"f32": (-20.0, 89.0), "f64": (-40.0, 710.0)},
    "log": {"f32": (0.0, 4.0), "f64": (0.0, 4.0)},
    "log1p": {"f32": (-1.0, 4.0), "f64": (-1.0, 4.0)},
    "tanh": {"f32": (-10.0, 10.0), "f64": (-20.0, 20.0)},
    "erf": {"f32": (-4.0, 4.0), "f64": (-6.0, 6.0)},
    "erfc": {"f32": (-4.0, 10.1), "f64": (-6.0, 27.3)},
    "sigmoid": {"f32": (-104.0, 20.0), "f64": (-746.0, 40.0)},
    "exp_nonpos": {"f32": (-104.0, 0.0), "f64": (-746.0, 0.0)},
    "xncdf": {"f32": (-15.0, 6.0), "f64": (-39.0, 9.0)},
    "ncdf_xpdf": {"f32": (-15.0, 6.0), "f64": (-39.0, 9.0)},
}


@cache
def kernel(name: str, suffix: str):
    """A plain @njit loop applying vecmath.<name>_<suffix> elementwise (compiled)."""
    func = getattr(vm, f"{name}_{suffix}")

    @numba.njit
    def apply_elementwise(x, out):
        for i in range(x.shape[0]):
            out[i] = func(x[i])

    dtype = DTYPES[suffix]
    apply_elementwise(np.zeros(4, dtype), np.zeros(4, dtype))
    return apply_elementwise


def evaluate(name: str, suffix: str, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    kernel(name, suffix)(x, out)
    return out


def special_points(dtype) -> np.ndarray:
    fi = np.finfo(dtype)
    vals = [0.0, 1.0, 0.5, 2.0, 1e-3, fi.smallest_subnormal, fi.tiny, fi.eps, fi.max]
    vals += [88.72, 88.7228, 89.0, 103.9, 104.0, 709.78, 709.79, 745.1, 0.875, 0.5493, 3.92]
    vals += [5.92, 9.0, 19.0, 30.0, 0.34657359, 0.6931472, 1.0397208, 17.3, 37.4]
    vals += [0.25, 1.875, 4.5, 10.05, 10.1, 26.5, 27.2, 27.3]  # erfc's pieces and tail
    vals += [0.7517915246935645, 0.75179154, 0.3, 1.2374, 1.2375, 2.0, 14.99, 15.0, 37.7,
             38.6, 38.89, 38.9]  # gelu's zero of Phi + x phi, pieces and tails
    pts = np.array(vals, dtype=np.float64)
    with np.errstate(over="ignore"):
        pts = np.concatenate([pts, -pts]).astype(dtype)
    return pts[np.isfinite(pts)]


def sample_points(name: str, suffix: str, n: int, seed: int = 0) -> np.ndarray:
    """Deterministic sweep points: log-uniform magnitudes over the whole finite range
    (both signs, subnormals included), uniform points in CORE, special points."""
    dtype = DTYPES[suffix]
    fi = np.finfo(dtype)
    rng = np.random.default_rng(seed)
    n_log = n // 2
    lo, hi = math.log2(float(fi.smallest_subnormal)), math.log2(float(fi.max))
    log_part = np.exp2(rng.uniform(lo, hi, n_log)) * rng.choice([-1.0, 1.0], n_log)
    core_lo, core_hi = CORE[name][suffix]
    core_part = rng.uniform(core_lo, core_hi, n - n_log)
    with np.errstate(over="ignore"):
        x = np.concatenate([log_part, core_part]).astype(dtype)
    x = x[np.isfinite(x)]
    return np.concatenate([x, special_points(dtype)])


@dataclass
class SweepResult:
    points: int
    max_ulp: float  # over exact results in the normal range
    worst_x: float
    frac_over_half_ulp: float
    max_subnormal_steps: float  # over exact results in the subnormal range
    failures: list  # special results (inf / nan / domain) that were wrong


def sweep(name: str, suffix: str, x: np.ndarray) -> SweepResult:
    dtype = DTYPES[suffix]
    fi = np.finfo(dtype)
    fmax, tiny = mpmath.mpf(float(fi.max)), mpmath.mpf(float(fi.tiny))
    overflow = fmax * (1 + mpmath.mpf(2) ** -(fi.nmant + 1))  # beyond: rounds to inf
    step = mpmath.mpf(float(fi.smallest_subnormal))
    y = evaluate(name, suffix, x)
    ref = REFERENCE[name]
    ulps = np.zeros(len(x))
    subnormal = 0.0
    failures = []
    edge = {"log": 0.0, "log1p": -1.0}.get(name)  # domain boundary
    with mpmath.workdps(50):
        for i, (xi, yi) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
            # outside the domain: nan, at its edge: -inf
            if edge is not None and xi <= edge:
                want = -math.inf if xi == edge else math.nan
                if not (yi == want or (math.isnan(want) and math.isnan(yi))):
                    failures.append((xi, yi, want))
                continue
            exact = ref(mpmath.mpf(xi))
            mag = abs(exact)
            if mag > overflow:
                if not (math.isinf(yi) and (yi > 0) == (exact > 0)):
                    failures.append((xi, yi, "inf"))
            elif mag > fmax:
                continue  # rounds to max or inf
            elif mag >= tiny:
                spacing = float(np.spacing(abs(dtype(float(exact)))))
                if not math.isfinite(yi):
                    failures.append((xi, yi, float(exact)))
                    continue
                ulps[i] = float(abs(mpmath.mpf(yi) - exact)) / spacing
            else:
                err = float(abs(mpmath.mpf(yi) - exact) / step) if math.isfinite(yi) else math.inf
                subnormal = max(subnormal, err)
    worst = int(np.argmax(ulps))
    return SweepResult(
        points=len(x),
        max_ulp=float(ulps[worst]),
        worst_x=float(x[worst]),
        frac_over_half_ulp=float(np.mean(ulps > 0.5)),
        max_subnormal_steps=subnormal,
        failures=failures,
    )


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", DTYPES)
@pytest.mark.parametrize("name", ALL_FUNCS)
def test_accuracy_sweep(name: str, suffix: str) -> None:
    x = sample_points(name, suffix, TEST_POINTS, seed=1234)
    res = sweep(name, suffix, x)
    assert not res.failures, res.failures[:10]
    limit = MAX_ULP_OF.get(name, MAX_ULP)
    assert res.max_ulp <= limit, f"{res.max_ulp:.3f} ULP at x={res.worst_x!r}"
    assert res.max_subnormal_steps <= MAX_SUBNORMAL_STEPS_OF.get(name, MAX_SUBNORMAL_STEPS)


@pytest.mark.parametrize("suffix", DTYPES)
def test_exp_nonpos_sweep(suffix: str) -> None:
    """exp_nonpos (softmax's e^(x - max)) is exp's accuracy on its domain, x <= 0."""
    x = -np.abs(sample_points("exp_nonpos", suffix, TEST_POINTS, seed=4321))
    res = sweep("exp_nonpos", suffix, x)
    assert not res.failures, res.failures[:10]
    assert res.max_ulp <= MAX_ULP, f"{res.max_ulp:.3f} ULP at x={res.worst_x!r}"
    assert res.max_subnormal_steps <= MAX_SUBNORMAL_STEPS
    edge = {"f32": (-104.0, -103.0, 1.401298464324817e-45),
            "f64": (-746.0, -745.0, 5e-324)}[suffix]
    specials = [(NAN, NAN), (-INF, 0.0), (0.0, 1.0), (-0.0, 1.0), (edge[0], 0.0),
                (edge[1], edge[2])]
    got = evaluate("exp_nonpos", suffix, np.array([v for v, _ in specials], DTYPES[suffix]))
    for (v, want), y in zip(specials, got.tolist(), strict=True):
        assert _same(y, want), (v, y, want)


@pytest.mark.parametrize("suffix", DTYPES)
def test_log_subnormal_inputs(suffix: str) -> None:
    """log of subnormals (rescaled before the exponent is read) stays within 1 ULP."""
    dtype = DTYPES[suffix]
    fi = np.finfo(dtype)
    # every power of two below the normal range, and random subnormal mantissas
    bits = np.arange(1, fi.nmant + 1)
    x = (float(fi.tiny) * np.exp2(-bits.astype(np.float64))).astype(dtype)
    rng = np.random.default_rng(7)
    x = np.concatenate([x, (rng.uniform(0, 1, 500) * float(fi.tiny)).astype(dtype)])
    x = x[x > 0]
    res = sweep("log", suffix, x)
    assert res.max_ulp <= 1.0 and not res.failures


# ---------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------

NAN, INF = math.nan, math.inf

# (function, input, expected) for both dtypes; zeros are compared with their sign
COMMON_SPECIALS = [
    ("exp", NAN, NAN),
    ("exp", INF, INF),
    ("exp", -INF, 0.0),
    ("exp", 0.0, 1.0),
    ("exp", -0.0, 1.0),
    ("expm1", NAN, NAN),
    ("expm1", INF, INF),
    ("expm1", -INF, -1.0),
    ("expm1", 0.0, 0.0),
    ("expm1", -0.0, -0.0),
    ("expm1", -1e4, -1.0),
    ("log", NAN, NAN),
    ("log", INF, INF),
    ("log", -INF, NAN),
    ("log", 0.0, -INF),
    ("log", -0.0, -INF),
    ("log", -1.0, NAN),
    ("log", 1.0, 0.0),
    ("log1p", NAN, NAN),
    ("log1p", INF, INF),
    ("log1p", -INF, NAN),
    ("log1p", -1.0, -INF),
    ("log1p", -2.0, NAN),
    ("log1p", 0.0, 0.0),
    ("log1p", -0.0, -0.0),
    ("tanh", NAN, NAN),
    ("tanh", INF, 1.0),
    ("tanh", -INF, -1.0),
    ("tanh", 0.0, 0.0),
    ("tanh", -0.0, -0.0),
    ("tanh", 1e4, 1.0),
    ("tanh", -1e4, -1.0),
    ("erf", NAN, NAN),
    ("erf", INF, 1.0),
    ("erf", -INF, -1.0),
    ("erf", 0.0, 0.0),
    ("erf", -0.0, -0.0),
    ("erf", 10.0, 1.0),
    ("erf", -10.0, -1.0),
    ("erfc", NAN, NAN),
    ("erfc", INF, 0.0),
    ("erfc", -INF, 2.0),
    ("erfc", 0.0, 1.0),
    ("erfc", -0.0, 1.0),
    ("erfc", 1e4, 0.0),
    ("erfc", -1e4, 2.0),
    ("erfc", -30.0, 2.0),
    ("sigmoid", NAN, NAN),
    ("sigmoid", INF, 1.0),
    ("sigmoid", -INF, 0.0),
    ("sigmoid", 0.0, 0.5),
    ("sigmoid", -0.0, 0.5),
    ("sigmoid", 1e4, 1.0),
    ("sigmoid", -1e4, 0.0),
    ("xncdf", NAN, NAN),
    ("xncdf", INF, INF),
    ("xncdf", -INF, 0.0),
    ("xncdf", 0.0, 0.0),
    ("xncdf", 1e4, 1e4),
    ("xncdf", -1e4, 0.0),
    ("ncdf_xpdf", NAN, NAN),
    ("ncdf_xpdf", INF, 1.0),
    ("ncdf_xpdf", -INF, 0.0),
    ("ncdf_xpdf", 0.0, 0.5),
    ("ncdf_xpdf", -0.0, 0.5),
    ("ncdf_xpdf", 1e4, 1.0),
    ("ncdf_xpdf", -1e4, 0.0),
]

DTYPE_SPECIALS = {
    "f32": [
        ("exp", 89.0, INF),
        ("exp", 88.72, 3.3931806e38),
        ("exp", 3.4e38, INF),
        ("exp", -104.0, 0.0),
        ("exp", -103.0, 1.401298464324817e-45),  # subnormal: one step
        ("exp", -3.4e38, 0.0),
        ("expm1", 89.0, INF),
        ("expm1", -30.0, -1.0),
        ("sigmoid", -104.0, 0.0),
        ("erfc", 10.1, 0.0),
    ],
    "f64": [
        ("exp", 710.0, INF),
        ("exp", 709.78, 1.7928227943945155e308),
        ("exp", 1.7e308, INF),
        ("exp", -746.0, 0.0),
        ("exp", -745.0, 5e-324),
        ("exp", -1.7e308, 0.0),
        ("expm1", 710.0, INF),
        ("expm1", -40.0, -1.0),
        ("sigmoid", -746.0, 0.0),
        ("erfc", 27.3, 0.0),
    ],
}


def _same(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


@pytest.mark.parametrize("suffix", DTYPES)
def test_special_values(suffix: str) -> None:
    dtype = DTYPES[suffix]
    cases = COMMON_SPECIALS + DTYPE_SPECIALS[suffix]
    bad = []
    for name in ALL_FUNCS:
        mine = [(x, want) for fn, x, want in cases if fn == name]
        xs = np.array([x for x, _ in mine], dtype=dtype)
        wants = [float(dtype(w)) for _, w in mine]
        # tiled past the vector width so the vectorized loop body is exercised, and
        # once more through a direct (scalar) call
        tiled = evaluate(name, suffix, np.tile(xs, 64)).reshape(64, -1)
        scalar = [getattr(vm, f"{name}_{suffix}")(dtype(x)) for x in xs]
        for j, want in enumerate(wants):
            for got in [*tiled[:, j].tolist(), scalar[j]]:
                if not _same(float(got), want):
                    bad.append((name, float(xs[j]), float(got), want))
                    break
    assert not bad, bad


@pytest.mark.parametrize("suffix", DTYPES)
def test_tiny_inputs_pass_through(suffix: str) -> None:
    """expm1, log1p, tanh are x for |x| tiny (subnormals and signed zeros included)."""
    dtype = DTYPES[suffix]
    fi = np.finfo(dtype)
    x = np.array([fi.smallest_subnormal, 3 * fi.smallest_subnormal, fi.tiny / 3, fi.tiny])
    x = np.concatenate([x, -x]).astype(dtype)
    for name in ["expm1", "log1p", "tanh"]:
        y = evaluate(name, suffix, x)
        assert np.array_equal(y, x), (name, x, y)


# ---------------------------------------------------------------------------
# Types and float32 purity
# ---------------------------------------------------------------------------


def _scalar_caller(func):
    @numba.njit
    def call(v):
        return func(v)

    return call


@pytest.mark.parametrize("name", ALL_FUNCS)
def test_return_types(name: str) -> None:
    """Numba's type inference: <name>_f32 returns float32 (also for a float64 argument,
    which it converts first), <name>_f64 returns float64."""
    for suffix, dtype in DTYPES.items():
        call = _scalar_caller(getattr(vm, f"{name}_{suffix}"))
        for arg in (np.float32(0.25), np.float64(0.25)):
            call(arg)
        ret = {sig.return_type for sig in call.nopython_signatures}
        assert ret == {numba.from_dtype(dtype)}, (name, suffix, ret)


def _kernel_ir(name: str, suffix: str) -> str:
    """LLVM IR of the loop function itself (not its Python / C wrappers)."""
    k = kernel(name, suffix)
    ir = k.inspect_llvm(k.signatures[0])
    bodies = {}
    for chunk in re.split(r"(?m)^(?=define )", ir):
        m = re.match(r'define [^@]*@("[^"]+"|[\w.$]+)', chunk)
        if m:
            bodies[m.group(1).strip('"')] = chunk
    mine = [
        body
        for fname, body in bodies.items()
        if "apply_elementwise" in fname and not fname.startswith(("_ZN7cpython", "cfunc."))
    ]
    assert len(mine) == 1, list(bodies)
    return mine[0]


@pytest.mark.parametrize("name", FUNCS)
def test_float32_kernels_use_no_double(name: str) -> None:
    body = _kernel_ir(name, "f32")
    assert not re.search(r"\bdouble\b|\bfpext\b|\bfptrunc\b", body)


# ---------------------------------------------------------------------------
# Vectorization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", DTYPES)
@pytest.mark.parametrize("name", ALL_FUNCS)
def test_loop_vectorizes_ir(name: str, suffix: str) -> None:
    body = _kernel_ir(name, suffix)
    # the gelu functions' float32 versions vectorize their float64 arithmetic
    ty = "float" if suffix == "f32" and name not in GELU_FUNCS else "double"
    # vector arithmetic on <N x float|double> and no out-of-line calls left
    assert re.search(rf"= f(?:mul|add|sub)(?: \w+)* <\d+ x {ty}>", body)
    calls = re.findall(r"\bcall [^@]*@([\w.$]+)", body)
    assert all(c.startswith("llvm.") for c in calls), calls


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 assembly check"
)
@pytest.mark.parametrize("suffix", DTYPES)
@pytest.mark.parametrize("name", ALL_FUNCS)
def test_loop_vectorizes_asm(name: str, suffix: str) -> None:
    k = kernel(name, suffix)
    asm = k.inspect_asm(k.signatures[0])
    p = "s" if suffix == "f32" and name not in GELU_FUNCS else "d"
    arith = r"(?:mul|add|sub|div|f[n]?m(?:add|sub)\d*)"
    packed = re.findall(rf"\bv?{arith}p{p}\s+%[xyz]mm", asm)
    assert len(packed) >= 8, f"only {len(packed)} packed {arith}p{p} instructions"


# ---------------------------------------------------------------------------
# Large sweep (not run by pytest)
# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    print(f"{'function':<12} {'points':>8} {'max ULP':>8} {'>0.5 ULP':>9} {'subn.':>6}  worst x")
    for name in ALL_FUNCS:
        for suffix in DTYPES:
            x = sample_points(name, suffix, args.points, seed=args.seed)
            r = sweep(name, suffix, x)
            print(
                f"{name + '_' + suffix:<12} {r.points:>8} {r.max_ulp:>8.3f} "
                f"{r.frac_over_half_ulp:>9.3%} {r.max_subnormal_steps:>6.3f}  {r.worst_x!r}"
                + (f"  FAILURES: {r.failures[:5]}" if r.failures else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
