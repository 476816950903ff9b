"""Specs + derivations -> Python source of the generated package, through Jinja templates.

Each kind (``symgrad/kinds/``) names its template in ``templates/<backend>/`` and builds its
context; this module only drives them, so it knows no op and no kind by name. Writing the files
is ``symgrad/output.py``'s job.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import sympy as sp

from symgrad import __version__
from symgrad.derive import derive
from symgrad.functions import LIBRARY
from symgrad.kinds import kind_of
from symgrad.printer import DTYPES, VECTOR_FUNCTIONS, helper_name, print_expr
from symgrad.spec import REGISTRY, OpSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_ROOT = REPO_ROOT / "templates"
DEFAULT_OUT = REPO_ROOT / "generated"
DEFAULT_PACKAGE = "symgrad_kernels"

# Below this many elements the serial loop runs, sparing the parallel region's fixed cost
# (~2.5 us to wake and join the threads on 2 cores, milliseconds when another process holds a
# core). Measured crossovers, float32/float64 forward: relu ~1e5/5e4, tanh and gelu ~1e4. One
# value between them costs at most ~2 us per call (relu at 32768) or ~1.5x (tanh at 1e4-3e4);
# a per-op value would also have to differ per kernel of an op (tanh's backward from y is as
# cheap as relu), so it is not worth a second knob yet.
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


def render_op(spec: OpSpec, env: jinja2.Environment | None = None,
              math_digest: str = "") -> str:
    """One op's module. ``math_digest`` fingerprints the helper modules its kernels inline."""
    env = env or environment()
    kind = kind_of(spec)
    template, ctx = kind.template, kind.context(derive(spec))
    return env.get_template(template).render(
        spec=spec, dtypes=DTYPES, version=__version__, template=template,
        spec_source=_spec_source(spec), math_digest=math_digest, **ctx)


def helper_digest(files: dict[str, str]) -> str:
    """A fingerprint of _functions.py and _vecmath.py.

    Kernels inline these helpers, and Numba's cache only watches a kernel's own file: printing
    the fingerprint into every op module makes a change in the helpers invalidate the cache.
    """
    text = files["_functions.py"] + files["_vecmath.py"]
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def vecmath_names(backend: Backend = CPU) -> frozenset[str]:
    """The functions the backend's vecmath.py exports (its ``__all__``), read without importing
    it: rendering must not need Numba."""
    tree = ast.parse((backend.template_dir / "vecmath.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


def render_functions(env: jinja2.Environment, backend: Backend = CPU) -> str:
    functions = []
    z = sp.Symbol("z", real=True)
    in_vecmath = vecmath_names(backend)
    for fn in LIBRARY:
        stable = fn.stable(z)
        helpers = {dt: helper_name(fn, dt) for dt in DTYPES}
        # A hand-written vectorizable version (one exp, no branches) beats the printed stable
        # form; the stable form stays the symbolic truth the kernels are tested against.
        from_vecmath = all(h in in_vecmath for h in helpers.values())
        functions.append({
            "helper": helpers,
            "vecmath": from_vecmath,
            "body": None if from_vecmath else
            {dt: print_expr(stable, dt, helper_module="") for dt in DTYPES},
            "doc": (inspect.getdoc(fn) or fn.__name__).splitlines()[0],
            "stable_text": sp.sstr(stable),
        })
    vector = [helper_name(name, dt) for name in VECTOR_FUNCTIONS for dt in DTYPES]
    return env.get_template("_functions.py.j2").render(
        functions=functions, vector=vector, dtypes=DTYPES, version=__version__,
        template="_functions.py.j2", spec=None)


def render_vecmath(env: jinja2.Environment, backend: Backend = CPU) -> str:
    """The vectorizable math module, copied verbatim under the generated-file header."""
    header = env.get_template("_header.j2").render(
        version=__version__, template="vecmath.py", spec=None)
    return header + (backend.template_dir / "vecmath.py").read_text(encoding="utf-8")


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
    files["_vecmath.py"] = render_vecmath(env)
    digest = helper_digest(files)
    for spec in specs:
        if progress:
            progress(spec.name, "derive + render")
        files[f"{spec.name}.py"] = render_op(spec, env, digest)
    files["__init__.py"] = render_index(env, package, specs)
    return files


def render_index(env: jinja2.Environment, package: str,
                 specs: Iterable[OpSpec] | None = None) -> str:
    """The package's __init__: every op's public functions (each kind says which)."""
    ops = [{"name": s.name, "family": s.family, "exports": kind_of(s).exports(s)}
           for s in (all_specs() if specs is None else specs)]
    return env.get_template("__init__.py.j2").render(
        template="__init__.py.j2", package=package, ops=ops, version=__version__, spec=None)


def all_specs() -> list[OpSpec]:
    import symgrad.ops  # noqa: F401  (registers the catalog)

    return list(REGISTRY)


__all__ = ["CPU", "Backend", "all_specs", "environment", "render_op", "render_package"]
