"""Specs + derivations -> Python source of the generated package, through Jinja templates.

Each kind has one context builder here and one template in ``templates/<backend>/``; neither knows
any op by name. Writing is atomic: the whole package is rendered into a temporary folder next to
the target, then swapped in, so a failure midway leaves the previous package as it was.
"""

from __future__ import annotations

import difflib
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import sympy as sp

from symgrad import __version__
from symgrad.derive import A as A_SYM
from symgrad.derive import (
    ClassIndexLossDerivation,
    ElementwiseDerivation,
    ElementwiseLossDerivation,
    RowwiseDerivation,
    derive,
)
from symgrad.derive import E as E_SYM
from symgrad.derive import G as G_SYM
from symgrad.derive import S as S_SYM
from symgrad.functions import LIBRARY, LibraryFunction, canonical_library
from symgrad.printer import DTYPES, helper_name, print_block, print_expr
from symgrad.spec import LSE, REGISTRY, XT, OpSpec, X, Y

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_ROOT = REPO_ROOT / "templates"
DEFAULT_OUT = REPO_ROOT / "generated"
DEFAULT_PACKAGE = "symgrad_kernels"

# Below this many elements the serial loop runs, sparing thread start-up. Provisional: a
# measurement on 2 cores showed parallel already winning at 1e3 elements for tanh but not for
# cheap ops; tuning it per op belongs to the CPU-speed work (scripts/bench.py).
PARALLEL_MIN_SIZE = 32768


@dataclass(frozen=True)
class Backend:
    name: str
    template_dir: Path


CPU = Backend("cpu", TEMPLATE_ROOT / "cpu")


def environment(backend: Backend = CPU) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(backend.template_dir)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _spec_source(spec: OpSpec) -> str:
    """Where the spec was written, for the generated file's header."""
    return REGISTRY.source_of(spec.name) if spec.name in REGISTRY else "a user spec"


def _text(expr: sp.Expr) -> str:
    return sp.sstr(expr)


def _param_context(spec: OpSpec) -> list[dict]:
    out = []
    for p in spec.numeric_params:
        out.append({"name": p.name, "default_repr": repr(p.default), "doc": p.doc or p.name,
                    "minimum": repr(p.minimum), "maximum": repr(p.maximum),
                    "strict": repr(p.strict)})
    return out


def _indent(lines: list[str], by: int = 8) -> str:
    return "\n".join(" " * by + line.lstrip() if line.strip() else "" for line in lines)


def _block(outputs: dict[str, sp.Expr], dt: str) -> tuple[list[str], int]:
    lines, ops = print_block(outputs, dt, indent=0)
    return lines, ops


def _needs_nan_guard(*exprs: sp.Expr | None) -> bool:
    """Branches on a nan compare false and would hide it; smooth formulas propagate it."""
    return any(e is not None and e.has(sp.Piecewise, sp.Max, sp.Min) for e in exprs)


def _elementwise_context(d: ElementwiseDerivation) -> dict:
    guard = _needs_nan_guard(d.forward, d.grad_x)
    body: dict[str, dict[str, str] | None] = {
        "forward": {}, "backward_x": {}, "forward_backward": {},
        "backward_y": {} if d.grad_y is not None else None}
    ops: dict[str, int] = {}
    for dt in DTYPES:
        fwd, ops["forward"] = _block({"y": d.forward}, dt)
        lines = ["x = xs[i]", f"# forward: {ops['forward']} ops", *fwd]
        if guard:
            lines.append("y = x if x != x else y  # nan in, nan out")
        body["forward"][dt] = _indent(lines + ["out[i] = y"])

        bx, ops["backward_x"] = _block({"gx": G_SYM * d.grad_x}, dt)
        lines = ["x = xs[i]", "g = gs[i]", f"# backward from x: {ops['backward_x']} ops", *bx]
        if guard:
            lines.append("gx = x if x != x else gx")
        body["backward_x"][dt] = _indent(lines + ["out[i] = gx"])

        if d.grad_y is not None:
            by, ops["backward_y"] = _block({"gx": G_SYM * d.grad_y}, dt)
            lines = ["y = ys[i]", "g = gs[i]", f"# backward from y: {ops['backward_y']} ops", *by]
            if guard:
                lines.append("gx = y if y != y else gx")
            body["backward_y"][dt] = _indent(lines + ["out[i] = gx"])
        # Fused: x is at hand, so the x-form derivative (never less accurate than the output
        # form, e.g. elu's y + alpha cancels for x << 0), sharing subexpressions with forward.
        fb, n_fb = _block({"y": d.forward, "gx": G_SYM * d.grad_x}, dt)
        lines = ["x = xs[i]", "g = gs[i]", f"# fused: {n_fb} ops", *fb]
        if guard:
            lines += ["y = x if x != x else y", "gx = x if x != x else gx"]
        body["forward_backward"][dt] = _indent(lines + ["out_y[i] = y", "out_g[i] = gx"])

    text = {"forward": _text(d.forward), "grad_x": _text(d.grad_x),
            "grad_y": _text(d.grad_y) if d.grad_y is not None else "",
            "output_note": d.output_form_note}
    return {"body": body, "text": text, "params": _param_context(d.spec)}


def _rowwise_context(d: RowwiseDerivation) -> dict:
    sign = d.spec.input_sign
    exprs: dict[str, dict[str, str]] = {k: {} for k in ("y_from_e", "y_shifted", "left", "vjp",
                                                          "sign")}
    # Factored, so that softmax prints y*(g + a) rather than g*y + y*a (less cancellation).
    vjp = sp.factor(G_SYM * d.jac_diag + d.jac_right * A_SYM)
    for dt in DTYPES:
        exprs["sign"][dt] = print_expr(sp.Integer(sign), dt)
        if d.forward_from_e is not None:
            exprs["y_from_e"][dt] = print_expr(d.forward_from_e, dt)
        exprs["y_shifted"][dt] = print_expr(d.forward_shifted, dt)
        exprs["left"][dt] = print_expr(d.jac_left, dt)
        exprs["vjp"][dt] = print_expr(vjp, dt)
    text = {
        "forward": _text(d.forward), "lse": f"L = log(sum_j exp({'' if sign == 1 else '-'}x_j))",
        "vjp": f"grad_k = g_k*({_text(d.jac_diag.subs(Y, sp.Symbol('y_k')))}) + "
               f"({_text(d.jac_right.subs(Y, sp.Symbol('y_k')))})*sum_i g_i*"
               f"({_text(d.jac_left.subs(Y, sp.Symbol('y_i')))})",
    }
    return {"e": exprs, "text": text, "uses_e": d.forward_from_e is not None,
            "default_dim": d.spec.default_dim}


def _elementwise_loss_context(d: ElementwiseLossDerivation) -> dict:
    spec = d.spec
    grad = canonical_library(d.grad) if d.grad.has(LibraryFunction) else d.grad
    grad = sp.factor(grad) if grad.has(LibraryFunction) else grad
    body = {"loss": {}, "grad": {}, "both": {}}
    ops = {}
    for dt in DTYPES:
        lines, ops["loss"] = _block({"l": d.loss}, dt)
        body["loss"][dt] = _indent([f"# loss: {ops['loss']} ops", *lines], 8)
        lines, ops["grad"] = _block({"dl": grad}, dt)
        body["grad"][dt] = _indent([f"# gradient: {ops['grad']} ops", *lines], 8)
        lines, ops["both"] = _block({"l": d.loss, "dl": grad}, dt)
        body["both"][dt] = _indent([f"# loss and gradient: {ops['both']} ops", *lines], 8)
    tensor = [{"name": p.name, "doc": p.doc or p.name, "default": repr(p.default)}
              for p in spec.tensor_params]
    reduction = spec.param("reduction")
    text = {"loss": _text(d.loss), "grad": _text(grad)}
    return {"body": body, "tensor": tensor, "text": text,
            "reduction_default": repr(reduction.default), "params": _param_context(spec)}


def _class_index_loss_context(d: ClassIndexLossDerivation) -> dict:
    exprs: dict[str, dict[str, str]] = {"loss": {}, "a": {}, "b": {}}
    for dt in DTYPES:
        exprs["loss"][dt] = print_expr(d.loss, dt)
        exprs["a"][dt] = print_expr(d.coeff_target, dt)
        exprs["b"][dt] = print_expr(d.coeff_softmax, dt)
    reduction = d.spec.param("reduction")
    text = {"loss": _text(d.loss.subs({LSE: sp.Symbol("logsumexp(x)")})),
            "grad": f"({_text(d.coeff_target)})*onehot(t) + ({_text(d.coeff_softmax)})*softmax(x)"}
    return {"e": exprs, "text": text, "reduction_default": repr(reduction.default),
            "params": _param_context(d.spec)}


_CONTEXT: dict[type, tuple[str, Callable[..., dict]]] = {
    ElementwiseDerivation: ("elementwise.py.j2", _elementwise_context),
    RowwiseDerivation: ("rowwise.py.j2", _rowwise_context),
    ElementwiseLossDerivation: ("elementwise_loss.py.j2", _elementwise_loss_context),
    ClassIndexLossDerivation: ("class_index_loss.py.j2", _class_index_loss_context),
}


def render_op(spec: OpSpec, env: jinja2.Environment | None = None) -> str:
    env = env or environment()
    d = derive(spec)
    template, build = _CONTEXT[type(d)]
    ctx = build(d)
    return env.get_template(template).render(
        spec=spec, dtypes=DTYPES, version=__version__, template=template,
        spec_source=_spec_source(spec), **ctx)


def render_functions(env: jinja2.Environment) -> str:
    functions = []
    z = sp.Symbol("z", real=True)
    for fn in LIBRARY:
        stable = fn.stable(z)
        functions.append({
            "helper": {dt: helper_name(fn, dt) for dt in DTYPES},
            "body": {dt: print_expr(stable, dt) for dt in DTYPES},
            "doc": (inspect.getdoc(fn) or fn.__name__).splitlines()[0],
            "stable_text": sp.sstr(stable),
        })
    return env.get_template("_functions.py.j2").render(
        functions=functions, dtypes=DTYPES, version=__version__, template="_functions.py.j2",
        spec=None)


def render_package(specs: Iterable[OpSpec], package: str = DEFAULT_PACKAGE,
                   progress: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Every file of the package: relative path -> source."""
    env = environment()
    specs = list(specs)
    files: dict[str, str] = {}
    common = {"version": __version__, "spec": None, "dtypes": DTYPES}
    files["_runtime.py"] = env.get_template("_runtime.py.j2").render(
        template="_runtime.py.j2", parallel_min_size=PARALLEL_MIN_SIZE, **common)
    files["_functions.py"] = render_functions(env)
    for spec in specs:
        if progress:
            progress(spec.name, "derive + render")
        files[f"{spec.name}.py"] = render_op(spec, env)
    files["__init__.py"] = env.get_template("__init__.py.j2").render(
        template="__init__.py.j2", package=package, ops=specs, **common)
    return files


class GenerateError(RuntimeError):
    pass


def write_package(files: dict[str, str], out_dir: Path, package: str) -> list[str]:
    """Atomically replace ``out_dir/package`` with ``files``; return the names that changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / package
    old = read_package(target)
    changed = sorted(set(files) ^ set(old) | {k for k in files if old.get(k) != files[k]})
    staging = Path(tempfile.mkdtemp(prefix=f".{package}-new-", dir=out_dir))
    try:
        for rel, text in files.items():
            (staging / rel).write_text(text, encoding="utf-8")
        # Keep Numba's on-disk cache of unchanged modules.
        cache = target / "__pycache__"
        if cache.is_dir():
            shutil.copytree(cache, staging / "__pycache__")
        backup = out_dir / f".{package}-old"
        if backup.exists():
            shutil.rmtree(backup)
        if target.exists():
            os.replace(target, backup)
        os.replace(staging, target)
        if backup.exists():
            shutil.rmtree(backup)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return changed


def read_package(target: Path) -> dict[str, str]:
    if not target.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(target.glob("*.py"))}


def diff_package(files: dict[str, str], target: Path) -> str:
    """Unified diff from what is on disk to what would be generated ('' when up to date)."""
    old = read_package(target)
    chunks = []
    for rel in sorted(set(files) | set(old)):
        a, b = old.get(rel, ""), files.get(rel, "")
        if a != b:
            chunks.extend(difflib.unified_diff(
                a.splitlines(keepends=True), b.splitlines(keepends=True),
                fromfile=f"{target.name}/{rel} (on disk)",
                tofile=f"{target.name}/{rel} (generated)"))
    return "".join(chunks)


def all_specs() -> list[OpSpec]:
    import symgrad.ops  # noqa: F401  (registers the catalog)

    return list(REGISTRY)


__all__ = ["CPU", "Backend", "GenerateError", "diff_package", "render_op", "render_package",
           "write_package", "all_specs", "E_SYM", "S_SYM", "XT", "X"]
