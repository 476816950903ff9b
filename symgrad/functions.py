"""SymPy functions the catalog needs beyond SymPy's own, each with three faces.

* ``explicit``: the textbook definition in elementary functions. LaTeX derivations and the mpmath
  references use it, so a kernel is always checked against the plain formula.
* ``stable``: a form that never overflows for finite arguments, proven equal to ``explicit``
  (tests/test_derive.py). The printer emits it as a helper in the generated package, unless the
  package's vectorizable math module (templates/cpu/vecmath.py) implements the function itself:
  then the helper is that implementation, tested against mpmath in tests/test_vecmath.py.
  Stable forms are branch-free where they can be (Max/Min/Abs print as selects): a vectorized
  loop evaluates *both* sides of a Piecewise, so a branch per sign doubles the exp/log work.
* ``derivative``: the derivative written with library functions, so that the derivative of a
  stable forward is stable too (sigmoid' = sigmoid·(1 - sigmoid) instead of e^-x/(1+e^-x)^2,
  which is inf/inf at x = -1000). Generation checks it against SymPy's derivative of
  ``explicit``.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

_z = sp.Dummy("z", real=True)


class LibraryFunction(sp.Function):
    """One argument; an explicit definition, a stable form and a checked derivative."""

    nargs = 1
    latex_name: str = ""
    # Where the naive form (or its derivative) is wrong in float64 and the stable one, evaluated
    # in NumPy, is right to hazard_rtol (tests/test_derive.py): overflow at ±1000 for most.
    hazard_points: tuple[float, ...] = (1000.0, -1000.0)
    hazard_rtol: float = 1e-15

    @classmethod
    def explicit(cls, z: sp.Expr) -> sp.Expr:
        raise NotImplementedError

    @classmethod
    def stable(cls, z: sp.Expr) -> sp.Expr:
        raise NotImplementedError

    @classmethod
    def derivative(cls, z: sp.Expr) -> sp.Expr:
        raise NotImplementedError

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        if argindex != 1:
            raise sp.ArgumentIndexError(self, argindex)
        return self.derivative(self.args[0])

    def _eval_rewrite_as_exp(self, z: sp.Expr, **kwargs) -> sp.Expr:
        return self.explicit(z)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _latex(self, printer, exp=None) -> str:
        arg = printer._print(self.args[0])
        base = rf"{self.latex_name}\left({arg}\right)"
        return base if exp is None else rf"{base}^{{{exp}}}"


class sigmoid(LibraryFunction):  # noqa: N801 - SymPy functions are lower case
    """The logistic function 1 / (1 + e^-z)."""

    latex_name = r"\sigma"

    @classmethod
    def explicit(cls, z):
        return 1 / (1 + sp.exp(-z))

    @classmethod
    def stable(cls, z):
        # Only ever exponentiate a non-positive number: e^-|z| <= 1 cannot overflow.
        return sp.Piecewise((1 / (1 + sp.exp(-z)), z >= 0), (sp.exp(z) / (1 + sp.exp(z)), True))

    @classmethod
    def derivative(cls, z):
        return cls(z) * (1 - cls(z))


class softplus(LibraryFunction):  # noqa: N801
    """log(1 + e^z), the smooth ReLU."""

    latex_name = r"\operatorname{softplus}"

    @classmethod
    def explicit(cls, z):
        return sp.log(1 + sp.exp(z))

    @classmethod
    def stable(cls, z):
        # log(1 + e^z) = max(z, 0) + log1p(e^-|z|): one exp and one log1p, and only e^-|z| <= 1
        # is ever formed.
        return sp.Max(z, 0) + log1p(sp.exp(-sp.Abs(z)))

    @classmethod
    def derivative(cls, z):
        return sigmoid(z)


class logsigmoid(LibraryFunction):  # noqa: N801
    """log σ(z) = -softplus(-z)."""

    latex_name = r"\log\sigma"

    @classmethod
    def explicit(cls, z):
        return sp.log(1 / (1 + sp.exp(-z)))

    @classmethod
    def stable(cls, z):
        # -softplus(-z), branch-free as softplus. Not min(z, 0) - log1p(...): that gives +0.0
        # where e^-z underflows, and the limit is -0.0 (log σ(z) < 0).
        return -sp.Max(-z, 0) - log1p(sp.exp(-sp.Abs(z)))

    @classmethod
    def derivative(cls, z):
        return sigmoid(-z)


def _normal_half(u: sp.Expr) -> sp.Expr:
    """Φ(-|u|) = erfc(|u|/√2)/2, the smaller of Φ(u) and 1 - Φ(u): no cancellation."""
    return sp.erfc(sp.Abs(u) / sp.sqrt(2)) / 2


class xncdf(LibraryFunction):  # noqa: N801
    """z·Φ(z), Φ the standard normal CDF: gelu. Its helper computes Φ from z itself, without
    rounding z/√2 first (which costs 2(z²/2) ULP in the tail, 1.5e3 ULP at z = -38)."""

    latex_name = r"\operatorname{gelu}"
    # At z = -10 the naive z(1 + erf(z/√2))/2 cancels to 0. The stable form in NumPy still rounds
    # z/√2 first (3.9e-15 relative there); the vecmath helper does not (tests/test_vecmath.py).
    hazard_points = (-10.0,)
    hazard_rtol = 1e-14

    @classmethod
    def explicit(cls, z):
        return z * sp.erfc(-z / sp.sqrt(2)) / 2  # = z(1 + erf(z/√2))/2

    @classmethod
    def stable(cls, z):
        return sp.Piecewise((z - z * _normal_half(z), z >= 0), (z * _normal_half(z), True))

    @classmethod
    def derivative(cls, z):
        return ncdf_xpdf(z)


class ncdf_xpdf(LibraryFunction):  # noqa: N801
    """Φ(z) + z·φ(z) = (z·Φ(z))', gelu's derivative, φ the standard normal density. The two
    terms cancel near its zero z0 = -0.7518; the helper has no cancellation there."""

    latex_name = r"\operatorname{gelu}'"
    # At z = -10 the naive Φ(z) = 1 - erfc(z/√2)/2 cancels to 0 (its cancellation near z0 is the
    # vecmath helper's to avoid: tests/test_vecmath.py).
    hazard_points = (-10.0,)
    hazard_rtol = 1e-14

    @classmethod
    def explicit(cls, z):
        return sp.erfc(-z / sp.sqrt(2)) / 2 + z * sp.exp(-z**2 / 2) / sp.sqrt(2 * sp.pi)

    @classmethod
    def stable(cls, z):
        zphi = z * sp.exp(-z**2 / 2) / sp.sqrt(2 * sp.pi)
        return sp.Piecewise((1 - _normal_half(z) + zphi, z >= 0), (_normal_half(z) + zphi, True))

    @classmethod
    def derivative(cls, z):
        return (2 - z**2) * sp.exp(-z**2 / 2) / sp.sqrt(2 * sp.pi)


def canonical_library(expr: sp.Expr) -> sp.Expr:
    """σ(-z) -> 1 - σ(z), so that e.g. 1 - t - σ(-x) collapses to σ(x) - t (for display)."""
    return sp.expand(expr.replace(
        lambda e: isinstance(e, sigmoid) and e.args[0].could_extract_minus_sign(),
        lambda e: 1 - sigmoid(-e.args[0]),
    ))


LIBRARY: tuple[type[LibraryFunction], ...] = (sigmoid, softplus, logsigmoid, xncdf, ncdf_xpdf)

# Names a user formula may call; also what ``explicit_form`` expands.
LIBRARY_BY_NAME: dict[str, type[LibraryFunction]] = {f.__name__: f for f in LIBRARY}

# Every function a formula may contain; the printer has a rule for each of them.
ALLOWED_FUNCTIONS: frozenset = frozenset(
    {*LIBRARY, sp.Piecewise, sp.exp, sp.log, sp.tanh, sp.erf, sp.Abs, sp.sign, sp.Max, sp.Min,
     log1p, expm1}
)


def explicit_form(expr: sp.Expr) -> sp.Expr:
    """Expand every library function into its textbook definition."""
    return expr.replace(
        lambda e: isinstance(e, LibraryFunction), lambda e: type(e).explicit(e.args[0])
    )


def elementary_form(expr: sp.Expr) -> sp.Expr:
    """``explicit_form``, with log1p/expm1 turned back into log/exp (for mpmath references)."""
    expr = explicit_form(expr)
    return expr.replace(log1p, lambda a: sp.log(1 + a)).replace(expm1, lambda a: sp.exp(a) - 1)


__all__ = [
    "ALLOWED_FUNCTIONS",
    "LIBRARY",
    "LIBRARY_BY_NAME",
    "LibraryFunction",
    "canonical_library",
    "elementary_form",
    "explicit_form",
    "expm1",
    "log1p",
    "logsigmoid",
    "ncdf_xpdf",
    "sigmoid",
    "softplus",
    "xncdf",
]
