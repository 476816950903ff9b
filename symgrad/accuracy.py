"""Accuracy sweep: every kernel against mpmath at 50 digits, in ULPs. Writes ACCURACY.md.

``python -m symgrad accuracy [OP ...] [--out ACCURACY.md] [--points N] [--dtypes ...]``

For each op and dtype the sweep evaluates the generated kernels (forward, backward from x,
backward from y where the output form exists, and the fused kernel) at N points: log-uniform
magnitudes over the dtype's whole finite range and over [1e-4, 300], both signs, plus 0, -0.0,
subnormals, the overflow edges of exp, the op's own branch thresholds with their neighbours,
the largest finite values, ±inf and nan. It reports, where the true value is a normal number,
the maximum and 99.9th-percentile error in ULPs; where the true value is 0 or the form is
ill-conditioned (a softmax VJP that cancels, a y-form that inherits y's rounding), the error
relative to the largest |true value| nearby ("scaled": |got - true| / (max|true| nearby · 2^-p),
so 1 is one ULP of the local scale). It checks that finite inputs with a finite true result
give finite outputs, that nan gives nan, and that ±inf gives the mathematical limit.

The reference. Each formula is evaluated in mpmath at 50 significant digits (more where that
form itself cancels: the reference must agree with itself at twice the digits on a sample
spanning the sweep, else it is re-evaluated at 150 or 400), in the form the
derivation proves equal to the textbook definition *after* symgrad's stability rewrites (e.g.
α·expm1(x) rather than α(e^x - 1)): mpmath has no overflow, but at a fixed 50 digits the
textbook form itself cancels (e^(-1e-60) - 1 is 0 at 50 digits, softplus(-200) = log(1 + 1e-87)
is 0). The rewrites are proven identities (tests/test_rewrite.py), and every run spot-checks
the reference against the textbook form evaluated at 600 digits on moderate inputs (the
"spot check" lines of the report). References are computed once per distinct input, in
parallel processes, as a double-double (hi + lo) so that float64 errors are measured to a
small fraction of an ULP.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import mpmath
import numpy as np
import sympy as sp

DIGITS = 50
DEFAULT_POINTS = 100_000
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "ACCURACY.md"
DTYPE_NAMES = ("float32", "float64")
TARGETS = {"forward": 4.0, "backward": 8.0}  # max ULP where the true value is normal
WINDOW = 8  # neighbours on each side that define "nearby" for the scaled error
SPOT_CHECKS = 200  # points per op and dtype where the reference meets the textbook form
# Elementary overflow/underflow edges: exp overflows (88.72, 709.78), underflows to subnormal
# (87.3, 708.4) and to zero (103.97, 745.13); σ rounds to 1 (16.6, 36.7).
EDGES = (16.6, 17.0, 36.7, 37.0, 87.3, 88.0, 88.72, 88.73, 89.0, 103.9, 104.0, 708.4, 709.78,
         709.79, 710.0, 745.1, 745.2, 746.0, 1e4, 1e6)


# -- references (run in worker processes) ------------------------------------------------------

def _mp_lambdify(symbols: Sequence[sp.Symbol], expr: sp.Expr) -> Callable:
    from symgrad.derive import mp_lambdify

    return mp_lambdify(list(symbols), expr)


# A sweep of a user's spec file: its path goes to the worker processes (which look ops up by
# name) through the environment, and its package is generated into a temporary folder.
SPEC_FILE_ENV = "SYMGRAD_ACCURACY_SPEC"
accepts_spec_files = True  # `python -m symgrad accuracy --spec FILE` checks for this
_user_kernels: ModuleType | None = None


@cache
def _catalog() -> dict[str, Any]:
    """The ops being swept, by name: the built-in catalog, or the spec file's ops."""
    path = os.environ.get(SPEC_FILE_ENV)
    if path:
        from symgrad.specfile import load_spec_file

        return {s.name: s for s in load_spec_file(path).ops}
    from symgrad.render import all_specs

    return {s.name: s for s in all_specs()}


def _kernels() -> ModuleType:
    """The generated package under test: symgrad_kernels, or the user's package."""
    if _user_kernels is not None:
        return _user_kernels
    import symgrad_kernels

    return symgrad_kernels


def _op_kernels(spec) -> tuple[Callable, Callable, Callable]:
    """The op's generated forward, backward and fused forward+backward."""
    K = _kernels()
    return tuple(getattr(K, f"{spec.name}_{kind}")
                 for kind in ("forward", "backward", "forward_backward"))


def _spec(key: str):
    """An op by name, or one formula of a variants op as ``name|choice``."""
    name, _, choice = key.partition("|")
    spec = _catalog()[name]
    return spec.variant_spec(choice) if choice else spec


@cache
def _elementwise_refs(op: str) -> tuple[Callable, Callable, Callable]:
    """(f and f' together, textbook f, textbook f') for op at its default parameters, as
    functions of x (and t, the target, for a loss); f and f' in one function with their common
    subexpressions shared (half the mpmath calls)."""
    from symgrad.derive import MP_LIBRARY, default_subs, mp_lambdify, spec_rewrites, stabilize
    from symgrad.functions import elementary_form
    from symgrad.rewrite import REFERENCE_EXTRA
    from symgrad.spec import T, X

    spec = _spec(op)
    subs = default_subs(spec)
    if spec.kind == "elementwise_loss":  # ℓ(x, t), optional tensors (weight...) at their default
        args, formula = [X, T], spec.loss
        subs |= {p.symbol: float(p.default) for p in spec.tensor_params}
    else:
        args, formula = [X], spec.forward
    rewrites = (*spec_rewrites(spec), *REFERENCE_EXTRA)
    grad = sp.piecewise_fold(sp.diff(formula, X))
    pair = [stabilize(formula, rewrites).subs(subs), stabilize(grad, rewrites).subs(subs)]
    both = sp.lambdify(args, pair, modules=[MP_LIBRARY, "mpmath"], cse=True)
    tf = mp_lambdify(args, elementary_form(formula).subs(subs))
    td = mp_lambdify(args, elementary_form(grad).subs(subs))
    return both, tf, td


def _operands(point) -> tuple[float, list[mpmath.mpf]]:
    """A sweep point: x, or (x, t) for a loss; t is always finite."""
    if isinstance(point, tuple | list):
        return point[0], [mpmath.mpf(v) for v in point[1:]]
    return point, []


def _split(value: mpmath.mpf) -> tuple[float, float]:
    """A 50-digit value as a double-double (hi, lo); ±inf beyond the float64 range."""
    if mpmath.isnan(value):
        return math.nan, 0.0
    if mpmath.isinf(value):
        return float(value), 0.0
    hi = float(value)
    lo = float(value - hi) if math.isfinite(hi) else 0.0
    return hi, lo


def _limit_point(v: float) -> mpmath.mpf:
    """±inf is evaluated at ±10^400, beyond every float range: the limit, rounded."""
    if math.isinf(v):
        return mpmath.mpf(10) ** 400 * (1 if v > 0 else -1)
    return mpmath.mpf(v)


def _limit(fn: Callable, sign: int) -> tuple:
    """fn's values at ±10^400; where mpmath cannot go that far (erfc overflows a float inside
    mpmath beyond 1e154), from ±10^150: a magnitude above 10^140 there means ±inf."""
    try:
        return tuple(fn(_limit_point(sign * math.inf)))
    except (ZeroDivisionError, ValueError, OverflowError):
        pass
    values = []
    for value in fn(mpmath.mpf(10) ** 150 * sign):
        big = mpmath.isfinite(value) and abs(value) > mpmath.mpf(10) ** 140
        values.append(mpmath.inf * mpmath.sign(value) if big else value)
    return tuple(values)


def _elementwise_chunk(args: tuple) -> list[tuple[float, float, float, float]]:
    """(op, points[, digits]) -> (f hi, f lo, f' hi, f' lo) per point (x, or (x, t))."""
    op, xs = args[0], args[1]
    digits = args[2] if len(args) > 2 else DIGITS
    both, _, _ = _elementwise_refs(op)
    out = []
    with mpmath.workdps(digits):
        for point in xs:
            v, rest = _operands(point)
            if math.isnan(v):
                out.append((math.nan, 0.0, math.nan, 0.0))
                continue
            try:
                if math.isinf(v):
                    f, d = _limit(lambda z, rest=rest: both(z, *rest), 1 if v > 0 else -1)
                else:
                    f, d = both(mpmath.mpf(v), *rest)
            except (ZeroDivisionError, ValueError, OverflowError):
                f, d = mpmath.nan, mpmath.nan
            f, d = (mpmath.nan if isinstance(v, mpmath.mpc) else v for v in (f, d))  # log(-t)
            out.append((*_split(mpmath.mpf(f)), *_split(mpmath.mpf(d))))
    return out


def _eval(fn: Callable, *args) -> mpmath.mpf:
    """fn(*args) as a real; nan outside the formula's real domain (log of a negative target)."""
    try:
        value = fn(*args)
    except (ZeroDivisionError, ValueError, OverflowError):
        return mpmath.nan
    if isinstance(value, mpmath.mpc):
        return mpmath.nan
    return mpmath.mpf(value) if not isinstance(value, mpmath.mpf) else value


def _spot_check_chunk(args: tuple) -> float:
    """Largest relative gap between the reference form and the textbook form, the latter at
    600 digits: enough for its own cancellations (1 + erf(-30) is about 1e-393)."""
    op, xs = args[0], args[1]
    digits = args[2] if len(args) > 2 else DIGITS
    both, tf, td = _elementwise_refs(op)
    worst = mpmath.mpf(0)
    for point in xs:
        v, rest = _operands(point)
        x = mpmath.mpf(v)
        with mpmath.workdps(digits):
            refs = [mpmath.mpf(a) for a in both(x, *rest)]
        for a, book in zip(refs, (tf, td), strict=True):
            with mpmath.workdps(600):
                b = _eval(book, x, *rest)
            if mpmath.isfinite(a) and mpmath.isfinite(b):
                worst = max(worst, abs(a - b) / max(abs(b), mpmath.mpf(10) ** -300))
    return float(worst)


@cache
def _rowwise_refs(op: str):
    from symgrad.derive import LS, XM, derive
    from symgrad.spec import Y

    spec = _spec(op)
    d = derive(spec)
    # y in terms of xm = sign·x - max and ls = log Σ e^xm: at 50 digits, x - L itself would
    # cancel for |x| near 1e308 (L carries 1e258 of absolute error there).
    shifted = _mp_lambdify([XM, LS], d.forward_shifted)
    diag = _mp_lambdify([Y], d.jac_diag)
    left = _mp_lambdify([Y], d.jac_left)
    right = _mp_lambdify([Y], d.jac_right)
    return spec.input_sign, shifted, diag, left, right


def _rowwise_chunk(args: tuple[str, list[list[float]], list[list[float]]]):
    """Per row: y_i and the VJP Σ_i g_i J_ik from the structured Jacobian (which the derivation
    proves equal to SymPy's derivative of the explicit vector), and the VJP's condition scale
    |g_k D(y_k)| + |V(y_k)|·Σ_i |g_i U(y_i)|: the size of the terms the VJP sums."""
    op, rows, gs = args
    sign, shifted, diag, left, right = _rowwise_refs(op)
    out = []
    with mpmath.workdps(DIGITS):
        for row, g in zip(rows, gs, strict=True):
            if any(math.isnan(v) for v in row):
                out.append([(math.nan, 0.0, math.nan, 0.0, math.nan)] * len(row))
                continue
            xs = [sign * _limit_point(v) for v in row]
            top = max(xs)
            xm = [x - top for x in xs]
            # log(1 + rest), rest the sum without one max's e^0 = 1: a row dominated by its max
            # has log_softmax(max) = -log1p(rest) ≈ -rest, which log(1 + rest) at 50 digits
            # rounds to 0 once rest < 1e-50.
            others = list(xm)
            others.remove(mpmath.mpf(0))
            ls = mpmath.log1p(mpmath.fsum(mpmath.exp(v) for v in others))
            ys = [_eval(shifted, v, ls) for v in xm]
            gm = [mpmath.mpf(v) for v in g]
            a = mpmath.fsum(gi * left(y) for gi, y in zip(gm, ys, strict=True))
            a_abs = mpmath.fsum(abs(gi * left(y)) for gi, y in zip(gm, ys, strict=True))
            entry = []
            for gk, y in zip(gm, ys, strict=True):
                grad = gk * diag(y) + right(y) * a
                cond = abs(gk * diag(y)) + abs(right(y)) * a_abs
                entry.append((*_split(y), *_split(grad), float(cond)))
            out.append(entry)
    return out


# -- measurement ---------------------------------------------------------------------------------

@dataclass
class FormResult:
    """One kernel output (e.g. sigmoid backward from y) in one dtype."""

    op: str
    form: str
    dtype: str
    role: str  # "forward", "backward" (a default form), "backward-y" (memory-saving path)
    points: int = 0
    max_ulp: float = 0.0
    p999_ulp: float = 0.0
    max_scaled: float = 0.0
    worst: str = ""  # where max_ulp occurs
    worst_true: float = 0.0
    worst_ratio: float = 1.0  # |true| at the worst point / largest |true| among its neighbours
    nonfinite: int = 0  # finite input, finite true value, inf/nan out
    nonfinite_example: str = ""
    special_failures: list[str] = field(default_factory=list)

    @property
    def target(self) -> float | None:
        return TARGETS.get(self.role)

    def misses(self, scaled: bool = False) -> list[str]:
        out = []
        metric = self.max_scaled if scaled else self.max_ulp
        if self.target is not None and metric > self.target:
            out.append(f"{'scaled' if scaled else 'max'} error {metric:.3g} ULP > "
                       f"{self.target:g}")
        if self.nonfinite:
            out.append(f"{self.nonfinite} finite inputs give inf/nan ({self.nonfinite_example})")
        out += self.special_failures
        return out


def _ulp(hi: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One ULP in ``dtype`` of each |value| (finite, nonzero)."""
    fi = np.finfo(dtype)
    _, exp = np.frexp(np.abs(hi))
    return np.ldexp(1.0, (exp - 1 - fi.nmant).astype(np.int64))


def measure(op: str, form: str, dtype: str, role: str, x_sorted_key: np.ndarray,
            got: np.ndarray, hi: np.ndarray, lo: np.ndarray, finite_in: np.ndarray,
            scale_groups: np.ndarray | None = None,
            scale_given: np.ndarray | None = None) -> FormResult:
    """Errors of ``got`` against the double-double reference (hi + lo) at finite inputs.

    ``x_sorted_key`` orders the points for the "nearby" window of the scaled error; rowwise ops
    pass ``scale_groups`` (the row of each element: its largest value is the scale) or
    ``scale_given`` (a VJP's condition scale).
    """
    dt = np.dtype(dtype)
    fi = np.finfo(dt)
    res = FormResult(op, form, dtype, role, points=int(finite_in.sum()))
    got64 = got.astype(np.float64)
    with np.errstate(all="ignore"):
        ref_in_range = np.abs(hi) <= float(fi.max)
        ref_finite = np.isfinite(hi) & finite_in & ref_in_range
        bad = ref_finite & ~np.isfinite(got64)
        res.nonfinite = int(bad.sum())
        if res.nonfinite:
            i = int(np.argmax(bad))
            res.nonfinite_example = f"at input #{i}: true {hi[i]:.6g}, got {got64[i]}"
        err = np.abs((got64 - hi) - lo)
        normal = ref_finite & (np.abs(hi) >= float(fi.tiny)) & np.isfinite(got64)
        if normal.any():
            ulps = err[normal] / _ulp(hi[normal], dt)
            res.max_ulp = float(ulps.max())
            res.p999_ulp = float(np.percentile(ulps, 99.9))
            k = np.flatnonzero(normal)[int(np.argmax(ulps))]
            res.worst = f"true {hi[k]:.9g}, got {got64[k]:.9g} (point #{k})"
            res.worst_true = float(hi[k])
            order = np.argsort(x_sorted_key, kind="stable")
            pos = int(np.flatnonzero(order == k)[0])
            around = order[max(0, pos - 256):pos + 257]
            finite_around = np.abs(hi[around][np.isfinite(hi[around])])
            if finite_around.size and finite_around.max() > 0:
                res.worst_ratio = float(abs(hi[k]) / finite_around.max())
        # Scaled error: relative to the largest |true value| nearby.
        mag = np.where(ref_finite, np.abs(hi), 0.0)
        if scale_given is not None:
            scale = np.maximum(scale_given, mag)
        elif scale_groups is None:
            order = np.argsort(x_sorted_key, kind="stable")
            m = mag[order]
            padded = np.concatenate([np.zeros(WINDOW), m, np.zeros(WINDOW)])
            windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * WINDOW + 1)
            scale = np.empty_like(m)
            scale[order] = windows.max(axis=1)
        else:
            groups_max = np.zeros(int(scale_groups.max()) + 1)
            np.maximum.at(groups_max, scale_groups, mag)
            scale = groups_max[scale_groups]
        usable = ref_finite & np.isfinite(got64) & (scale >= float(fi.tiny))
        if usable.any():
            eps = 2.0 ** -fi.nmant
            res.max_scaled = float((err[usable] / (scale[usable] * eps)).max())
    return res


def _special(op: str, form: str, x: float, got: float, want: float, dtype: str) -> str | None:
    """nan in -> nan out; ±inf in -> the limit (want, rounded to dtype; a finite limit to
    within the forward target in ULPs)."""
    dt = np.dtype(dtype)
    with np.errstate(over="ignore"):
        want = float(dt.type(want))
    if math.isnan(want):
        return None if math.isnan(got) else f"{form}({x}) = {got}, want nan"
    if got == want:
        return None
    if math.isfinite(got) and math.isfinite(want) and want != 0:
        if abs(got - want) <= TARGETS["forward"] * float(_ulp(np.array([want]), dt)[0]):
            return None
    return f"{form}({x}) = {got}, want {want}"


# -- points --------------------------------------------------------------------------------------

def elementwise_points(dtype: str, n: int, thresholds: Sequence[float], seed: int = 0
                       ) -> np.ndarray:
    """Finite sweep points: 3/4 log-uniform over the whole finite range (subnormals included),
    1/4 log-uniform over [1e-4, 300], both signs; then the specials. No inf/nan."""
    dt = np.dtype(dtype)
    fi = np.finfo(dt)
    rng = np.random.default_rng(seed)
    smallest = float(fi.smallest_subnormal)
    n_wide = (3 * n) // 4
    wide = 10.0 ** rng.uniform(math.log10(smallest), math.log10(float(fi.max)), n_wide)
    near = 10.0 ** rng.uniform(-4, math.log10(300.0), n - n_wide)
    mags = np.concatenate([wide, near])
    signs = rng.choice([-1.0, 1.0], mags.size)
    with np.errstate(over="ignore"):
        pts = (signs * mags).astype(dt)
    specials = [0.0, -0.0, smallest, 2 * smallest, float(fi.tiny) / 2, float(fi.tiny),
                float(fi.max), float(np.nextafter(fi.max, dt.type(0))), 1.0, 0.5, 2.0, 3.0, 6.0,
                *EDGES]
    for t in thresholds:
        specials += [t, float(np.nextafter(dt.type(t), dt.type(np.inf))),
                     float(np.nextafter(dt.type(t), dt.type(-np.inf)))]
    specials += [-s for s in specials]
    with np.errstate(over="ignore"):
        extra = np.array(specials, dtype=np.float64).astype(dt)
    pts = np.concatenate([pts, extra])
    return pts[np.isfinite(pts)]


def _parallel_map(fn, tasks: list, jobs: int) -> list:
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, tasks))


def _chunks(values: list, size: int) -> list[list]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def _kernel_chunk() -> int:
    """Call kernels on pieces below the parallel threshold: only the serial loops compile (the
    parallel ones run the same per-element code)."""
    try:
        runtime = _kernels()._runtime
        return max(1, min(16384, int(runtime.PARALLEL_MIN_SIZE) - 1))
    except (ImportError, AttributeError):
        return 16384


def _call(fn: Callable, *arrays: np.ndarray, **kwargs) -> np.ndarray | tuple:
    """Run an elementwise kernel piecewise (see _kernel_chunk) and concatenate."""
    size = _kernel_chunk()
    n = arrays[0].size
    parts = [fn(*[a[i:i + size] for a in arrays], **kwargs) for i in range(0, n, size)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(len(parts[0])))
    return np.concatenate(parts)


# -- sweeps per kind -----------------------------------------------------------------------------

def sweep_elementwise(spec, dtypes: Sequence[str], n: int, jobs: int, key: str | None = None,
                      options: dict | None = None) -> tuple[list, list]:
    """``key``/``options``: a variants op's formula (``name|choice``) and its kernel option."""
    from functools import partial

    from symgrad.derive import branch_thresholds, derive
    from symgrad.spec import X

    key = key or spec.name
    options = options or {}
    label = spec.name + "".join(f" [{k}={v!r}]" for k, v in options.items())
    d = derive(spec)
    thresholds = branch_thresholds(spec, spec.forward, X)
    fwd, bwd, fused = (partial(fn, **options) for fn in _op_kernels(spec))
    results, notes = [], []
    for dtype in dtypes:
        dt = np.dtype(dtype)
        xs = elementwise_points(dtype, n, thresholds)
        specials = np.array([np.nan, np.inf, -np.inf], dtype=dt)
        all_x = np.concatenate([xs, specials])
        values = [float(v) for v in all_x]
        unique = sorted(set(values), key=lambda v: (math.isnan(v), v))
        unique = [v for v in unique if not math.isnan(v)] + [math.nan]
        digits = _working_digits(key, xs, jobs)
        if digits != DIGITS:
            notes.append(f"{key.replace('|', ' ')} {dtype}: the reference form cancels at "
                         f"{DIGITS} digits; evaluated at {digits}")
        refs = {}
        for chunk_vals, chunk_refs in zip(
                _chunks(unique, 2000),
                _parallel_map(_elementwise_chunk, [(key, c, digits) for c in
                                                   _chunks(unique, 2000)], jobs), strict=True):
            for v, r in zip(chunk_vals, chunk_refs, strict=True):
                refs[v if not math.isnan(v) else "nan"] = r
        table = np.array([refs[v if not math.isnan(v) else "nan"] for v in values])
        f_hi, f_lo, d_hi, d_lo = table.T
        ones = np.ones_like(all_x)
        with np.errstate(all="ignore"):
            y = _call(fwd, all_x)
            gx = _call(lambda g, x: bwd(g, x=x), ones, all_x)
            y2, g2 = _call(fused, all_x, ones)
            gy = _call(lambda g, yy: bwd(g, y=yy), ones, y) if _y_path(spec, d, dtype) else None
        finite = np.isfinite(all_x)
        default = d.backward_default.get(dtype, "x")
        forms = [("forward", "forward", y, f_hi, f_lo),
                 ("backward(x=)", "backward", gx, d_hi, d_lo),
                 ("fused y", "forward", y2, f_hi, f_lo),
                 (f"fused grad (from {default})", "backward", g2, d_hi, d_lo)]
        if gy is not None:
            forms.append(("backward(y=)", "backward-y", gy, d_hi, d_lo))
        for form, role, got, hi, lo in forms:
            r = measure(spec.name, form + label[len(spec.name):], dtype, role,
                        all_x.astype(np.float64), got, hi, lo, finite)
            for k in np.flatnonzero(~finite):
                msg = _special(spec.name, form, float(all_x[k]), float(got[k]), hi[k], dtype)
                if msg:
                    r.special_failures.append(msg)
            results.append(r)
        notes.append(_spot_check(key, xs, jobs, dtype, digits))
    return results, notes


@cache
def _loss_term_sizes(op: str) -> Callable:
    """(x, t) -> (Σ|terms| of ℓ, Σ|terms| of ∂ℓ/∂x), the top-level terms of the stabilized
    formulas: a loss is typically a difference (x·(1 - t) - log σ(x)) that cancels near its
    minimum, and no rounding of the terms can do better than eps · Σ|terms| there."""
    from symgrad.derive import MP_LIBRARY, default_subs, spec_rewrites, stabilize
    from symgrad.rewrite import REFERENCE_EXTRA
    from symgrad.spec import T, X

    spec = _spec(op)
    subs = default_subs(spec) | {p.symbol: float(p.default) for p in spec.tensor_params}
    rewrites = (*spec_rewrites(spec), *REFERENCE_EXTRA)
    sizes = []
    for formula in (spec.loss, sp.piecewise_fold(sp.diff(spec.loss, X))):
        stable = sp.expand(stabilize(formula, rewrites).subs(subs), deep=False)
        sizes.append(sp.Add(*[sp.Abs(term) for term in sp.Add.make_args(stable)]))
    return sp.lambdify([X, T], sizes, modules=[MP_LIBRARY, "mpmath"])


def _loss_terms_chunk(args: tuple) -> list[tuple[float, float]]:
    op, points = args
    sizes = _loss_term_sizes(op)
    out = []
    with mpmath.workdps(30):
        for x, t in points:
            try:
                out.append(tuple(float(v) for v in sizes(mpmath.mpf(x), mpmath.mpf(t))))
            except (ZeroDivisionError, ValueError, OverflowError, TypeError):
                out.append((math.nan, math.nan))
    return out


def loss_targets(xs: np.ndarray, seed: int = 4) -> np.ndarray:
    """A target beside each x: labels 0 and 1, probabilities U(0, 1), moderate values of both
    signs, and x itself nudged by a few ULPs (where a distance x - t cancels)."""
    rng = np.random.default_rng(seed)
    dt = xs.dtype
    kind = rng.integers(0, 4, xs.size)
    labels = rng.integers(0, 2, xs.size).astype(np.float64)
    probs = rng.uniform(0, 1, xs.size)
    moderate = rng.choice([-1.0, 1.0], xs.size) * 10.0 ** rng.uniform(-4, math.log10(300.0),
                                                                       xs.size)
    with np.errstate(over="ignore", invalid="ignore"):
        near = xs.astype(np.float64) * (1 + rng.integers(-4, 5, xs.size) *
                                        float(np.finfo(dt).eps))
        t = np.select([kind == 0, kind == 1, kind == 2], [labels, probs, moderate], near).astype(dt)
    return np.where(np.isfinite(t), t, dt.type(0.5))


def sweep_elementwise_loss(spec, dtypes: Sequence[str], n: int, jobs: int
                           ) -> tuple[list, list]:
    """ℓ(x, t) with reduction='none' and its gradient in x, at default parameters and no
    weight tensors, over the elementwise points paired with ``loss_targets``."""
    from symgrad.derive import branch_thresholds
    from symgrad.spec import X

    fwd, bwd, fused = _op_kernels(spec)
    results, notes = [], []
    for dtype in dtypes:
        dt = np.dtype(dtype)
        xs = elementwise_points(dtype, n, branch_thresholds(spec, spec.loss, X))
        ts = loss_targets(xs)
        specials = np.array([np.nan, np.inf, -np.inf] * 3, dtype=dt)
        all_x = np.concatenate([xs, specials])
        all_t = np.concatenate([ts, np.repeat(np.array([0.0, 0.5, 1.0], dtype=dt), 3)])
        points = [(float(a), float(b)) for a, b in zip(all_x, all_t, strict=True)]
        digits = _working_digits(spec.name, xs, jobs, targets=ts)
        if digits != DIGITS:
            notes.append(f"{spec.name} {dtype}: the reference form cancels at {DIGITS} digits; "
                         f"evaluated at {digits}")
        table = np.array([r for chunk in _parallel_map(
            _elementwise_chunk, [(spec.name, c, digits) for c in _chunks(points, 2000)], jobs)
            for r in chunk])
        f_hi, f_lo, d_hi, d_lo = table.T
        f_size, d_size = np.array([r for chunk in _parallel_map(
            _loss_terms_chunk, [(spec.name, c) for c in _chunks(points, 2000)], jobs)
            for r in chunk]).T
        ones = np.ones_like(all_x)
        with np.errstate(all="ignore"):
            loss = _call(lambda x, t: fwd(x, t, reduction="none"), all_x, all_t)
            grad = _call(lambda x, t, g: bwd(x, t, g, reduction="none"), all_x, all_t, ones)
            loss2, grad2 = _call(lambda x, t, g: fused(x, t, g, reduction="none"),
                                 all_x, all_t, ones)
        finite = np.isfinite(all_x)
        for form, role, got, hi, lo, size in (
                ("forward (reduction='none')", "forward", loss, f_hi, f_lo, f_size),
                ("backward", "backward", grad, d_hi, d_lo, d_size),
                ("fused loss", "forward", loss2, f_hi, f_lo, f_size),
                ("fused grad", "backward", grad2, d_hi, d_lo, d_size)):
            r = measure(spec.name, form, dtype, role, all_x.astype(np.float64), got, hi, lo,
                        finite, scale_given=np.nan_to_num(size, nan=0.0, posinf=0.0))
            for k in np.flatnonzero(~finite):
                x, t = float(all_x[k]), float(all_t[k])
                if _special(spec.name, form, x, float(got[k]), hi[k], dtype):
                    r.special_failures.append(f"{form}({x}; t {t}) = {float(got[k])}, "
                                              f"want {float(dt.type(hi[k]))}")
            results.append(r)
        notes.append(_spot_check(spec.name, xs, jobs, dtype, digits, targets=ts))
    return results, notes


# -- pointwise losses: several operands, possibly several gradients ------------------------------

@cache
def _pointwise_refs(op: str) -> tuple[Callable, Callable, Callable, int]:
    """For a pointwise loss at its default options and parameters, as functions of its required
    operands: [ℓ, ∂ℓ/∂(each differentiable operand)] in the kernel's forms (what the derivation
    proves, with torch's gradient conventions where it has them), Σ|terms| of each, and the
    textbook ℓ. Optional operands (weight) are absent, i.e. at their default; an operand's
    ``load`` (var clamped at eps) applies when it is read, not to the derivative."""
    from symgrad.derive import MP_LIBRARY, default_subs, derive
    from symgrad.functions import elementary_form

    spec = _spec(op)
    d = derive(spec)
    required = [o for o in spec.operands if not o.optional]
    subs: dict = default_subs(spec)
    subs |= {o.symbol: float(o.default) for o in spec.operands if o.optional}
    subs |= {sym: (sp.true if dict(d.variants[0].options).get(name, None) else sp.false)
             for name, sym in spec.flag_symbols().items()}
    for p in spec.params:  # flags: the defaults, as the derivation's default variant uses
        if p.name in spec.flag_symbols():
            subs[spec.flag_symbols()[p.name]] = sp.true if p.default else sp.false
    loads = {o.symbol: o.load.subs(subs) for o in spec.operands if o.load is not None}
    forms = [e.subs(subs).subs(loads) for e in (d.loss, *d.grads)]
    args = [o.symbol for o in required]
    both = sp.lambdify(args, forms, modules=[MP_LIBRARY, "mpmath"], cse=True)
    sizes = sp.lambdify(args, [sp.Add(*[sp.Abs(t) for t in sp.Add.make_args(
        sp.expand(f, deep=False))]) for f in forms], modules=[MP_LIBRARY, "mpmath"])
    textbook = _mp_lambdify(args, elementary_form(spec.loss.subs(subs).subs(loads)))
    return both, sizes, textbook, len(forms)


def _pointwise_values(op: str, point: tuple, digits: int) -> tuple[list, tuple]:
    both, sizes, _, count = _pointwise_refs(op)
    x, rest = point[0], [mpmath.mpf(v) for v in point[1:]]
    with mpmath.workdps(digits):
        try:
            if math.isinf(x):
                values = _limit(lambda z: both(z, *rest), 1 if x > 0 else -1)
                return [mpmath.mpf(v) for v in values], (0.0,) * count
            values = both(mpmath.mpf(x), *rest)
            if any(isinstance(v, mpmath.mpc) for v in values):  # outside the real domain
                return [mpmath.nan] * count, (0.0,) * count
            scale = tuple(float(abs(v)) for v in sizes(mpmath.mpf(x), *rest))
            return [mpmath.mpf(v) for v in values], scale
        except (ZeroDivisionError, ValueError, OverflowError, TypeError):
            return [mpmath.nan] * count, (0.0,) * count


def _pointwise_chunk(args: tuple) -> list[tuple[float, ...]]:
    """(op, points, digits) -> per point: (hi, lo) of ℓ and of each gradient, then the size of
    each one's terms; and how many points needed more than ``digits``. Each point's values must
    agree with themselves at twice the digits, else they are evaluated at 150, then 400 (a
    gradient such as e^x - t at x = 1e-300, t = 1 needs 300 digits): per point, since the
    formulas are not rewritten for the reference as the activations' are."""
    op, points, digits = args
    count = _pointwise_refs(op)[3]
    out, escalated = [], 0
    for point in points:
        if any(math.isnan(v) for v in point):
            out.append((math.nan, 0.0) * count + (0.0,) * count)
            continue
        for d in sorted({digits, 150, 400}):
            values, scale = _pointwise_values(op, point, d)
            check, _ = _pointwise_values(op, point, 2 * d)
            if all(_same_value(float(a), float(b)) for a, b in zip(values, check, strict=True)):
                break
        escalated += d != digits
        out.append(tuple(v for value in values for v in _split(value)) + scale)
    return out, escalated


def _pointwise_spot_chunk(args: tuple) -> float:
    """Largest relative gap between the kernel form of ℓ and the textbook ℓ (600 digits)."""
    op, points, digits = args
    both, _, textbook, _ = _pointwise_refs(op)
    worst = mpmath.mpf(0)
    for point in points:
        mp = [mpmath.mpf(v) for v in point]
        with mpmath.workdps(digits):
            a = _eval(lambda *z: both(*z)[0], *mp)
        with mpmath.workdps(600):
            b = _eval(textbook, *mp)
        if mpmath.isfinite(a) and mpmath.isfinite(b):
            worst = max(worst, abs(a - b) / max(abs(b), mpmath.mpf(10) ** -300))
    return float(worst)


def operand_points(operand, xs: np.ndarray, seed: int) -> np.ndarray:
    """Values of a pointwise loss's operand beside the input's points ``xs``, in its domain:
    both bounds given: the bounds, uniform inside, and values a hair inside each bound; a lower
    bound only: log-uniform magnitudes above it over the dtype's range; none: ``loss_targets``."""
    dt = xs.dtype
    fi = np.finfo(dt)
    rng = np.random.default_rng(seed)
    lo, hi = operand.minimum, operand.maximum
    if lo is None and hi is None:
        return loss_targets(xs, seed)
    if hi is None:
        mags = 10.0 ** rng.uniform(math.log10(float(fi.tiny)), math.log10(float(fi.max)),
                                   xs.size)
        with np.errstate(over="ignore"):
            return np.minimum(lo + mags, float(fi.max)).astype(dt)
    lo = -float(fi.max) if lo is None else lo
    kind = rng.integers(0, 4, xs.size)
    tiny = 10.0 ** rng.uniform(math.log10(float(fi.tiny)), -1, xs.size) * (hi - lo)
    values = np.select([kind == 0, kind == 1, kind == 2],
                       [rng.choice([lo, hi], xs.size), rng.uniform(lo, hi, xs.size), lo + tiny],
                       hi - tiny)
    return np.clip(values.astype(dt), lo, hi)


def sweep_pointwise_loss(spec, dtypes: Sequence[str], n: int, jobs: int
                         ) -> tuple[list, list]:
    """ℓ(input, target, ...) with reduction='none' and its gradients, at the default options,
    over the input's elementwise points (or its domain) paired with values of the other required
    operands in theirs (see ``operand_points``)."""
    fwd, bwd, fused = _op_kernels(spec)
    required = [o for o in spec.operands if not o.optional]
    grads_of = [o.name for o in required if o.differentiable]
    results, notes = [], []
    for dtype in dtypes:
        dt = np.dtype(dtype)
        first = required[0]
        if first.minimum is None and first.maximum is None:
            xs = elementwise_points(dtype, n, [])
        else:
            xs = operand_points(first, elementwise_points(dtype, n, []), seed=5)
        columns = [xs] + [operand_points(o, xs, seed=6 + k) for k, o in enumerate(required[1:])]
        mid = [float(np.clip(0.5, o.minimum if o.minimum is not None else -np.inf,
                             o.maximum if o.maximum is not None else np.inf)) for o in required]
        specials = [[v, *mid[1:]] for v in (np.nan, np.inf, -np.inf)
                    if first.minimum is None and first.maximum is None or math.isnan(v)]
        if specials:
            columns = [np.concatenate([c, np.array([s[k] for s in specials], dtype=dt)])
                       for k, c in enumerate(columns)]
        points = [tuple(float(c[i]) for c in columns) for i in range(columns[0].size)]
        chunks = _parallel_map(_pointwise_chunk, [(spec.name, c, DIGITS)
                                                   for c in _chunks(points, 2000)], jobs)
        table = np.array([r for rows, _ in chunks for r in rows])
        escalated = sum(e for _, e in chunks)
        if escalated:
            notes.append(f"{spec.name} {dtype}: the reference form cancels at {DIGITS} digits at "
                         f"{escalated} points; evaluated there at 150 or 400")
        count = table.shape[1] // 3
        ones = np.ones_like(columns[0])
        with np.errstate(all="ignore"):
            loss = _call(lambda *a: fwd(*a, reduction="none"), *columns)
            grads = _call(lambda *a: bwd(*a, reduction="none"), *columns, ones)
            fused_out = _call(lambda *a: fused(*a, reduction="none"), *columns, ones)
        grads = grads if isinstance(grads, tuple) else (grads,)
        finite = np.all([np.isfinite(c) for c in columns], axis=0)
        key = columns[0].astype(np.float64)
        kernels = [("forward (reduction='none')", "forward", loss, 0),
                   ("fused loss", "forward", fused_out[0], 0)]
        for k, name in enumerate(grads_of, start=1):
            label = "" if len(grads_of) == 1 else f" ∂/∂{name}"
            kernels += [(f"backward{label}", "backward", grads[k - 1], k),
                        (f"fused grad{label}", "backward", fused_out[k], k)]
        for form, role, got, k in kernels:
            hi, lo, size = table[:, 2 * k], table[:, 2 * k + 1], table[:, 2 * count + k]
            r = measure(spec.name, form, dtype, role, key, got, hi, lo, finite,
                        scale_given=np.nan_to_num(size, nan=0.0, posinf=0.0))
            for i in np.flatnonzero(~finite):
                if _special(spec.name, form, float(columns[0][i]), float(got[i]), hi[i], dtype):
                    rest = ", ".join(f"{o.name} {float(c[i])}"
                                     for o, c in zip(required[1:], columns[1:], strict=True))
                    r.special_failures.append(f"{form}({float(columns[0][i])}; {rest}) = "
                                              f"{float(got[i])}, want {float(dt.type(hi[i]))}")
            results.append(r)
        moderate = [pt for pt in points if all(math.isfinite(v) and abs(v) < 50 for v in pt)]
        pick = moderate[:: max(1, len(moderate) // SPOT_CHECKS)][:SPOT_CHECKS]
        worst = max(_parallel_map(_pointwise_spot_chunk,
                                  [(spec.name, c, DIGITS) for c in _chunks(pick, 100)], jobs),
                    default=0.0)
        notes.append(f"{spec.name} {dtype}: reference vs textbook form at {len(pick)} points: "
                     f"max relative gap {worst:.1e} ({'ok' if worst < 1e-40 else 'MISMATCH'})")
    return results, notes


def _y_path(spec, d, dtype: str) -> bool:
    """Whether backward takes y alone at the default parameters: an output form that always
    holds, or a conditional one (leaky_relu's needs negative_slope >= 0) whose condition does."""
    from symgrad.derive import default_subs

    if getattr(d, "grad_y", None) is not None:
        return True
    condition = getattr(d, "y_requires", {}).get(dtype)
    if getattr(d, "grad_y_conditional", None) is None or condition is None:
        return False
    return bool(sp.sympify(condition).subs(default_subs(spec)) == sp.true)


def sweep_variants(spec, dtypes: Sequence[str], n: int, jobs: int) -> tuple[list, list]:
    """Each formula of an op whose string option selects it (gelu's approximate)."""
    results, notes = [], []
    for choice in spec.selector.choices:
        r, nt = sweep_elementwise(spec.variant_spec(choice), dtypes, n, jobs,
                                  key=f"{spec.name}|{choice}", options={spec.option: choice})
        results += r
        notes += nt
    return results, notes


def _working_digits(key: str, xs: np.ndarray, jobs: int, targets: np.ndarray | None = None
                    ) -> int:
    """50 digits, or more where the reference form itself cancels (x - tanh(x) ≈ x³/3 at
    x = 1e-30 loses 60 digits): the reference at d digits must agree with itself at 2d digits
    to 1e-30 on a sample spanning the sweep's magnitudes, else d grows (up to 400).
    ``targets``: a loss's t beside each x."""
    rng = np.random.default_rng(3)
    nonzero = np.flatnonzero(xs != 0)
    order = nonzero[np.argsort(np.abs(xs[nonzero]))]
    picked = np.concatenate([order[:40], order[-20:], rng.choice(xs.size, min(200, xs.size),
                                                                 replace=False)])
    if targets is None:
        pts: list = sorted({float(xs[i]) for i in picked})
    else:
        pts = sorted({(float(xs[i]), float(targets[i])) for i in picked})
    for digits in (DIGITS, 150, 400):
        low = [r for c in _parallel_map(_elementwise_chunk, [(key, c, digits) for c in
                                                             _chunks(pts, 100)], jobs) for r in c]
        high = [r for c in _parallel_map(_elementwise_chunk, [(key, c, 2 * digits) for c in
                                                              _chunks(pts, 100)], jobs)
                for r in c]
        agree = all(_same_value(a, b) for lo_r, hi_r in zip(low, high, strict=True)
                    for a, b in ((lo_r[0], hi_r[0]), (lo_r[2], hi_r[2])))
        if agree:
            return digits
    return 400


def _same_value(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= 1e-30 * abs(b)


def _spot_check(op: str, xs: np.ndarray, jobs: int, dtype: str, digits: int = DIGITS,
                targets: np.ndarray | None = None) -> str:
    moderate = np.flatnonzero((np.abs(xs) > 1e-6) & (np.abs(xs) < 50))
    rng = np.random.default_rng(1)
    chosen = rng.choice(moderate, min(SPOT_CHECKS, moderate.size), replace=False) \
        if moderate.size else []
    pick = [float(xs[i]) if targets is None else (float(xs[i]), float(targets[i]))
            for i in chosen]
    worst = max(_parallel_map(_spot_check_chunk, [(op, c, digits) for c in _chunks(pick, 100)],
                              jobs), default=0.0)
    status = "ok" if worst < 1e-40 else "MISMATCH"
    return (f"{op.replace('|', ' ')} {dtype}: reference vs textbook form at {len(pick)} points: "
            f"max relative gap {worst:.1e} ({status})")


def rowwise_rows(dtype: str, n: int, seed: int = 0) -> list[np.ndarray]:
    """Rows totalling about n elements: moderate spreads, whole-range magnitudes, a dominant
    entry, equal entries, signed zeros; special rows with ±inf and nan come separately."""
    dt = np.dtype(dtype)
    fi = np.finfo(dt)
    rng = np.random.default_rng(seed)
    rows, total = [], 0
    lengths = (1, 2, 3, 5, 8, 16, 33, 64)
    while total < n:
        length = int(rng.choice(lengths))
        kind = rng.integers(0, 4)
        if kind == 0:  # moderate spread
            row = rng.normal(0, 10.0 ** rng.uniform(-3, 2.5), length)
        elif kind == 1:  # magnitudes over the whole range
            mags = 10.0 ** rng.uniform(math.log10(float(fi.smallest_subnormal)),
                                       math.log10(float(fi.max)), length)
            row = mags * rng.choice([-1.0, 1.0], length)
        elif kind == 2:  # one dominant entry
            row = rng.normal(0, 1, length)
            row[rng.integers(0, length)] += 10.0 ** rng.uniform(1, 3)
        else:  # near-ties
            row = np.full(length, rng.normal(0, 30)) + rng.normal(0, 1e-3, length)
        with np.errstate(over="ignore"):
            row = row.astype(dt)
        if np.isfinite(row).all():
            rows.append(row)
            total += length
    rows += [np.array(r, dtype=dt) for r in ([0.0, -0.0], [1.0, 1.0, 1.0],
                                             [float(fi.max), -float(fi.max)],
                                             [float(fi.max), float(fi.max)])]
    return rows


def sweep_rowwise(spec, dtypes: Sequence[str], n: int, jobs: int) -> tuple[list, list]:
    fwd, bwd, fused = _op_kernels(spec)
    results = []
    for dtype in dtypes:
        dt = np.dtype(dtype)
        rows = rowwise_rows(dtype, n)
        rng = np.random.default_rng(2)
        gs = [rng.normal(0, 1, r.size).astype(dt) for r in rows]
        tasks = [(spec.name, [[float(v) for v in r] for r in rs], [[float(v) for v in g]
                                                                 for g in gg])
                 for rs, gg in zip(_chunks(rows, 200), _chunks(gs, 200), strict=True)]
        refs = [row for chunk in _parallel_map(_rowwise_chunk, tasks, jobs) for row in chunk]
        got_y, got_g, got_fy, got_fg = [], [], [], []
        with np.errstate(all="ignore"):
            for r, g in zip(rows, gs, strict=True):
                y = fwd(r)
                got_y.append(y)
                got_g.append(bwd(g, y=y))
                fy, fg = fused(r, g)
                got_fy.append(fy)
                got_fg.append(fg)
        table = np.array([e for row in refs for e in row])
        y_hi, y_lo, g_hi, g_lo, g_cond = table.T
        groups = np.concatenate([np.full(r.size, i) for i, r in enumerate(rows)])
        finite = np.ones(groups.size, dtype=bool)
        key = np.arange(groups.size, dtype=np.float64)
        for form, role, got, hi, lo, cond in (
                ("forward", "forward", got_y, y_hi, y_lo, None),
                ("backward(y=)", "backward", got_g, g_hi, g_lo, g_cond),
                ("fused y", "forward", got_fy, y_hi, y_lo, None),
                ("fused grad", "backward", got_fg, g_hi, g_lo, g_cond)):
            results.append(measure(spec.name, form, dtype, role, key, np.concatenate(got),
                                   hi, lo, finite, scale_groups=groups, scale_given=cond))
        _rowwise_specials(spec, dtype, results[-4:], jobs)
    return results, []


# -- class-index losses (cross_entropy, nll_loss): one loss per row, a gradient per element ------

@cache
def _class_index_refs(op: str) -> tuple[Callable, Callable, float, float]:
    """ℓ(x_t, L) of a class-index loss at its default parameters, written with x_t = m + a and
    L = m + b for the row max m (so that L - x_t is b - a: at 50 digits m + b would round b
    away; a = x_t - m is exact, evaluated at the digits the float range needs), the size of
    ℓ's terms at (x_t, L), and the gradient's coefficients:
    ∂ℓ/∂x_k = c_softmax·softmax_k + c_target·[k = t]."""
    from symgrad.derive import default_subs, derive
    from symgrad.spec import LSE, XT

    spec = _spec(op)
    d = derive(spec)
    loss = d.loss.subs(default_subs(spec))
    m, a, b = sp.symbols("m a b", real=True)
    shifted = sp.expand(loss.subs({XT: m + a, LSE: m + b}))
    terms = sp.Add(*[sp.Abs(t) for t in sp.Add.make_args(sp.expand(loss))])
    return (_mp_lambdify([m, a, b], shifted), _mp_lambdify([XT, LSE], terms),
            float(d.coeff_softmax), float(d.coeff_target))


def _class_index_chunk(args: tuple) -> list[tuple[list, list]]:
    """(op, rows, targets) -> per row: ((ℓ hi, lo, scale), [(∂ℓ/∂x_k hi, lo, scale)...])."""
    op, rows, targets = args
    loss_fn, terms_fn, c_soft, c_target = _class_index_refs(op)
    out = []
    with mpmath.workdps(DIGITS):
        for row, t in zip(rows, targets, strict=True):
            xs = [mpmath.mpf(v) for v in row]
            top = max(xs)
            xm = [x - top for x in xs]
            others = list(xm)
            others.remove(mpmath.mpf(0))
            ls = mpmath.log1p(mpmath.fsum(mpmath.exp(v) for v in others))
            with mpmath.workdps(DIGITS + 700):  # x_t - m exactly: floats span 10^±308
                loss = loss_fn(top, xs[t] - top, ls)
            scale = terms_fn(xs[t], top + ls)
            grads = []
            for k, v in enumerate(xm):
                # At the target soft + hit cancels (softmax_t - 1 = -rest/total when x_t is a
                # dominant max): 400 more digits keep every float64 result, down to 5e-324.
                with mpmath.workdps(DIGITS + (400 if k == t else 0)):
                    soft = c_soft * mpmath.exp(v - ls)
                    hit = c_target if k == t else 0.0
                    grads.append((*_split(soft + hit), float(abs(soft) + abs(hit))))
            out.append(((*_split(mpmath.mpf(loss)), float(scale)), grads))
    return out


def sweep_class_index_loss(spec, dtypes: Sequence[str], n: int, jobs: int
                           ) -> tuple[list, list]:
    """Per row of ``rowwise_rows`` with a random class index: ℓ (reduction='none') and its
    gradient, at the default options (no weight, no label smoothing)."""
    fwd, bwd, fused = _op_kernels(spec)
    results = []
    for dtype in dtypes:
        dt = np.dtype(dtype)
        rows = rowwise_rows(dtype, n)
        rng = np.random.default_rng(7)
        targets = [int(rng.integers(0, r.size)) for r in rows]
        # a dominated row whose max is the target: ℓ = log1p(Σ e^(x - max)), tiny
        rows.append(np.array([0.0, -60.0, -80.0], dtype=dt))
        targets.append(0)
        tasks = [(spec.name, [[float(v) for v in r] for r in rs], ts)
                 for rs, ts in zip(_chunks(rows, 200), _chunks(targets, 200), strict=True)]
        refs = [e for chunk in _parallel_map(_class_index_chunk, tasks, jobs) for e in chunk]
        got = {"loss": [], "grad": [], "fused loss": [], "fused grad": []}
        with np.errstate(all="ignore"):
            for r, t in zip(rows, targets, strict=True):
                x, target, ones = r[None, :], np.array([t]), np.ones(1, dtype=dt)
                got["loss"].append(fwd(x, target, reduction="none"))
                got["grad"].append(bwd(x, target, ones, reduction="none")[0])
                fl, fg = fused(x, target, ones, reduction="none")
                got["fused loss"].append(fl)
                got["fused grad"].append(fg[0])
        loss_ref = np.array([e[0] for e in refs])
        grad_ref = np.array([g for e in refs for g in e[1]])
        row_key = np.arange(len(rows), dtype=np.float64)
        elem_key = np.concatenate([np.full(r.size, i, dtype=np.float64)
                                   for i, r in enumerate(rows)])
        for form, role, values, ref, key in (
                ("forward (reduction='none')", "forward", got["loss"], loss_ref, row_key),
                ("backward", "backward", got["grad"], grad_ref, elem_key),
                ("fused loss", "forward", got["fused loss"], loss_ref, row_key),
                ("fused grad", "backward", got["fused grad"], grad_ref, elem_key)):
            results.append(measure(spec.name, form, dtype, role, key,
                                   np.concatenate([np.ravel(v) for v in values]),
                                   ref[:, 0], ref[:, 1], np.ones(key.size, dtype=bool),
                                   scale_given=ref[:, 2]))
        with np.errstate(all="ignore"):
            nan_row = fwd(np.array([[np.nan, 1.0, 2.0]], dtype=dt), np.array([0]),
                          reduction="none")
        if not np.isnan(nan_row).all():
            results[-4].special_failures.append(f"forward([nan, 1, 2]; t 0) = {nan_row}, "
                                                "want nan")
    return results, []


def _rowwise_specials(spec, dtype: str, results: list[FormResult], jobs: int) -> None:
    """Rows with nan (nan out) and one ±inf entry (the limit, e.g. softmax -> one-hot)."""
    dt = np.dtype(dtype)
    cases = [[np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [-np.inf, 1.0, 2.0]]
    tasks = [(spec.name, [c], [[0.5, -1.0, 2.0]]) for c in cases]
    refs = [chunk[0] for chunk in _parallel_map(_rowwise_chunk, tasks, 1)]
    fwd = getattr(_kernels(), f"{spec.name}_forward")
    for c, ref in zip(cases, refs, strict=True):
        with np.errstate(all="ignore"):
            y = fwd(np.array(c, dtype=dt))
        got = [float(v) for v in y]
        want = [r[0] for r in ref]
        wrong = [k for k in range(len(c)) if _special(spec.name, "forward", c[k], got[k],
                                                      want[k], dtype)]
        if wrong:
            results[0].special_failures.append(f"forward({c}) = {got}, want {want}")


SWEEPS = {"elementwise": sweep_elementwise, "rowwise": sweep_rowwise,
          "variants": sweep_variants, "elementwise_loss": sweep_elementwise_loss,
          "pointwise_loss": sweep_pointwise_loss, "class_index_loss": sweep_class_index_loss}


# -- report ----------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    """Table-cell text: a literal | would end the cell."""
    return str(text).replace("|", "\\|")


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if v < 0.01:
        return f"{v:.1e}"
    if v < 100:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _judged_by_scale(spec, r: FormResult) -> bool:
    """Softmax-type VJPs and elementwise losses cancel by nature: judged by the scaled error."""
    return (spec.kind == "rowwise" and r.role == "backward") or \
        spec.kind in ("elementwise_loss", "pointwise_loss", "class_index_loss")


def render(results: list[FormResult], notes: list[str], skipped: list[str], meta: dict) -> str:
    from symgrad.derive import derive

    specs = _catalog()
    lines = [
        "# Accuracy of the generated kernels",
        "",
        f"Written by `python -m symgrad accuracy` ({meta['command']}); regenerate it with the "
        "same command. Do not edit by hand.",
        "",
        f"Every kernel of every swept op, in {' and '.join(meta['dtypes'])}, at about "
        f"{meta['points']:,} points per op and dtype (log-uniform magnitudes over the whole "
        "finite range and over [1e-4, 300], both signs, 0, -0.0, subnormals, the exp "
        "overflow/underflow edges, each op's branch thresholds and their neighbours, the largest "
        "finite values; then ±inf and nan), against mpmath at 50 digits (more where the "
        "reference form itself cancels; see the notes at the end). Parameters are the "
        "defaults. See `symgrad/accuracy.py` for the method.",
        "",
        "* **max ULP / p99.9 ULP**: error in units in the last place, over the points whose "
        "true value is a normal number of the dtype.",
        "* **scaled**: |got − true| / (scale · 2^−p), where the scale is the largest |true value| "
        f"among the {2 * WINDOW} nearest inputs (the same row, for softmax-type forwards), or, "
        "for softmax-type VJPs g_k·D(y_k) + V(y_k)·Σ_i g_i·U(y_i), the size of the terms summed, "
        "|g_k·D(y_k)| + |V(y_k)|·Σ_i |g_i·U(y_i)|: the measure where the true value is 0 or the "
        "form is ill-conditioned.",
        "* **non-finite**: finite inputs whose true result is finite in the dtype but whose "
        "kernel output is inf or nan (must be 0).",
        "* **nan/inf**: nan in gives nan out, ±inf in gives the mathematical limit.",
        "",
        f"Targets: forward ≤ {TARGETS['forward']:g} ULP; default backward (from x, and the "
        f"fused gradient) ≤ {TARGETS['backward']:g} ULP where the true value is normal. For the "
        "softmax family's VJPs, which cancel by nature (s ⊙ (g − ⟨g, s⟩)), the target applies to "
        "the scaled error; so it does for the elementwise losses ℓ(x, t) (reduction='none', "
        "targets: labels 0 and 1, probabilities, moderate values of both signs and x itself "
        "nudged by a few ULPs), whose formulas are differences that cancel near the minimum: "
        "their scale is the sum of the sizes of the formula's terms. "
        "Backward from y (the memory-saving path) is measured against f′(x) "
        "after y was rounded by the forward kernel; it has no target of its own, and where it is "
        "ill-conditioned the scaled error says by how much.",
        "",
    ]
    misses = []
    for r in results:
        scaled = _judged_by_scale(specs[r.op], r)
        problems = r.misses(scaled=scaled) if r.role != "backward-y" else (
            [f"{r.nonfinite} finite inputs give inf/nan"] if r.nonfinite else []) + \
            r.special_failures
        if problems:
            misses.append((r, problems))
    lines += ["## Kernels that miss a target", ""]
    if misses:
        lines += ["| op | kernel | dtype | problem | worst point | reason |",
                  "|---|---|---|---|---|---|"]
        forward_misses = {(r.op, r.dtype) for r, _ in misses if r.role == "forward"}
        for r, problems in misses:
            reason = _reason(r, specs[r.op])
            if r.role == "backward" and (r.op, r.dtype) in forward_misses and \
                    specs[r.op].kind == "rowwise":
                reason = "inherits the error of y from the forward kernel (row above)"
            lines.append(f"| {r.op} | {_cell(r.form)} | {r.dtype} | {_cell('; '.join(problems))}"
                         f" | {_cell(r.worst)} | {_cell(reason)} |")
    else:
        lines.append("None.")
    lines += ["", "## Backward from y (memory-saving path): conditioning", "",
              "| op | dtype | max ULP | scaled | backward form the fused kernel uses |",
              "|---|---|---|---|---|"]
    for r in results:
        if r.role == "backward-y":
            choice = getattr(derive(specs[r.op]), "backward_choice", {}).get(r.dtype)
            lines.append(f"| {r.op} | {r.dtype} | {_fmt(r.max_ulp)} | {_fmt(r.max_scaled)} | "
                         f"{choice.form if choice else 'x'}: "
                         f"{_cell(choice.reason) if choice else ''} |")
    lines += ["", "## All kernels", "",
              "| op | kernel | dtype | points | max ULP | p99.9 ULP | scaled | non-finite | "
              "nan/inf |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        special = "ok" if not r.special_failures else f"{len(r.special_failures)} wrong"
        lines.append(f"| {r.op} | {_cell(r.form)} | {r.dtype} | {r.points:,} | {_fmt(r.max_ulp)} | "
                     f"{_fmt(r.p999_ulp)} | {_fmt(r.max_scaled)} | {r.nonfinite} | {special} |")
    lines += ["", "## Reference checks", "",
              "Each reference form against the textbook formula at 600 digits on moderate "
              "inputs (the stability rewrites are identities: the gap must be below 1e-40), and "
              "the working precision where 50 digits did not suffice.", ""]
    lines += [f"* {n}" for n in notes] or ["* (none)"]
    if skipped:
        lines += ["", "## Not swept", "", *[f"* {s}" for s in skipped]]
    lines += ["", f"Sweep time: {meta['seconds']:.0f} s with {meta['jobs']} worker processes.",
              ""]
    return "\n".join(lines)


def _reason(r: FormResult, spec) -> str:
    """A diagnosis from the measurements (never from the op's name)."""
    reasons = []
    fi = np.finfo(r.dtype)
    ulp_miss = r.target is not None and r.max_ulp > r.target
    if r.special_failures:
        if any("nan" in f.split("=")[1].split("want")[0] for f in r.special_failures):
            reasons.append("±inf in gives nan where the limit is a number: inf·0 or inf - inf "
                           "in the formula (torch gives nan there too)")
        else:
            reasons.append("the value at ±inf/nan differs from the limit (see the problem)")
    if r.nonfinite:
        reasons.append("an intermediate overflows although the result is finite: a product "
                       "whose large factor meets a constant before the small one")
    if ulp_miss:
        if _judged_by_scale(spec, r) and r.max_scaled <= (r.target or 0):
            pass  # a VJP: judged by the scaled error
        elif r.max_scaled <= (r.target or 0):
            reasons.append(f"small against the values nearby (scaled {_fmt(r.max_scaled)} "
                           "ULP): the worst point is a result far smaller than its "
                           "neighbours, made by a difference or a shifted exponent whose "
                           "rounding is set by the larger operands")
        elif r.worst_ratio < 1e-2:
            reasons.append(f"near a zero of the result (|true| is {r.worst_ratio:.1e} of the "
                           "largest value nearby): the terms of the formula cancel there")
        elif abs(r.worst_true) < float(fi.tiny) * 2.0 ** (fi.nmant // 2):
            reasons.append("the result is barely above the smallest normal number: an "
                           "intermediate (e.g. σ(x) or e^x) is subnormal and has lost bits")
        else:
            reasons.append("an unstable formula at the worst point")
    if r.role == "backward-y":
        reasons.append("y-form: inherits the rounding of y")
    return "; ".join(reasons) or "see the worst point"


# -- entry point -----------------------------------------------------------------------------------

def use_spec_file(path: str | Path, out: str | Path) -> ModuleType:
    """Sweep a user's spec file: its ops replace the catalog, and its package is generated into
    ``out`` (a folder of the caller's, e.g. a temporary one) and imported from there."""
    global _user_kernels
    from symgrad.specfile import load_spec_file, package_from_path
    from symgrad.userops import generate

    loaded = load_spec_file(path)  # a bad file fails here, before anything is written
    os.environ[SPEC_FILE_ENV] = str(Path(path).resolve())
    _forget_ops()
    package = loaded.package or package_from_path(Path(path))
    _user_kernels = generate(loaded.ops, package=package, out=out).load()
    return _user_kernels


def use_catalog() -> None:
    """Back to the built-in catalog (after ``use_spec_file``)."""
    global _user_kernels
    os.environ.pop(SPEC_FILE_ENV, None)
    if _user_kernels is not None:  # unload it: its folder is about to be deleted
        package = _user_kernels.__name__
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        folder = str(Path(_user_kernels.__file__).resolve().parent.parent)
        if folder in sys.path:
            sys.path.remove(folder)
    _user_kernels = None
    _forget_ops()


def _forget_ops() -> None:
    """Op lookups and references are cached by name; a spec file may reuse a name."""
    for cached in (_catalog, _elementwise_refs, _loss_term_sizes, _rowwise_refs,
                   _pointwise_refs, _class_index_refs):
        cached.cache_clear()


def run(names: Sequence[str] | None, n: int, dtypes: Sequence[str], jobs: int
        ) -> tuple[list[FormResult], list[str], list[str]]:
    specs = list(_catalog().values())
    if names:
        by_name = _catalog()
        unknown = [x for x in names if x not in by_name]
        if unknown:
            where = "in the spec file" if os.environ.get(SPEC_FILE_ENV) else \
                "`python -m symgrad list` shows all"
            raise ValueError(f"unknown op(s) {', '.join(unknown)}; {where}")
        specs = [by_name[x] for x in names]
    results, notes, skipped = [], [], []
    for spec in specs:
        sweep = SWEEPS.get(spec.kind)
        if sweep is None:
            skipped.append(f"{spec.name} (kind {spec.kind}: no sweep for this kind yet)")
            continue
        start = time.perf_counter()
        r, nt = sweep(spec, dtypes, n, jobs)
        results += r
        notes += nt
        print(f"accuracy: {spec.name} ({time.perf_counter() - start:.1f}s)", file=sys.stderr)
    return results, notes, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m symgrad accuracy",
        description="Sweep every kernel against mpmath at 50 digits; write ACCURACY.md.")
    parser.add_argument("ops", nargs="*", metavar="OP", help="ops to sweep (default: all)")
    parser.add_argument("--spec", metavar="FILE",
                        help="sweep the ops of a TOML spec file (generated into a temporary "
                             "folder) instead of the catalog; the report is printed unless "
                             "--out is given")
    parser.add_argument("--out", default=None,
                        help="the Markdown report to write (default: ACCURACY.md, or '-' with "
                             "--spec; '-' prints)")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS,
                        help=f"points per op and dtype (default {DEFAULT_POINTS:,})")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPE_NAMES, default=list(DTYPE_NAMES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes for the mpmath references (default: all cores)")
    args = parser.parse_args(argv)
    if args.points < 100:
        parser.error("--points must be at least 100")
    out = args.out or ("-" if args.spec else str(DEFAULT_OUT))
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="symgrad-accuracy-") as tmp:
            if args.spec:
                use_spec_file(args.spec, tmp)
            results, notes, skipped = run(args.ops, args.points, args.dtypes, args.jobs)
            command = "python -m symgrad accuracy" + (
                f" --spec {args.spec}" if args.spec else "") + (
                f" {' '.join(args.ops)}" if args.ops else "") + (
                f" --points {args.points}" if args.points != DEFAULT_POINTS else "")
            meta = {"points": args.points, "dtypes": args.dtypes, "jobs": args.jobs,
                    "seconds": time.perf_counter() - start, "command": command}
            text = render(results, notes, skipped, meta)
            specs = _catalog()
            failed = any(r.misses(scaled=_judged_by_scale(specs[r.op], r)) for r in results
                         if r.role != "backward-y")
    except (ValueError, OSError) as exc:  # unknown ops, a bad spec file (SpecError)
        print(f"symgrad accuracy: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.spec:
            use_catalog()
    if out == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
