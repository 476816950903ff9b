"""SymPy -> Numba source, one printer per dtype.

Strict: a node without a rule raises ``PrinterError`` instead of printing something Numba would
reinterpret. Every literal is typed (``np.float32(0.5)`` in float32 code) because Numba, like
NumPy, promotes float32 * float64-literal to float64: an untyped constant would silently turn a
float32 kernel into a float64 one.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from sympy.printing.precedence import precedence
from sympy.printing.pycode import PythonCodePrinter

from symgrad.functions import LibraryFunction

DTYPES = ("float32", "float64")
# The vectorizable elementary functions every generated package carries (see _functions.py.j2).
VECTOR_FUNCTIONS = ("exp", "expm1", "log", "log1p", "tanh", "erf", "erfc")


class PrinterError(ValueError):
    """The expression contains something the Numba printer has no rule for."""


def helper_name(fn: type[LibraryFunction] | str, dtype: str) -> str:
    """Name of the generated scalar helper for a library function, e.g. ``sigmoid_f32``."""
    name = fn if isinstance(fn, str) else fn.__name__
    return f"{name}_{'f32' if dtype == 'float32' else 'f64'}"


class NumbaPrinter(PythonCodePrinter):
    """Prints scalar expressions for ``@njit`` code of one dtype."""

    # Elementary functions print as the generated package's vectorizable versions
    # (templates/cpu/vecmath.py, re-exported by _functions.py): Numba's math.exp & co. are
    # scalar libm calls that stop LLVM from vectorizing the loop.
    _math = {sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.erf: "erf", sp.erfc: "erfc",
             log1p: "log1p", expm1: "expm1"}
    # Rarer functions users may write: Numba's scalar libm (correct, just not vectorized).
    _libm = {sp.cosh: "math.cosh", sp.sinh: "math.sinh"}

    def __init__(self, dtype: str, *, helper_module: str = "_fn") -> None:
        if dtype not in DTYPES:
            raise PrinterError(f"unsupported dtype {dtype!r}; use one of {DTYPES}")
        super().__init__({"strict": True, "fully_qualified_modules": False})
        self.dtype = dtype
        self.helper_module = helper_module
        # "" prints bare names, for code that lives in the helper module itself.
        self._prefix = f"{helper_module}." if helper_module else ""

    # -- literals: always typed ---------------------------------------------------------------
    def _literal(self, value: float) -> str:
        text = repr(float(value))
        return f"np.{self.dtype}({text})" if self.dtype == "float32" else text

    def _print_Float(self, expr: sp.Float) -> str:
        return self._literal(float(expr))

    def _print_Integer(self, expr: sp.Integer) -> str:
        return self._literal(int(expr))

    _print_Rational = _print_Float  # a Rational is a real constant in a float kernel

    def _print_Zero(self, expr) -> str:
        return self._literal(0.0)

    def _print_One(self, expr) -> str:
        return self._literal(1.0)

    def _print_NegativeOne(self, expr) -> str:
        return self._literal(-1.0)

    def _print_Half(self, expr) -> str:
        return self._literal(0.5)

    def _print_Exp1(self, expr) -> str:
        return self._literal(float(sp.E))

    def _print_Pi(self, expr) -> str:
        return self._literal(float(sp.pi))

    def _print_BooleanTrue(self, expr) -> str:
        return "True"

    def _print_BooleanFalse(self, expr) -> str:
        return "False"

    def _print_NaN(self, expr) -> str:
        return f"np.{self.dtype}(np.nan)"

    def _print_Infinity(self, expr) -> str:
        return f"np.{self.dtype}(np.inf)"

    def _print_NegativeInfinity(self, expr) -> str:
        return f"np.{self.dtype}(-np.inf)"

    # -- arithmetic -----------------------------------------------------------------------------
    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exp = expr.args
        if exp.is_Integer and 1 <= abs(int(exp)) <= 4:
            # Small integer powers as products: exact, and no call to pow.
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"] + 1)
            prod = "*".join([b] * abs(int(exp)))
            # Parenthesized: a/c**2 must not print as a/c*c.
            return f"({prod})" if exp > 0 else f"({self._literal(1.0)}/({prod}))"
        if exp == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if exp == -sp.S.Half:
            return f"({self._literal(1.0)}/math.sqrt({self._print(base)}))"
        b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Pow"])
        e = self.parenthesize(exp, sp.printing.precedence.PRECEDENCE["Pow"])
        return f"{b}**{e}"

    def _print_Mul(self, expr: sp.Mul) -> str:
        # A numeric coefficient that can only grow the product goes last: -4.0*x*y overflows
        # at x = -max/2 where (x*y)*-4.0 does not, when y is 0 there (mish', gelu's √2·x).
        # One that can only shrink it goes first: (x*(1 + erf))*0.5 overflows at x > max/2
        # where (0.5*x)*(1 + erf) does not (gelu at the top of the range).
        coeff, rest = expr.as_coeff_Mul()
        if coeff == 1 or rest == 1 or not coeff.is_Number:
            return super()._print_Mul(expr)
        if coeff == -1:
            return f"-({self._print(rest)})"
        if abs(coeff) < 1:  # left to right: (c*a)*b, no parentheses around a*b
            body = super()._print_Mul(rest) if isinstance(rest, sp.Mul) else \
                self.parenthesize(rest, precedence(expr))
            return f"{self._print(coeff)}*{body}"
        return f"({self._print(rest)})*{self._print(coeff)}"

    # -- functions -------------------------------------------------------------------------------
    def _print_Function(self, expr: sp.Function) -> str:
        if isinstance(expr, LibraryFunction):
            # Stable helper generated from the function's stable form (see render).
            return f"{self._prefix}{helper_name(type(expr), self.dtype)}" \
                   f"({self._print(expr.args[0])})"
        if expr.func in self._libm:
            return f"{self._libm[expr.func]}({self._print(expr.args[0])})"
        name = self._math.get(expr.func)
        if name is None:
            raise PrinterError(f"no Numba rule for function {expr.func}")
        return f"{self._prefix}{helper_name(name, self.dtype)}({self._print(expr.args[0])})"

    _print_exp = _print_log = _print_tanh = _print_erf = _print_erfc = _print_Function
    _print_log1p = _print_expm1 = _print_Function

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_sign(self, expr: sp.sign) -> str:
        # torch.sign: 0 at 0 and nan at nan (the last branch returns the argument unchanged).
        a = self._print(expr.args[0])
        return (f"({self._literal(1.0)} if {a} > 0 else ({self._literal(-1.0)} if {a} < 0 "
                f"else {a}*{self._literal(0.0)}))")

    def _minmax(self, expr, op: str) -> str:
        # As torch.maximum/minimum: a nan in *either* argument comes out (SymPy orders Max's
        # arguments as it likes, so following only the first one is not enough).
        out = self._print(expr.args[0])
        for arg in expr.args[1:]:
            a = self._print(arg)
            out = f"({out} if {out} {op} {a} else ({a} if {a} {op}= {out} else {out} + {a}))"
        return out

    def _print_Max(self, expr: sp.Max) -> str:
        return self._minmax(expr, ">")

    def _print_Min(self, expr: sp.Min) -> str:
        return self._minmax(expr, "<")

    # -- branches: ternaries, so only the taken branch is evaluated -----------------------------
    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        parts = list(expr.args)
        if parts[-1][1] != sp.true:
            raise PrinterError("a Piecewise needs a final (expr, True) branch")
        out = self._print(parts[-1][0])
        for value, cond in reversed(parts[:-1]):
            out = f"({self._print(value)} if {self._print(cond)} else {out})"
        return out

    def _print_Relational(self, expr) -> str:
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    def _print_And(self, expr) -> str:
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr) -> str:
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr) -> str:
        return f"(not {self._print(expr.args[0])})"

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return expr.name

    def emptyPrinter(self, expr):  # noqa: N802 - SymPy's name
        raise PrinterError(f"no Numba rule for {type(expr).__name__}: {expr}")


# PythonCodePrinter prints these itself without the strict check: route them through the
# rules above, so anything without a rule raises PrinterError instead of printing a bare name.
for _name in ("sin", "cos", "tan", "sinh", "cosh", "asin", "acos", "atan", "asinh", "acosh",
              "atanh", "atan2", "floor", "ceiling", "gamma", "loggamma", "log10", "log2",
              "hypot", "factorial", "frac", "fresnelc", "fresnels", "lowergamma", "uppergamma",
              "ln", "Sqrt", "isinf", "isnan"):
    setattr(NumbaPrinter, f"_print_{_name}", NumbaPrinter._print_Function)


def count_ops(exprs: list[sp.Expr]) -> int:
    """Operation count of the CSE'd expressions, for the cost comment in generated code."""
    return int(sum(sp.count_ops(e) for e in exprs))


def _is_constant(e: sp.Basic) -> bool:
    return isinstance(e, sp.Expr) and not e.is_Rational and not e.is_Float and \
        e.is_number and e.is_real is True and e.is_finite is True


def fold_constants(expr: sp.Expr) -> sp.Expr:
    """Irrational constants (√2, 1/√π, log 2) as one correctly rounded Float each, folded into
    the product's numeric coefficient, which the printer multiplies last. Left symbolic, CSE
    may name √2 (or √2·x) a temporary, and √2·x·e^(-x²/2) then overflows to inf·0 = nan for
    |x| > max/√2 where the product is 0 (gelu')."""
    return expr.replace(_is_constant, lambda e: sp.Float(e.evalf(40), 40))


def _small_power(e: sp.Basic) -> bool:
    return isinstance(e, sp.Pow) and e.exp.is_Integer and 2 <= abs(int(e.exp)) <= 4


def share_power_bases(temps: list[tuple[sp.Symbol, sp.Expr]], reduced: list[sp.Expr]
                      ) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr]]:
    """Name the base of every small integer power that is not a plain symbol.

    The printer writes b**2 as b*b, and CSE leaves a base that occurs once unnamed: tanh(x)**2
    would print as two tanh calls, which LLVM does not merge (the vecmath functions are not
    known to be pure once inlined into a vector loop). Bases inside a Piecewise stay where
    they are: hoisting them would evaluate a branch's work where the branch is not taken.
    """
    names = sp.numbered_symbols("_p")
    shared: dict[sp.Expr, sp.Symbol] = {}
    new_temps: list[tuple[sp.Symbol, sp.Expr]] = []

    def visit(e: sp.Basic) -> sp.Basic:
        if e.is_Atom or isinstance(e, sp.Piecewise) or not e.args:
            return e
        args = tuple(visit(a) for a in e.args)
        # Unevaluated: Mul(2, x - 1) would otherwise distribute into 2x - 2.
        out = e if args == e.args else e.func(*args, evaluate=False)
        if _small_power(out) and not out.base.is_Atom:
            sym = shared.get(out.base)
            if sym is None:
                sym = shared[out.base] = next(names)
                new_temps.append((sym, out.base))
            out = sp.Pow(sym, out.exp, evaluate=False)
        return out

    temps_out: list[tuple[sp.Symbol, sp.Expr]] = []
    for sym, expr in temps:
        expr = visit(expr)
        temps_out += new_temps + [(sym, expr)]
        new_temps.clear()
    reduced_out = []
    for expr in reduced:
        reduced_out.append(visit(expr))
        temps_out += new_temps
        new_temps.clear()
    return temps_out, reduced_out


def print_block(outputs: dict[str, sp.Expr], dtype: str, indent: int = 4,
                helper_module: str = "_fn") -> tuple[list[str], int]:
    """Statements assigning each output, with common subexpressions shared.

    Returns the lines and the operation count after CSE.
    """
    printer = NumbaPrinter(dtype, helper_module=helper_module)
    names = list(outputs)
    values = [fold_constants(sp.sympify(v)) for v in outputs.values()]
    temps, reduced = sp.cse(values, symbols=sp.numbered_symbols("_c"), optimizations="basic")
    temps, reduced = share_power_bases(temps, reduced)
    pad = " " * indent
    lines = [f"{pad}{sym.name} = {printer.doprint(expr)}" for sym, expr in temps]
    lines += [f"{pad}{name} = {printer.doprint(expr)}" for name, expr in
              zip(names, reduced, strict=True)]
    ops = count_ops([e for _, e in temps] + list(reduced))
    return lines, ops


def print_expr(expr: sp.Expr, dtype: str, helper_module: str = "_fn") -> str:
    return NumbaPrinter(dtype, helper_module=helper_module).doprint(expr)
