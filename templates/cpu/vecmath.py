"""Vectorizable elementary functions for Numba kernels, float32 and float64.

llvmlite has no vector math library: ``math.exp`` & co. in a loop become scalar libm
calls, which stop LLVM's loop vectorizer.  These functions use only arithmetic,
selects and integer bit manipulation, so once LLVM has inlined them into the caller's
loop (``range`` or ``prange``) the loop vectorizes (SSE2 / AVX2 / AVX-512).

Functions: ``exp, exp_nonpos (x <= 0 only), expm1, log, log1p, tanh, erf, erfc,
sigmoid``, and gelu's ``xncdf`` (x·Φ(x)) and ``ncdf_xpdf`` (Φ(x) + x·φ(x)), each as
``<name>_f32`` and ``<name>_f64``.  ``*_f32`` converts its argument to float32, computes
in float32 only and returns float32 (except xncdf_f32 and ncdf_xpdf_f32, which compute
in float64 and round once); ``*_f64`` likewise in float64.

Behaviour (checked by tests/test_vecmath.py):
  * Accuracy: the tests require <= 2 ULP against the exact result wherever that
    result is a normal number (sigmoid 2.5, erfc and xncdf 4, ncdf_xpdf 8); measured maxima
    are 0.65-1.12 ULP, sigmoid 1.8 (float64) and 2.35 (float32), erfc 2.9 (float64) and
    3.0 (float32), xncdf and ncdf_xpdf 0.54 (float32) and 2.6 / 3.5 (float64) (100,000-point
    sweeps per dtype; float32 sigmoid and erfc also on 4e7 random bit patterns).
  * nan -> nan; +-0.0 signs kept where the C library keeps them (expm1, log1p, tanh,
    erf); exp/expm1 overflow -> inf; log(0) = -inf, log(x < 0) = nan,
    log1p(-1) = -inf; tanh/erf(+-inf) = +-1; expm1(-inf) = -1; sigmoid(-inf) = 0.
  * Underflow is gradual: exp/sigmoid results in the subnormal range are within one
    subnormal step of exact.  Inputs whose exact result rounds to 0 get +0.0 from a
    select, without computing a subnormal product (those are slow on x86), so
    masked (-inf or very negative) inputs stay on the fast path.

Compilation choices:
  * ``forceinline=True`` marks each function ``alwaysinline`` for LLVM.  Without it
    LLVM's inlining threshold leaves the larger functions (erf, tanh, expm1_f64) as
    calls and the caller's loop stays scalar.  (``inline="always"`` would inline at
    the Numba-IR level instead, where the *caller's* error model and fastmath flags
    would apply to this code.)
  * ``error_model="numpy"``: divisions get no ZeroDivisionError branch.
  * ``fastmath={"contract"}`` only: lets LLVM fuse a*b+c into FMA where the CPU has
    it.  Fusing only removes roundings; nothing here relies on a product being
    rounded, and no nnan/ninf/reassoc assumptions are made.
  * Branch-free: all paths are computed and the result is picked with selects.
    Clamps are written as explicit ternaries rather than min/max so that where a
    nan goes is visible (a comparison with nan is false); the input nan is then
    returned by a final select.
  * No ``cache=True``: a cached entry records the module name it was compiled under
    and fails to load ("No module named ...") when the same file is imported under
    another name.  Callers inline this code, so their own caches cover it.

Polynomials: weighted minimax (Remez exchange) fits made with mpmath at 60 digits,
rounded to the target precision; each comment gives the fit's error bound.

This file is copied verbatim into generated packages: it may import only math,
numpy and numba.
"""

import math

import numba
import numpy as np

__all__ = [
    "exp_f32",
    "exp_f64",
    "exp_nonpos_f32",
    "exp_nonpos_f64",
    "expm1_f32",
    "expm1_f64",
    "log_f32",
    "log_f64",
    "log1p_f32",
    "log1p_f64",
    "tanh_f32",
    "tanh_f64",
    "erf_f32",
    "erf_f64",
    "erfc_f32",
    "erfc_f64",
    "sigmoid_f32",
    "sigmoid_f64",
    "xncdf_f32",
    "xncdf_f64",
    "ncdf_xpdf_f32",
    "ncdf_xpdf_f64",
]

_jit = numba.njit(error_model="numpy", forceinline=True, fastmath={"contract"})

_F = np.float32

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

# Cody-Waite split of ln2: LN2_HI has trailing zero bits, so k * LN2_HI is exact for
# every exponent k that occurs (|k| < 2^8 for float32, |k| < 2^11 for float64) and
# x - k * LN2_HI is exact too (Sterbenz); LN2_LO carries the rest of ln2.
_F32_LN2_HI = _F(0.693145751953125)  # ln2 truncated to 16 bits
_F32_LN2_LO = _F(1.4286068e-06)  # ln2 - LN2_HI
_F32_LOG2E = _F(1.442695)  # 1/ln2
_D_LN2_HI = 0.6931471805598903  # ln2 truncated to 42 bits
_D_LN2_LO = 5.497923018708371e-14
_D_LOG2E = 1.4426950408889634

# Adding 1.5 * 2^p (p = stored mantissa bits) rounds a number of magnitude < 2^(p-1)
# to an integer k and leaves k in the low bits of the sum's bit pattern.
_F32_ROUND = _F(12582912.0)  # 1.5 * 2^23
_F32_ROUND_BITS = 0x4B400000
_D_ROUND = 6755399441055744.0  # 1.5 * 2^52
_D_ROUND_BITS = 0x4338000000000000

# Bits of sqrt(1/2): subtracting them before splitting exponent and mantissa yields
# a mantissa m in [sqrt(1/2), sqrt(2)), i.e. |log(m)| <= ln2/2.
_F32_SQRTH_BITS = 0x3F3504F3
_D_SQRTH_BITS = 0x3FE6A09E667F3BCD

# Clears the low 27 mantissa bits: the rest (26 bits) squares exactly in float64.
_D_HIGH26 = -(1 << 27)

_F32_MIN_NORMAL = _F(1.1754943508222875e-38)
_D_MIN_NORMAL = 2.2250738585072014e-308
_F32_2M64 = _F(5.421010862427522e-20)  # 2^-64
_D_2M512 = 7.458340731200207e-155  # 2^-512
_F32_INF = _F(np.inf)
_F32_NAN = _F(np.nan)
_D_INF = np.inf
_D_NAN = np.nan


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


@_jit
def _pow2_f32(n):
    """2^n for an integer n in [-126, 127], written straight into the exponent field."""
    return np.int32((n + 127) << 23).view(np.float32)


@_jit
def _pow2_f64(n):
    """2^n for an integer n in [-1022, 1023]."""
    return np.int64((n + 1023) << 52).view(np.float64)


@_jit
def _exp_reduce_f32(x):
    """Split x = n*ln2 + r with |r| <= ln2/2: returns (n, r1, c), r = r1 - c, r1 exact."""
    t = x * _F32_LOG2E + _F32_ROUND
    k = t - _F32_ROUND  # round(x / ln2) as a float
    n = np.float32(t).view(np.int32) - _F32_ROUND_BITS  # ... and as an integer
    return n, x - k * _F32_LN2_HI, k * _F32_LN2_LO


@_jit
def _exp_reduce_f64(x):
    t = x * _D_LOG2E + _D_ROUND
    k = t - _D_ROUND
    n = np.float64(t).view(np.int64) - _D_ROUND_BITS
    return n, x - k * _D_LN2_HI, k * _D_LN2_LO


@_jit
def _expm1_poly_f32(r):
    """expm1(r) - r for |r| <= ln2/2: r^2 Q(r), relative error of expm1 2^-32."""
    q = _F(0.00019845882)
    q = q * r + _F(0.0013940668)
    q = q * r + _F(0.00833339)
    q = q * r + _F(0.04166636)
    q = q * r + _F(0.16666666)
    q = q * r + _F(0.5)
    return r * r * q


@_jit
def _expm1_poly_f64(r):
    """expm1(r) - r for |r| <= ln2/2: r^2 Q(r), relative error of expm1 2^-61.7."""
    q = 2.0875329164768077e-09
    q = q * r + 2.510902449248963e-08
    q = q * r + 2.7557402775144027e-07
    q = q * r + 2.7557244254107167e-06
    q = q * r + 2.4801587172230043e-05
    q = q * r + 0.00019841269886073528
    q = q * r + 0.0013888888888962606
    q = q * r + 0.008333333333321653
    q = q * r + 0.041666666666666505
    q = q * r + 0.16666666666666677
    q = q * r + 0.5
    return r * r * q


@_jit
def _exp_pair_f32(base, r1, c):
    """base + e^r - 1, r = r1 - c, as an unevaluated sum ph + pl (|pl| <= ulp(ph)/2).

    base + r1 is summed exactly (Fast2Sum; needs base == 0 or |base| >= |r1|); ph is
    that sum plus the small rest, rounded once, and pl is the rounding error.
    """
    hi = base + r1
    lo = (base - hi) + r1
    t = (lo - c) + _expm1_poly_f32(r1 - c)
    ph = hi + t
    return ph, (hi - ph) + t


@_jit
def _scaled_exp_f32(base, n, r1, c):
    """(base + e^r - 1) * 2^n: e^x for base = 1, expm1(x) for base = 1 - 2^-n.

    n in [-150, 129]: 2^n is applied as 2^(n-d) * 2^d, both factors normal, so a
    subnormal result is rounded once and 2^128 * (m < 1) stays finite.
    """
    p, _ = _exp_pair_f32(base, r1, c)
    d = min(n + 125, 0) + max(n - 127, 0)
    return p * _pow2_f32(n - d) * _pow2_f32(d)


@_jit
def _exp_pair_f64(base, r1, c):
    hi = base + r1
    lo = (base - hi) + r1
    t = (lo - c) + _expm1_poly_f64(r1 - c)
    ph = hi + t
    return ph, (hi - ph) + t


@_jit
def _scaled_exp_f64(base, n, r1, c):
    p, _ = _exp_pair_f64(base, r1, c)
    d = min(n + 1021, 0) + max(n - 1023, 0)
    return p * _pow2_f64(n - d) * _pow2_f64(d)


@_jit
def _log_split_f32(x):
    """x = 2^k * m, m in [sqrt(1/2), sqrt(2)), for finite x > 0 including subnormals."""
    tiny = x < _F32_MIN_NORMAL
    x = x * (_F(33554432.0) if tiny else _F(1.0))  # 2^25 makes subnormals normal
    ix = np.int32(np.float32(x).view(np.int32) - _F32_SQRTH_BITS)
    k = (ix >> 23) - (25 if tiny else 0)
    m = np.int32((ix & 0x007FFFFF) + _F32_SQRTH_BITS).view(np.float32)
    return np.float32(np.int32(k)), m


@_jit
def _log_split_f64(x):
    tiny = x < _D_MIN_NORMAL
    x = x * (18014398509481984.0 if tiny else 1.0)  # 2^54
    ix = np.float64(x).view(np.int64) - _D_SQRTH_BITS
    k = (ix >> 52) - (54 if tiny else 0)
    m = np.int64((ix & 0x000FFFFFFFFFFFFF) + _D_SQRTH_BITS).view(np.float64)
    # int64 -> float64 through the rounding constant: packed cvtqq2pd needs AVX-512
    kf = np.int64(k + _D_ROUND_BITS).view(np.float64) - _D_ROUND
    return kf, m


@_jit
def _log_kernel_f32(f, kf, c):
    """kf*ln2 + log(1 + f) + c for f in [sqrt(1/2) - 1, sqrt(2) - 1], c tiny.

    log(1+f) = 2 atanh(s) = f - s (f - R) = f - hfsq + s (hfsq + R), s = f/(2+f),
    hfsq = f^2/2, R = z P(z), z = s^2 (the fdlibm arrangement: the large terms f and
    kf*LN2_HI are added last).
    """
    s = f / (_F(2.0) + f)
    z = s * s
    # P(z) ~ (2 atanh(s) - 2s) / s^3, relative error of log(1+f) 2^-37.6
    p = _F(0.23584305)
    p = p * z + _F(0.28537208)
    p = p * z + _F(0.40000337)
    p = p * z + _F(0.6666666)
    hfsq = _F(0.5) * f * f
    return kf * _F32_LN2_HI - ((hfsq - (s * (hfsq + z * p) + (kf * _F32_LN2_LO + c))) - f)


@_jit
def _log_kernel_f64(f, kf, c):
    s = f / (2.0 + f)
    z = s * s
    # P(z) ~ (2 atanh(s) - 2s) / s^3, relative error of log(1+f) 2^-59.5
    p = 0.1479858905261091
    p = p * z + 0.1531380438513001
    p = p * z + 0.181835732275151
    p = p * z + 0.2222219841647271
    p = p * z + 0.2857142874376476
    p = p * z + 0.399999999994092
    p = p * z + 0.6666666666666735
    hfsq = 0.5 * f * f
    return kf * _D_LN2_HI - ((hfsq - (s * (hfsq + z * p) + (kf * _D_LN2_LO + c))) - f)


# ---------------------------------------------------------------------------
# exp, expm1
# ---------------------------------------------------------------------------


@_jit
def exp_f32(x):
    """e^x, float32.  exp(+inf) = inf, exp(-inf) = 0, overflow -> inf."""
    x = np.float32(x)
    # Clamp for the computation (comparisons with nan are false: nan -> 89, restored
    # at the end).  89 overflows to inf by itself; below -104 the result is +0, and
    # those lanes compute e^0 to avoid a slow underflowing product.
    xc = x if x < _F(89.0) else _F(89.0)
    xc = xc if xc > _F(-104.0) else _F(0.0)
    n, r1, c = _exp_reduce_f32(xc)
    res = _scaled_exp_f32(_F(1.0), n, r1, c)
    res = res if x > _F(-104.0) else _F(0.0)
    return x if x != x else res


@_jit
def exp_f64(x):
    """e^x, float64.  exp(+inf) = inf, exp(-inf) = 0, overflow -> inf."""
    x = np.float64(x)
    xc = x if x < 710.0 else 710.0
    xc = xc if xc > -746.0 else 0.0
    n, r1, c = _exp_reduce_f64(xc)
    res = _scaled_exp_f64(1.0, n, r1, c)
    res = res if x > -746.0 else 0.0
    return x if x != x else res


@_jit
def exp_nonpos_f32(x):
    """e^x for x <= 0, -inf or nan (softmax's x - max), float32; x > 0 is outside its domain.

    exp_f32 without the overflow side: n <= 0, so 2^n is applied as 2^(n+64) (exact, normal)
    times 2^-64, a single rounding even for subnormal results. 1.6x faster than exp_f32.
    """
    x = np.float32(x)
    # Lanes below -104 (and -inf, nan) compute garbage and take their result from the selects.
    t = x * _F32_LOG2E + _F32_ROUND
    k = t - _F32_ROUND
    n = np.float32(t).view(np.int32) - _F32_ROUND_BITS  # in [-150, 0]
    r = (x - k * _F32_LN2_HI) - k * _F32_LN2_LO
    p = _F(1.0) + (r + _expm1_poly_f32(r))
    res = p * _pow2_f32(n + 64) * _F32_2M64
    res = res if x > _F(-104.0) else _F(0.0)
    return x if x != x else res


@_jit
def exp_nonpos_f64(x):
    """e^x for x <= 0, -inf or nan, float64 (as exp_nonpos_f32, with 2^(n+512) 2^-512)."""
    x = np.float64(x)
    t = x * _D_LOG2E + _D_ROUND
    k = t - _D_ROUND
    n = np.float64(t).view(np.int64) - _D_ROUND_BITS  # in [-1077, 0]
    r = (x - k * _D_LN2_HI) - k * _D_LN2_LO
    p = 1.0 + (r + _expm1_poly_f64(r))
    res = p * _pow2_f64(n + 512) * _D_2M512
    res = res if x > -746.0 else 0.0
    return x if x != x else res


@_jit
def expm1_f32(x):
    """e^x - 1, float32, accurate near 0.  expm1(-0.0) = -0.0, expm1(-inf) = -1."""
    x = np.float32(x)
    # below -30 the formula itself gives -1 (2^n - 1 rounds to -1)
    xc = x if x < _F(89.0) else _F(89.0)
    xc = xc if xc > _F(-30.0) else _F(-30.0)
    n, r1, c = _exp_reduce_f32(xc)
    # expm1(x) = 2^n * ((1 - 2^-n) + expm1(r)); 1 - 2^-n is exact for |n| <= 24 and
    # its rounding is harmless beyond that
    base = _F(1.0) - _pow2_f32(-min(n, 64))
    res = _scaled_exp_f32(base, n, r1, c)
    # |x| < 2^-25: expm1(x) rounds to x; keeps -0.0 and subnormals exact
    res = x if abs(x) < _F(2.9802322e-08) else res
    return x if x != x else res


@_jit
def expm1_f64(x):
    """e^x - 1, float64, accurate near 0.  expm1(-0.0) = -0.0, expm1(-inf) = -1."""
    x = np.float64(x)
    xc = x if x < 710.0 else 710.0
    xc = xc if xc > -40.0 else -40.0
    n, r1, c = _exp_reduce_f64(xc)
    base = 1.0 - _pow2_f64(-min(n, 512))
    res = _scaled_exp_f64(base, n, r1, c)
    res = x if abs(x) < 5.551115123125783e-17 else res  # 2^-54
    return x if x != x else res


# ---------------------------------------------------------------------------
# log, log1p
# ---------------------------------------------------------------------------


@_jit
def log_f32(x):
    """Natural log, float32.  log(+-0) = -inf, log(x < 0) = nan, log(inf) = inf."""
    x = np.float32(x)
    kf, m = _log_split_f32(x)
    res = _log_kernel_f32(m - _F(1.0), kf, _F(0.0))
    res = res if x > _F(0.0) else (-_F32_INF if x == _F(0.0) else _F32_NAN)
    return x if x == _F32_INF else res


@_jit
def log_f64(x):
    """Natural log, float64.  log(+-0) = -inf, log(x < 0) = nan, log(inf) = inf."""
    x = np.float64(x)
    kf, m = _log_split_f64(x)
    res = _log_kernel_f64(m - 1.0, kf, 0.0)
    res = res if x > 0.0 else (-_D_INF if x == 0.0 else _D_NAN)
    return x if x == _D_INF else res


@_jit
def log1p_f32(x):
    """log(1 + x), float32, accurate near 0.  log1p(-1) = -inf, log1p(-0.0) = -0.0."""
    x = np.float32(x)
    u = _F(1.0) + x
    kf, m = _log_split_f32(u)
    k0 = kf == _F(0.0)
    # k == 0: 1 + x needs no scaling, so use f = x itself (exact).  Otherwise f = m - 1
    # is exact and c = (error of 1 + x) / u corrects log(u) to log(1 + x).
    f = x if k0 else m - _F(1.0)
    c = _F(0.0) if k0 else (x - (u - _F(1.0))) / u
    res = _log_kernel_f32(f, kf, c)
    res = res if u > _F(0.0) else (-_F32_INF if u == _F(0.0) else _F32_NAN)
    res = x if x == _F(0.0) else res
    return x if x == _F32_INF else res


@_jit
def log1p_f64(x):
    """log(1 + x), float64, accurate near 0.  log1p(-1) = -inf, log1p(-0.0) = -0.0."""
    x = np.float64(x)
    u = 1.0 + x
    kf, m = _log_split_f64(u)
    k0 = kf == 0.0
    f = x if k0 else m - 1.0
    c = 0.0 if k0 else (x - (u - 1.0)) / u
    res = _log_kernel_f64(f, kf, c)
    res = res if u > 0.0 else (-_D_INF if u == 0.0 else _D_NAN)
    res = x if x == 0.0 else res
    return x if x == _D_INF else res


# ---------------------------------------------------------------------------
# tanh
# ---------------------------------------------------------------------------


@_jit
def tanh_f32(x):
    """tanh, float32.  Odd (tanh(-0.0) = -0.0), tanh(+-inf) = +-1."""
    x = np.float32(x)
    a = abs(x)
    # |x| < ln(3)/2: a + a z T(z), z = a^2, T ~ (tanh(a) - a) / a^3, rel. error 2^-29.8
    z = a * a
    p = _F(-0.006277401)
    p = p * z + _F(0.02107378)
    p = p * z + _F(-0.053852785)
    p = p * z + _F(0.1333259)
    p = p * z + _F(-0.33333316)
    small = a + a * (z * p)
    # otherwise 1 - 2 / (e^2a + 1), no cancellation as e^2a >= 3; rounds to 1 beyond
    # 9.02, so clamp at 10 (nan -> 10, restored at the end)
    ac = a if a < _F(10.0) else _F(10.0)
    e = exp_f32(_F(2.0) * ac)
    hi = e + _F(1.0)
    lo = (e - hi) + _F(1.0)  # Fast2Sum (e >= 1): e + 1 = hi + lo exactly
    q = _F(2.0) / hi
    large = _F(1.0) - (q - _F(0.5) * q * q * lo)  # 2/(hi + lo) = q (1 - lo/hi)
    res = math.copysign(small if a < _F(0.54930615) else large, x)
    return x if x != x else res


@_jit
def tanh_f64(x):
    """tanh, float64.  Odd (tanh(-0.0) = -0.0), tanh(+-inf) = +-1."""
    x = np.float64(x)
    a = abs(x)
    # |x| < ln(3)/2: a + a z T(z), rel. error 2^-60.6
    z = a * a
    p = -1.9514622400375064e-05
    p = p * z + 8.334794685767236e-05
    p = p * z + -0.00023340298779068157
    p = p * z + 0.0005884526873418883
    p = p * z + -0.0014555447859768954
    p = p * z + 0.0035920923235204373
    p = p * z + -0.008863232629643105
    p = p * z + 0.021869488387527676
    p = p * z + -0.053968253963817304
    p = p * z + 0.13333333333326716
    p = p * z + -0.333333333333333
    small = a + a * (z * p)
    ac = a if a < 20.0 else 20.0  # tanh rounds to 1 beyond 19.07
    e = exp_f64(2.0 * ac)
    hi = e + 1.0
    lo = (e - hi) + 1.0
    q = 2.0 / hi
    large = 1.0 - (q - 0.5 * q * q * lo)
    res = math.copysign(small if a < 0.5493061443340549 else large, x)
    return x if x != x else res


# ---------------------------------------------------------------------------
# erf
# ---------------------------------------------------------------------------


@_jit
def _pick3(first, second, a, b, c):
    """a where ``first``, else b where ``second``, else c: a select, no branch."""
    return a if first else (b if second else c)


@_jit
def _erf_small_f32(z):
    """A(z) - 1 for z = a^2, a < 0.875, A ~ erf(a)/a: rel. error of erf 2^-32.2."""
    p = _F(8.675392e-05)
    p = p * z + _F(-0.0008211104)
    p = p * z + _F(0.0052067474)
    p = p * z + _F(-0.026861584)
    p = p * z + _F(0.11283733)
    p = p * z + _F(-0.37612635)
    return p * z + _F(0.12837917)  # 2/sqrt(pi) - 1


@_jit
def _erf_small_f64(z):
    """A(z) - 1 for z = a^2, a < 0.875: rel. error of erf 2^-61.4."""
    p = -8.65511499935862e-10
    p = p * z + 1.4118058371695962e-08
    p = p * z + -1.6288380590212312e-07
    p = p * z + 1.6456518574521897e-06
    p = p * z + -1.4925381489784114e-05
    p = p * z + 0.00012055324326119725
    p = p * z + -0.0008548326839445134
    p = p * z + 0.0052239776229561306
    p = p * z + -0.026866170644932613
    p = p * z + 0.11283791670954303
    p = p * z + -0.37612638903183737
    return p * z + 0.1283791670955126



@_jit
def erf_f32(x):
    """erf, float32.  Odd (erf(-0.0) = -0.0), erf(+-inf) = +-1."""
    x = np.float32(x)
    a = abs(x)
    # |x| < 0.875: a + a (A(z) - 1), z = a^2, A ~ erf(a)/a
    p = _erf_small_f32(a * a)
    small = a + a * p
    # 0.875 <= |x| < 3.92: 1 - e^(-a^2) B(a - 1.75), B ~ erfc(a) e^(a^2), its error
    # weighted by the effect on erf: 2^-29.6.  a - 1.75 is exact on the whole interval.
    # erf rounds to 1 beyond 3.9193.
    ac = a if a > _F(0.875) else _F(0.875)
    ac = ac if ac < _F(3.92) else _F(3.92)
    t = ac - _F(1.75)
    q = _F(-3.8792776e-05)
    q = q * t + _F(0.00014292831)
    q = q * t + _F(-0.00033370688)
    q = q * t + _F(0.0010066786)
    q = q * t + _F(-0.0030334445)
    q = q * t + _F(0.008414114)
    q = q * t + _F(-0.022255523)
    q = q * t + _F(0.055763125)
    q = q * t + _F(-0.13097663)
    q = q * t + _F(0.28497222)
    large = _F(1.0) - exp_f32(-(ac * ac)) * q
    res = small if a < _F(0.875) else (large if a < _F(3.92) else _F(1.0))
    res = math.copysign(res, x)
    return x if x != x else res


@_jit
def erf_f64(x):
    """erf, float64.  Odd (erf(-0.0) = -0.0), erf(+-inf) = +-1."""
    x = np.float64(x)
    a = abs(x)
    # |x| < 0.875: a + a (A(z) - 1)
    p = _erf_small_f64(a * a)
    small = a + a * p
    # 0.875 <= |x| < 5.93: 1 - e^(-a^2) B(t), t = 1/(a + 3) - 0.1875 (the subtraction
    # is exact; centring keeps the terms small), weighted error 2^-59.3.
    # erf rounds to 1 beyond 5.9216.
    ac = a if a > 0.875 else 0.875
    ac = ac if ac < 5.93 else 5.93
    # B amplifies the relative error of t about 2x, so 1/(a + 3) gets a correction
    # below its last bit, added after the (exact) centring: se is the rounding error
    # of a + 3 (2Sum), r = 1 - t*sa the division's residual, computed from products
    # of halves split off by bit masking (exact without FMA).
    sa = ac + 3.0
    sb = sa - ac
    se = (ac - (sa - sb)) + (3.0 - sb)
    t = 1.0 / sa
    th = np.int64(np.float64(t).view(np.int64) & _D_HIGH26).view(np.float64)
    sh = np.int64(np.float64(sa).view(np.int64) & _D_HIGH26).view(np.float64)
    tl = t - th
    sl = sa - sh
    r = (((1.0 - th * sh) - th * sl) - tl * sh) - tl * sl
    t = (t - 0.1875) + t * (r - t * se)  # correction added after the exact centring
    q = -12050.675099047625
    q = q * t + -1942.1573989824935
    q = q * t + 4541.5077235352655
    q = q * t + 418.49200058471445
    q = q * t + -1007.4239018688742
    q = q * t + -367.94653049998084
    q = q * t + 157.91418337922153
    q = q * t + 212.25322097815868
    q = q * t + 113.85751706934579
    q = q * t + 41.022691384018614
    q = q * t + 11.12786936056208
    q = q * t + 2.3715697251252363
    q = q * t + 0.22392935763140992
    large = 1.0 - exp_f64(-(ac * ac)) * q
    res = small if a < 0.875 else (large if a < 5.93 else 1.0)
    res = math.copysign(res, x)
    return x if x != x else res


# ---------------------------------------------------------------------------
# erfc
# ---------------------------------------------------------------------------
# erfc(x) = 1 - erf(x) without the cancellation for x >> 0 (gelu's x(1 + erf(x/sqrt2))/2 for
# x << 0 is x erfc(-x/sqrt2)/2).  |x| < 0.875: from erf's polynomial, 1 - erf(x) >= 0.21.
# 0.875 <= |x|: e^(-a^2) F(a), a = |x|, F ~ erfc(a) e^(a^2) (times a on the outer pieces) by
# one polynomial whose coefficients are selected per interval (branch-free).  e^(-a^2) is
# e^(-ah^2 - al (a + ah)) with a = ah + al and ah^2 exact: the rounding of a^2 would cost
# a^2 ULP (700 in float64).  x < -0.875: 2 - erfc(|x|), in [1.78, 2], no cancellation.


@_jit
def erfc_f32(x):
    """erfc = 1 - erf, float32, accurate in the tail.  erfc(inf) = 0, erfc(-inf) = 2."""
    x = np.float32(x)
    a = abs(x)
    # |x| < 0.875: 1 - (x + x p); from 1/4 up as 0.5 - ((x - 0.5) + x p), x - 0.5 exact
    r = x * _erf_small_f32(x * x)
    small = _F(1.0) - (x + r) if x < _F(0.25) else _F(0.5) - ((x - _F(0.5)) + r)
    # erfc rounds to 0 beyond 10.06; lanes outside [0.875, 10.1) (nan too) compute at 0.875
    ac = a if a > _F(0.875) else _F(0.875)
    ac = ac if ac < _F(10.1) else _F(0.875)
    in_a = ac < _F(1.875)
    in_t = ac < _F(4.5)
    inv = _F(1.0) / ac
    u_t = (inv - _F(0.37777779)) * _F(8.0)
    u_s = (inv * inv - _F(0.029592838)) * _F(64.0)
    u = (ac - _F(1.375)) * _F(2.0) if in_a else (u_t if in_t else u_s)
    # F: erfc(a) e^(a^2) on the first piece, a erfc(a) e^(a^2) on the others
    #   a = a on [0.875, 1.875]: u = (a - _F(1.375))*2, rel. error 2^-24.5
    #   t = 1/a on [1.875, 4.5]: u = (t - _F(0.37777779))*8, rel. error 2^-24.1
    #   s = 1/a^2 on [4.5, 10.1]: u = (s - _F(0.029592838))*64, rel. error 2^-25.1
    q = _pick3(in_a, in_t, _F(1.3438996e-06), _F(6.5733183e-09), _F(2.6289368e-12))
    q = q * u + _pick3(in_a, in_t, _F(-7.776117e-06), _F(-1.15720574e-07), _F(-3.2223023e-11))
    q = q * u + _pick3(in_a, in_t, _F(4.019305e-05), _F(7.318429e-07), _F(4.3027673e-10))
    q = q * u + _pick3(in_a, in_t, _F(-0.00021226876), _F(-1.0610114e-06), _F(-6.7162116e-09))
    q = q * u + _pick3(in_a, in_t, _F(0.0010678289), _F(-2.8512748e-05), _F(1.2316035e-07))
    q = q * u + _pick3(in_a, in_t, _F(-0.005063026), _F(0.00034370014), _F(-2.7841381e-06))
    q = q * u + _pick3(in_a, in_t, _F(0.022465529), _F(-0.0014151271), _F(8.4276864e-05))
    q = q * u + _pick3(in_a, in_t, _F(-0.09215773), _F(-0.019011596), _F(-0.0040546856))
    q = q * u + _pick3(in_a, in_t, _F(0.3432959), _F(0.53043854), _F(0.5561873))
    q = q if in_a else q / ac
    ah = np.int32(np.float32(ac).view(np.int32) & np.int32(-4096)).view(np.float32)  # 12 bits
    n, r1, c = _exp_reduce_f32(-(ah * ah))
    ph, pl = _exp_pair_f32(_F(1.0), r1, c + (ac - ah) * (ac + ah))
    d = min(n + 100, 0)  # 2^n = 2^(n-d) 2^d: one rounding where the result is subnormal
    large = (ph * q + pl * q) * _pow2_f32(n - d) * _pow2_f32(d)
    large = large if a < _F(10.1) else _F(0.0)
    res = small if a < _F(0.875) else (large if x > _F(0.0) else _F(2.0) - large)
    return x if x != x else res


@_jit
def _erfc_tail_q_f64(ac):
    """q with erfc(ac) = e^(-ac^2) q, for ac in [0.875, 27.3] (erfc_f64's tail pieces)."""
    in_a = ac < 1.875
    in_t = ac < 4.5
    inv = 1.0 / ac
    u_t = (inv - 0.37777777777777777) * 8.0
    u_s = (inv * inv - 0.02536223781645027) * 32.0
    u = (ac - 1.375) * 2.0 if in_a else (u_t if in_t else u_s)
    #   a = a on [0.875, 1.875]: u = (a - 1.375)*2, rel. error 2^-53.8
    #   t = 1/a on [1.875, 4.5]: u = (t - 0.37777777777777777)*8, rel. error 2^-53.4
    #   s = 1/a^2 on [4.5, 27.3]: u = (s - 0.02536223781645027)*32, rel. error 2^-54.1
    q = _pick3(in_a, in_t, -4.771660747069418e-14, 4.205235120126003e-16, -2.781379738628855e-15)
    q = q * u + _pick3(in_a, in_t, 3.5752116840054456e-13, 1.0569890251450089e-14,
                       9.337139661922789e-15)
    q = q * u + _pick3(in_a, in_t, -2.4053656934205967e-12, -1.0176983369358922e-13,
                       -2.520003095177655e-14)
    q = q * u + _pick3(in_a, in_t, 1.7150689256416798e-11, 4.3948613639747706e-13,
                       9.390964085806875e-14)
    q = q * u + _pick3(in_a, in_t, -1.1967345470179562e-10, -6.334509957933273e-13,
                       -3.746779757723398e-13)
    q = q * u + _pick3(in_a, in_t, 8.108047933496491e-10, -8.003214604789763e-12,
                       1.5322734958007816e-12)
    q = q * u + _pick3(in_a, in_t, -5.340898586426393e-09, 8.882030408349417e-11,
                       -6.627706982661585e-12)
    q = q * u + _pick3(in_a, in_t, 3.414550130142749e-08, -4.949740764423402e-10,
                       3.057304230526887e-11)
    q = q * u + _pick3(in_a, in_t, -2.1140007243943863e-07, 1.1562928075424566e-09,
                       -1.514740478931144e-10)
    q = q * u + _pick3(in_a, in_t, 1.264260855713633e-06, 8.355546045995859e-09,
                       8.141276911180403e-10)
    q = q * u + _pick3(in_a, in_t, -7.281918602167217e-06, -1.2045565263136723e-07,
                       -4.8075094273714725e-09)
    q = q * u + _pick3(in_a, in_t, 4.025344967293853e-05, 7.297531064475842e-07,
                       3.171160719522004e-08)
    q = q * u + _pick3(in_a, in_t, -0.0002126438470405187, -1.055256216083591e-06,
                       -2.389665556697121e-07)
    q = q * u + _pick3(in_a, in_t, 0.0010678119754621014, -2.851184499029849e-05,
                       2.124001541403024e-06)
    q = q * u + _pick3(in_a, in_t, -0.005062921402925137, 0.0003436976152688183,
                       -2.3381006087992837e-05)
    q = q * u + _pick3(in_a, in_t, 0.02246552966173929, -0.0014151272725879227,
                       0.00034637556877087014)
    q = q * u + _pick3(in_a, in_t, -0.09215773498733389, -0.01901159617410831,
                       -0.008201890737601022)
    q = q * u + _pick3(in_a, in_t, 0.3432958898621254, 0.5304385720089408, 0.5572913318123387)
    q = q if in_a else q / ac
    return q


@_jit
def erfc_f64(x):
    """erfc = 1 - erf, float64, accurate in the tail.  erfc(inf) = 0, erfc(-inf) = 2."""
    x = np.float64(x)
    a = abs(x)
    r = x * _erf_small_f64(x * x)
    small = 1.0 - (x + r) if x < 0.25 else 0.5 - ((x - 0.5) + r)
    # erfc rounds to 0 beyond 27.23
    ac = a if a > 0.875 else 0.875
    ac = ac if ac < 27.3 else 0.875
    q = _erfc_tail_q_f64(ac)
    ah = np.int64(np.float64(ac).view(np.int64) & _D_HIGH26).view(np.float64)  # 26 bits
    n, r1, c = _exp_reduce_f64(-(ah * ah))
    ph, pl = _exp_pair_f64(1.0, r1, c + (ac - ah) * (ac + ah))
    d = min(n + 1000, 0)
    large = (ph * q + pl * q) * _pow2_f64(n - d) * _pow2_f64(d)
    large = large if a < 27.3 else 0.0
    res = small if a < 0.875 else (large if x > 0.0 else 2.0 - large)
    return x if x != x else res


# ---------------------------------------------------------------------------
# gelu: xncdf(x) = x Phi(x) and ncdf_xpdf(x) = Phi(x) + x phi(x) (its derivative)
# ---------------------------------------------------------------------------
# Phi(x) = erfc(-x/sqrt2)/2 through erfc of a rounded x/sqrt2 costs 2 a^2 ULP in the tail
# (a relative error d of a = |x|/sqrt2 is 2 a^2 d in e^(-a^2)), and Phi + x phi cancels near
# its zero x0 = -0.7518 (1600 ULP at the float32 neighbours of x0).
#
# float32 (computed in float64, rounded once at the end): with s = |x|, e = e^(-s^2/2)
# (s^2 exact in float64) and the Mills ratio R(s) = Phi(-s)/phi(s),
#   Phi(-s) = e m,  m = R(s)/sqrt(2 pi) = t Q(t),  t = 1/(1 + s/4),  Q a polynomial;
#   Phi + x phi = e k for x < 0, 1 - e k for x >= 0 (g(x) + g(-x) = 1), k = (R(s) - s)/sqrt(2 pi)
#   = m - s/sqrt(2 pi), and near s0 = -x0 k = (s - s0) H(s), no cancellation.
# float64: z = -x/sqrt2 as a double-word zh + zl (Dekker's product), erfc's pieces at zh plus
# zl erfc'(zh) below 0.875, and e^(-x^2/2) from x itself (x = xh + xl, xh^2 exact) beyond;
# the derivative near x0 is e^(-x^2/2) (s - s0) H(s) on s in [0.3, 2], where Phi + x phi
# would lose up to 3.7 bits.

_D_SQRTH = 0.7071067811865476  # 1/sqrt2 rounded
_D_SQRTH_HI = 0.7071067690849304  # its 26 high bits
_D_SQRTH_MID = 1.2101617152815436e-08  # _D_SQRTH - _D_SQRTH_HI (exact)
_D_SQRTH_LO = -4.833646656726457e-17  # 1/sqrt2 - _D_SQRTH
_D_INV_SQRT_2PI = 0.3989422804014327
_D_GELU_S0_HI = 0.7517915246935645  # -x0, the zero of Phi + x phi at x0 < 0
_D_GELU_S0_LO = -1.4956759177009883e-17


@_jit
def _phi_mills_f32(x):
    """For float32 x, in float64: (s, e, m) with s = |x| clamped to 15, e = e^(-s^2/2) and
    m = R(s)/sqrt(2 pi), each within 2^-28 relative (nan computes at 15)."""
    s = abs(np.float64(x))
    s = s if s < 15.0 else 15.0
    v = -0.5 * (s * s)  # exact: a 24-bit s squares exactly
    tt = v * _D_LOG2E + _D_ROUND
    k = tt - _D_ROUND
    n = np.float64(tt).view(np.int64) - _D_ROUND_BITS  # in [-163, 0]
    r = (v - k * _D_LN2_HI) - k * _D_LN2_LO
    # e^r for |r| <= ln2/2, rel. error 2^-28.6
    p = 0.0013941108433972674
    p = p * r + 0.008375126398153335
    p = p * r + 0.04166635289677516
    p = p * r + 0.16666415514653277
    p = p * r + 0.5000000047117757
    p = p * r + 1.000000037716214
    p = p * r + 1.0
    e = p * _pow2_f64(n)
    t = 1.0 / (1.0 + 0.25 * s)
    u = t - 0.6052631578947368
    # Q(t) = R(s)/(t sqrt(2 pi)) on s in [0, 15], u = t - 0.605: rel. error 2^-28.4
    q = -0.013198487884431722
    q = q * u + 0.015777085686312534
    q = q * u + 0.03247517138509548
    q = q * u + -0.03344014550595798
    q = q * u + -0.08865855741064155
    q = q * u + 0.013982443444900395
    q = q * u + 0.26207006901249613
    q = q * u + 0.47993558252901836
    q = q * u + 0.5215891684588976
    q = q * u + 0.3990105958875509
    q = q * u + 0.22557091061685644
    return s, e, t * q


@_jit
def xncdf_f32(x):
    """x Phi(x) (gelu), Phi the standard normal CDF, float32 in and out (float64 inside).
    xncdf(-inf) = 0, xncdf(inf) = inf."""
    x = np.float32(x)
    xd = np.float64(x)
    s, e, m = _phi_mills_f32(x)
    lower = e * m  # Phi(-s)
    res = xd * (lower if xd < 0.0 else 1.0 - lower)
    res = res if xd > -15.0 else 0.0  # x Phi(x) < 2^-160 there
    return np.float32(x if x != x else res)


@_jit
def ncdf_xpdf_f32(x):
    """Phi(x) + x phi(x) (gelu's derivative), float32 in and out (float64 inside).
    ncdf_xpdf(-inf) = 0, ncdf_xpdf(inf) = 1."""
    x = np.float32(x)
    xd = np.float64(x)
    s, e, m = _phi_mills_f32(x)
    # near s0: (s - s0) H(s), u = s - 0.75, rel. error 2^-31.7; s - s0_hi is exact there
    u = s - 0.75
    h = -0.0005583328232337272
    h = h * u + 0.0017627767466947078
    h = h * u + -0.0051795765986261694
    h = h * u + 0.014350149721357591
    h = h * u + -0.03665862214344082
    h = h * u + 0.08488758570487405
    h = h * u + -0.5725581358499552
    near = ((s - _D_GELU_S0_HI) - _D_GELU_S0_LO) * h
    k = near if (s > 0.5 and s < 1.0) else m - s * _D_INV_SQRT_2PI
    lower = e * k
    res = lower if xd < 0.0 else 1.0 - lower
    res = res if xd > -15.0 else 0.0  # |Phi + x phi| < 2^-157 there
    return np.float32(x if x != x else res)


@_jit
def _minus_x_sqrth_f64(x):
    """-x/sqrt2 as zh + zl, |zl| <= ulp(zh) (Dekker's product with 26-bit halves)."""
    zh = -(x * _D_SQRTH)
    xh = np.int64(np.float64(x).view(np.int64) & _D_HIGH26).view(np.float64)
    xl = x - xh
    err = (((xh * _D_SQRTH_HI + zh) + xh * _D_SQRTH_MID) + xl * _D_SQRTH_HI) + xl * _D_SQRTH_MID
    return zh, -(err + x * _D_SQRTH_LO)


@_jit
def _ncdf_parts_f64(x):
    """The pieces of Phi(x) = erfc(z)/2, z = -x/sqrt2, float64.

    Returns (small, a_small, ph, pl, q, n, d): erfc(z) for |z| < 0.875 (with zl's share);
    a_small = |z| < 0.875; e^(-x^2/2) = (ph + pl) 2^n (|x| clamped to 38.9,
    computed from x itself), q with erfc(|z|) = e^(-z^2) q there; 2^n = 2^(n-d) 2^d with both
    factors normal.
    """
    zh, zl = _minus_x_sqrth_f64(x)
    a = abs(zh)
    w = zh * zh
    r = zh * _erf_small_f64(w)
    # erf(zh + zl) - erf(zh) = zl (2/sqrt(pi)) e^(-zh^2) (1 + O(zl)); 2^-9 is plenty
    ew = 1.0 - w * (1.0 - w * (0.5 - w * (0.16666666666666666 - w * 0.041666666666666664)))
    dr = zl * (1.1283791670955126 * ew)
    r = r + dr
    small = 1.0 - (zh + r) if zh < 0.25 else 0.5 - ((zh - 0.5) + r)
    ac = a if a > 0.875 else 0.875
    ac = ac if ac < 27.3 else 27.3  # nan too; q's last 0.5% beyond 27.3 is below 2^-1074
    q = _erfc_tail_q_f64(ac)
    xa = abs(x)
    xa = xa if xa < 38.9 else 38.9  # nan -> 38.9
    xh = np.int64(np.float64(xa).view(np.int64) & _D_HIGH26).view(np.float64)
    n, r1, c = _exp_reduce_f64(-0.5 * (xh * xh))
    ph, pl = _exp_pair_f64(1.0, r1, c + 0.5 * ((xa - xh) * (xa + xh)))
    d = min(n + 1000, 0)
    return small, a < 0.875, ph, pl, q, n, d


@_jit
def xncdf_f64(x):
    """x Phi(x) (gelu), Phi the standard normal CDF, float64.
    xncdf(-inf) = 0, xncdf(inf) = inf."""
    x = np.float64(x)
    small, in_small, ph, pl, q, n, d = _ncdf_parts_f64(x)
    # x < 0: x erfc(|z|)/2 with the scaling last (one rounding where it is subnormal)
    scale = _pow2_f64(n - d) * _pow2_f64(d)  # 2^n, exact down to 2^-1074
    neg = ((ph * q + pl * q) * (0.5 * x)) * _pow2_f64(n - d) * _pow2_f64(d)
    pos = x - (0.5 * x) * ((ph * q + pl * q) * scale)  # erfc(|z|) <= 0.22 here
    res = (0.5 * x) * small if in_small else (neg if x < 0.0 else pos)
    a = abs(x)
    res = res if a < 38.9 else (x if x > 0.0 else 0.0)
    return x if x != x else res


@_jit
def ncdf_xpdf_f64(x):
    """Phi(x) + x phi(x) (gelu's derivative), float64.
    ncdf_xpdf(-inf) = 0, ncdf_xpdf(inf) = 1."""
    x = np.float64(x)
    small, in_small, ph, pl, q, n, d = _ncdf_parts_f64(x)
    s = abs(x)
    # |x| < 1.24 (z small): Phi + x phi, where e^(-x^2/2) = ph + pl exactly enough (n >= -2)
    scale = _pow2_f64(n - d) * _pow2_f64(d)  # 2^n, exact down to 2^-1074
    e = (ph + pl) * scale
    mid = 0.5 * small + x * (e * _D_INV_SQRT_2PI)
    # tail: e^(-x^2/2) (q/2 + x/sqrt(2 pi)) for x < 0 (q/2 <= 0.29 |x| / 1.24: no cancellation
    # beyond |x| = 2), 1 - erfc(|z|)/2 + x phi for x > 0
    kq = 0.5 * q + x * _D_INV_SQRT_2PI
    neg = (ph * kq + pl * kq) * _pow2_f64(n - d) * _pow2_f64(d)
    pos = (1.0 - 0.5 * (ph * q + pl * q) * scale) + x * (e * _D_INV_SQRT_2PI)
    res = mid if in_small else (neg if x < 0.0 else pos)
    # s in [0.3, 2]: Phi(-s) + (-s) phi(s) = e^(-s^2/2) (s - s0) H(s), u = s - 1.15,
    # rel. error 2^-61; g(x) = 1 - g(-x) for x > 0
    u = s - 1.15
    h = -6.377777558547017e-12
    h = h * u + 3.2354326419399576e-11
    h = h * u + -1.3865521054949303e-10
    h = h * u + 6.673294331220009e-10
    h = h * u + -3.163653207727544e-09
    h = h * u + 1.4474723203536234e-08
    h = h * u + -6.437358716295605e-08
    h = h * u + 2.7798336148727367e-07
    h = h * u + -1.1628556371290823e-06
    h = h * u + 4.701258676580752e-06
    h = h * u + -1.831976197517616e-05
    h = h * u + 6.859190891799066e-05
    h = h * u + -0.0002458343585284378
    h = h * u + 0.0008395664722258373
    h = h * u + -0.002716889957126525
    h = h * u + 0.008271880083331514
    h = h * u + -0.02347526031475479
    h = h * u + 0.06131654021375837
    h = h * u + -0.5436667955534376
    k = ((s - _D_GELU_S0_HI) - _D_GELU_S0_LO) * h
    near = (ph * k + pl * k) * scale
    near = near if x < 0.0 else 1.0 - near
    res = near if (s > 0.3 and s < 2.0) else res
    res = res if s < 38.9 else (1.0 if x > 0.0 else 0.0)
    return x if x != x else res


# ---------------------------------------------------------------------------
# sigmoid
# ---------------------------------------------------------------------------


@_jit
def sigmoid_f32(x):
    """Logistic 1 / (1 + e^-x), float32, stable for both signs; sigmoid(-inf) = 0.

    With e = e^-|x| <= 1: 1/(1 + e) for x >= 0, e/(1 + e) for x < 0. e's error (1 ULP) is
    damped by e/(1 + e) <= 1/2 or carried once, so the result is within 2.1 ULP; a
    double-float form gets 1 ULP but costs 2.5x the time (measured, 10^7 elements).
    """
    x = np.float32(x)
    # Everything up to e depends on |x| only, so that sigmoid(x) * sigmoid(-x) in one loop
    # shares it after inlining (one exp, not two: LLVM folds abs(-x) to abs(x)). Lanes
    # beyond +-104 (inf, nan) compute garbage and take their result from the selects.
    na = -abs(x)
    t = na * _F32_LOG2E + _F32_ROUND
    k = t - _F32_ROUND
    n = np.float32(t).view(np.int32) - _F32_ROUND_BITS  # in [-150, 0]
    r = (na - k * _F32_LN2_HI) - k * _F32_LN2_LO
    p = _F(1.0) + (r + _expm1_poly_f32(r))  # e = p 2^n
    # Below 2^-126 e is flushed: 1 + e rounds to 1 there anyway.
    e = p * _pow2_f32(max(n, -126))
    pos = x >= _F(0.0)
    q = (_F(1.0) if pos else p) / (_F(1.0) + e)
    # x < 0: e/(1 + e) = q 2^n, rounded once even when subnormal: q 2^(n+64) is exact.
    res = q * (_F(1.0) if pos else _pow2_f32(n + 64)) * (_F(1.0) if pos else _F32_2M64)
    res = res if x > _F(-104.0) else _F(0.0)
    res = res if x < _F(104.0) else _F(1.0)
    return x if x != x else res


@_jit
def sigmoid_f64(x):
    """Logistic 1 / (1 + e^-x), float64, stable for both signs; sigmoid(-inf) = 0.

    As sigmoid_f32 (within 1.6 ULP; 2x faster than a double-float form).
    """
    x = np.float64(x)
    na = -abs(x)
    t = na * _D_LOG2E + _D_ROUND
    k = t - _D_ROUND
    n = np.float64(t).view(np.int64) - _D_ROUND_BITS  # in [-1077, 0]
    r = (na - k * _D_LN2_HI) - k * _D_LN2_LO
    p = 1.0 + (r + _expm1_poly_f64(r))
    e = p * _pow2_f64(max(n, -1022))
    pos = x >= 0.0
    q = (1.0 if pos else p) / (1.0 + e)
    res = q * (1.0 if pos else _pow2_f64(n + 512)) * (1.0 if pos else _D_2M512)
    res = res if x > -746.0 else 0.0
    res = res if x < 746.0 else 1.0
    return x if x != x else res
