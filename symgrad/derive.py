"""Symbolic derivation: the shared machinery, and ``derive(spec)``.

Each spec *kind* (never an op) has its derivation in ``symgrad/kinds/<kind>.py``; it returns a
frozen derivation holding
* the kernel forms the printer emits (library functions kept, so they print as stable helpers),
* the steps a reader sees in ``python -m symgrad latex OP``: definition, derivative as
  differentiated, simplified, output form, and the form the kernel evaluates,
* the proofs that tie the kernel forms back to the textbook definition.
Every derivative a kernel evaluates comes from SymPy through these modules.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

import mpmath
import sympy as sp
from sympy.codegen.rewriting import expm1_opt, log1p_opt, optimize

from symgrad.functions import LIBRARY, elementary_form, explicit_form
from symgrad.spec import OpSpec

# Symbols the rowwise kernels use besides X, Y and LSE.
E = sp.Symbol("e", positive=True)  # exp(sign·x - max) stored by the sum pass
S = sp.Symbol("s", positive=True)  # Σ_j exp(sign·x_j - max)
G = sp.Symbol("g", real=True)  # upstream gradient element
A = sp.Symbol("a", real=True)  # a row's reduction Σ_i g_i·U(y_i), in the rowwise VJP
XM = sp.Symbol("xm", real=True)  # sign·x - max(sign·x), in the rowwise forward
LS = sp.Symbol("ls", real=True)  # log Σ exp(sign·x - max)

STABILITY_REWRITES = (expm1_opt, log1p_opt)


class DerivationError(RuntimeError):
    """SymPy could not derive or prove something a kernel needs."""


@dataclass(frozen=True)
class Step:
    """One line of a derivation: a title and a LaTeX equation."""

    title: str
    latex: str


@dataclass(frozen=True)
class Proof:
    """A claimed identity and how it was established."""

    claim: str
    method: str  # "symbolic" or "mpmath at N points"


def stabilize(expr: sp.Expr) -> sp.Expr:
    """Apply the named SymPy rewrites (exp(x)-1 -> expm1(x), log(1+x) -> log1p(x))."""
    return optimize(expr, STABILITY_REWRITES)


def simplify_branches(expr: sp.Expr) -> sp.Expr:
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*[(simplify_branches(e), c) for e, c in expr.args])
    return sp.simplify(expr)


def is_zero(expr: sp.Expr, symbols: list[sp.Symbol], *, points: int = 24) -> Proof | None:
    """Prove ``expr == 0``: symbolically if SymPy can, else in mpmath at random points.

    Returns the proof, or None if the expression is demonstrably not zero.
    """
    diff = sp.simplify(elementary_form(expr))
    if diff == 0:
        return Proof("", "symbolic")
    f = sp.lambdify(symbols, diff, modules="mpmath")
    rng = random.Random(0)
    with mpmath.workdps(40):
        for _ in range(points):
            args = [mpmath.mpf(rng.uniform(-4, 4)) for _ in symbols]
            try:
                value = f(*args)
            except (ZeroDivisionError, ValueError):
                continue
            if abs(value) > mpmath.mpf(10) ** -25:
                return None
    return Proof("", f"mpmath at {points} points, 40 digits")


def default_subs(spec: OpSpec) -> dict[sp.Symbol, float]:
    return {p.symbol: float(p.default) for p in spec.numeric_params}  # type: ignore[arg-type]


def sample_params(spec: OpSpec, rng: random.Random, count: int) -> list[dict[sp.Symbol, float]]:
    """Parameter values inside each Param's domain, the defaults first."""
    samples = [default_subs(spec)]
    for _ in range(count):
        values = {}
        for p in spec.numeric_params:
            lo = p.minimum if p.minimum is not None else -3.0
            hi = p.maximum if p.maximum is not None else max(lo + 6.0, 3.0)
            v = rng.uniform(lo, hi)
            if p.strict and p.minimum is not None and v == p.minimum:
                v = (lo + hi) / 2
            values[p.symbol] = v
        samples.append(values)
    return samples



def function_proofs(expr: sp.Expr) -> list[Proof]:
    """Prove the declared derivative of each library function the expression uses."""
    proofs = []
    z = sp.Symbol("z", real=True)
    for fn in LIBRARY:
        if expr.has(fn):
            claim = rf"\frac{{d}}{{dz}}{sp.latex(fn(z))} = {sp.latex(fn.derivative(z))}"
            proof = is_zero(sp.diff(fn.explicit(z), z) - explicit_form(fn.derivative(z)), [z])
            if proof is None:
                raise DerivationError(f"declared derivative of {fn.__name__} is wrong")
            proofs.append(Proof(claim, proof.method))
    return proofs


# Symbolic vectors: x_1..x_n as IndexedBase, for Jacobians of whole rows.

VX = sp.IndexedBase("x", real=True)
VY = sp.IndexedBase("y", real=True)
I, J, K, TI = sp.symbols("i j k t", integer=True)
N = sp.Symbol("n", integer=True, positive=True)


def collapse_delta_sums(expr: sp.Expr) -> sp.Expr:
    """Σ_j f(j)·δ_jk -> f(k): the index k is in range by construction."""

    def collapse(s: sp.Sum) -> sp.Expr:
        (j, _, _), body = s.limits[0], s.function
        deltas = [d for d in body.atoms(sp.KroneckerDelta) if j in d.free_symbols]
        if not deltas:
            return s
        delta = deltas[0]
        other = delta.args[1] if delta.args[0] == j else delta.args[0]
        return (body / delta).subs(j, other)

    return expr.replace(lambda e: isinstance(e, sp.Sum), collapse)


def indexed_lse(sign: int) -> sp.Expr:
    return sp.log(sp.Sum(sp.exp(sign * VX[J]), (J, 1, N)))


@cache
def derive(spec: OpSpec):
    """Derive everything the kernels of ``spec`` need. Cached: specs are frozen."""
    from symgrad.kinds import kind_of

    return kind_of(spec).derive(spec)


__all__ = ["DerivationError", "Proof", "Step", "derive", "is_zero", "stabilize"]
