"""Users' formulas as strings, and spec files (TOML) full of them, parsed without evaluating code.

SymPy's ``sympify``/``parse_expr`` call ``eval``, so a formula string never reaches them. Instead
``parse_formula`` parses it with Python's ``ast`` module (which only builds a tree), walks the tree
against an allow-list of syntax and names, and builds the SymPy expression node by node. Anything
else (attribute access, subscripts, lambdas, comprehensions, keyword arguments, dunder names,
strings, huge exponents such as ``9**9**9``) is a ``FormulaError`` naming the construct; nothing is
ever evaluated.

A spec file::

    package = "my_kernels"              # optional; --package overrides it

    [activations]
    mish = "x * tanh(softplus(x))"      # a bare formula: an op without parameters

    [activations.swish_beta]
    formula = "x * sigmoid(beta * x)"
    summary = "Swish with a sharpness beta."
    params = { beta = 1.0 }             # or beta = { default = 1.0, min = 0, strict = true }

    [losses.log_cosh]
    formula = "log(cosh(x - t))"        # x is the input, t the target
    reduction = "mean"                  # the default reduction

Conditionals (``a if cond else b`` or ``where(cond, a, b)``) state which branch holds at a kink:
relu is ``"x if x > 0 else 0"``, so relu'(0) = 0 as in PyTorch.
"""

from __future__ import annotations

import ast
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from symgrad.functions import LIBRARY_BY_NAME, expm1, log1p
from symgrad.spec import SpecError

MAX_FORMULA_CHARS = 2000
MAX_NODES = 600
MAX_DEPTH = 60
MAX_EXPONENT = 256  # |n| in x**n; larger literal exponents are a typo or an attack (9**9**9)
MAX_INT_DIGITS = 18
MAX_CONSTANT = 1e300


class UserOpError(SpecError):
    """A user op cannot be built or generated. The message names the op and the fix."""


class FormulaError(UserOpError):
    """A formula string is not something symgrad accepts. The message names the fix."""


def _cosh(z: sp.Expr) -> sp.Expr:
    return (sp.exp(z) + sp.exp(-z)) / 2


def _sinh(z: sp.Expr) -> sp.Expr:
    return (sp.exp(z) - sp.exp(-z)) / 2


# name -> (SymPy builder, allowed argument counts; None = two or more)
FUNCTIONS: dict[str, tuple[Callable[..., sp.Expr], tuple[int, ...] | None]] = {
    "exp": (sp.exp, (1,)),
    "log": (sp.log, (1,)),
    "log1p": (log1p, (1,)),
    "expm1": (expm1, (1,)),
    "tanh": (sp.tanh, (1,)),
    "cosh": (_cosh, (1,)),  # in exponentials: the kernels print exp, never a cosh
    "sinh": (_sinh, (1,)),
    "erf": (sp.erf, (1,)),
    "sqrt": (sp.sqrt, (1,)),
    "abs": (sp.Abs, (1,)),
    "sign": (sp.sign, (1,)),
    "max": (sp.Max, None),
    "min": (sp.Min, None),
    **{name: (fn, (1,)) for name, fn in LIBRARY_BY_NAME.items()},
}
CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi}
CONDITIONAL = "where"  # where(cond, a, b) == a if cond else b

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_COMPARE = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge}
# Constructs that people (or attackers) write, with the fix for each.
_REFUSED = {
    ast.Attribute: "attribute access (a.b) is not allowed",
    ast.Subscript: "indexing (a[i]) is not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Starred: "*args is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Tuple: "tuples are not allowed; a formula is one expression",
    ast.List: "lists are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.Slice: "slices are not allowed",
}
_OPERATOR_FIX = {
    ast.BitXor: "^ is bitwise xor in Python; write powers as **",
    ast.FloorDiv: "// (floor division) is not differentiable; use /",
    ast.Mod: "% is not allowed",
    ast.MatMult: "@ is not allowed; formulas are per element",
    ast.BitAnd: "& is not allowed; combine conditions with `and`",
    ast.BitOr: "| is not allowed; combine conditions with `or`",
    ast.LShift: "<< is not allowed",
    ast.RShift: ">> is not allowed",
    ast.Invert: "~ is not allowed; negate conditions with `not`",
}


@dataclass(frozen=True)
class _Cond:
    """A boolean (a branch condition), kept apart from numeric expressions while building."""

    value: sp.Basic


class _Builder:
    def __init__(self, text: str, symbols: Mapping[str, sp.Symbol], where: str) -> None:
        self.text = text
        self.symbols = symbols
        self.where = where

    def fail(self, problem: str, node: ast.AST | None = None) -> FormulaError:
        at = ""
        if node is not None and hasattr(node, "col_offset"):
            segment = ast.get_source_segment(self.text, node) or ""
            at = f" at `{segment[:40]}`" if segment else ""
        return FormulaError(f"{self.where}: {problem}{at} in formula {self.text[:80]!r}")

    # -- numbers --------------------------------------------------------------------------------
    def number(self, node: ast.Constant) -> sp.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = type(value).__name__
            raise self.fail(f"{kind} literals are not allowed; only numbers", node)
        if isinstance(value, int):
            if len(str(abs(value))) > MAX_INT_DIGITS:
                raise self.fail("integer literal is too large", node)
            return sp.Integer(value)
        if not math.isfinite(value) or abs(value) > MAX_CONSTANT:
            raise self.fail("number literal is not finite", node)
        # Exact decimal (0.1 stays 1/10): cleaner LaTeX and simplification, typed when printed.
        return sp.Rational(repr(value))

    def checked_constant(self, value: sp.Expr, node: ast.AST) -> sp.Expr:
        if value.free_symbols:
            return value
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            raise self.fail("the formula divides by zero or is not finite", node)
        if value.has(sp.I):
            raise self.fail("the formula has a complex constant", node)
        if value.is_Number and abs(value) > sp.Float(MAX_CONSTANT):
            raise self.fail("a constant in the formula overflows", node)
        return value

    # -- the walk -------------------------------------------------------------------------------
    def build(self, node: ast.AST, depth: int = 0) -> sp.Expr | _Cond:
        if depth > MAX_DEPTH:
            raise self.fail(f"the formula nests deeper than {MAX_DEPTH} levels")
        for refused, why in _REFUSED.items():
            if isinstance(node, refused):
                raise self.fail(why, node)
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.binary(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, depth)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.BoolOp):
            parts = [self.cond(v, depth + 1) for v in node.values]
            return _Cond(sp.And(*parts) if isinstance(node.op, ast.And) else sp.Or(*parts))
        if isinstance(node, ast.IfExp):
            return self.piecewise(node.test, node.body, node.orelse, node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        raise self.fail(f"{type(node).__name__} is not allowed in a formula", node)

    def expr(self, node: ast.AST, depth: int) -> sp.Expr:
        value = self.build(node, depth)
        if isinstance(value, _Cond):
            raise self.fail("a condition is used as a number; use `a if cond else b`", node)
        return value

    def cond(self, node: ast.AST, depth: int) -> sp.Basic:
        value = self.build(node, depth)
        if not isinstance(value, _Cond):
            raise self.fail("expected a condition such as `x > 0`", node)
        return value.value

    def name(self, node: ast.Name) -> sp.Expr:
        ident = node.id
        if ident.startswith("__") or ident.endswith("__"):
            raise self.fail(f"name {ident!r} is not allowed (no dunder names)", node)
        if ident in self.symbols:
            return self.symbols[ident]
        if ident in CONSTANTS:
            return CONSTANTS[ident]
        if ident in FUNCTIONS or ident == CONDITIONAL:
            raise self.fail(f"{ident!r} is a function; call it, e.g. {ident}(x)", node)
        known = ", ".join(sorted(self.symbols))
        raise self.fail(f"unknown symbol {ident!r}; the formula may use {known} and pi. "
                        f"Declare a parameter with a default, e.g. params = {{ {ident} = 1.0 }}",
                        node)

    def binary(self, node: ast.BinOp, depth: int) -> sp.Expr:
        op = type(node.op)
        if op not in _BINARY:
            raise self.fail(_OPERATOR_FIX.get(op, f"operator {op.__name__} is not allowed"), node)
        left, right = self.expr(node.left, depth + 1), self.expr(node.right, depth + 1)
        if op is ast.Add:
            value = left + right
        elif op is ast.Sub:
            value = left - right
        elif op is ast.Mult:
            value = left * right
        elif op is ast.Div:
            if right == 0:
                raise self.fail("division by zero", node)
            value = left / right
        else:
            if not right.free_symbols:
                if not right.is_real or abs(float(right)) > MAX_EXPONENT:
                    raise self.fail(f"exponent {str(right)[:20]} is too large "
                                    f"(at most {MAX_EXPONENT} in magnitude)", node)
                if not left.free_symbols and left == 0 and float(right) < 0:
                    raise self.fail("division by zero", node)
                if (not left.free_symbols and left != 0 and
                        abs(float(right) * math.log10(abs(float(left)))) > 300):
                    raise self.fail("a constant power overflows", node)
            value = left ** right
        return self.checked_constant(value, node)

    def unary(self, node: ast.UnaryOp, depth: int) -> sp.Expr | _Cond:
        if isinstance(node.op, ast.USub):
            return -self.expr(node.operand, depth + 1)
        if isinstance(node.op, ast.UAdd):
            return self.expr(node.operand, depth + 1)
        if isinstance(node.op, ast.Not):
            return _Cond(sp.Not(self.cond(node.operand, depth + 1)))
        raise self.fail(_OPERATOR_FIX.get(type(node.op), "operator not allowed"), node)

    def compare(self, node: ast.Compare, depth: int) -> _Cond:
        operands = [self.expr(node.left, depth + 1)]
        operands += [self.expr(c, depth + 1) for c in node.comparators]
        parts = []
        for op, a, b in zip(node.ops, operands, operands[1:], strict=False):
            if type(op) not in _COMPARE:
                symbol = {ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not",
                          ast.In: "in", ast.NotIn: "not in"}.get(type(op), type(op).__name__)
                raise self.fail(f"comparison {symbol} is not allowed; use <, <=, > or >=", node)
            parts.append(_COMPARE[type(op)](a, b))
        return _Cond(sp.And(*parts))

    def piecewise(self, test: ast.AST, body: ast.AST, orelse: ast.AST, node: ast.AST,
                  depth: int) -> sp.Expr:
        cond = self.cond(test, depth + 1)
        a, b = self.expr(body, depth + 1), self.expr(orelse, depth + 1)
        return sp.Piecewise((a, cond), (b, True))

    def call(self, node: ast.Call, depth: int) -> sp.Expr:
        if isinstance(node.func, ast.Attribute):
            raise self.fail(_REFUSED[ast.Attribute], node)
        if not isinstance(node.func, ast.Name):
            raise self.fail("only plain function calls such as exp(x) are allowed", node)
        name = node.func.id
        if node.keywords:
            raise self.fail(f"{name}() takes no keyword arguments", node)
        if name == CONDITIONAL:
            if len(node.args) != 3:
                raise self.fail("where() takes three arguments: where(cond, a, b)", node)
            return self.piecewise(*node.args, node, depth)
        if name not in FUNCTIONS:
            if name.startswith("__") or name.endswith("__"):
                raise self.fail(f"name {name!r} is not allowed (no dunder names)", node)
            allowed = ", ".join(sorted([*FUNCTIONS, CONDITIONAL]))
            raise self.fail(f"unknown function {name!r}; allowed: {allowed}", node)
        builder, counts = FUNCTIONS[name]
        n = len(node.args)
        if (counts is None and n < 2) or (counts is not None and n not in counts):
            want = "two or more arguments" if counts is None else f"{counts[0]} argument(s)"
            raise self.fail(f"{name}() takes {want}, got {n}", node)
        args = [self.expr(a, depth + 1) for a in node.args]
        return self.checked_constant(builder(*args), node)


def parse_formula(text: object, symbols: Mapping[str, sp.Symbol], *,
                  where: str = "formula") -> sp.Expr:
    """Build the SymPy expression of a formula string, never evaluating it as code.

    ``symbols`` maps the names the formula may use (x, t, the declared parameters) to symbols.
    """
    if not isinstance(text, str):
        raise FormulaError(f"{where}: a formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"{where}: the formula is longer than {MAX_FORMULA_CHARS} characters")
    if not text.strip():
        raise FormulaError(f"{where}: the formula is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
        raise FormulaError(f"{where}: not a valid formula ({msg}): {text[:80]!r}") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise FormulaError(f"{where}: the formula has {count} syntax nodes; at most {MAX_NODES}")
    builder = _Builder(text.strip(), symbols, where)
    try:
        value = builder.build(tree.body)
    except RecursionError:
        raise FormulaError(f"{where}: the formula nests too deeply") from None
    if isinstance(value, _Cond):
        raise builder.fail("the formula is a condition, not a number; "
                           "write `a if cond else b` to choose between values")
    return value


# -- spec files ---------------------------------------------------------------------------------

_FILE_KEYS = {"package", "activations", "losses"}
_OP_KEYS = {"activations": {"formula", "summary", "params", "learnable", "latex_name"},
            "losses": {"formula", "summary", "params", "reduction", "tensor_params",
                       "latex_name"}}
_PARAM_KEYS = {"default", "min", "max", "strict", "doc"}


@dataclass(frozen=True)
class SpecFile:
    """The ops of one spec file and the package name it asks for (None: not given)."""

    path: Path
    ops: tuple  # the specs, in file order
    package: str | None


def _param_from_toml(where: str, name: str, value: object) -> dict:
    if isinstance(value, dict):
        unknown = set(value) - _PARAM_KEYS
        if unknown:
            raise SpecError(f"{where}.params.{name}: unknown key(s) {sorted(unknown)}; "
                            f"use {sorted(_PARAM_KEYS)}")
        if "default" not in value:
            raise SpecError(f"{where}.params.{name}: the parameter has no default; "
                            f"give one, e.g. {name} = {{ default = 1.0 }}")
        return dict(value)
    return {"default": value}


def load_spec_file(path: str | Path) -> SpecFile:
    """Read a TOML spec file into specs (via ``symgrad.userops``), validating every field."""
    from symgrad import userops

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                        f"use {sorted(_FILE_KEYS)} (ops go under [activations] or [losses])")
    package = data.get("package")
    if package is not None and not isinstance(package, str):
        raise SpecError(f"{path}: package must be a string")
    specs = []
    for family in ("activations", "losses"):
        table = data.get(family, {})
        if not isinstance(table, dict):
            raise SpecError(f"{path}: [{family}] must be a table of ops")
        for name, entry in table.items():
            where = f"{path.name}: [{family}.{name}]"
            if isinstance(entry, str):
                entry = {"formula": entry}
            if not isinstance(entry, dict):
                raise SpecError(f"{where}: write the op as a formula string or a table with "
                                f"formula = \"...\"")
            extra = set(entry) - _OP_KEYS[family]
            if extra:
                raise SpecError(f"{where}: unknown key(s) {sorted(extra)}; "
                                f"use {sorted(_OP_KEYS[family])}")
            if "formula" not in entry:
                raise SpecError(f"{where}: missing formula = \"...\"")
            params = entry.get("params", {})
            if isinstance(params, list):
                missing = ", ".join(f"{p} = 1.0" for p in params if isinstance(p, str))
                raise SpecError(f"{where}: parameters need defaults; "
                                f"write params = {{ {missing} }}")
            if not isinstance(params, dict):
                raise SpecError(f"{where}: params must be a table, e.g. params = {{ beta = 1.0 }}")
            params = {k: _param_from_toml(where, k, v) for k, v in params.items()}
            common = {"params": params, "summary": entry.get("summary"),
                      "latex_name": entry.get("latex_name", ""), "where": where}
            if family == "activations":
                spec = userops.activation(name, entry["formula"],
                                          learnable=entry.get("learnable", ()), **common)
            else:
                tensors = entry.get("tensor_params", {})
                spec = userops.loss(name, entry["formula"], tensor_params=tensors,
                                    reduction=entry.get("reduction", "mean"), **common)
            specs.append(spec)
    if not specs:
        raise SpecError(f"{path}: no ops; add e.g. [activations] my_op = \"x * sigmoid(x)\"")
    return SpecFile(path, tuple(specs), package)


def package_from_path(path: Path) -> str:
    """A default package name from the spec file's name: my-ops.toml -> my_ops_kernels."""
    stem = re.sub(r"\W", "_", path.stem).strip("_") or "user"
    if stem[0].isdigit():
        stem = "ops_" + stem
    return f"{stem}_kernels"


__all__ = ["FUNCTIONS", "FormulaError", "SpecFile", "UserOpError", "load_spec_file",
           "package_from_path", "parse_formula"]
