"""Symbolic derivation: every derivative a kernel evaluates comes from here, derived by SymPy.

One function per spec *kind* (never per op). Each returns a frozen derivation holding
* the kernel forms the printer emits (library functions kept, so they print as stable helpers),
* the steps a reader sees in ``python -m symgrad latex OP``: definition, derivative as
  differentiated, simplified, output form, and the form the kernel evaluates,
* the proofs that tie the kernel forms back to the textbook definition.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cache

import mpmath
import sympy as sp
from sympy.codegen.rewriting import expm1_opt, log1p_opt, optimize

from symgrad.functions import (
    LIBRARY,
    LibraryFunction,
    canonical_library,
    elementary_form,
    explicit_form,
)
from symgrad.spec import (
    LSE,
    XT,
    ClassIndexLoss,
    Elementwise,
    ElementwiseLoss,
    LogSumExpRowwise,
    OpSpec,
    T,
    X,
    Y,
)

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


def _stabilize(expr: sp.Expr) -> sp.Expr:
    """Apply the named SymPy rewrites (exp(x)-1 -> expm1(x), log(1+x) -> log1p(x))."""
    return optimize(expr, STABILITY_REWRITES)


def _simplify(expr: sp.Expr) -> sp.Expr:
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*[(_simplify(e), c) for e, c in expr.args])
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


def _default_subs(spec: OpSpec) -> dict[sp.Symbol, float]:
    return {p.symbol: float(p.default) for p in spec.numeric_params}  # type: ignore[arg-type]


def _sample_params(spec: OpSpec, rng: random.Random, count: int) -> list[dict[sp.Symbol, float]]:
    """Parameter values inside each Param's domain, the defaults first."""
    samples = [_default_subs(spec)]
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


# --------------------------------------------------------------------------------------------
# Elementwise ops
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementwiseDerivation:
    spec: Elementwise
    forward: sp.Expr  # kernel form of y = f(x)
    grad_x: sp.Expr  # kernel form of dy/dx in terms of x
    grad_y: sp.Expr | None  # dy/dx in terms of the output y, where it exists for every parameter
    output_form_note: str  # why grad_y is what it is
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        return "y" if self.grad_y is not None else "x"


def _function_proofs(expr: sp.Expr) -> list[Proof]:
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


def _branches(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Basic]]:
    if isinstance(expr, sp.Piecewise):
        return list(expr.args)
    return [(expr, sp.true)]


def _branch_output_form(f: sp.Expr, d: sp.Expr) -> sp.Expr | None:
    """Find g with d(x) = g(f(x)) on one smooth branch, or None."""
    if X not in d.free_symbols:
        return d
    # 1. The derivative may already be written in terms of f itself (sigmoid, tanh).
    if f != X:
        g = d.subs(f, Y)
        if X not in g.free_symbols:
            return g
    # 2. Invert y = f(x) and substitute (elu's exponential branch, softplus, ...).
    try:
        inverses = sp.solve(sp.Eq(Y, explicit_form(f)), X)
    except (NotImplementedError, TypeError):
        inverses = []
    for inverse in inverses:
        g = sp.simplify(explicit_form(d).subs(X, inverse))
        if X not in g.free_symbols and not g.has(sp.I):
            return g
    return None


def _condition_in_y(cond: sp.Basic) -> sp.Basic:
    """Rewrite a branch condition on x as the same test on y (valid only where f keeps signs)."""
    return cond.subs(X, Y) if cond not in (sp.true, sp.false) else cond


def _output_form_holds(spec: Elementwise, grad_y: sp.Expr, grad_x: sp.Expr) -> bool:
    """Check g(f(x)) == f'(x), branch conditions included, over x and the params' domains."""
    rng = random.Random(1)
    xs = [0.0, -0.0, 1e-9, -1e-9, 1.0, -1.0, 3.0, -3.0, 25.0, -25.0]
    xs += [rng.uniform(-30, 30) for _ in range(40)]
    fwd = elementary_form(spec.forward)
    for params in _sample_params(spec, rng, 6):
        f = sp.lambdify([X], fwd.subs(params), modules="mpmath")
        gy = sp.lambdify([Y], elementary_form(grad_y).subs(params), modules="mpmath")
        gx = sp.lambdify([X], elementary_form(grad_x).subs(params), modules="mpmath")
        # Branch boundaries: where each condition flips, and just beside it.
        for _, cond in _branches(fwd.subs(params)):
            if isinstance(cond, sp.core.relational.Relational):
                for root in sp.solve(cond.lhs - cond.rhs, X):
                    if root.is_real:
                        r = float(root)
                        xs_here = [r, r + 1e-7, r - 1e-7]
                        break
                else:
                    xs_here = []
                xs = xs + xs_here
        with mpmath.workdps(40):
            for x in xs:
                mx = mpmath.mpf(x)
                want, got = gx(mx), gy(f(mx))
                if abs(want - got) > mpmath.mpf(10) ** -20 * (1 + abs(want)):
                    return False
    return True


def _find_output_form(spec: Elementwise, grad_x: sp.Expr) -> tuple[sp.Expr | None, str]:
    branches = _branches(spec.forward)
    grads = _branches(grad_x)
    if len(branches) != len(grads):
        return None, "the derivative's branches do not line up with the forward's"
    pieces = []
    for (f, cond), (d, _) in zip(branches, grads, strict=True):
        g = _branch_output_form(f, d)
        if g is None:
            return None, f"no g with f'(x) = g(f(x)) on the branch {sp.sstr(cond)}"
        pieces.append((g, _condition_in_y(cond)))
    grad_y = pieces[0][0] if len(pieces) == 1 else sp.Piecewise(*pieces)
    if not _output_form_holds(spec, grad_y, grad_x):
        return None, ("an output form exists on each branch, but the branch conditions cannot "
                      "be read off y for every parameter value (checked in mpmath)")
    return grad_y, "found and checked in mpmath over x and the parameters' domains"


def _derive_elementwise(spec: Elementwise) -> ElementwiseDerivation:
    definition = explicit_form(spec.forward)
    differentiated = sp.diff(definition, X)
    simplified = _simplify(differentiated)
    grad_x = sp.piecewise_fold(sp.diff(spec.forward, X))
    symbols = [X, *[p.symbol for p in spec.numeric_params]]

    proofs = _function_proofs(spec.forward)
    proof = is_zero(explicit_form(grad_x) - differentiated, symbols)
    if proof is None:
        raise DerivationError(f"{spec.name}: the library-function derivative does not match")
    proofs.append(Proof(r"\frac{dy}{dx}\text{ (library form)} = \text{as differentiated}",
                        proof.method))

    grad_y, note = _find_output_form(spec, grad_x)
    forward_k, grad_x_k = _stabilize(spec.forward), _stabilize(grad_x)
    grad_y_k = _stabilize(grad_y) if grad_y is not None else None

    steps = [
        Step("Definition", rf"y = {sp.latex(definition)}"),
        Step("Derivative, as differentiated", rf"\frac{{dy}}{{dx}} = {sp.latex(differentiated)}"),
        Step("Simplified", rf"\frac{{dy}}{{dx}} = {sp.latex(simplified)}"),
        Step("In library functions", rf"\frac{{dy}}{{dx}} = {sp.latex(grad_x)}"),
    ]
    if grad_y is not None:
        steps.append(Step("Output form (backward needs only y)",
                          rf"\frac{{dy}}{{dx}} = {sp.latex(grad_y)}"))
    else:
        steps.append(Step("Output form", rf"\text{{none: {note}; backward needs }} x"))
    steps.append(Step("Kernel evaluates (forward)", rf"y = {sp.latex(forward_k)}"))
    steps.append(Step("Kernel evaluates (backward)", rf"\frac{{\partial \ell}}{{\partial x}} = g "
                      rf"\cdot \left({sp.latex(grad_y_k if grad_y_k is not None else grad_x_k)}"
                      r"\right)"))
    return ElementwiseDerivation(spec, forward_k, grad_x_k, grad_y_k, note, tuple(steps),
                                 tuple(proofs))


# --------------------------------------------------------------------------------------------
# Symbolic vectors: Jacobians of log-sum-exp normalised rows
# --------------------------------------------------------------------------------------------

_vx = sp.IndexedBase("x", real=True)
_vy = sp.IndexedBase("y", real=True)
_i, _j, _k, _t = sp.symbols("i j k t", integer=True)
_n = sp.Symbol("n", integer=True, positive=True)


def _collapse_delta_sums(expr: sp.Expr) -> sp.Expr:
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


def _indexed_lse(sign: int) -> sp.Expr:
    return sp.log(sp.Sum(sp.exp(sign * _vx[_j]), (_j, 1, _n)))


@dataclass(frozen=True)
class RowwiseDerivation:
    spec: LogSumExpRowwise
    forward: sp.Expr  # y in terms of X and LSE
    forward_from_e: sp.Expr | None  # y in terms of E = exp(sign·x - max) and S, if F uses it
    forward_shifted: sp.Expr  # y in terms of XM = sign·x - max and LS = log S (no cancellation)
    jac_diag: sp.Expr  # D(Y):    J_ik = δ_ik·D(y_k) + U(y_i)·V(y_k)
    jac_left: sp.Expr  # U(Y)
    jac_right: sp.Expr  # V(Y)
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]

    @property
    def backward_needs(self) -> str:
        return "y"


def _split_rank_one(rest: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """Write rest(y_i, y_k) as U(y_i)·V(y_k)."""
    left, right = sp.S.One, sp.S.One
    for factor in sp.Mul.make_args(sp.factor(rest)):
        if factor.has(_vy[_k]) and factor.has(_vy[_i]):
            raise DerivationError(f"Jacobian term {rest} does not separate into U(y_i)·V(y_k)")
        if factor.has(_vy[_k]):
            right *= factor
        else:
            left *= factor
    return left.subs(_vy[_i], Y), right.subs(_vy[_k], Y)


def _derive_rowwise(spec: LogSumExpRowwise) -> RowwiseDerivation:
    sign = spec.input_sign
    lse = _indexed_lse(sign)
    y_i = spec.forward.subs(X, _vx[_i]).subs(LSE, lse)  # in turn: x[j] has label x
    jac = sp.diff(y_i, _vx[_k])
    jac_collapsed = _collapse_delta_sums(jac)

    # Express the Jacobian in the outputs: invert y = F(x, L) for x.
    inverses = sp.solve(sp.Eq(Y, spec.forward), X)
    if len(inverses) != 1:
        raise DerivationError(f"{spec.name}: cannot solve y = F(x, L) for x uniquely")
    inverse = inverses[0]
    total = sp.exp(LSE)  # Σ_j exp(sign·x_j)
    in_y = jac_collapsed.subs(lse.args[0], total).subs(lse, LSE)
    in_y = in_y.subs({_vx[_i]: inverse.subs(Y, _vy[_i]), _vx[_k]: inverse.subs(Y, _vy[_k])})
    in_y = sp.expand(sp.simplify(in_y))
    delta = sp.KroneckerDelta(_i, _k)
    diag = sp.simplify(in_y.coeff(delta).subs(_vy[_i], Y))
    rest = sp.simplify(in_y - in_y.coeff(delta) * delta)
    if rest.has(LSE) or diag.has(LSE):
        raise DerivationError(f"{spec.name}: the Jacobian does not reduce to the outputs")
    left, right = _split_rank_one(rest)
    structured = delta * diag.subs(Y, _vy[_k]) + left.subs(Y, _vy[_i]) * right.subs(Y, _vy[_k])

    # The fused sum pass stores e_j = exp(sign·x_j - max); F may then be read off e and s.
    shift = sp.Symbol("m", real=True)
    from_e = spec.forward.subs(LSE, shift + sp.log(S)).subs(X, sign * (shift + sp.log(E)))
    from_e = sp.simplify(sp.expand_log(sp.powsimp(from_e), force=True))
    forward_from_e = from_e if spec.forward.has(sp.exp) and not from_e.has(shift) else None
    # Shift invariance: F depends on sign·x - L only, so subtract the max before anything else.
    shifted = sp.simplify(spec.forward.subs(LSE, shift + LS).subs(X, sign * (XM + shift)))
    if shifted.has(shift):
        raise DerivationError(f"{spec.name}: F(x, L) is not invariant to shifting x and L")

    proofs = [Proof(r"J_{ik} = \delta_{ik} D(y_k) + U(y_i) V(y_k)",
                    _check_rowwise(spec, diag, left, right))]
    g = sp.IndexedBase("g", real=True)
    sign_out = -1 if left.could_extract_minus_sign() else 1
    vjp = g[_k] * diag.subs(Y, _vy[_k]) + sign_out * right.subs(Y, _vy[_k]) * sp.Sum(
        g[_i] * sign_out * left.subs(Y, _vy[_i]), (_i, 1, _n))
    lse_tex = rf"L = \log \sum_{{j=1}}^{{n}} e^{{{'' if sign == 1 else '-'}x_j}}"
    diag_tex = "I" if diag == 1 else rf"\operatorname{{diag}}\left({_vec_latex(diag)}\right)"
    rank_one = sp.latex(sign_out) if sign_out == -1 else "+"
    steps = (
        Step("Definition", rf"y_i = {sp.latex(spec.forward.subs(X, _vx[_i]))},\quad {lse_tex}"),
        Step("Jacobian, as differentiated",
             rf"\frac{{\partial y_i}}{{\partial x_k}} = {sp.latex(jac)}"),
        Step("Sums over Kronecker deltas collapsed",
             rf"\frac{{\partial y_i}}{{\partial x_k}} = {sp.latex(jac_collapsed)}"),
        Step("Structured form, in the outputs y",
             rf"J_{{ik}} = {sp.latex(structured)}\quad\Longleftrightarrow\quad J = {diag_tex} "
             rf"{rank_one[0]} {_vec_latex(sign_out * left)}\,"
             rf"\left({_vec_latex(right)}\right)^{{\top}}"),
        Step("Vector-Jacobian product, O(n), never forming J",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = \sum_i g_i J_{{ik}} = {sp.latex(vjp)}"),
        Step("Kernel evaluates (forward)",
             rf"y = {sp.latex(forward_from_e if forward_from_e is not None else spec.forward)}"
             + (r",\quad e = e^{x - \max x},\ s = \sum e" if forward_from_e is not None else
                rf" = {sp.latex(shifted)},\quad x_m = x - \max x,\ "
                r"l_s = \log \sum e^{x_m}")),
    )
    return RowwiseDerivation(spec, spec.forward, forward_from_e, shifted, diag, left, right, steps,
                             tuple(proofs))


def _vec_latex(expr: sp.Expr) -> str:
    """Elementwise function of y, written for the vector y (constants become c·1)."""
    if not expr.has(Y):
        return r"\mathbf{1}" if expr == 1 else rf"{sp.latex(expr)}\,\mathbf{{1}}"
    return sp.latex(expr.subs(Y, sp.Symbol(r"\mathbf{y}")))


def _check_rowwise(spec: LogSumExpRowwise, diag, left, right, n: int = 4) -> str:
    """Differentiate an explicit n-vector and compare with the structured Jacobian entrywise."""
    xs = sp.symbols(f"x0:{n}", real=True)
    total = sum(sp.exp(spec.input_sign * v) for v in xs)
    ys = [spec.forward.subs({X: v, LSE: sp.log(total)}) for v in xs]
    rng = random.Random(2)
    point = {v: sp.Rational(rng.randint(-300, 300), 100) for v in xs}
    for a in range(n):
        for b in range(n):
            want = sp.diff(ys[a], xs[b])
            got = (diag.subs(Y, ys[b]) if a == b else 0) + left.subs(Y, ys[a]) * right.subs(
                Y, ys[b])
            if abs(sp.N((want - got).subs(point), 50)) > sp.Float(10) ** -40:
                raise DerivationError(f"{spec.name}: structured Jacobian fails at ({a},{b})")
    return f"explicit {n}-vector differentiated by SymPy, compared entrywise at 50 digits"


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementwiseLossDerivation:
    spec: ElementwiseLoss
    loss: sp.Expr
    grad: sp.Expr  # ∂ℓ/∂x
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]


def _derive_elementwise_loss(spec: ElementwiseLoss) -> ElementwiseLossDerivation:
    definition = explicit_form(spec.loss)
    differentiated = sp.diff(definition, X)
    grad = sp.diff(spec.loss, X)
    symbols = [X, T, *[p.symbol for p in spec.tensor_params]]
    proofs = _function_proofs(spec.loss)
    proof = is_zero(explicit_form(grad) - differentiated, symbols)
    if proof is None:
        raise DerivationError(f"{spec.name}: the library-function derivative does not match")
    proofs.append(Proof(r"\partial\ell/\partial x\text{ (library form)} = \text{as differentiated}",
                        proof.method))
    defaults = {p.symbol: sp.nsimplify(p.default) for p in spec.tensor_params}
    plain_lib = sp.factor(canonical_library(grad.subs(defaults)))
    steps = [
        Step("Definition", rf"\ell(x, t) = {sp.latex(definition)}"),
        Step("Derivative, as differentiated", rf"\frac{{\partial\ell}}{{\partial x}} = "
                                              rf"{sp.latex(differentiated)}"),
        Step("In library functions", rf"\frac{{\partial\ell}}{{\partial x}} = {sp.latex(grad)}"),
    ]
    if spec.tensor_params:
        names = ", ".join(f"{p.name} = {p.default:g}" for p in spec.tensor_params)
        steps.append(Step(f"Simplified, with {names}",
                          rf"\frac{{\partial\ell}}{{\partial x}} = {sp.latex(plain_lib)}"))
    else:
        steps.append(Step("Simplified", rf"\frac{{\partial\ell}}{{\partial x}} = "
                                        rf"{sp.latex(plain_lib)}"))
    steps += [
        Step("Reduction", r"\text{none: } \ell_i;\quad \text{sum: } \sum_i \ell_i;\quad "
                          r"\text{mean: } \frac{1}{N}\sum_i \ell_i"),
        Step("Kernel evaluates (backward)", r"\frac{\partial L}{\partial x_i} = g_i \cdot "
             rf"{sp.latex(_stabilize(grad))}\cdot c,\quad c = \tfrac{{1}}{{N}}"
             r"\text{ for mean, else } 1"),
    ]
    return ElementwiseLossDerivation(spec, _stabilize(spec.loss), _stabilize(grad), tuple(steps),
                                     tuple(proofs))


@dataclass(frozen=True)
class ClassIndexLossDerivation:
    spec: ClassIndexLoss
    loss: sp.Expr  # in XT and LSE
    coeff_target: sp.Expr  # ∂ℓ/∂x_t (holds only at the target class)
    coeff_softmax: sp.Expr  # ∂ℓ/∂L (multiplies softmax_k, through ∂L/∂x_k = p_k)
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...] = field(default=())


def _derive_class_index_loss(spec: ClassIndexLoss) -> ClassIndexLossDerivation:
    lse = _indexed_lse(1)
    loss_v = spec.loss.subs(XT, _vx[_t]).subs(LSE, lse)
    grad_v = _collapse_delta_sums(sp.diff(loss_v, _vx[_k]))
    coeff_target = sp.diff(spec.loss, XT)
    coeff_softmax = sp.diff(spec.loss, LSE)
    p = sp.IndexedBase("p", real=True)
    chain = coeff_target * sp.KroneckerDelta(_k, _t) + coeff_softmax * p[_k]
    # Prove the chain-rule form against the indexed derivative: substitute p_k = e^{x_k}/Σe^{x_j}.
    check = grad_v - chain.subs(p[_k], sp.exp(_vx[_k]) / lse.args[0])
    proof_method = "symbolic" if sp.simplify(check) == 0 else None
    if proof_method is None:
        raise DerivationError(f"{spec.name}: chain rule through log-sum-exp does not match")
    steps = (
        Step("Definition", rf"\ell = {sp.latex(loss_v)} = "
             rf"-\log \operatorname{{softmax}}(x)_t" if spec.loss == LSE - XT
             else rf"\ell = {sp.latex(loss_v)}"),
        Step("Derivative, as differentiated",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(sp.diff(loss_v, _vx[_k]))}"),
        Step("Sums over Kronecker deltas collapsed",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(grad_v)}"),
        Step("Simplified, with p = softmax(x)",
             rf"\frac{{\partial \ell}}{{\partial x_k}} = {sp.latex(sp.simplify(chain))}"),
        Step("With class weights, ignored targets and the reduction",
             r"\frac{\partial L}{\partial x_{ik}} = g_i\, w_{t_i} [t_i \neq \text{ignore}]\,"
             rf"\left({sp.latex(sp.simplify(chain.subs(_t, sp.Symbol('t_i'))))}\right) / D,"
             r"\quad D = \sum_{i:\,t_i\neq\text{ignore}} w_{t_i}\text{ for mean, else }1"),
    )
    return ClassIndexLossDerivation(spec, spec.loss, coeff_target, coeff_softmax, steps,
                                    (Proof("chain rule through L = logsumexp(x)", "symbolic"),))


# --------------------------------------------------------------------------------------------

_BY_KIND = {
    Elementwise.kind: _derive_elementwise,
    LogSumExpRowwise.kind: _derive_rowwise,
    ElementwiseLoss.kind: _derive_elementwise_loss,
    ClassIndexLoss.kind: _derive_class_index_loss,
}

Derivation = (ElementwiseDerivation | RowwiseDerivation | ElementwiseLossDerivation
              | ClassIndexLossDerivation)


@cache
def derive(spec: OpSpec) -> Derivation:
    """Derive everything the kernels of ``spec`` need. Cached: specs are frozen."""
    try:
        fn = _BY_KIND[spec.kind]
    except KeyError:
        raise DerivationError(f"{spec.name}: no derivation for kind {spec.kind!r}") from None
    return fn(spec)


__all__ = ["Derivation", "DerivationError", "Proof", "Step", "derive", "is_zero",
           "LibraryFunction"]
