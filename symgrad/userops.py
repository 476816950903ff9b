"""Users' own ops: ``activation(...)``, ``loss(...)`` and ``generate(...)``.

A user op is an ordinary spec (``Elementwise`` or ``ElementwiseLoss``) built from a formula, a
string parsed safely by ``symgrad.specfile`` or a SymPy expression, so it gets everything the
catalog gets: SymPy derivatives, the output-form search, stability rewrites, LaTeX and the drift
check. ``generate`` writes a standalone package (NumPy + Numba only) of the user's ops alone, with
a self-test of values and gradients computed here in mpmath::

    import symgrad
    swish = symgrad.activation("swish_beta", "x * sigmoid(beta * x)", params={"beta": 1.0})
    cauchy = symgrad.loss("cauchy", "log(1 + (x - t)**2 / c**2)", params={"c": 1.0})
    kernels = symgrad.generate([swish, cauchy], package="my_kernels", out="build").load()
"""

from __future__ import annotations

import ast
import importlib
import random
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import mpmath
import sympy as sp

from symgrad.functions import ALLOWED_FUNCTIONS, elementary_form
from symgrad.spec import (
    REDUCTIONS,
    Elementwise,
    ElementwiseLoss,
    OpSpec,
    Param,
    SpecError,
    T,
    TensorParam,
    X,
    reduction_param,
)
from symgrad.specfile import CONSTANTS, FUNCTIONS, UserOpError, parse_formula

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Files every generated user package has besides one module per op.
SELFTEST_MODULE = "test_kernels"
# Nodes a user formula may contain; functions are checked against ALLOWED_FUNCTIONS.
_ALLOWED_NODES = (sp.Add, sp.Mul, sp.Pow, sp.Symbol, sp.Number, sp.NumberSymbol, sp.Piecewise,
                  sp.core.relational.Relational, sp.And, sp.Or, sp.Not,
                  sp.logic.boolalg.BooleanAtom, sp.functions.elementary.piecewise.ExprCondPair)
# Non-differentiable at a point, with no way for the formula to say which side holds there.
_KINKED = (sp.Abs, sp.Max, sp.Min, sp.sign, sp.Heaviside)
_INEXPRESSIBLE = (sp.Derivative, sp.Subs, sp.DiracDelta, sp.Heaviside, sp.Integral)
KINK_FIX = ("state which side holds the kink with a conditional, e.g. relu is "
            "\"x if x > 0 else 0\" (relu'(0) = 0, PyTorch's convention) or "
            "\"where(x > 0, x, 0)\"")
# Package names that would shadow what the generated code (or symgrad) imports.
_TAKEN_PACKAGES = {"numpy", "numba", "llvmlite", "scipy", "sympy", "mpmath", "symgrad",
                   "jinja2", "torch", "pytest", "hypothesis"}


# -- names --------------------------------------------------------------------------------------

def check_op_name(name: object, where: str | None = None) -> str:
    """An op name is a plain identifier, not a built-in op's, and stays inside the package."""
    where = where or f"op {name!r}"
    if not isinstance(name, str) or not name:
        raise UserOpError(f"{where}: the op name must be a non-empty string, got {name!r}")
    if any(sep in name for sep in ("/", "\\", "..")) or name.startswith("."):
        raise UserOpError(f"{where}: op name {name!r} would write outside the output folder; "
                          "use a plain identifier such as my_op")
    if not _IDENT.match(name):
        raise UserOpError(f"{where}: op name {name!r} is not a Python identifier; use letters, "
                          "digits and underscores, not starting with a digit")
    if name.startswith("_") or name == SELFTEST_MODULE:
        raise UserOpError(f"{where}: op name {name!r} is reserved for the package's own modules; "
                          "pick a name that does not start with an underscore")
    import keyword

    if keyword.iskeyword(name):
        raise UserOpError(f"{where}: op name {name!r} is a Python keyword; pick another name")
    import symgrad.ops  # noqa: F401  (registers the built-in catalog)
    from symgrad.spec import REGISTRY

    if name in REGISTRY:
        raise UserOpError(f"{where}: op name {name!r} collides with the built-in op {name!r}; "
                          "pick another name (`python -m symgrad list` shows the built-ins)")
    return name


def check_package_name(package: object) -> str:
    if not isinstance(package, str) or not _IDENT.match(package):
        raise UserOpError(f"package name {package!r} is not a Python identifier; "
                          "use e.g. my_kernels")
    import keyword

    if keyword.iskeyword(package) or package in _TAKEN_PACKAGES or \
            package in sys.stdlib_module_names:
        raise UserOpError(f"package name {package!r} would shadow the module of that name; "
                          "pick another, e.g. my_kernels")
    return package


# -- parameters and formulas --------------------------------------------------------------------

_PARAM_KEYS = {"default", "min", "max", "strict", "doc"}


def _make_param(where: str, name: object, value: object) -> Param:
    if isinstance(value, Param):
        if value.name != name:
            raise UserOpError(f"{where}: parameter {name!r} is declared as Param({value.name!r})")
        return value
    if not isinstance(name, str) or not _IDENT.match(name):
        raise UserOpError(f"{where}: parameter name {name!r} is not a Python identifier")
    if name in FUNCTIONS or name in CONSTANTS or name == "where":
        raise UserOpError(f"{where}: parameter name {name!r} is the name of a function or "
                          "constant formulas use; rename the parameter")
    spec: Mapping = value if isinstance(value, Mapping) else {"default": value}
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise UserOpError(f"{where}: parameter {name!r} has unknown key(s) {sorted(unknown)}; "
                          f"use {sorted(_PARAM_KEYS)}")
    default = spec.get("default")
    if default is None:
        raise UserOpError(f"{where}: parameter {name!r} has no default; give one, e.g. "
                          f"params={{{name!r}: 1.0}}")
    if isinstance(default, bool) or not isinstance(default, int | float):
        raise UserOpError(f"{where}: parameter {name!r} needs a numeric default, "
                          f"got {default!r}")
    bounds = {}
    for key, target in (("min", "minimum"), ("max", "maximum")):
        if spec.get(key) is not None:
            bound = spec[key]
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise UserOpError(f"{where}: parameter {name!r}: {key} must be a number")
            bounds[target] = float(bound)
    strict = spec.get("strict", False)
    if not isinstance(strict, bool):
        raise UserOpError(f"{where}: parameter {name!r}: strict must be true or false")
    doc = spec.get("doc", "")
    if not isinstance(doc, str):
        raise UserOpError(f"{where}: parameter {name!r}: doc must be a string")
    return Param(name, default, doc, strict=strict, **bounds)


def _make_params(where: str, params: Mapping | Iterable | None) -> tuple[Param, ...]:
    if params is None:
        return ()
    if isinstance(params, str) or not isinstance(params, Mapping):
        names = [params] if isinstance(params, str) else list(params)
        missing = ", ".join(f"{n!r}: 1.0" for n in names)
        raise UserOpError(f"{where}: parameters need defaults; pass params={{{missing}}}")
    return tuple(_make_param(where, name, value) for name, value in params.items())


def _walk_check(expr: sp.Basic, where: str) -> None:
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Function) or (isinstance(node, type) and
                                             issubclass(node, sp.Function)):
            func = node.func if isinstance(node, sp.Function) else node
            if func not in ALLOWED_FUNCTIONS:
                allowed = ", ".join(sorted(FUNCTIONS))
                raise UserOpError(f"{where}: unknown function {func}; formulas may use {allowed}")
            continue
        if not isinstance(node, _ALLOWED_NODES):
            raise UserOpError(f"{where}: {type(node).__name__} ({str(node)[:40]}) cannot appear "
                              "in a formula; use arithmetic, the allowed functions and "
                              "conditionals")
        if node in (sp.zoo, sp.nan, sp.oo, -sp.oo) or node == sp.I:
            raise UserOpError(f"{where}: the formula contains {node}; it must be real and finite")


def check_kinks(expr: sp.Expr, where: str) -> None:
    """abs/max/min/sign have a point with no derivative, and nothing says which side wins."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, _KINKED):
            raise UserOpError(f"{where}: {node} is not differentiable where its argument is 0 "
                              f"(or its arguments tie) and the formula states no convention "
                              f"there; {KINK_FIX}")


def check_derivative(expr: sp.Expr, where: str, wrt: sp.Symbol = X) -> sp.Expr:
    """SymPy's derivative, refused when it holds something no kernel can evaluate."""
    try:
        derivative = sp.diff(expr, wrt)
    except Exception as exc:  # SymPy raises many types; all mean the same here
        raise UserOpError(f"{where}: SymPy cannot differentiate the formula ({exc}); "
                          "rewrite it with the allowed functions") from None
    bad = sorted({type(n).__name__ for n in sp.preorder_traversal(derivative)
                  if isinstance(n, _INEXPRESSIBLE)})
    if bad:
        raise UserOpError(f"{where}: SymPy cannot express the derivative in closed form (it "
                          f"contains {', '.join(bad)}); rewrite the formula, e.g. with a "
                          "conditional instead of a step or a kink")
    return derivative


def _expression(expr: object, symbols: dict[str, sp.Symbol], where: str) -> sp.Expr:
    if isinstance(expr, str):
        value = parse_formula(expr, symbols, where=where)
    elif isinstance(expr, bool) or not isinstance(expr, sp.Basic | int | float):
        raise UserOpError(f"{where}: the formula must be a string or a SymPy expression, "
                          f"got {type(expr).__name__}")
    elif isinstance(expr, int | float):
        value = sp.Rational(repr(expr)) if isinstance(expr, float) else sp.Integer(expr)
    else:
        value = expr
        # Users write sp.Symbol("x") without assumptions: adopt symbols by name.
        mapping = {}
        for s in value.free_symbols:
            if s.name not in symbols:
                known = ", ".join(sorted(symbols))
                raise UserOpError(f"{where}: unknown symbol {s.name!r}; the formula may use "
                                  f"{known}. Declare a parameter with a default, e.g. "
                                  f"params={{{s.name!r}: 1.0}}")
            mapping[s] = symbols[s.name]
        value = value.xreplace(mapping)
    if not isinstance(value, sp.Expr):
        raise UserOpError(f"{where}: the formula must be a number-valued expression")
    check_kinks(value, where)
    _walk_check(value, where)
    if X not in value.free_symbols:
        raise UserOpError(f"{where}: the formula never uses x; an op of x must depend on it")
    check_derivative(value, where)
    return value


def _summary(summary: str | None, expr: object, default: str) -> str:
    if summary is not None:
        if not isinstance(summary, str) or not summary.strip():
            raise UserOpError("summary must be a non-empty string")
        return summary.strip().splitlines()[0]
    text = expr if isinstance(expr, str) else sp.sstr(expr)
    return f"{default}{' '.join(text.split())[:120]}"


def _learnable_kind():
    """The spec classes of ops with learnable parameters, if that kind is available."""
    try:
        from symgrad.kinds.parametric import Learnable, Parametric
    except ImportError:
        return None
    return Learnable, Parametric


def _learnable_names(where: str, learnable: object, params: tuple[Param, ...]) -> list[str]:
    names = [learnable] if isinstance(learnable, str) else list(learnable or ())
    declared = {p.name for p in params}
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise UserOpError(f"{where}: learnable {unknown} are not declared parameters; declare "
                          "each in params with a default first")
    if names and _learnable_kind() is None:
        raise UserOpError(f"{where}: learnable parameters ({', '.join(map(str, names))}) need "
                          "the parametric kind, which this symgrad lacks; pass them as fixed "
                          "params (no gradient with respect to them is generated)")
    return names


# -- the public API -----------------------------------------------------------------------------

def activation(name: str, expr: str | sp.Expr, params: Mapping | None = None,
               learnable: Iterable[str] = (), *, summary: str | None = None,
               latex_name: str = "", where: str | None = None) -> OpSpec:
    """An elementwise activation y = f(x) from a formula in ``x`` and the declared params.

    ``expr`` is a string such as ``"x * sigmoid(beta * x)"`` (parsed without evaluating code) or
    a SymPy expression. ``params`` maps each parameter to its default, or to a dict with
    ``default`` and optional ``min``, ``max``, ``strict``, ``doc``. Parameters named in
    ``learnable`` become array arguments whose gradients backward returns (the parametric kind).
    """
    where = where or f"op {name!r}"
    check_op_name(name, where)
    plist = _make_params(where, params)
    learn = _learnable_names(where, learnable, plist)
    symbols = {"x": X, **{p.name: p.symbol for p in plist}}
    forward = _expression(expr, symbols, where)
    common = {"name": name, "family": "activation", "forward": forward, "latex_name": latex_name,
              "summary": _summary(summary, expr, "User activation: y = ")}
    try:
        if not learn:
            return Elementwise(params=plist, **common)
        learnable_type, parametric = _learnable_kind()  # type: ignore[misc]
        # A learnable parameter is an array (or number) per call: its bounds do not apply.
        weights = tuple(learnable_type(p.name, float(p.default), p.doc)  # type: ignore[arg-type]
                        for p in plist if p.name in learn)
        return parametric(params=tuple(p for p in plist if p.name not in learn),
                          learnable=weights, **common)
    except SpecError as exc:
        raise UserOpError(f"{where}: {exc}") from None


def loss(name: str, expr: str | sp.Expr, params: Mapping | None = None, *,
         tensor_params: Mapping | None = None, reduction: str = "mean",
         summary: str | None = None, latex_name: str = "",
         where: str | None = None) -> ElementwiseLoss:
    """An elementwise loss l(x, t), reduced by ``reduction`` ('none' | 'mean' | 'sum').

    ``x`` is the input, ``t`` the target. ``tensor_params`` maps optional array operands (such
    as a per-element ``weight``) to the value the formula sees when the caller passes None.
    """
    where = where or f"op {name!r}"
    check_op_name(name, where)
    plist = _make_params(where, params)
    if any(p.name == "reduction" for p in plist):
        raise UserOpError(f"{where}: 'reduction' is every loss's option; set its default with "
                          "reduction=... instead of declaring it as a parameter")
    if reduction not in REDUCTIONS:
        raise UserOpError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    tensors = []
    for tname, value in (tensor_params or {}).items():
        if not isinstance(tname, str) or not _IDENT.match(tname):
            raise UserOpError(f"{where}: tensor parameter name {tname!r} is not an identifier")
        default = value.get("default", 1.0) if isinstance(value, Mapping) else value
        doc = value.get("doc", "") if isinstance(value, Mapping) else ""
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise UserOpError(f"{where}: tensor parameter {tname!r} needs a numeric default")
        tensors.append(TensorParam(tname, float(default), doc))
    symbols = {"x": X, "t": T, **{p.name: p.symbol for p in plist},
               **{p.name: p.symbol for p in tensors}}
    if len(symbols) != 2 + len(plist) + len(tensors):
        raise UserOpError(f"{where}: parameter names must differ from each other and from x, t")
    value = _expression(expr, symbols, where)
    try:
        return ElementwiseLoss(name=name, family="loss",
                               summary=_summary(summary, expr, "User loss: l = "),
                               params=(*plist, reduction_param(reduction)),
                               tensor_params=tuple(tensors), loss=value, latex_name=latex_name)
    except SpecError as exc:
        raise UserOpError(f"{where}: {exc}") from None


def derive_checked(spec: OpSpec):
    """``derive(spec)``, with SymPy's and the printer's failures turned into a UserOpError."""
    from symgrad.derive import derive

    try:
        return derive(spec)
    except UserOpError:
        raise
    except Exception as exc:
        raise UserOpError(f"op {spec.name!r}: SymPy cannot derive or express what the kernels "
                          f"need ({type(exc).__name__}: {exc}); rewrite the formula with the "
                          "allowed functions") from None


def check_ops(specs: Iterable[OpSpec]) -> list[OpSpec]:
    """One package's ops: unique names, no two exports alike, each of a kind users may write."""
    specs = list(specs)
    if not specs:
        raise UserOpError("no ops to generate; pass at least one op")
    seen: dict[str, str] = {}
    learnable = _learnable_kind()
    user_types = (Elementwise, ElementwiseLoss, *(learnable[1:] if learnable else ()))
    for spec in specs:
        if not isinstance(spec, user_types):
            raise UserOpError(f"{spec!r} is not a user op; build ops with symgrad.activation() "
                              "or symgrad.loss()")
        check_op_name(spec.name)
        from symgrad.kinds import kind_of

        for export in [spec.name, *kind_of(spec).exports(spec)]:
            if export in seen and seen[export] != spec.name:
                raise UserOpError(f"ops {seen[export]!r} and {spec.name!r} both define "
                                  f"{export!r}; rename one of them")
            seen.setdefault(export, spec.name)
        if [s.name for s in specs].count(spec.name) > 1:
            raise UserOpError(f"op {spec.name!r} is given twice; give each op once")
    return specs


def _parameter_names(spec: OpSpec) -> list[str]:
    names = [p.name for p in spec.params]
    names += [p.name for p in getattr(spec, "tensor_params", ())]
    names += [w.name for w in getattr(spec, "learnable", ())]
    return names


def _rebinds(fn: ast.FunctionDef, name: str) -> bool:
    """Whether ``fn`` rebinds its argument ``name`` to something not computed from it.

    ``p = float(check(p))`` normalizes the caller's value and is fine; ``name = "y"`` or a loop
    over ``name`` replaces it."""
    for node in ast.walk(fn):
        if not (isinstance(node, ast.Name) and node.id == name and
                isinstance(node.ctx, ast.Store)):
            continue
        if any(isinstance(a, ast.AugAssign) and a.target is node for a in ast.walk(fn)):
            continue  # x += ... reads x first
        owner = next((a for a in ast.walk(fn) if isinstance(a, ast.Assign | ast.AnnAssign)
                      and any(node is t for target in (getattr(a, "targets", None)
                                                        or [a.target])
                              for t in ast.walk(target))), None)
        reads = owner is not None and owner.value is not None and any(
            isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
            for n in ast.walk(owner.value))
        if not reads:
            return True
    return False


def check_generated_names(spec: OpSpec, source: str) -> None:
    """A parameter must not clash with a name the generated module itself uses: a module-level
    name (np, math, a helper), or a local its wrappers assign (which would silently replace the
    caller's value). Read off the rendered module, so it holds for every template."""
    where = f"op {spec.name!r}"
    try:
        # compile, not only parse: duplicate arguments are caught by the compiler. Our own
        # rendered source, compiled and never run.
        compile(source, f"{spec.name}.py", "exec", dont_inherit=True)
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise UserOpError(f"{where}: the generated module does not compile ({exc.msg}, line "
                          f"{exc.lineno}); a parameter name probably clashes with the code's "
                          f"own names: rename {', '.join(_parameter_names(spec))}") from None
    module_names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            module_names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            module_names.add(node.name)
        elif isinstance(node, ast.Assign):
            module_names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for name in _parameter_names(spec):
        if name in module_names:
            raise UserOpError(f"{where}: parameter name {name!r} is a name the generated module "
                              f"uses; rename it, e.g. {name}_")
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            args = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)]
            if name not in args:
                continue
            if _rebinds(fn, name):
                raise UserOpError(f"{where}: parameter name {name!r} is a local variable of the "
                                  f"generated {fn.name}(); rename the parameter, e.g. {name}_")


# -- the self-test shipped with a generated package ---------------------------------------------

_XS = (-20.0, -6.0, -2.5, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.5, 6.0, 20.0)


def _param_sets(spec: OpSpec) -> list[dict[str, float]]:
    """Defaults, and one other value per parameter inside its domain."""
    defaults = {p.name: float(p.default) for p in spec.numeric_params}  # type: ignore[arg-type]
    other = {}
    for p in spec.numeric_params:
        v = float(p.default) * 1.5 + 0.25  # type: ignore[arg-type]
        try:
            p.validate(spec.name, v)
        except ValueError:
            v = float(p.default)  # type: ignore[arg-type]
        other[p.name] = v
    return [defaults] if other == defaults else [defaults, other]


def _real(value) -> float | None:
    if isinstance(value, mpmath.mpc):
        if abs(value.imag) > mpmath.mpf(10) ** -25 * (1 + abs(value.real)):
            return None
        value = value.real
    v = float(value)
    return v if v == v and abs(v) < 1e300 else None


def _reference_cases(spec: OpSpec) -> list[dict]:
    """Values and derivatives at sample points, in mpmath at 30 digits, for the self-test."""
    cases = []
    is_loss = isinstance(spec, ElementwiseLoss)
    (formula,) = spec.formulas().values()
    tensors = {p.symbol: sp.nsimplify(p.default) for p in getattr(spec, "tensor_params", ())}
    weights = list(getattr(spec, "learnable", ()))  # learnable parameters: gradients too
    rng = random.Random(7)
    sets = _param_sets(spec)
    if weights and len(sets) == 1:  # learnable values still vary between the two sets
        sets.append(dict(sets[0]))
    for n, params in enumerate(sets):
        learn = {w.name: float(w.default) * (1.5 if n else 1.0) + (0.25 if n else 0.0)
                 for w in weights}
        subs = {sp.Symbol(k, real=True): v for k, v in {**params, **learn}.items()}
        expr = elementary_form(formula.subs(tensors).subs(subs))
        args = [X, T] if is_loss else [X]
        wrt = [X, *[w.symbol for w in weights]]
        raw = elementary_form(formula.subs(tensors))
        fns = [sp.lambdify(args, expr, modules="mpmath")]
        fns += [sp.lambdify(args, sp.diff(raw, v).subs(subs), modules="mpmath") for v in wrt]
        columns: list[list[float]] = [[] for _ in range(len(fns) + 2)]
        points = [(x, rng.uniform(-3, 3)) for x in _XS] if is_loss else [(x, 0.0) for x in _XS]
        with mpmath.workdps(30):
            for x, t in points:
                call = (mpmath.mpf(x), mpmath.mpf(t)) if is_loss else (mpmath.mpf(x),)
                try:
                    row = [_real(f(*call)) for f in fns]
                except (ZeroDivisionError, ValueError, OverflowError, TypeError):
                    continue
                if any(v is None for v in row):
                    continue
                for column, value in zip(columns, [x, t, *row], strict=True):
                    column.append(value)
        if columns[0]:
            case = {"op": spec.name, "params": params, "x": columns[0], "t": columns[1],
                    "y": columns[2], "dy": columns[3], "learn": learn, "dw": columns[4:]}
            cases.append(case)
    return cases


def render_selftest(specs: list[OpSpec], package: str) -> str:
    from symgrad import __version__
    from symgrad.render import environment

    activations, losses, learnable = [], [], []
    for spec in specs:
        cases = _reference_cases(spec)
        if isinstance(spec, ElementwiseLoss):
            losses.extend(cases)
        else:
            (learnable if getattr(spec, "learnable", ()) else activations).extend(cases)
    return environment().get_template("_selftest.py.j2").render(
        template="_selftest.py.j2", version=__version__, spec=None, package=package,
        ops=[s.name for s in specs], activations=activations, losses=losses,
        learnable=learnable)


# -- generating a package -----------------------------------------------------------------------

Progress = Callable[[int, int, str, str], None]


def render_user_package(specs: Iterable[OpSpec], package: str,
                        progress: Progress | None = None,
                        render: Iterable[OpSpec] | None = None) -> dict[str, str]:
    """Every file of a standalone package holding only ``specs`` (no built-in op).

    ``render`` limits which ops' modules are derived and rendered (``generate --only``); the
    others are left out of the result, for the caller to keep from disk.
    """
    from symgrad.render import environment, render_index, render_package

    specs = check_ops(specs)
    check_package_name(package)
    chosen = specs if render is None else [s for s in specs if s in list(render)]
    total = len(chosen)
    for i, spec in enumerate(chosen, 1):
        if progress:
            progress(i, total, spec.name, "derive")
        derive_checked(spec)
    count = {"i": 0}

    def rendering(name: str, stage: str) -> None:
        count["i"] += 1
        if progress:
            progress(count["i"], total, name, "render")

    try:
        files = render_package(chosen, package, progress=rendering)
    except Exception as exc:
        raise UserOpError(f"op {chosen[max(count['i'] - 1, 0)].name!r}: its kernels cannot be "
                          f"printed ({type(exc).__name__}: {exc}); rewrite the formula with the "
                          "allowed functions") from None
    for spec in chosen:
        check_generated_names(spec, files[f"{spec.name}.py"])
    files["__init__.py"] = render_index(environment(), package, specs)
    if progress:
        progress(total, total, "self-test", "reference values in mpmath")
    files[f"{SELFTEST_MODULE}.py"] = render_selftest(specs, package)
    return files


@dataclass
class Generated:
    """What ``generate`` did: where the package is, and which files changed how."""

    path: Path
    package: str
    status: dict[str, str] = field(default_factory=dict)  # file -> new|modified|removed|same
    diff: str = ""  # for check=True: what would change ('' when up to date)
    waited: float = 0.0  # seconds spent waiting for another generate's lock

    @property
    def changed(self) -> list[str]:
        return sorted(k for k, v in self.status.items() if v != "unchanged")

    @property
    def test_command(self) -> str:
        return f"python -m pytest {self.path / (SELFTEST_MODULE + '.py')}"

    def load(self) -> ModuleType:
        """Import the generated package (its folder goes first on sys.path)."""
        return import_package(self.path.parent, self.package)


def import_package(out: str | Path, package: str) -> ModuleType:
    out = Path(out).resolve()
    loaded = sys.modules.get(package)
    if loaded is not None:
        origin = Path(getattr(loaded, "__file__", "") or "").resolve().parent
        if origin != out / package:
            raise UserOpError(f"a different module named {package!r} is already imported "
                              f"({origin}); generate under another package name")
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return importlib.import_module(package)


def generate(ops: Iterable[OpSpec], package: str = "my_kernels", out: str | Path = ".", *,
             check: bool = False, progress: Progress | None = None,
             notice: Callable[[str], None] | None = None) -> Generated:
    """Write ``out/package``: one module per op, ``_runtime``, ``_functions``, a self-test.

    The package is written to a temporary folder and swapped in atomically under a lock, so a
    failure or Ctrl-C leaves the previous package as it was. ``check=True`` writes nothing and
    returns the diff. Run the self-test with ``Generated.test_command``.
    """
    from symgrad.output import diff_package, file_status, read_package, write_package_report

    out = Path(out)
    files = render_user_package(ops, package, progress)
    target = out / package
    if check:
        return Generated(target, package, file_status(read_package(target), files),
                         diff=diff_package(files, target))
    report = write_package_report(files, out, package, notice=notice)
    return Generated(target, package, report.status, waited=report.waited)


__all__ = ["Generated", "UserOpError", "activation", "check_ops", "derive_checked", "generate",
           "import_package", "loss", "render_user_package"]
