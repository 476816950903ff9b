"""Numerical-stability rewrites: named, composable, each proven (tests/test_rewrite.py).

A rewrite maps an expression to an equal one that a float kernel evaluates without the hazard
of the original: overflow (log(1 + e^x) at x = 1000 is inf), cancellation (1 - σ(x) is 0 once
σ(x) rounds to 1; log(1 + u) loses u near 0) or inf/inf (tanh written with exponentials).
Each ``Rewrite`` carries a naive example and the points where that example fails, so the tests
can check, for every rewrite in the registry, that it is an identity (symbolically, else in
mpmath at random points) and that the rewritten example no longer fails there.

``symgrad.derive.stabilize`` applies ``DEFAULT`` to every kernel expression, then the extra
rewrites a spec names (``spec.rewrites``; ``OPT_IN`` lists those that are not in the default
chain, with the reason), then the default chain again so that what the extras produce is
cleaned up too. Rewrites only ever produce functions the printer knows (exp, log,
log1p, expm1, tanh, Abs, Max, Min and the library functions with their stable helpers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sympy as sp

from symgrad.functions import expm1, log1p, logsigmoid, ncdf_xpdf, sigmoid, softplus, xncdf

Z = sp.Symbol("z", real=True)  # the argument of the rewrites' examples
W = sp.Symbol("w", real=True)  # a second one (log-sum-exp, BCE targets)


@dataclass(frozen=True)
class Rewrite:
    """One named rewrite ``expr -> equal expr`` and the evidence that it is worth having.

    ``example`` is a naive expression in Z (and W) showing the hazard; ``hazard_points`` are
    (z, w) values where the naive example, evaluated in float64, is inf, nan or wrong, and the
    rewritten one is right. ``branch_free`` means the hazard shows when every branch of a
    Piecewise is evaluated, as SIMD selects and np.where do.
    """

    name: str
    summary: str  # what it replaces, as a one-line formula
    why: str  # the hazard it removes
    transform: Callable[[sp.Expr], sp.Expr]
    example: sp.Expr
    hazard_points: tuple[tuple[float, float], ...]
    branch_free: bool = False
    parts: tuple[str, ...] = field(default=())  # a composite's constituents, in order

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        return self.transform(sp.sympify(expr))


REWRITES: dict[str, Rewrite] = {}


def _register(rewrite: Rewrite) -> Rewrite:
    if rewrite.name in REWRITES:
        raise ValueError(f"rewrite {rewrite.name!r} is already registered")
    REWRITES[rewrite.name] = rewrite
    return rewrite


def get(name: str) -> Rewrite:
    try:
        return REWRITES[name]
    except KeyError:
        raise ValueError(f"unknown rewrite {name!r}; known: {', '.join(REWRITES)}") from None


def chain(names: Iterable[str]) -> Callable[[sp.Expr], sp.Expr]:
    """Compose rewrites by name, applied left to right."""
    steps = [get(n) for n in names]

    def run(expr: sp.Expr) -> sp.Expr:
        for step in steps:
            expr = step(expr)
        return expr

    return run


def _replace(query: Callable[[sp.Basic], bool], value: Callable[[sp.Basic], sp.Basic | None]):
    """A bottom-up ``expr.replace`` whose ``value`` may decline (return None) to keep a node."""

    def transform(expr: sp.Expr) -> sp.Expr:
        def apply(node: sp.Basic) -> sp.Basic:
            out = value(node)
            return node if out is None else out

        return expr.replace(query, apply)

    return transform


# -- matching helpers --------------------------------------------------------------------------

def _one_plus_exp(base: sp.Basic) -> sp.Expr | None:
    """v if ``base`` is 1 + e^v, else None."""
    if isinstance(base, sp.Add) and len(base.args) == 2 and sp.S.One in base.args:
        other = base.args[0] if base.args[1] == 1 else base.args[1]
        if isinstance(other, sp.exp):
            return other.args[0]
    return None


def _top_down(value: Callable[[sp.Basic], sp.Basic | None]):
    """Rewrite a node before its children: a product is matched whole, before its factors."""

    def transform(expr: sp.Basic) -> sp.Basic:
        out = value(expr)
        if out is not None:
            expr = out
        if not expr.args or isinstance(expr, sp.Symbol | sp.Number):
            return expr
        args = tuple(transform(a) for a in expr.args)
        # Rebuild only what changed: Mul(2, x - t) would otherwise distribute to 2x - 2t.
        return expr if args == expr.args else expr.func(*args)

    return transform


def _ratio_of_integers(a: sp.Expr, b: sp.Expr) -> int | None:
    """k if a == k·b for an integer k (b nonzero), else None."""
    ratio = sp.simplify(a / b)
    if ratio.is_number and ratio.is_real and ratio == int(ratio):
        return int(ratio)
    return None


# -- sigmoid: 1/(1 + e^-u) and e^u/(1 + e^u) -> σ(u) -------------------------------------------

def _sigmoid_value(mul: sp.Basic) -> sp.Expr | None:
    """In a product, e^(m·v)·(1 + e^v)^-n  ->  σ(v)^m · σ(-v)^(n-m)  (0 <= m <= n).

    Left alone where v <= 0 is known: e^v cannot overflow there (the sech² form relies on it).
    """
    if not isinstance(mul, sp.Mul | sp.Pow):
        return None
    factors = list(sp.Mul.make_args(mul))
    for i, f in enumerate(factors):
        if not (isinstance(f, sp.Pow) and f.exp.is_Integer and f.exp < 0):
            continue
        v = _one_plus_exp(f.base)
        if v is None or v.is_nonpositive:
            continue
        n = int(-f.exp)
        for j, h in enumerate(factors):
            if j != i and isinstance(h, sp.exp):
                m = _ratio_of_integers(h.args[0], v)
                if m is not None and 1 <= m <= n:
                    rest = [x for k, x in enumerate(factors) if k not in (i, j)]
                    return sp.Mul(*rest) * sigmoid(v) ** m * sigmoid(-v) ** (n - m)
        rest = [x for k, x in enumerate(factors) if k != i]
        return sp.Mul(*rest) * sigmoid(-v) ** n
    return None


_sigmoid = _top_down(_sigmoid_value)


_register(Rewrite(
    "sigmoid", "1/(1 + e^-u), e^u/(1 + e^u) -> σ(u)",
    "e^u overflows for u > 709 (float64) and e^u/(1 + e^u) is inf/inf = nan; σ's helper only "
    "ever exponentiates -|u|",
    _sigmoid,
    sp.exp(Z) / (1 + sp.exp(Z)), ((1000.0, 0.0), (710.0, 0.0)),
))


# -- one_minus_sigmoid: 1 - σ(u) -> σ(-u) ---------------------------------------------------------

def _one_minus_sigmoid_value(add: sp.Basic) -> sp.Expr | None:
    """Left alone where u <= 0 is known: then σ(u) <= 1/2 and 1 - σ(u) loses at most a bit."""
    terms = list(add.args)
    if sp.S.One not in terms:
        return None
    for k, term in enumerate(terms):
        if (isinstance(term, sp.Mul) and term.args[0] == -1 and len(term.args) == 2
                and isinstance(term.args[1], sigmoid)
                and not term.args[1].args[0].is_nonpositive):
            rest = [t for i, t in enumerate(terms) if i != k]
            rest.remove(sp.S.One)
            return sp.Add(*rest) + sigmoid(-term.args[1].args[0])
    return None


_one_minus_sigmoid = _replace(lambda e: isinstance(e, sp.Add), _one_minus_sigmoid_value)

_register(Rewrite(
    "one_minus_sigmoid", "1 - σ(u) -> σ(-u)",
    "σ(u) rounds to 1 for u > 17 (float32) / 37 (float64), so 1 - σ(u) is 0 instead of e^-u",
    lambda e: _one_minus_sigmoid(_sigmoid(e)),
    1 - 1 / (1 + sp.exp(-Z)), ((40.0, 0.0), (700.0, 0.0)),
    parts=("sigmoid", "one_minus_sigmoid"),
))


# -- softplus: log(1 + e^u) -> softplus(u) -------------------------------------------------------

def _softplus_value(node: sp.Basic) -> sp.Expr | None:
    if isinstance(node, log1p) and isinstance(node.args[0], sp.exp):
        return softplus(node.args[0].args[0])
    if isinstance(node, sp.log):
        arg = node.args[0]
        v = _one_plus_exp(arg)
        if v is not None:
            return softplus(v)
        if isinstance(arg, sp.Pow) and arg.exp.is_Integer:
            v = _one_plus_exp(arg.base)
            if v is not None:
                return arg.exp * softplus(v)
    return None


_softplus = _replace(lambda e: isinstance(e, sp.log | log1p), _softplus_value)

_register(Rewrite(
    "softplus", "log(1 + e^u), log1p(e^u) -> softplus(u)",
    "e^u overflows for u > 88 (float32) / 709 (float64) and the log of inf is inf; the helper "
    "computes max(u, 0) + log1p(e^-|u|)",
    _softplus,
    sp.log(1 + sp.exp(Z)), ((1000.0, 0.0),),
))


# -- logsigmoid: log σ(u) -> -softplus(-u) -------------------------------------------------------

def _logsigmoid_value(node: sp.Basic) -> sp.Expr | None:
    arg = node.args[0]
    if isinstance(arg, sigmoid):
        return -softplus(-arg.args[0])
    if isinstance(arg, sp.Pow) and isinstance(arg.base, sigmoid) and arg.exp.is_Integer:
        return -arg.exp * softplus(-arg.base.args[0])
    return None


_logsigmoid = _replace(lambda e: isinstance(e, sp.log), _logsigmoid_value)

_register(Rewrite(
    "logsigmoid", "log σ(u) -> -softplus(-u)",
    "σ(u) underflows to 0 for u < -103 (float32) / -745 (float64) and log 0 = -inf, while "
    "log σ(u) is about u",
    lambda e: _logsigmoid(_sigmoid(e)),
    sp.log(1 / (1 + sp.exp(-Z))), ((-1000.0, 0.0),),
    parts=("sigmoid", "logsigmoid"),
))


# -- log(1 - σ(u)) -> -softplus(u): a composite ---------------------------------------------------

def _log_one_minus_sigmoid(expr: sp.Expr) -> sp.Expr:
    return _logsigmoid(_one_minus_sigmoid(_sigmoid(expr)))


_register(Rewrite(
    "log_one_minus_sigmoid", "log(1 - σ(u)) -> -softplus(u)",
    "1 - σ(u) is 0 once σ(u) rounds to 1 (u > 37 in float64), so the log is -inf instead of -u",
    _log_one_minus_sigmoid,
    sp.log(1 - 1 / (1 + sp.exp(-Z))), ((40.0, 0.0), (1000.0, 0.0)),
    parts=("sigmoid", "one_minus_sigmoid", "logsigmoid"),
))


# -- logsumexp: log Σ e^(u_i) -> M + log Σ e^(u_i - M), M = max u_i -------------------------------

def _exp_exponent(term: sp.Expr) -> sp.Expr | None:
    """u if term is c·e^u with a positive number c (folded into u as log c)."""
    coeff, rest = term.as_coeff_Mul()
    if isinstance(rest, sp.exp) and coeff.is_positive:
        return rest.args[0] + sp.log(coeff) if coeff != 1 else rest.args[0]
    return None


def _logsumexp_value(node: sp.Basic) -> sp.Expr | None:
    arg = node.args[0]
    if not isinstance(arg, sp.Add) or len(arg.args) < 2:
        return None
    exponents = [_exp_exponent(t) for t in arg.args]
    if any(u is None for u in exponents) or any(u.has(sp.Max) for u in exponents):
        return None  # not a sum of exponentials, or already shifted
    if len(exponents) == 2:  # the logaddexp form: one exp, of a non-positive number
        a, b = exponents
        return sp.Max(a, b) + log1p(sp.exp(-sp.Abs(a - b)))
    top = sp.Max(*exponents)
    return top + sp.log(sp.Add(*[sp.exp(u - top) for u in exponents]))


_register(Rewrite(
    "logsumexp", "log Σ e^(u_i) -> M + log Σ e^(u_i - M), M = max u_i",
    "each e^(u_i) overflows for u_i > 709 (float64) although the log-sum-exp is about max u_i; "
    "after the shift every exponent is <= 0 and one term is 1",
    _replace(lambda e: isinstance(e, sp.log), _logsumexp_value),
    sp.log(sp.exp(Z) + sp.exp(W)), ((1000.0, 999.0), (-1000.0, -1001.0)),
))


# -- tanh written with exponentials -> tanh ------------------------------------------------------

def _tanh_value(mul: sp.Basic) -> sp.Expr | None:
    """A product c·N^k/D^k with N/D = tanh(u) (written with exponentials) -> c·tanh(u)^k."""
    factors = sp.Mul.make_args(mul)
    if len(factors) > 6:
        return None
    for f in factors:
        if not (isinstance(f, sp.Pow) and f.exp.is_Integer and f.exp < 0):
            continue
        den, k = f.base, int(-f.exp)
        # Small sums of exponentials only: the check below simplifies, which is slow on big sums.
        if not (isinstance(den, sp.Add) and len(den.args) <= 3 and den.has(sp.exp)):
            continue
        exps = den.atoms(sp.exp)
        for e in exps:
            for u in (e.args[0], e.args[0] / 2, -e.args[0], -e.args[0] / 2):
                rest = sp.simplify((mul / sp.tanh(u) ** k).rewrite(sp.exp))
                if not rest.has(*exps) and not rest.has(sp.exp(-e.args[0])):
                    return rest * sp.tanh(u) ** k
    return None


_register(Rewrite(
    "tanh", "(e^u - e^-u)/(e^u + e^-u), (e^2u - 1)/(e^2u + 1) -> tanh(u)",
    "e^u overflows for |u| > 709 (float64): inf/inf = nan where tanh is ±1",
    _replace(lambda e: isinstance(e, sp.Mul) and e.has(sp.exp), _tanh_value),
    (sp.exp(Z) - sp.exp(-Z)) / (sp.exp(Z) + sp.exp(-Z)), ((1000.0, 0.0), (-1000.0, 0.0)),
))


# -- sech²: 1 - tanh(u)² -> σ(-2|u|)·(4 - 4σ(-2|u|)) -------------------------------------------

def sech_squared(u: sp.Expr) -> sp.Expr:
    """1/cosh(u)² = 4σ'(2u), through σ of a non-positive number: no overflow, no cancellation
    (σ(-2|u|) <= 1/2), and no squared denominator. Written σ·(4 - 4σ), so that no constant
    becomes the product's leading coefficient: x·sech²(...) must never evaluate 4·x first."""
    s = sigmoid(-2 * sp.Abs(u))
    return s * (4 - 4 * s)


def _sech_squared_value(add: sp.Basic) -> sp.Expr | None:
    terms = list(add.args)
    if sp.S.One not in terms:
        return None
    for k, term in enumerate(terms):
        c, rest = term.as_coeff_Mul()
        if (c == -1 and isinstance(rest, sp.Pow) and rest.exp == 2
                and isinstance(rest.base, sp.tanh)):
            others = [t for i, t in enumerate(terms) if i != k]
            others.remove(sp.S.One)
            return sp.Add(*others) + sech_squared(rest.base.args[0])
    return None


_register(Rewrite(
    "sech_squared", "1 - tanh(u)² -> σ(-2|u|)·(4 - 4σ(-2|u|))",
    "tanh(u) rounds to ±1 for |u| > 9 (float32) / 19 (float64), so 1 - tanh² is 0 instead of "
    "about 4e^(-2|u|); the rewritten form never exponentiates a positive number",
    _replace(lambda e: isinstance(e, sp.Add), _sech_squared_value),
    1 - sp.tanh(Z) ** 2, ((20.0, 0.0), (-30.0, 0.0)),
))


# -- 1 ± tanh(u) -> 2σ(±2u), 1 ± erf(u) -> erfc(∓u) ------------------------------------------------

def _one_plus_value(fn: type, make: Callable[[sp.Expr, int], sp.Expr]):
    """Add with a number term c and a term ±c·fn(u): c ± c·fn(u) -> c·make(u, ±1)."""

    def value(add: sp.Basic) -> sp.Expr | None:
        terms = list(add.args)
        numbers = [t for t in terms if t.is_Number and t != 0]
        if not numbers:
            return None
        c0 = numbers[0]
        for k, term in enumerate(terms):
            c, rest = term.as_coeff_Mul()
            if isinstance(rest, fn) and c in (c0, -c0):
                others = [t for i, t in enumerate(terms) if i != k]
                others.remove(c0)
                return sp.Add(*others) + c0 * make(rest.args[0], 1 if c == c0 else -1)
        return None

    return _replace(lambda e: isinstance(e, sp.Add), value)


_register(Rewrite(
    "one_plus_tanh", "1 ± tanh(u) -> 2σ(±2u)",
    "tanh(u) rounds to ∓1 for |u| > 9 (float32) / 19 (float64): 1 ± tanh(u) is 0 instead of "
    "about 2e^(-2|u|) (gelu's tanh form x(1 + tanh(u))/2 becomes x·σ(2u))",
    _one_plus_value(sp.tanh, lambda u, s: 2 * sigmoid(2 * s * u)),
    1 + sp.tanh(Z), ((-20.0, 0.0), (-300.0, 0.0)),
))

def _erfc_form(u: sp.Expr, s: int) -> sp.Expr:
    """1 + s·erf(u) without cancellation: 2 - erfc(|u|) where s·u >= 0 (in [1, 2]), else
    erfc(|u|). Not erfc(-s·u): SymPy rewrites erfc(-v) as 2 - erfc(v) on construction, which
    cancels again; erfc(|u|) it leaves alone, and both branches share it (one erfc call after
    CSE). The condition reads the sign of u's symbolic part: u = x/√2 tests x >= 0, so that
    √2·x is never formed (it overflows where x·e^(-x²/2) is still 0)."""
    coeff, rest = u.as_independent(*u.free_symbols, as_Add=False) if u.free_symbols else (1, u)
    sign = s if coeff.is_positive else (-s if coeff.is_negative else None)
    cond = rest >= 0 if sign == 1 else (rest <= 0 if sign == -1 else s * u >= 0)
    e = sp.erfc(sp.Abs(u))
    return sp.Piecewise((2 - e, cond), (e, True))


_register(Rewrite(
    "erfc", "1 ± erf(u) -> erfc(∓u)",
    "erf(u) rounds to ∓1 for |u| > 6: 1 ± erf(u) is 0 instead of erfc(|u|) (gelu's "
    "x(1 + erf(x/√2))/2 for x < -8)",
    _one_plus_value(sp.erf, _erfc_form),
    1 + sp.erf(Z), ((-10.0, 0.0), (-26.0, 0.0)),
))


# -- gelu: u·(1 + erf(u/√2))/2 -> xncdf(u), and its derivative -> ncdf_xpdf(u) ----------------

def _erf_over_sqrt2(e: sp.Basic) -> sp.Expr | None:
    """u if e is erf(u/√2), else None."""
    if isinstance(e, sp.erf):
        u = sp.expand(e.args[0] * sp.sqrt(2))
        if u.free_symbols:
            return u
    return None


def _xncdf_value(mul: sp.Basic) -> sp.Expr | None:
    """c·u·(1 + erf(u/√2)) -> 2c·xncdf(u) (c free of u's symbols)."""
    factors = list(sp.Mul.make_args(mul))
    for i, f in enumerate(factors):
        if not (isinstance(f, sp.Add) and len(f.args) == 2 and sp.S.One in f.args):
            continue
        u = _erf_over_sqrt2(f.args[0] if f.args[1] == 1 else f.args[1])
        if u is None:
            continue
        c = sp.cancel(sp.Mul(*[g for k, g in enumerate(factors) if k != i]) / u)
        if not (c.free_symbols & u.free_symbols):
            return 2 * c * xncdf(u)
    return None


def _ncdf_xpdf_value(add: sp.Basic) -> sp.Expr | None:
    """c + c·erf(u/√2) + c·u·e^(-u²/2)·√(2/π) (+ rest) -> 2c·ncdf_xpdf(u) + rest."""
    terms = list(add.args)
    for k, term in enumerate(terms):
        c, rest = term.as_coeff_Mul()
        u = _erf_over_sqrt2(rest)
        if u is None or c not in terms:
            continue
        pdf = c * u * sp.sqrt(2) * sp.exp(-u**2 / 2) / sp.sqrt(sp.pi)
        for j, other in enumerate(terms):
            if j != k and other.has(sp.exp) and sp.simplify(other - pdf) == 0:
                others = [t for i, t in enumerate(terms) if i not in (j, k)]
                others.remove(c)
                return sp.Add(*others) + 2 * c * ncdf_xpdf(u)
    return None


def _gelu(expr: sp.Expr) -> sp.Expr:
    expr = _replace(lambda e: isinstance(e, sp.Add) and e.has(sp.erf), _ncdf_xpdf_value)(expr)
    return _replace(lambda e: isinstance(e, sp.Mul) and e.has(sp.erf), _xncdf_value)(expr)


_register(Rewrite(
    "gelu", "u(1 + erf(u/√2))/2 -> xncdf(u), Φ(u) + uφ(u) -> ncdf_xpdf(u)",
    "the rounding of u/√2 is amplified 2(u²/2)-fold in erfc's tail (1.5e3 ULP at u = -38), and "
    "gelu's derivative Φ(u) + uφ(u) cancels near its zero u = -0.7518; the helpers compute Φ "
    "from u itself and that derivative without the cancellation",
    _gelu,
    Z * (1 + sp.erf(Z / sp.sqrt(2))) / 2, ((-7.0, 0.0), (-8.0, 0.0)),
))


# -- log1p and expm1 ------------------------------------------------------------------------------
# Written here rather than taken from sympy.codegen.rewriting: its expm1_opt re-normalises the
# whole sum by a cost function and turns the safe 4e^(-2|u|)/(1 + e^(-2|u|))² into the
# overflowing 4e^(2|u|)/(e^(2|u|) + 1)².

def _log1p_value(node: sp.Basic) -> sp.Expr | None:
    arg = node.args[0]
    if isinstance(arg, sp.Add) and sp.S.One in arg.args:
        return log1p(arg - 1)
    return None


def _expm1_value(add: sp.Basic) -> sp.Expr | None:
    """c·e^u - c -> c·expm1(u), for any factor c (α·e^x - α -> α·expm1(x))."""
    terms = list(add.args)
    for k, term in enumerate(terms):
        exps = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.exp)]
        if len(exps) != 1:
            continue
        coeff = term / exps[0]
        if -coeff in terms:
            rest = [t for i, t in enumerate(terms) if i != k]
            rest.remove(-coeff)
            return sp.Add(*rest) + coeff * expm1(exps[0].args[0])
    return None


_register(Rewrite(
    "log1p", "log(1 + u) -> log1p(u)",
    "1 + u rounds to 1 for |u| < 1e-16 (float64): log gives 0 instead of u",
    _replace(lambda e: isinstance(e, sp.log), _log1p_value),
    sp.log(1 + Z), ((1e-20, 0.0), (-1e-17, 0.0)),
))

_register(Rewrite(
    "expm1", "c·e^u - c -> c·expm1(u)",
    "e^u rounds to 1 for |u| < 1e-16 (float64): e^u - 1 is 0 instead of u",
    _replace(lambda e: isinstance(e, sp.Add), _expm1_value),
    sp.exp(Z) - 1, ((1e-20, 0.0), (-3e-17, 0.0)),
))


def _abs_sign_value(mul: sp.Basic) -> sp.Expr | None:
    """u·sign(u) -> |u| (how SymPy differentiates |u|)."""
    factors = list(mul.args)
    for i, f in enumerate(factors):
        if isinstance(f, sp.sign) and f.args[0] in factors:
            rest = list(factors)
            rest.pop(i)
            rest.remove(f.args[0])
            return sp.Mul(*rest) * sp.Abs(f.args[0])
    return None


_abs_sign = _replace(lambda e: isinstance(e, sp.Mul) and e.has(sp.sign), _abs_sign_value)


# -- rational_cancel: a sum of fractions over one denominator, cancelled ---------------------------

def _rational_cancel_value(add: sp.Basic) -> sp.Expr | None:
    """Combine the terms of a sum over their common denominator and cancel; kept only if the
    numerator collapses to a single term (then the cancellation between the terms is gone)."""
    if not any(isinstance(f, sp.Pow) and f.exp.is_negative for t in add.args
               for f in sp.Mul.make_args(t)):
        return None
    combined = sp.cancel(sp.together(add))
    num, _ = sp.fraction(combined)
    if isinstance(sp.expand(num), sp.Add) or sp.count_ops(combined) > 2 * sp.count_ops(add):
        return None
    return combined


_register(Rewrite(
    "rational_cancel", "1/(1+|u|) - u·sign(u)/(1+|u|)² -> 1/(1+|u|)²",
    "terms of nearly equal size cancel: softsign' as SymPy writes it loses every digit for "
    "|x| > 1e16 (float64); with u·sign(u) = |u| and one denominator the numerator is exactly 1",
    lambda e: _replace(lambda n: isinstance(n, sp.Add), _rational_cancel_value)(_abs_sign(e)),
    sp.diff(Z / (1 + sp.Abs(Z)), Z), ((1e17, 0.0), (-3e16, 0.0)),
))


# -- common numeric factor: 2x - 2t -> 2(x - t) ----------------------------------------------------

def _common_factor_value(add: sp.Basic) -> sp.Expr | None:
    """Only for sums of plain polynomial terms: a sum of bounded functions (4 - 4σ) gains
    nothing, and its factor would become the leading coefficient of an enclosing product."""
    if any(t.has(sp.Function) for t in add.args):
        return None
    coeffs = [t.as_coeff_Mul()[0] for t in add.args]
    if not all(c.is_Rational for c in coeffs):
        return None
    common = sp.gcd_list([abs(c) for c in coeffs])
    if common in (0, 1):
        return None
    return sp.Mul(common, sp.Add(*[t / common for t in add.args]), evaluate=False)


_register(Rewrite(
    "common_factor", "c·a + c·b -> c·(a + b) for a number c",
    "c·a overflows where a does not: 2x - 2t is inf - inf = nan at x = t = 1e308, 2(x - t) is 0",
    _replace(lambda e: isinstance(e, sp.Add), _common_factor_value),
    2 * Z - 2 * W, ((1e308, 1e308), (-1.5e308, -1.5e308)),
))


# -- exp guard in branches: the double-where trick ----------------------------------------------

def _guard_branch(expr: sp.Expr, cond: sp.Basic) -> sp.Expr:
    """In a branch taken only where s <= c, evaluate e^(k·s) as e^(k·min(s, c)) (k > 0)."""
    if not isinstance(cond, sp.core.relational.Relational) or cond.rel_op not in ("<", "<="):
        return expr
    s, c = cond.lhs, cond.rhs  # branch holds where s <= c (or s < c)

    def guard(e: sp.Expr) -> sp.Expr | None:
        k = sp.simplify(e.args[0] / s)
        if k.is_number and k.is_positive and c.is_number:
            return e.func(k * sp.Min(s, c))
        return None

    return _replace(lambda e: isinstance(e, sp.exp | expm1), guard)(expr)


def _branch_exp_guard(expr: sp.Expr) -> sp.Expr:
    def value(pw: sp.Piecewise) -> sp.Expr:
        pieces, previous = [], []
        for e, cond in pw.args:
            # A branch applies where its condition holds and every earlier one fails.
            holds = sp.And(cond, *[sp.Not(p) for p in previous]) if previous else cond
            holds = sp.simplify(holds) if holds not in (sp.true, sp.false) else holds
            pieces.append((_guard_branch(e, holds), cond))
            previous.append(cond)
        return sp.Piecewise(*pieces)

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), value)


_register(Rewrite(
    "branch_exp_guard", "Piecewise((.., s > c), (e^s.., True)) -> e^min(s, c) in the 2nd branch",
    "branch-free code (SIMD selects, np.where) evaluates every branch: e^s of the untaken "
    "branch overflows to inf for s > 709 and inf·0 is nan in a gradient; clamping the exponent "
    "to the branch's own domain changes nothing where the branch is taken",
    _branch_exp_guard,
    sp.Piecewise((Z, Z > 0), (sp.exp(Z) - 1, True)), ((1000.0, 0.0),),
    branch_free=True,
))


# -- the stable BCE-with-logits: a composite ----------------------------------------------------

def _softplus_max_form(expr: sp.Expr) -> sp.Expr:
    """softplus(-u) -> softplus(u) - u, then softplus(u) -> max(u, 0) + log1p(e^-|u|)."""
    def reflect(sp_: softplus) -> sp.Expr | None:
        u = sp_.args[0]
        return softplus(-u) + u if u.could_extract_minus_sign() else None

    expr = _replace(lambda e: isinstance(e, softplus), reflect)(expr)
    expr = sp.expand(expr)
    return expr.replace(lambda e: isinstance(e, softplus),
                        lambda e: sp.Max(e.args[0], 0) + log1p(sp.exp(-sp.Abs(e.args[0]))))


_register(Rewrite(
    "softplus_max_form", "softplus(u) -> max(u, 0) + log1p(e^-|u|)",
    "the naive log(1 + e^u) overflows for u > 709; this is the branch-free stable form",
    lambda e: _softplus_max_form(_softplus(e)), sp.log(1 + sp.exp(Z)), ((1000.0, 0.0),),
    parts=("softplus", "softplus_max_form"),
))


def _bce_with_logits(expr: sp.Expr) -> sp.Expr:
    return _softplus_max_form(_softplus(_logsigmoid(_one_minus_sigmoid(_sigmoid(expr)))))


_register(Rewrite(
    "bce_with_logits", "-[w log σ(z) + (1 - w) log(1 - σ(z))] -> max(z, 0) - z·w + log1p(e^-|z|)",
    "σ(z) rounds to 1 (z > 37) or 0 (z < -745) and one of the logs is -inf: the loss is inf or "
    "nan where it is about |z|",
    _bce_with_logits,
    -(W * sp.log(1 / (1 + sp.exp(-Z))) + (1 - W) * sp.log(1 - 1 / (1 + sp.exp(-Z)))),
    ((1000.0, 0.0), (-1000.0, 1.0), (1000.0, 0.3), (40.0, 0.0)),
    parts=("sigmoid", "one_minus_sigmoid", "logsigmoid", "softplus", "softplus_max_form"),
))

# -- a·u - c·log σ(u): the linear term folded into the branch of |u| ------------------------------

def _linear_logsigmoid_value(add: sp.Basic) -> sp.Expr | None:
    """a·u - c·log σ(u) (a, c free of u) -> [u >= 0: a·u; else (a - c)·u] + c·log1p(e^-|u|).

    -c·log σ(u) = c·max(-u, 0) + c·log1p(e^-|u|), and a·u + c·max(-u, 0) is a·u for u >= 0 and
    (a - c)·u below: each branch is one product, which overflows only where the result does."""
    terms = list(add.args)
    for k, term in enumerate(terms):
        found = [f for f in sp.Mul.make_args(term) if isinstance(f, logsigmoid)]
        if len(found) != 1:
            continue
        u = found[0].args[0]
        c = -term / found[0]
        if c.has(logsigmoid) or (c.free_symbols & u.free_symbols):
            continue
        a, rest = sp.S.Zero, []
        for i, other in enumerate(terms):
            if i == k:
                continue
            ratio = sp.cancel(other / u)
            if not (ratio.free_symbols & u.free_symbols) and not ratio.has(sp.Function):
                a += ratio
            else:
                rest.append(other)
        if a == 0:
            continue
        below = sp.factor(sp.expand(a - c))
        linear = sp.Piecewise((a * u, u >= 0), (below * u, True))
        return sp.Add(*rest) + linear + c * log1p(sp.exp(-sp.Abs(u)))
    return None


_register(Rewrite(
    "linear_logsigmoid", "a·u - c·log σ(u) -> [u >= 0 ? a·u : (a - c)·u] + c·log1p(e^-|u|)",
    "for u < 0, a·u and -c·log σ(u) ≈ -c·u are both large and cancel to (a - c)·u: a·u overflows "
    "(BCE-with-logits with a target outside [0, 1] at u = -1.6e38 in float32: (1 - t)·u is -inf "
    "where the loss is -2.7e38)",
    _replace(lambda e: isinstance(e, sp.Add) and e.has(logsigmoid), _linear_logsigmoid_value),
    (1 - W) * Z - logsigmoid(Z), ((-1.6e308, -0.5), (-1e308, -0.8)),
))

# Applied to every kernel expression, in this order (see stabilize). Library functions come first
# so that log1p/expm1 never see the overflow-prone log(1 + e^u).
DEFAULT: tuple[str, ...] = (
    "sigmoid", "tanh", "sech_squared", "softplus", "logsumexp", "one_minus_sigmoid", "logsigmoid",
    "one_plus_tanh", "gelu", "erfc", "rational_cancel", "expm1", "log1p", "common_factor",
)
# Opt-in only: they change the printed form of forms that are already safe in branching code.
# (sech_squared joined the default chain once the printer multiplied a product's numeric
# coefficient of size >= 1 last: CSE writes σ·(4 - 4σ) as -4·σ·(σ - 1), and mish' must not
# evaluate -4·x first, which overflows for |x| > max/4 where the result is finite.)
OPT_IN: tuple[str, ...] = ("branch_exp_guard", "bce_with_logits", "softplus_max_form",
                           "log_one_minus_sigmoid", "linear_logsigmoid")
# What the mpmath references of symgrad.accuracy add, so that 50 digits stay 50 digits whatever
# the default chain holds: mpmath has erfc, and constants in products do not overflow there.
REFERENCE_EXTRA: tuple[str, ...] = ("erfc", "sech_squared")


def apply(expr: sp.Expr, extra: Iterable[str] = ()) -> sp.Expr:
    """The default chain, the extras, then the default chain again, until nothing changes."""
    names = (*DEFAULT, *extra, *DEFAULT) if extra else DEFAULT
    run = chain(names)
    for _ in range(4):
        new = run(expr)
        if new == expr:
            break
        expr = new
    return expr


__all__ = ["DEFAULT", "OPT_IN", "REFERENCE_EXTRA", "REWRITES", "Rewrite", "apply", "chain",
           "get", "sech_squared"]
