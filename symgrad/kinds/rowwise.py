"""The softmax family: rows normalised by log-sum-exp; structured Jacobians and O(n) VJPs."""

from __future__ import annotations

import random
from dataclasses import dataclass

import sympy as sp

from symgrad.context import sstr
from symgrad.derive import (
    LS,
    VX,
    VY,
    XM,
    A,
    DerivationError,
    E,
    G,
    I,
    K,
    N,
    Proof,
    S,
    Step,
    collapse_delta_sums,
    indexed_lse,
)
from symgrad.kinds import Kind, register_kind
from symgrad.kinds.row_loss import ORDER_KEYS, shifted_exp
from symgrad.printer import DTYPES, print_expr
from symgrad.spec import LSE, LogSumExpRowwise, X, Y


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
        if factor.has(VY[K]) and factor.has(VY[I]):
            raise DerivationError(f"Jacobian term {rest} does not separate into U(y_i)·V(y_k)")
        if factor.has(VY[K]):
            right *= factor
        else:
            left *= factor
    return left.subs(VY[I], Y), right.subs(VY[K], Y)


def _derive_rowwise(spec: LogSumExpRowwise) -> RowwiseDerivation:
    sign = spec.input_sign
    lse = indexed_lse(sign)
    y_i = spec.forward.subs(X, VX[I]).subs(LSE, lse)  # in turn: x[j] has label x
    jac = sp.diff(y_i, VX[K])
    jac_collapsed = collapse_delta_sums(jac)

    # Express the Jacobian in the outputs: invert y = F(x, L) for x.
    inverses = sp.solve(sp.Eq(Y, spec.forward), X)
    if len(inverses) != 1:
        raise DerivationError(f"{spec.name}: cannot solve y = F(x, L) for x uniquely")
    inverse = inverses[0]
    total = sp.exp(LSE)  # Σ_j exp(sign·x_j)
    in_y = jac_collapsed.subs(lse.args[0], total).subs(lse, LSE)
    in_y = in_y.subs({VX[I]: inverse.subs(Y, VY[I]), VX[K]: inverse.subs(Y, VY[K])})
    in_y = sp.expand(sp.simplify(in_y))
    delta = sp.KroneckerDelta(I, K)
    diag = sp.simplify(in_y.coeff(delta).subs(VY[I], Y))
    rest = sp.simplify(in_y - in_y.coeff(delta) * delta)
    if rest.has(LSE) or diag.has(LSE):
        raise DerivationError(f"{spec.name}: the Jacobian does not reduce to the outputs")
    left, right = _split_rank_one(rest)
    structured = delta * diag.subs(Y, VY[K]) + left.subs(Y, VY[I]) * right.subs(Y, VY[K])

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
    vjp = g[K] * diag.subs(Y, VY[K]) + sign_out * right.subs(Y, VY[K]) * sp.Sum(
        g[I] * sign_out * left.subs(Y, VY[I]), (I, 1, N))
    lse_tex = rf"L = \log \sum_{{j=1}}^{{n}} e^{{{'' if sign == 1 else '-'}x_j}}"
    sx = "x" if sign == 1 else "-x"  # the shifted exponent's argument, for the kernel step
    diag_tex = "I" if diag == 1 else rf"\operatorname{{diag}}\left({_vec_latex(diag)}\right)"
    rank_one = sp.latex(sign_out) if sign_out == -1 else "+"
    steps = (
        Step("Definition", rf"y_i = {sp.latex(spec.forward.subs(X, VX[I]))},\quad {lse_tex}"),
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
             + (rf",\quad e = e^{{{sx} - \max({sx})}},\ s = \sum e"
                if forward_from_e is not None else
                rf" = {sp.latex(shifted)},\quad x_m = {sx} - \max({sx}),\ "
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


def _rowwise_context(d: RowwiseDerivation) -> dict:
    sign = d.spec.input_sign
    exprs: dict[str, dict[str, str]] = {k: {} for k in ("y_from_e", "y_shifted", "left", "vjp",
                                                          "vjp_p", "sign")}
    # Factored, so that softmax prints y*(g + a) rather than g*y + y*a (less cancellation).
    vjp = sp.factor(G * d.jac_diag + d.jac_right * A)
    # Where the VJP needs exp(y) (log_softmax: the softmax), the fused kernel stores e / Σe while
    # it writes y and reads it back as p, instead of computing exp again.
    p = sp.Symbol("p", positive=True)
    vjp_p = vjp.subs(sp.exp(d.spec.input_sign * Y), p) if d.forward_from_e is None else vjp
    stored_p = vjp_p != vjp and not vjp_p.has(Y)
    for dt in DTYPES:
        exprs["sign"][dt] = print_expr(sp.Integer(sign), dt)
        if d.forward_from_e is not None:
            exprs["y_from_e"][dt] = print_expr(d.forward_from_e, dt)
        exprs["y_shifted"][dt] = print_expr(d.forward_shifted, dt)
        exprs["left"][dt] = print_expr(d.jac_left, dt)
        exprs["vjp"][dt] = print_expr(vjp, dt)
        exprs["vjp_p"][dt] = print_expr(vjp_p, dt)
    text = {
        "forward": sstr(d.forward), "lse": f"L = log(sum_j exp({'' if sign == 1 else '-'}x_j))",
        "vjp": f"grad_k = g_k*({sstr(d.jac_diag.subs(Y, sp.Symbol('y_k')))}) + "
               f"({sstr(d.jac_right.subs(Y, sp.Symbol('y_k')))})*sum_i g_i*"
               f"({sstr(d.jac_left.subs(Y, sp.Symbol('y_i')))})",
    }
    keys = {dt: dict(zip(("int", "shift", "mask", "low"), ORDER_KEYS[dt], strict=True))
            for dt in DTYPES}
    return {"e": exprs, "text": text, "uses_e": d.forward_from_e is not None,
            "stored_p": stored_p, "keys": keys,
            # p = e^(v - m) with the TwoSum correction, as the row losses compute it
            "shifted_exp": {dt: shifted_exp("p", "v", "m", dt) for dt in DTYPES},
            "default_dim": d.spec.default_dim}


register_kind(Kind(LogSumExpRowwise, _derive_rowwise, "rowwise.py.j2", _rowwise_context))
