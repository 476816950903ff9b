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
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import mpmath
import sympy as sp

from symgrad import rewrite
from symgrad.functions import (
    ALLOWED_FUNCTIONS,
    LIBRARY,
    LibraryFunction,
    elementary_form,
    explicit_form,
)
from symgrad.spec import OpSpec

# Symbols the rowwise kernels use besides X, Y and LSE.
E = sp.Symbol("e", positive=True)  # exp(sign·x - max) stored by the sum pass
S = sp.Symbol("s", positive=True)  # Σ_j exp(sign·x_j - max)
G = sp.Symbol("g", real=True)  # upstream gradient element
A = sp.Symbol("a", real=True)  # a row's reduction Σ_i g_i·U(y_i), in the rowwise VJP
XM = sp.Symbol("xm", real=True)  # sign·x - max(sign·x), in the rowwise forward
LS = sp.Symbol("ls", real=True)  # log Σ exp(sign·x - max)


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


def stabilize(expr: sp.Expr, rewrites: Iterable[str] = ()) -> sp.Expr:
    """Apply symgrad.rewrite's default chain plus the named extras (a spec's ``rewrites``).

    Every rewrite is an identity proven in tests/test_rewrite.py; see symgrad/rewrite.py.
    """
    return rewrite.apply(expr, tuple(rewrites))


def spec_rewrites(spec: OpSpec) -> tuple[str, ...]:
    """The extra rewrites a spec names; validated so that a typo fails at derivation."""
    names = tuple(getattr(spec, "rewrites", ()) or ())
    for name in names:
        if name not in rewrite.REWRITES:
            raise DerivationError(f"op {spec.name!r}, field 'rewrites': unknown rewrite {name!r}. "
                                  f"Fix: use one of {', '.join(rewrite.REWRITES)}")
    return names


def simplify_branches(expr: sp.Expr) -> sp.Expr:
    """Simplify each branch's expression; the conditions stay as the spec wrote them (SymPy's
    Boolean simplification is slow and would reorder the tie conventions' conditions)."""
    if expr.has(sp.Piecewise):
        expr = sp.piecewise_fold(expr)
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*[(simplify_branches(e), c) for e, c in expr.args])
    return sp.simplify(expr)


def is_zero(expr: sp.Expr, symbols: list[sp.Symbol], *, points: int = 24) -> Proof | None:
    """Prove ``expr == 0``: symbolically if SymPy can, else in mpmath at random points.

    Returns the proof, or None if the expression is demonstrably not zero.
    """
    diff = elementary_form(expr)
    if diff.has(sp.Piecewise):  # branch by branch: simplifying conditions is slow
        diff = sp.piecewise_fold(diff)
        if isinstance(diff, sp.Piecewise) and all(sp.simplify(e) == 0 for e, _ in diff.args):
            return Proof("", "symbolic")
    else:
        diff = sp.simplify(diff)
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


# mpmath definitions of the library functions (and log1p/expm1 kept as such), for every
# high-precision evaluation: mp_lambdify here, the accuracy sweep's references. Typed here, not
# lambdified from each function's ``explicit``: SymPy writes log(1 + e^z) (no log1p) and turns
# erfc(-z/√2) into 2 - erfc(z/√2), which cancels to 0 in gelu's tail even at 50 digits.
MP_LIBRARY = {
    "sigmoid": lambda z: 1 / (1 + mpmath.exp(-z)),
    "softplus": lambda z: mpmath.log1p(mpmath.exp(z)),
    "logsigmoid": lambda z: -mpmath.log1p(mpmath.exp(-z)),
    "log1p": mpmath.log1p,
    "expm1": mpmath.expm1,
    "xncdf": lambda z: z * mpmath.erfc(-z / mpmath.sqrt(2)) / 2,
    "ncdf_xpdf": lambda z: (mpmath.erfc(-z / mpmath.sqrt(2)) / 2
                            + z * mpmath.exp(-z * z / 2) / mpmath.sqrt(2 * mpmath.pi)),
}


def mp_lambdify(symbols: list[sp.Symbol], expr: sp.Expr):
    """An mpmath evaluator that keeps log1p/expm1 and defines the library functions through
    them, so that a stabilized form keeps all its digits (1 - e^y at y = -1e-18 would lose 18
    of them; e^(-1e-60) - 1 is 0 at 50 digits)."""
    return sp.lambdify(symbols, expr, modules=[MP_LIBRARY, "mpmath"])


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


# -- Output forms: f'(x) = g(f(x)), found by search ---------------------------------------------

@dataclass(frozen=True)
class BranchForm:
    """One branch of an output form: where it applies (on x and on y) and g there."""

    cond_x: sp.Basic
    cond_y: sp.Basic | None
    g: sp.Expr | None
    method: str  # how g was found: "constant", "substitution", "inversion", or why not


@dataclass(frozen=True)
class OutputForm:
    """dy/dx written in the output: f'(x) = g(f(x)), or why no such g is used.

    ``exact``: g(f(x)) == f'(x) for every x and every parameter value allowed by ``requires``.
    Otherwise ``error_bound`` bounds |g(f(x)) - f'(x)| (softplus: where β·x is just below the
    threshold, y cannot tell the two branches apart). ``requires`` is a condition on the
    parameters (sp.true when the Params' domains already guarantee it).
    """

    expr: sp.Expr | None
    exact: bool
    requires: sp.Basic
    error_bound: sp.Expr
    branches: tuple[BranchForm, ...]
    note: str
    proofs: tuple[Proof, ...] = ()
    counterexample: tuple[float, float] | None = None  # x1, x2: same y, different f'

    @property
    def usable(self) -> bool:
        """Whether a kernel may use it for every parameter value the op accepts."""
        return self.expr is not None and self.requires == sp.true


def _param_assumptions(spec: OpSpec) -> dict[sp.Symbol, sp.Symbol]:
    """Each numeric Param's symbol -> a symbol carrying what its declared bounds imply."""
    out = {}
    for p in spec.numeric_params:
        flags: dict[str, bool] = {"real": True}
        lo, hi = p.minimum, p.maximum
        if lo is not None and (lo > 0 or (lo == 0 and p.strict)):
            flags = {"positive": True}
        elif lo is not None and lo >= 0:
            flags = {"nonnegative": True}
        elif hi is not None and (hi < 0 or (hi == 0 and p.strict)):
            flags = {"negative": True}
        elif hi is not None and hi <= 0:
            flags = {"nonpositive": True}
        out[p.symbol] = sp.Symbol(p.name, **flags)
    return out


def _x_count(expr: sp.Expr, x: sp.Symbol) -> int:
    return sum(1 for node in sp.preorder_traversal(expr) if node == x)


def _split_kinks(expr: sp.Expr, x: sp.Symbol) -> sp.Expr:
    """Max/Min/Abs of x-dependent arguments as Piecewise, folded to top-level branches."""
    expr = expr.replace(lambda e: isinstance(e, sp.Max | sp.Min) and e.has(x),
                        lambda e: e.rewrite(sp.Piecewise))
    expr = expr.replace(lambda e: isinstance(e, sp.Abs) and e.has(x),
                        lambda e: sp.Piecewise((e.args[0], e.args[0] >= 0), (-e.args[0], True)))
    return sp.piecewise_fold(expr) if expr.has(sp.Piecewise) else expr


def _branches(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Basic]]:
    if isinstance(expr, sp.Piecewise):
        return list(expr.args)
    return [(expr, sp.true)]


def _mp_eval(expr: sp.Expr, symbols: list[sp.Symbol]):
    return sp.lambdify(symbols, elementary_form(expr), modules="mpmath")


def _branch_index(branches, x_value, params: dict, x: sp.Symbol) -> int:
    """Which branch a Piecewise takes at x = x_value (numbers substituted)."""
    for k, (_, cond) in enumerate(branches):
        c = cond.subs(params).subs(x, x_value)
        if c == sp.true or (c not in (sp.true, sp.false) and bool(c)):
            return k
    return len(branches) - 1


class _Search:
    """The output-form search for one elementwise forward formula."""

    def __init__(self, spec: OpSpec, forward: sp.Expr, x: sp.Symbol, y: sp.Symbol) -> None:
        self.spec, self.x, self.y = spec, x, y
        self.assume = _param_assumptions(spec)
        # Exact rationals for float constants and parameter samples: SymPy Floats carry 15
        # digits, and their rounding would fail the 1e-25 checks below.
        forward = forward.xreplace({c: sp.Rational(c) for c in forward.atoms(sp.Float)})
        self.forward = _split_kinks(forward, x)
        self.branches = _branches(self.forward)
        self.derivs = [sp.diff(f, x) for f, _ in self.branches]
        rng = random.Random(11)
        self.param_samples = [{k: sp.Rational(v) for k, v in sample.items()}
                              for sample in sample_params(spec, rng, 5)]
        self.proofs: list[Proof] = []
        self._regions: dict = {}

    # -- x sample points: spread out, plus each boundary and just beside it ---------------------
    def xs(self, params: dict) -> list[float]:
        rng = random.Random(5)
        pts = [0.0, 1e-9, -1e-9, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 25.0, -25.0]
        pts += [rng.uniform(-30, 30) for _ in range(60)]
        for a in self.thresholds(params):
            pts += [a, a + 1e-7 * (1 + abs(a)), a - 1e-7 * (1 + abs(a))]
        return pts

    def atoms(self) -> list[sp.core.relational.Relational]:
        found: list = []
        for _, cond in self.branches:
            for atom in sp.sympify(cond).atoms(sp.core.relational.Relational):
                if atom.has(self.x) and atom not in found:
                    found.append(atom)
        return found

    def solve_atom(self, atom) -> tuple[str, sp.Expr] | None:
        """atom h(x) op 0 as (op', a) meaning ``x op' a``: h linear in x, or strictly monotone
        with the single root a. None where neither is shown."""
        h = sp.expand(atom.lhs - atom.rhs)
        slope = h.coeff(self.x)
        rest = sp.expand(h - slope * self.x)
        if slope != 0 and not rest.has(self.x) and not slope.has(self.x):
            a, sign = -rest / slope, slope.subs(self.assume)
        elif _x_count(h, self.x) == 1:
            try:
                roots = sp.solve(sp.Eq(h.subs(self.assume), 0), self.x)
            except (NotImplementedError, TypeError, ValueError):
                return None
            if len(roots) != 1:
                return None
            a = roots[0].subs({v: k for k, v in self.assume.items()})
            sign = sp.diff(h, self.x).subs(self.assume)
        else:
            return None
        flip = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
        if sign.is_positive:
            return atom.rel_op, a
        if sign.is_negative:
            return flip[atom.rel_op], a
        return None

    def thresholds(self, params: dict) -> list[float]:
        out = []
        for atom in self.atoms():
            solved = self.solve_atom(atom)
            if solved is not None:
                value = solved[1].subs(params)
                if value.is_number:
                    out.append(float(value))
        return out

    # -- one branch: g with f_k'(x) = g(f_k(x)) on the branch's region --------------------------
    def branch_g(self, k: int) -> tuple[sp.Expr | None, str]:
        f, d = self.branches[k][0], self.derivs[k]
        if not d.has(self.x):
            return d, "constant"
        candidates = []
        if f != self.x:
            g = d.subs(f, self.y)
            if not g.has(self.x):
                candidates.append((g, "substitution"))
        fe, de = explicit_form(f), explicit_form(d)
        if not candidates and fe != self.x:
            g = de.subs(fe, self.y)
            if not g.has(self.x):
                candidates.append((g, "substitution"))
        if not candidates:
            candidates += self.inner_substitutions(f, d)
        # Invert y = f(x) only where SymPy does so quickly: x once, or a low-degree rational.
        num, den = sp.fraction(sp.together(fe))
        rational = all(q.is_polynomial(self.x) and sp.degree(q, self.x) <= 2 for q in (num, den))
        if not candidates and (_x_count(fe, self.x) == 1 or rational):
            try:
                inverses = sp.solve(sp.Eq(self.y, fe), self.x)
            except (NotImplementedError, TypeError, ValueError):
                inverses = []
            for inverse in inverses:
                g = sp.simplify(de.subs(self.x, inverse))
                if not g.has(self.x) and not g.has(sp.I):
                    candidates.append((g, "inversion"))
        # The kernels must be able to print g (no cosh(log(...)) from an inversion).
        printable = [(g, m) for g, m in candidates
                     if all(type(a) in ALLOWED_FUNCTIONS or a.func in ALLOWED_FUNCTIONS
                            for a in g.atoms(sp.Function))]
        for g, method in printable:
            if self.holds_on_region(k, g):
                factored = sp.factor(g)  # (y - 1)², not (y - 1)·y - y + 1: less cancellation
                return (factored if sp.count_ops(factored) <= sp.count_ops(g) else g), method
        if candidates:
            return None, ("no g found that is real, printable and valid on the whole branch "
                          "(SymPy's inverse of y = f(x) is not)")
        return None, "no g found by substitution or inversion"

    def inner_substitutions(self, f: sp.Expr, d: sp.Expr) -> list[tuple[sp.Expr, str]]:
        """y = F(h(x)) for a function h of x (tanh(x)/4, elu's α·(e^x - 1)): solve for h and
        substitute it into f', which is then free of x if f' depends on x only through h."""
        out = []
        inner = [a for a in sp.preorder_traversal(f) if isinstance(a, sp.Function)
                 and a.has(self.x)]
        for h in inner:
            hole = sp.Dummy("h")
            outer = f.subs(h, hole)
            if outer.has(self.x):
                continue
            try:
                solutions = sp.solve(sp.Eq(self.y, outer), hole)
            except (NotImplementedError, TypeError, ValueError):
                continue
            if len(solutions) == 1:
                g = sp.expand(d.subs(h, solutions[0]))
                if not g.has(self.x):
                    out.append((g, "substitution"))
        return out

    def region_points(self, k: int, params: dict) -> list[float]:
        """The sample x that branch k takes (the first branch whose condition holds)."""
        base = (tuple(sorted((str(s), v) for s, v in params.items())), len(self.branches))
        if (k, *base) not in self._regions:
            conds = [sp.lambdify([self.x], elementary_form(c.subs(params)), modules="mpmath")
                     for _, c in self.branches]
            taken = []
            with mpmath.workdps(40):
                for v in self.xs(params):
                    at = next((i for i, c in enumerate(conds) if bool(c(mpmath.mpf(v)))),
                              len(conds) - 1)
                    taken.append((v, at))
            for i in range(len(self.branches)):
                self._regions[(i, *base)] = [v for v, at in taken if at == i]
        return self._regions[(k, *base)]

    def holds_on_region(self, k: int, g: sp.Expr) -> bool:
        f, d = self.branches[k][0], self.derivs[k]
        with mpmath.workdps(40):
            for params in self.param_samples:
                ff = _mp_eval(f.subs(params), [self.x])
                dd = _mp_eval(d.subs(params), [self.x])
                gg = _mp_eval(g.subs(params), [self.y])
                for v in self.region_points(k, params):
                    try:
                        want, got = dd(mpmath.mpf(v)), gg(ff(mpmath.mpf(v)))
                    except (ZeroDivisionError, ValueError):
                        return False
                    # A complex intermediate (log of a negative) is nan in a float kernel.
                    if not isinstance(got, mpmath.mpf) and not isinstance(got, int | float):
                        return False
                    if not mpmath.isfinite(got) or abs(want - got) > 1e-25 * (1 + abs(want)):
                        return False
        return True

    # -- conditions: x op a  <=>  y op' f(a), by monotonicity -----------------------------------
    def monotone_direction(self) -> tuple[int, list[sp.Basic]] | None:
        """+1 (non-decreasing) or -1 with the parameter conditions that needs, or None."""
        for direction in (1, -1):
            needs: list[sp.Basic] = []
            for k, d in enumerate(self.derivs):
                sd = (direction * d).subs(self.assume)
                if sd.is_nonnegative:
                    continue
                if not sd.has(self.x) and sd.free_symbols:
                    needs.append(sp.Ge(direction * d, 0))  # a condition on the parameters
                    continue
                if not self.numerically_nonnegative(k, direction):
                    break
            else:
                return direction, needs
        return None

    def numerically_nonnegative(self, k: int, direction: int) -> bool:
        with mpmath.workdps(30):
            for params in self.param_samples:
                dd = _mp_eval((direction * self.derivs[k]).subs(params), [self.x])
                for v in self.region_points(k, params):
                    if dd(mpmath.mpf(v)) < -mpmath.mpf(10) ** -25:
                        return False
        return True

    def map_conditions(self, direction: int) -> tuple[dict, list[sp.Basic], list]:
        """Each x-atom's y-atom; parameter conditions (jumps); the atoms that failed."""
        mapping, needs, failed = {}, [], []
        defaults = self.param_samples[0]
        for atom in self.atoms():
            solved = self.solve_atom(atom)
            if solved is None:
                failed.append(atom)
                continue
            op, a = solved
            a0 = float(a.subs(defaults))
            eps = 1e-9 * (1 + abs(a0))
            at, left, right = (_branch_index(self.branches, v, defaults, self.x)
                               for v in (a0, a0 - eps, a0 + eps))
            value = sp.simplify(self.branches[at][0].subs(self.x, a))
            lim_l = sp.simplify(self.branches[left][0].subs(self.x, a))
            lim_r = sp.simplify(self.branches[right][0].subs(self.x, a))
            # Monotone across the boundary: left limit <= value <= right limit (for increasing).
            jump = [sp.Ge(direction * (value - lim_l), 0), sp.Ge(direction * (lim_r - value), 0)]
            # Strict on the side that the atom separates: f(x) != f(a) beside a.
            side = right if op in (">", "<=") else left
            flat = not self.derivs[side].has(self.x) and self.derivs[side].subs(self.assume) == 0
            gap = (lim_r - value) if op in (">", "<=") else (value - lim_l)
            if flat and sp.simplify(gap.subs(self.assume)).is_zero is not False:
                failed.append(atom)
                continue
            needs += jump
            y_op = op if direction == 1 else {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
            mapping[atom] = sp.core.relational.Relational(self.y, value, y_op)
        return mapping, needs, failed

    def simplify_requires(self, conds: list[sp.Basic]) -> sp.Basic:
        out = []
        for c in conds:
            c = c.subs(self.assume)
            if isinstance(c, sp.core.relational.Relational):
                diff = c.lhs - c.rhs  # the conditions here are all "... >= 0"
                if diff.is_nonnegative:
                    c = sp.true
                elif diff.is_negative:
                    c = sp.false
                elif not diff.has(LibraryFunction) and sp.count_ops(diff) < 30:
                    c = sp.simplify(c)
            if c == sp.true:
                continue
            if c == sp.false or c.has(self.x):
                return sp.false
            out.append(c.subs({v: k for k, v in self.assume.items()}))
        return sp.And(*out) if out else sp.true

    def requires_holds(self, requires: sp.Basic, params: dict) -> bool:
        if requires == sp.true:
            return True
        value = elementary_form(requires.subs(params))
        value = value.replace(lambda e: isinstance(e, sp.core.relational.Relational),
                              lambda r: type(r)(sp.N(r.lhs - r.rhs, 30), 0))
        return bool(value)

    def validate(self, g: sp.Expr, requires: sp.Basic) -> float:
        """max |g(f(x)) - f'(x)| / (1 + |f'(x)|) over x and the admissible parameter samples."""
        worst = mpmath.mpf(0)
        fwd = elementary_form(self.forward)
        grad = elementary_form(sp.piecewise_fold(sp.diff(self.forward, self.x)))
        with mpmath.workdps(40):
            for params in self.param_samples:
                if not self.requires_holds(requires, params):
                    continue
                ff = sp.lambdify([self.x], fwd.subs(params), modules="mpmath")
                dd = sp.lambdify([self.x], grad.subs(params), modules="mpmath")
                gg = sp.lambdify([self.y], elementary_form(g).subs(params), modules="mpmath")
                for v in self.xs(params):
                    want, got = dd(mpmath.mpf(v)), gg(ff(mpmath.mpf(v)))
                    worst = max(worst, abs(want - got) / (1 + abs(want)))
        return float(worst)

    def counterexample(self) -> tuple[float, float] | None:
        """x1 != x2 with f(x1) = f(x2) but f'(x1) != f'(x2), at the default parameters: f
        turns at some c (f' changes sign), so a level just beside c is hit on both sides."""
        params = self.param_samples[0]
        f = sp.lambdify([self.x], elementary_form(self.forward).subs(params), modules="mpmath")
        d = sp.lambdify([self.x], elementary_form(
            sp.piecewise_fold(sp.diff(self.forward, self.x))).subs(params), modules="mpmath")
        # An offset grid, so that a turning point does not sit exactly on a grid point.
        grid = [mpmath.mpf(v) / 8 + mpmath.mpf("0.0123") for v in range(-160, 161)]
        with mpmath.workdps(30):
            for lo, hi in zip(grid, grid[1:], strict=False):
                if not d(lo) * d(hi) < 0:
                    continue
                c = mpmath.findroot(d, (lo, hi), solver="bisect")
                x1 = c - mpmath.mpf(1) / 4
                target = f(x1)
                below = f(c) < target
                step, x2 = mpmath.mpf(1) / 8, c
                for _ in range(800):
                    x2 += step
                    if (f(x2) < target) != below:
                        x2 = mpmath.findroot(lambda t, level=target: f(t) - level,
                                             (x2 - step, x2), solver="bisect")
                        if abs(d(x1) - d(x2)) > 1e-9:
                            return float(x1), float(x2)
                        break
        return None

    # -- the whole search ------------------------------------------------------------------------
    def reachable(self, k: int) -> bool:
        return any(self.region_points(k, params) for params in self.param_samples)

    def run(self) -> OutputForm:
        # Branches no sample x reaches (Max + Min folded into impossible combinations) go; the
        # final validation over all x still covers the whole formula.
        keep = [k for k in range(len(self.branches)) if self.reachable(k)]
        if len(keep) < len(self.branches):
            kept = [self.branches[k] for k in keep]
            kept[-1] = (kept[-1][0], sp.true)
            self.branches = kept
            self.derivs = [self.derivs[k] for k in keep]
        pieces: list[BranchForm] = []
        gs = []
        for k, (_, cond) in enumerate(self.branches):
            g, method = self.branch_g(k)
            gs.append(g)
            pieces.append(BranchForm(cond, None, g, method))
        if any(g is None for g in gs):
            where = [sp.sstr(p.cond_x) for p, g in zip(pieces, gs, strict=True) if g is None]
            counter = self.counterexample()
            if counter is not None:
                x1, x2 = counter
                note = (f"none exists: f({x1:.6g}) = f({x2:.6g}) but f' differs there, so y "
                        "does not determine f'(x)")
            elif self.monotone_direction() is not None:
                note = ("f is monotone, so some g exists, but SymPy finds no closed form for it "
                        f"on the branch {', '.join(where)}")
            else:
                why = "; ".join(p.method for p, g in zip(pieces, gs, strict=True) if g is None)
                note = f"none found on the branch {', '.join(where)} ({why})"
            return OutputForm(None, False, sp.false, sp.nan, tuple(pieces), note,
                              counterexample=counter)
        for k, g in enumerate(gs):
            claim = sp.simplify(explicit_form(g.subs(self.y, self.branches[k][0]))
                                - explicit_form(self.derivs[k]))
            method = ("symbolic; confirmed in mpmath on the branch's region" if claim == 0 else
                      "mpmath on the branch's region, 40 digits")
            self.proofs.append(Proof(
                rf"\left.{sp.latex(g)}\right|_{{y = {sp.latex(self.branches[k][0])}}} = "
                rf"{sp.latex(self.derivs[k])}", method))
        if len(self.branches) == 1 or all(sp.simplify(g - gs[0]) == 0 for g in gs):
            # One formula for every branch: y need not tell the branches apart.
            expr, requires, exact, bound, note = gs[0], sp.true, True, sp.S.Zero, ""
        else:
            expr, requires, exact, bound, pieces, note = self.conditions(gs, pieces)
            if expr is None:
                return OutputForm(None, False, sp.false, sp.nan, tuple(pieces), note,
                                  tuple(self.proofs))
        worst = self.validate(expr, requires)
        if exact and worst > 1e-20:
            return OutputForm(None, False, sp.false, sp.nan, tuple(pieces),
                              "the branch-wise forms do not combine (checked in mpmath)",
                              tuple(self.proofs))
        expr = _tidy(_fold_abs(expr, self.y))
        if exact:
            how = ("found and proven on each branch; branch conditions read off y by "
                   "monotonicity" if len(self.branches) > 1 else "found and proven")
            note = how + ("" if requires == sp.true else f"; holds when {sp.sstr(requires)}")
        return OutputForm(expr, exact, requires, bound, tuple(pieces), note, tuple(self.proofs))

    def conditions(self, gs, pieces):
        monotone = self.monotone_direction()
        if monotone is not None:
            direction, needs = monotone
            mapping, jump_needs, failed = self.map_conditions(direction)
            requires = self.simplify_requires(needs + jump_needs)
            if (not failed and requires != sp.false
                    and self.requires_holds(requires, self.param_samples[0])):
                new = [BranchForm(p.cond_x, p.cond_x.xreplace(mapping), p.g, p.method)
                       for p in pieces]
                expr = sp.Piecewise(*[(p.g, p.cond_y) for p in new])
                return expr, requires, True, sp.S.Zero, new, ""
        return self.approximate(gs, pieces)

    def approximate(self, gs, pieces):
        """y cannot tell some branches apart (their images overlap: softplus just below its
        threshold). Use the conditions with x read as y, and bound the error symbolically by
        the branches' disagreement at the ends of each overlap; usable only where that bound
        is below float32 rounding (``requires``)."""
        new = [BranchForm(p.cond_x, p.cond_x.subs(self.x, self.y), p.g, p.method)
               for p in pieces]
        expr = sp.Piecewise(*[(p.g, p.cond_y) for p in new])
        defaults = self.param_samples[0]
        candidates: list[sp.Expr] = []
        for atom in self.atoms():
            solved = self.solve_atom(atom)
            if solved is None:
                return None, sp.false, False, sp.nan, new, "none: a branch condition is not " \
                    "monotone in x"
            a0 = float(solved[1].subs(defaults))
            eps = 1e-9 * (1 + abs(a0))
            ks = {_branch_index(self.branches, v, defaults, self.x) for v in (a0 - eps, a0,
                                                                              a0 + eps)}
            ends = {sp.simplify(self.branches[k][0].subs(self.x, solved[1])) for k in ks}
            for i in ks:
                for j in ks:
                    if i < j:
                        candidates += [sp.simplify(sp.Abs(gs[i] - gs[j]).subs(self.y, e))
                                       for e in ends]
        values = [[float(sp.N(elementary_form(c.subs(p)))) for c in candidates]
                  for p in self.param_samples]
        # The candidate that is largest at every parameter sample is the bound.
        top = [i for i in range(len(candidates)) if all(v[i] >= max(v) for v in values)]
        bound = candidates[top[0]] if top else sp.Max(*candidates)
        requires = sp.Le(bound, sp.Rational(1, 2**24))
        if not self.requires_holds(requires, defaults):
            return None, sp.false, False, sp.nan, new, (
                "none: the branches' images overlap and y cannot tell them apart (error up to "
                f"{float(sp.N(elementary_form(bound.subs(defaults)))):.3g} at the defaults)")
        worst = self.validate(expr, requires)
        at_defaults = float(sp.N(elementary_form(bound.subs(defaults))))
        if worst > at_defaults * (1 + 1e-6) + 1e-25 and worst > float(
                max(sp.N(elementary_form(bound.subs(p))) for p in self.param_samples
                    if self.requires_holds(requires, p))) * (1 + 1e-6):
            return None, sp.false, False, sp.nan, new, "none: the error bound does not hold"
        note = ("approximate: the branches' images overlap, so y cannot always tell which "
                f"branch x was on; |g(f(x)) - f'(x)| <= {sp.sstr(bound)} "
                f"({at_defaults:.3g} at the defaults), checked in mpmath")
        return expr, requires, False, bound, new, note


def _tidy(expr: sp.Expr) -> sp.Expr:
    """Long rationals (from float constants made exact for the search) back to floats."""
    return expr.xreplace({r: sp.Float(r, 17) for r in expr.atoms(sp.Rational)
                          if r.q > 10**6})


def _fold_abs(expr: sp.Expr, y: sp.Symbol) -> sp.Expr:
    """Piecewise((g(y), y >= 0), (g(-y), True)) -> g(|y|)."""
    if not (isinstance(expr, sp.Piecewise) and len(expr.args) == 2):
        return expr
    (g1, c1), (g2, _) = expr.args
    if c1 in (sp.Ge(y, 0), sp.Gt(y, 0)) and sp.simplify(g1.subs(y, -y) - g2) == 0:
        return g1.subs(y, sp.Abs(y))
    return expr


def branch_thresholds(spec: OpSpec, forward: sp.Expr, x: sp.Symbol) -> list[float]:
    """Where the branch conditions of ``forward`` flip, at the default parameters."""
    search = _Search(spec, forward, x, sp.Dummy("y"))
    return search.thresholds(search.param_samples[0])


def find_output_form(spec: OpSpec, forward: sp.Expr, x: sp.Symbol, y: sp.Symbol) -> OutputForm:
    """Search g with f'(x) = g(f(x)) for the elementwise formula ``forward`` of ``spec``."""
    return _Search(spec, forward, x, y).run()


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


__all__ = [
    "BranchForm", "DerivationError", "OutputForm", "Proof", "Step", "branch_thresholds", "derive",
    "find_output_form",
    "is_zero", "mp_lambdify", "stabilize",
]
