"""Command line: `python -m symgrad generate | list | show | latex | accuracy | bench | plot`.

Every subcommand takes ``--spec FILE`` to work on a user's spec file instead of the built-in
catalog. Errors go to stderr as one line naming the fix; exit code 2 for usage errors (a bad
argument, an unknown op, a bad spec file), 1 for failures. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from symgrad import __version__

USAGE_ERROR, FAILURE = 2, 1


class UsageError(Exception):
    """The command line asks for something that cannot be; the message names the fix."""


# -- which ops: the catalog, or a spec file -----------------------------------------------------

@dataclass(frozen=True)
class OpSet:
    specs: list  # OpSpec, in order
    package: str
    out: Path
    user: bool  # from a spec file: a standalone package of these ops only

    @property
    def package_dir(self) -> Path:
        return self.out / self.package

    def pick(self, names: list[str] | None) -> list:
        if not names:
            return self.specs
        by_name = {s.name: s for s in self.specs}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            where = "in the spec file" if self.user else "`python -m symgrad list` shows all"
            close = sorted({n for u in unknown for n in by_name if n[:3] == u[:3]})
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"unknown op(s) {', '.join(unknown)} ({where}){hint}")
        return [by_name[n] for n in names]


def _op_set(args: argparse.Namespace) -> OpSet:
    spec_file = getattr(args, "spec", None)
    out_arg = getattr(args, "out", None)
    package_arg = getattr(args, "package", None)
    if spec_file:
        from symgrad.specfile import load_spec_file, package_from_path
        from symgrad.userops import check_package_name

        if not Path(spec_file).is_file():
            raise UsageError(f"spec file {spec_file} does not exist; pass the path of a .toml "
                             "file (see examples/my_ops.toml)")
        loaded = load_spec_file(spec_file)
        package = package_arg or loaded.package or package_from_path(Path(spec_file))
        check_package_name(package)
        return OpSet(list(loaded.ops), package, Path(out_arg) if out_arg else Path("."), True)
    from symgrad.render import DEFAULT_OUT, DEFAULT_PACKAGE, all_specs

    package = package_arg or DEFAULT_PACKAGE
    if not package.isidentifier():
        raise UsageError(f"--package {package!r} is not a Python identifier")
    return OpSet(all_specs(), package, Path(out_arg) if out_arg else DEFAULT_OUT, False)


def _one_op(args: argparse.Namespace):
    ops = _op_set(args)
    (spec,) = ops.pick([args.op])
    return spec, ops


def _derive(spec, ops: OpSet):
    if ops.user:
        from symgrad.userops import derive_checked

        return derive_checked(spec)
    from symgrad.derive import derive

    return derive(spec)


# -- generate -----------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr: the op, its stage, elapsed time. Where stderr is not a
    terminal (a CI log, a pipe) only each stage's first and last step are printed, a line each."""

    def __init__(self, enabled: bool = True) -> None:
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.shown = False
        self.stage = ""

    def __call__(self, i: int, total: int, name: str, stage: str) -> None:
        if not self.enabled:
            return
        width = 24
        filled = int(width * i / max(total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {i}/{total} {name}: {stage} "
                f"({time.perf_counter() - self.start:.1f}s)")
        if self.tty:
            print("\r" + line[:100].ljust(100), end="", file=sys.stderr, flush=True)
            self.shown = True
        elif stage != self.stage or i == total:
            print(line, file=sys.stderr, flush=True)
        self.stage = stage

    def done(self) -> None:
        if self.tty and self.shown:
            print(file=sys.stderr)
            self.shown = False


def _notice(message: str) -> None:
    print(f"symgrad: {message}", file=sys.stderr, flush=True)


def _summary(target: Path, status: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for rel, state in status.items():
        groups.setdefault(state, []).append(rel)
    changed = [f"{len(groups[s])} {s} ({', '.join(groups[s])})"
               for s in ("new", "modified", "removed") if s in groups]
    same = len(groups.get("unchanged", []))
    if not changed:
        return f"{target}: up to date, nothing changed ({same} files)"
    return f"{target}: {'; '.join(changed)}; {same} unchanged"


def _render_catalog(ops: OpSet, only: list, progress: Progress) -> dict[str, str]:
    from symgrad.derive import derive
    from symgrad.output import read_package
    from symgrad.render import environment, render_index, render_package

    chosen = only or ops.specs
    for i, spec in enumerate(chosen, 1):
        progress(i, len(chosen), spec.name, "derive")
        derive(spec)
    count = {"i": 0}

    def rendering(name: str, stage: str) -> None:
        count["i"] += 1
        progress(count["i"], len(chosen), name, "render")

    files = render_package(chosen, ops.package, progress=rendering)
    if only:
        # Keep the other ops' modules as they are; the package index still lists every op.
        existing = read_package(ops.package_dir)
        rendered = {f"{s.name}.py" for s in only}
        kept = {k: v for k, v in existing.items() if k not in rendered and k not in files}
        files = {**kept, **files}
        files["__init__.py"] = render_index(environment(), ops.package, ops.specs)
    return files


def cmd_generate(args: argparse.Namespace) -> int:
    from symgrad.output import diff_package, read_package, write_package_report

    ops = _op_set(args)
    only = ops.pick(args.only) if args.only else []
    progress = Progress(enabled=not args.quiet)
    try:
        if ops.user:
            from symgrad.userops import render_user_package

            existing = read_package(ops.package_dir) if only else {}
            # --only re-renders the chosen ops and any op whose module is missing on disk.
            chosen = [s for s in ops.specs if not only or s in only
                      or f"{s.name}.py" not in existing]
            files = render_user_package(ops.specs, ops.package, progress, render=chosen)
            modules = {f"{s.name}.py" for s in ops.specs}
            files = {**{k: v for k, v in existing.items() if k in modules}, **files}
        else:
            files = _render_catalog(ops, only, progress)
    finally:
        progress.done()
    target = ops.package_dir
    if args.check:
        diff = diff_package(files, target)
        if diff:
            sys.stdout.write(diff)
            fix = "python -m symgrad generate" + (f" --spec {args.spec}" if ops.user else "")
            print(f"symgrad: {target} is stale; run `{fix}`", file=sys.stderr)
            return FAILURE
        print(f"{target}: up to date ({len(files)} files)")
        return 0
    report = write_package_report(files, ops.out, ops.package, notice=_notice)
    print(_summary(target, report.status))
    if ops.user:
        print(f"import it with the folder {ops.out} on sys.path; run its self-test with "
              f"`python -m pytest {target / 'test_kernels.py'}`")
    return 0


# -- list / show / latex ------------------------------------------------------------------------

def _generated_signature(path: Path, function: str) -> list[str] | None:
    """The parameters of ``function`` in a generated module, read without importing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            a = node.args
            out = []
            positional = [*a.posonlyargs, *a.args]
            first_default = len(positional) - len(a.defaults)
            for i, arg in enumerate(positional):
                if i >= first_default:
                    out.append(f"{arg.arg}={ast.unparse(a.defaults[i - first_default])}")
                else:
                    out.append(arg.arg)
            for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                out.append(arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}")
            return out
    return None


def _options(spec, ops: OpSet) -> str:
    """What a caller can set, e.g. ``negative_slope=0.01`` or ``dim=-1``: from the kind if it
    says, else from the generated wrapper, else from the spec's parameters."""
    from symgrad.kinds import kind_of

    signature = getattr(kind_of(spec), "signature", None)
    if callable(signature):
        return signature(spec)
    params = _generated_signature(ops.package_dir / f"{spec.name}.py", f"{spec.name}_forward")
    if params is not None:
        return ", ".join(p for p in params if "=" in p and not p.startswith("out="))
    parts = [f"{p.name}={p.default!r}" for p in spec.params]
    parts += [f"{p.name}=None" for p in getattr(spec, "tensor_params", ())]
    return ", ".join(parts)


def _family_title(family: str) -> str:
    return {"loss": "losses", "dropout": "dropout"}.get(family, family + "s")


def _source(spec, ops: OpSet) -> str:
    from symgrad.spec import REGISTRY

    return REGISTRY.source_of(spec.name) if spec.name in REGISTRY else "a user spec"


def cmd_list(args: argparse.Namespace) -> int:
    ops = _op_set(args)
    families: dict[str, list] = {}
    for s in ops.specs:
        families.setdefault(s.family, []).append(s)
    if args.json:
        data = {_family_title(f): [{
            "name": s.name, "family": s.family, "kind": s.kind, "summary": s.summary,
            "options": _options(s, ops),
            "params": [{"name": p.name, "default": p.default, "minimum": p.minimum,
                        "maximum": p.maximum, "choices": list(p.choices), "doc": p.doc}
                       for p in s.params],
            "torch": s.torch.function if s.torch else None,
        } for s in members] for f, members in families.items()}
        print(json.dumps(data, indent=2))
        return 0
    for family, members in families.items():
        print(f"{_family_title(family)}:")
        for s in members:
            print(f"  {s.name:<34} {s.kind:<18} {_options(s, ops)}")
    return 0


def _display(path: Path) -> str:
    """A path relative to the working folder when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


_NEEDS = {"y": "the saved output y (the input x also works)", "x": "the input x"}


def cmd_show(args: argparse.Namespace) -> int:
    import sympy as sp

    from symgrad.kinds import kind_of

    spec, ops = _one_op(args)
    d = _derive(spec, ops)
    print(f"{spec.name} ({spec.family}, kind {spec.kind}): {spec.summary}")
    print(f"  spec:       {args.spec if ops.user else _source(spec, ops)}")
    for name, expr in spec.formulas().items():
        print(f"  {name + ':':<11} {expr}")
    for p in spec.params:
        bounds = "".join([f", >{'' if p.strict else '='} {p.minimum}" if p.minimum is not None
                          else "", f", <{'' if p.strict else '='} {p.maximum}"
                          if p.maximum is not None else ""])
        print(f"  param:      {p.name}={p.default!r}{bounds}{': ' + p.doc if p.doc else ''}")
    print("  derivative forms the kernels evaluate:")
    for f in fields(d):
        value = getattr(d, f.name)
        if isinstance(value, sp.Basic) and f.name != "spec":
            print(f"    {f.name + ':':<16} {value}")
    note = getattr(d, "output_form_note", "")
    if note:
        print(f"    output form:     {note}")
    needs = getattr(d, "backward_needs", None)
    y_requires = getattr(d, "y_requires", None)
    if needs and y_requires:  # a conditional output form: y only where it holds
        from symgrad.kinds.elementwise import condition_text

        conds = {condition_text(c) for c in y_requires.values()}
        when = conds.pop() if len(conds) == 1 else "; ".join(
            f"{condition_text(c)} in {dt}" for dt, c in y_requires.items())
        print(f"  backward needs: the input x, or the saved output y when {when} "
              "(else backward from y alone raises ValueError naming the condition)")
    elif needs:
        print(f"  backward needs: {_NEEDS.get(needs, needs)}")
    else:
        params = _generated_signature(ops.package_dir / f"{spec.name}.py",
                                      f"{spec.name}_backward") or []
        required = [p for p in params if "=" not in p]
        print(f"  backward needs: {', '.join(required) or 'see its docstring'}")
    choice = getattr(d, "backward_choice", None)
    if needs == "y" and choice:  # the measured default per dtype
        print("  with both x and y (and in the fused kernel): " + "; ".join(
            f"{dt} uses {c.form} ({c.reason})" for dt, c in choice.items()))
    exports = kind_of(spec).exports(spec)
    print(f"  generated:  {_display(ops.package_dir / (spec.name + '.py'))}: "
          f"{', '.join(exports)}")
    extra = f" --spec {args.spec}" if ops.user else ""
    print(f"  derivation: python -m symgrad latex{extra} {spec.name}")
    return 0


def cmd_latex(args: argparse.Namespace) -> int:
    spec, ops = _one_op(args)
    d = _derive(spec, ops)
    if args.format == "json":
        print(json.dumps({
            "op": spec.name, "summary": spec.summary,
            "steps": [{"title": s.title, "latex": s.latex} for s in d.steps],
            "proofs": [{"claim": p.claim, "method": p.method} for p in d.proofs],
        }, indent=2))
        return 0
    from symgrad.latex import render_latex

    print(render_latex(spec, args.format))
    return 0


# -- accuracy / bench / plot --------------------------------------------------------------------

def cmd_accuracy(args: argparse.Namespace) -> int:
    try:
        accuracy = importlib.import_module("symgrad.accuracy")
    except ImportError:
        raise RuntimeError("symgrad.accuracy is not available in this checkout yet; "
                           "update symgrad") from None
    if not callable(getattr(accuracy, "main", None)):
        raise RuntimeError("symgrad.accuracy has no main(argv); update symgrad")
    argv = list(args.args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if getattr(args, "spec", None):
        # The sweep has to build and import the user's package itself; it says it can.
        if not getattr(accuracy, "accepts_spec_files", False):
            raise RuntimeError("accuracy sweeps of a spec file's ops are not supported by this "
                               "symgrad.accuracy yet; sweep the built-in ops without --spec")
        argv = ["--spec", args.spec, *argv]
    try:
        return int(accuracy.main(argv) or 0)
    except SystemExit as exc:  # its own argparse: --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR


def cmd_bench(args: argparse.Namespace) -> int:
    from symgrad.quickbench import NotBenchable, bench_op

    spec, ops = _one_op(args)
    if args.size <= 0 or args.repeat <= 0:
        raise UsageError("--size and --repeat must be positive")
    try:
        print(bench_op(spec, ops, size=args.size, dtype=args.dtype, repeat=args.repeat))
    except NotBenchable as exc:
        raise UsageError(f"{exc}; scripts/bench.py times the rest") from None
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plot needs matplotlib; install it with "
                         "`pip install symgrad[plot]` (or `pip install matplotlib`)") from None
    matplotlib.use("Agg")
    from symgrad.plotting import plot_op

    spec, ops = _one_op(args)
    lo, hi = args.range
    if not lo < hi:
        raise UsageError(f"--range {lo} {hi}: the first number must be below the second")
    out = Path(args.out) if args.out else Path(f"{spec.name}.png")
    plot_op(spec, _derive(spec, ops), out, lo, hi, target=args.target)
    print(f"wrote {out}")
    return 0


# -- the parser ---------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line naming the fix, and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message}; see `{self.prog} --help`")


_COMMANDS = """commands (each has --help with an example):
  generate   derive every op and (re)write the kernel package
  list       every op, grouped by family (--json for tools)
  show       one op: spec, formula, every derivative form, what backward needs
  latex      one op's derivation step by step (--format latex|markdown|json)
  accuracy   each kernel's error against mpmath, in ULPs
  bench      a quick side-by-side timing of one op: symgrad vs NumPy vs PyTorch
  plot       f and f' of one op on one figure (needs matplotlib)

examples:
  python -m symgrad generate
  python -m symgrad generate --spec examples/my_ops.toml --package my_kernels --out build
  python -m symgrad latex --spec examples/my_ops.toml swish_beta
"""


def _sub(sub, name: str, help_: str, example: str, *, spec: bool = True) -> argparse.ArgumentParser:
    # No help= here: the epilog of `--help` lists the commands, one line each.
    p = sub.add_parser(name, description=help_[0].upper() + help_[1:] + ".",
                       epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback on errors")
    if spec:
        p.add_argument("--spec", metavar="FILE",
                       help="a TOML spec file of your own ops instead of the built-in catalog")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m symgrad",
                     description="Write an op once in SymPy; get derived, proven Numba kernels.",
                     epilog=_COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"symgrad {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="one of the commands below")

    p = _sub(sub, "generate", "derive every op and (re)write the kernel package",
             "python -m symgrad generate --spec my_ops.toml --package my_kernels --out build")
    p.add_argument("--only", nargs="+", metavar="OP", help="regenerate only these ops")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 with a diff if the package is stale")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: generated/, or . with --spec)")
    p.add_argument("--package", metavar="NAME",
                   help="package name (default: symgrad_kernels, or the spec file's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = _sub(sub, "list", "every op, grouped by family, with its kind and options",
             "python -m symgrad list --json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    for name, help_, example, func in (
        ("show", "one op: spec, formula, every derivative form, what backward needs",
         "python -m symgrad show elu", cmd_show),
        ("latex", "one op's derivation step by step",
         "python -m symgrad latex sigmoid --format markdown", cmd_latex),
    ):
        p = _sub(sub, name, help_, example)
        p.add_argument("op")
        p.add_argument("--out", metavar="DIR", help=argparse.SUPPRESS)
        p.add_argument("--package", metavar="NAME", help=argparse.SUPPRESS)
        if name == "latex":
            p.add_argument("--format", choices=("latex", "markdown", "json"), default="latex")
        p.set_defaults(func=func)

    p = _sub(sub, "accuracy", "each kernel's error against mpmath, in ULPs",
             "python -m symgrad accuracy -- --help   (options go to symgrad.accuracy)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to symgrad.accuracy")
    p.set_defaults(func=cmd_accuracy)

    p = _sub(sub, "bench", "a quick side-by-side timing of one op: symgrad vs NumPy vs PyTorch",
             "python -m symgrad bench elu --size 1000000 --dtype float32")
    p.add_argument("op")
    p.add_argument("--size", type=int, default=1_000_000, help="elements (default 1e6)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeat", type=int, default=20, help="timed runs (median is shown)")
    p.add_argument("--out", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--package", metavar="NAME", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench)

    p = _sub(sub, "plot", "f and f' of one op on one figure (needs matplotlib)",
             "python -m symgrad plot elu --out elu.png")
    p.add_argument("op")
    p.add_argument("--out", metavar="FILE.png", help="image to write (default: OP.png)")
    p.add_argument("--range", nargs=2, type=float, default=(-5.0, 5.0), metavar=("LO", "HI"),
                   help="x range (default -5 5)")
    p.add_argument("--target", type=float, default=0.0, help="t for a loss l(x, t) (default 0)")
    p.set_defaults(func=cmd_plot)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    from symgrad.output import GenerateError
    from symgrad.spec import SpecError

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        debug = debug or bool(getattr(args, "debug", False))
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return USAGE_ERROR
        return args.func(args)
    except (UsageError, SpecError, GenerateError) as exc:
        if debug:
            raise
        print(f"symgrad: {_one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print("symgrad: interrupted; the previous package was left as it was", file=sys.stderr)
        return FAILURE
    except Exception as exc:  # one line, no traceback, unless --debug
        if debug:
            raise
        print(f"symgrad: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return FAILURE
