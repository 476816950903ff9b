"""Users' own ops: the safe formula parser, spec files, clear errors, and generated packages
checked against mpmath (values and gradients) through the API and through a spec file."""

from __future__ import annotations

import ast
import builtins
import sys
import textwrap
from pathlib import Path

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import assert_close

import symgrad
from symgrad.functions import sigmoid, softplus
from symgrad.spec import REGISTRY, T, X
from symgrad.specfile import FormulaError, load_spec_file, parse_formula
from symgrad.userops import UserOpError, check_derivative, check_ops

ROOT = Path(__file__).resolve().parent.parent
BETA = sp.Symbol("beta", real=True)
SYMBOLS = {"x": X, "beta": BETA}


# -- the parser ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("x * sigmoid(beta * x)", X * sigmoid(BETA * X)),
    ("x if x > 0 else 0.01 * x", sp.Piecewise((X, X > 0), (X / 100, True))),
    ("where(x >= 0, x, beta * expm1(x))",
     sp.Piecewise((X, X >= 0), (BETA * (sp.exp(X) - 1), True)).replace(
         lambda e: e == sp.exp(X) - 1, lambda e: sp.codegen.cfunctions.expm1(X))),
    ("x if 0 < x < 6 and not x > beta else 0",
     sp.Piecewise((X, sp.And(X > 0, X < 6, sp.Not(X > BETA))), (0, True))),
    ("-x ** 2 / 2 + pi", -X**2 / 2 + sp.pi),
    ("softplus(x) - log(1 + exp(x)) + sqrt(x) + cosh(x)",
     softplus(X) - sp.log(1 + sp.exp(X)) + sp.sqrt(X) + (sp.exp(X) + sp.exp(-X)) / 2),
    ("1e-3 * x", sp.Rational(1, 1000) * X),
])
def test_formulas_become_sympy(text, expected):
    assert sp.simplify(parse_formula(text, SYMBOLS) - expected) == 0


HOSTILE = [
    "__import__('os').system('touch {sentinel}')",
    "().__class__.__bases__[0].__subclasses__()",
    "x.__class__",
    "exec(\"open('{sentinel}', 'w')\")",
    "eval('1')",
    "open('{sentinel}', 'w')",
    "getattr(x, 'real')",
    "globals()",
    "__builtins__",
    "lambda: 1",
    "[i for i in range(9)]",
    "(y := 1)",
    "x[0]",
    "'a' * 10",
    "f'{{x}}'",
    "9**9**9",
    "x ** (10 ** 10)",
    "2 ** 4000",
    "1e999 * x",
    "x ^ 2",
    "x // 2",
    "sigmoid.explicit(x)",
    "exp(x=1)",
    "exp(*x)",
    "log(x, 2)",
    "x; import os",
    "x == 0",
    "x if x else 0",
    "(x > 0) * 2",
    "1 / 0",
    "x\x00",
    "(" * 300 + "x" + ")" * 300,
    "-" * 1500 + "x",
    "x + " * 700 + "x",
    "{{x}}",
    "x, x",
    "",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_strings_are_refused_and_nothing_runs(template, tmp_path, monkeypatch):
    sentinel = tmp_path / "pwned"
    text = template.format(sentinel=sentinel)

    def refuse(*args, **kwargs):
        raise AssertionError("the parser evaluated code")

    # Nothing may evaluate: not Python's eval/exec, not SymPy's string parsers.
    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    monkeypatch.setattr(sp, "sympify", refuse)
    monkeypatch.setattr(sp, "parse_expr", refuse, raising=False)
    with pytest.raises(FormulaError) as info:
        parse_formula(text, SYMBOLS)
    message = str(info.value)
    assert message.startswith("formula:") and "\n" not in message
    assert not sentinel.exists()


def test_hostile_spec_file_fails_cleanly_on_the_command_line(tmp_path, capsys):
    from symgrad.cli import main

    sentinel = tmp_path / "pwned"
    spec = tmp_path / "evil.toml"
    spec.write_text(f'[activations]\nevil = "__import__(\'os\').system(\'touch {sentinel}\')"\n')
    assert main(["generate", "--spec", str(spec), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not allowed" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not sentinel.exists() and not (tmp_path / "evil_kernels").exists()


# -- errors that name the fix -------------------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda: symgrad.activation("a1", "x * gamma"), "unknown symbol 'gamma'.*params"),
    (lambda: symgrad.activation("a1", "x * foo(x)"), "unknown function 'foo'"),
    (lambda: symgrad.activation("a1", sp.Function("f")(X)), "unknown function f"),
    (lambda: symgrad.activation("a1", "x * beta", params={"beta": None}), "no default"),
    (lambda: symgrad.activation("a1", "x * beta", params=["beta"]), "need defaults"),
    (lambda: symgrad.activation("a1", "x * beta", params={"beta": "1"}), "numeric default"),
    (lambda: symgrad.activation("a1", "x * exp", params={"exp": 1.0}), "function"),
    (lambda: symgrad.activation("my-op", "x"), "not a Python identifier"),
    (lambda: symgrad.activation("2x", "x"), "not a Python identifier"),
    (lambda: symgrad.activation("relu", "x"), "collides with the built-in op 'relu'"),
    (lambda: symgrad.activation("../x", "x"), "outside the output folder"),
    (lambda: symgrad.activation("a/b", "x"), "outside the output folder"),
    (lambda: symgrad.activation("_runtime", "x"), "reserved"),
    (lambda: symgrad.activation("a1", "abs(x)"), "x if x > 0 else 0"),
    (lambda: symgrad.activation("a1", "max(x, 0)"), "relu'\\(0\\) = 0"),
    (lambda: symgrad.activation("a1", sp.Min(X, 1)), "states no convention"),
    (lambda: symgrad.activation("a1", "2 * pi"), "never uses x"),
    (lambda: symgrad.activation("a1", "x", learnable=["beta"]), "not declared"),
    (lambda: symgrad.loss("l1", "(x - t)**2", reduction="avg"), "reduction must be one of"),
    (lambda: symgrad.loss("l1", "(x - t)**2", params={"reduction": 1.0}), "reduction"),
    (lambda: symgrad.loss("mse_loss", "(x - t)**2"), "built-in"),
])
def test_clear_errors(call, message):
    with pytest.raises(UserOpError, match=message) as info:
        call()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_derivative_sympy_cannot_express_is_an_error():
    with pytest.raises(UserOpError, match="cannot express the derivative.*Subs|Derivative"):
        check_derivative(sp.Function("f")(X**2), "op 'a1'")
    with pytest.raises(UserOpError, match="DiracDelta"):
        check_derivative(sp.Heaviside(X), "op 'a1'")


def test_package_and_export_names_are_checked():
    a = symgrad.activation("a", "x")
    b = symgrad.activation("a_forward", "2 * x")
    with pytest.raises(UserOpError, match="both define 'a_forward'"):
        check_ops([a, b])
    with pytest.raises(UserOpError, match="given twice"):
        check_ops([a, a])
    for bad in ("numpy", "os", "my-kernels", "class"):
        with pytest.raises(UserOpError, match="package name"):
            symgrad.generate([a], package=bad, out="unused")


def test_sympy_expressions_are_adopted_by_symbol_name():
    x, beta = sp.symbols("x beta")  # no assumptions: symgrad maps them by name
    spec = symgrad.activation("swish_api", x * sigmoid(beta * x), params={"beta": 1.0})
    assert spec.forward == X * sigmoid(BETA * X)


# -- spec files ---------------------------------------------------------------------------------

def test_the_example_spec_file_loads():
    loaded = load_spec_file(ROOT / "examples" / "my_ops.toml")
    names = [s.name for s in loaded.ops]
    assert loaded.package == "my_kernels" and "swish_beta" in names and "cauchy_loss" in names
    swish = loaded.ops[names.index("swish_beta")]
    assert swish.param("beta").default == 1.0 and swish.param("beta").minimum == 0.0


@pytest.mark.parametrize(("text", "message"), [
    ('[activations.a1]\nformula = "x * beta"\n', "unknown symbol 'beta'"),
    ('[activations.a1]\nformula = "x * beta"\nparams = ["beta"]\n', "beta = 1.0"),
    ('[activations.a1]\nformula = "x * beta"\nparams = { beta = { min = 0 } }\n',
     "has no default"),
    ('[activations.a1]\nformla = "x"\n', "unknown key"),
    ('[activation]\na1 = "x"\n', "unknown top-level key"),
    ('[activations]\n"../evil" = "x"\n', "outside the output folder"),
    ('[activations]\nsigmoid = "x"\n', "built-in"),
    ('[activations]\na1 = "abs(x)"\n', "x if x > 0 else 0"),
    ('[activations]\na1 = 3\n', "formula string"),
    ("[activations\n", "not valid TOML"),
    ("", "no ops"),
])
def test_spec_file_errors(text, message, tmp_path):
    path = tmp_path / "ops.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_spec_file(path)


# -- generated packages, checked against mpmath -------------------------------------------------

def mp_values(expr, symbols, points):
    from symgrad.functions import elementary_form

    f = sp.lambdify(symbols, elementary_form(expr), modules="mpmath")
    with mpmath.workdps(30):
        return np.array([float(f(*map(mpmath.mpf, p))) for p in points])


XS = np.array([-8.0, -2.5, -1.0, -0.3, -1e-4, 0.0, 1e-4, 0.7, 1.5, 3.0, 9.0])


def check_activation(K, name, expr, params, learnable=()):
    """Forward and backward (from x) against mpmath at 30 digits; for learnable parameters,
    backward's extra outputs against the summed ∂y/∂w."""
    subs = {sp.Symbol(k, real=True): v for k, v in params.items()}
    want_y = mp_values(expr.subs(subs), [X], [(x,) for x in XS])
    wrt = [X, *(sp.Symbol(w, real=True) for w in learnable)]
    want_d = [mp_values(sp.diff(expr, v).subs(subs), [X], [(x,) for x in XS]) for v in wrt]
    for dtype in (np.float32, np.float64):
        x = XS.astype(dtype)
        g = np.linspace(0.5, 2.0, x.size).astype(dtype)
        y = getattr(K, f"{name}_forward")(x, **params)
        assert y.dtype == dtype
        assert_close(y, want_y, dtype, f"{name} forward {dtype.__name__}")
        grads = getattr(K, f"{name}_backward")(g, x=x, **params)
        grads = grads if isinstance(grads, tuple) else (grads,)
        assert len(grads) == len(wrt)
        assert_close(grads[0], g * want_d[0], dtype, f"{name} backward {dtype.__name__}")
        if not learnable:  # from the saved output, where the op has an output form
            try:
                from_y = getattr(K, f"{name}_backward")(g, y=y, **params)
            except TypeError as exc:
                assert "needs x" in str(exc)
            else:
                assert_close(from_y, g * want_d[0], dtype, f"{name} backward from y")
        for w, got, want in zip(learnable, grads[1:], want_d[1:], strict=True):
            assert_close(np.reshape(got, 1), [np.sum(g * want)], dtype, f"{name} d/d{w}")


def check_loss(K, name, expr, params):
    ts = np.linspace(-2, 2, XS.size)
    subs = {sp.Symbol(k, real=True): v for k, v in params.items()}
    want_l = mp_values(expr.subs(subs), [X, T], list(zip(XS, ts, strict=True)))
    want_d = mp_values(sp.diff(expr, X).subs(subs), [X, T], list(zip(XS, ts, strict=True)))
    for dtype in (np.float32, np.float64):
        x, t = XS.astype(dtype), ts.astype(dtype)
        forward, backward = getattr(K, f"{name}_forward"), getattr(K, f"{name}_backward")
        assert_close(forward(x, t, reduction="none", **params), want_l, dtype, f"{name} loss")
        assert_close(backward(x, t, reduction="mean", **params), want_d / x.size, dtype,
                     f"{name} gradient")
        assert abs(forward(x, t, reduction="sum", **params) - want_l.sum()) <= \
            1e-5 * np.abs(want_l).sum()


SWISH = X * sigmoid(BETA * X)
DELTA = sp.Symbol("delta", real=True)
PSEUDO_HUBER = DELTA**2 * (sp.sqrt(1 + ((X - T) / DELTA) ** 2) - 1)


def learnable_ops() -> list:
    """A learnable-parameter op where symgrad has the parametric kind; else the clear error."""
    from symgrad.userops import _learnable_kind

    make = lambda: symgrad.activation("swish_learn_b", "x * sigmoid(beta * x)",  # noqa: E731
                                      params={"beta": 1.0}, learnable=["beta"])
    if _learnable_kind() is None:
        with pytest.raises(UserOpError, match="learnable parameters"):
            make()
        return []
    spec = make()
    assert [w.name for w in spec.learnable] == ["beta"] and not spec.params
    return [spec]


def test_api_package_matches_mpmath(tmp_path):
    swish = symgrad.activation("swish_b", "x * sigmoid(beta * x)",
                               params={"beta": {"default": 1.0, "min": 0.0}})
    huber = symgrad.loss("pseudo_huber_b", "delta**2 * (sqrt(1 + ((x - t) / delta)**2) - 1)",
                         params={"delta": {"default": 1.0, "min": 0.0, "strict": True}})
    learnable = learnable_ops()
    ops = [swish, huber, *learnable]
    result = symgrad.generate(ops, package="userops_api_kernels", out=tmp_path)
    assert set(result.status.values()) == {"new"}
    assert {"__init__.py", "_runtime.py", "test_kernels.py", *(f"{s.name}.py" for s in ops)} \
        <= set(result.changed)
    K = result.load()
    assert K.OPS == {s.name: s.family for s in ops}
    check_activation(K, "swish_b", SWISH, {"beta": 1.7})
    check_loss(K, "pseudo_huber_b", PSEUDO_HUBER, {"delta": 1.75})
    if learnable:
        check_activation(K, "swish_learn_b", SWISH, {"beta": 1.7}, learnable=["beta"])
    # The package is standalone: it imports NumPy, Numba, the standard library and itself.
    for path in result.path.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert names <= {"math", "numbers", "numpy", "numba"}, (path.name, names)
    # Its own self-test (values from mpmath, written at generation) passes.
    selftest = __import__("userops_api_kernels.test_kernels", fromlist=["x"])
    selftest.test_activations()
    selftest.test_losses()
    selftest.test_learnable()
    selftest.test_bad_input_is_refused()
    assert len(selftest.LEARNABLE) == 2 * len(learnable)
    # Regenerating the same ops changes nothing, and --check style use reports no diff.
    again = symgrad.generate(ops, package="userops_api_kernels", out=tmp_path)
    assert again.changed == []
    assert symgrad.generate(ops, package="userops_api_kernels", out=tmp_path,
                            check=True).diff == ""


def test_spec_file_package_matches_mpmath(tmp_path):
    from symgrad.cli import main

    spec = tmp_path / "my_ops.toml"
    spec.write_text(textwrap.dedent("""
        package = "userops_file_kernels"

        [activations.mish_like]
        formula = "x * tanh(softplus(beta * x))"
        params = { beta = 1.0 }

        [activations]
        penalized_tanh_f = "tanh(x) if x > 0 else 0.25 * tanh(x)"

        [losses]
        log_cosh_f = "(x - t) + softplus(-2 * (x - t)) - log(2)"
    """))
    out = tmp_path / "build"
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--quiet"]) == 0
    assert main(["generate", "--spec", str(spec), "--out", str(out), "--check"]) == 0
    from symgrad.userops import import_package

    K = import_package(out, "userops_file_kernels")
    check_activation(K, "mish_like", X * sp.tanh(softplus(BETA * X)), {"beta": 0.8})
    check_activation(K, "penalized_tanh_f",
                     sp.Piecewise((sp.tanh(X), X > 0), (sp.tanh(X) / 4, True)), {})
    check_loss(K, "log_cosh_f", (X - T) + softplus(-2 * (X - T)) - sp.log(2), {})
    assert "userops_file_kernels" in sys.modules


@pytest.mark.parametrize(("make", "name"), [
    (lambda: symgrad.activation("p_dtype", "x * dtype", params={"dtype": 2.0}), "dtype"),
    (lambda: symgrad.activation("p_kernel", "x * kernel", params={"kernel": 2.0}), "kernel"),
    (lambda: symgrad.loss("p_code", "(x - t)**2 * code", params={"code": 2.0}), "code"),
    (lambda: symgrad.activation("p_memo", "x * memo", params={"memo": 2.0}), "memo"),
])
def test_parameter_names_that_clash_with_generated_code(make, name, tmp_path):
    with pytest.raises(UserOpError, match=f"parameter name '{name}'|compile.*{name}"):
        symgrad.generate([make()], package="clash_kernels", out=tmp_path)
    assert not (tmp_path / "clash_kernels").exists()


def test_builtin_parameter_names_do_not_clash_with_their_generated_code():
    from symgrad.render import DEFAULT_OUT, DEFAULT_PACKAGE
    from symgrad.userops import check_generated_names

    for spec in REGISTRY:
        path = DEFAULT_OUT / DEFAULT_PACKAGE / f"{spec.name}.py"
        check_generated_names(spec, path.read_text())
