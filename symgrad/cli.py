"""Command line: `python -m symgrad generate | list | show | latex`.

Errors go to stderr as one line naming the fix; exit code 2 for usage errors, 1 for failures.
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from symgrad import __version__

USAGE_ERROR, FAILURE = 2, 1


class UsageError(Exception):
    pass


def _specs(names: list[str] | None):
    from symgrad.render import all_specs

    specs = all_specs()
    if not names:
        return specs
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(f"unknown op(s) {', '.join(unknown)}; `python -m symgrad list` shows all")
    return [by_name[n] for n in names]


def _progress(total: int):
    start = time.perf_counter()
    state = {"i": 0}
    tty = sys.stderr.isatty()

    def report(name: str, stage: str) -> None:
        state["i"] += 1
        i = state["i"]
        width = 24
        filled = int(width * i / max(total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {i}/{total} {name}: {stage} "
                f"({time.perf_counter() - start:.1f}s)")
        if tty:
            print("\r" + line.ljust(78), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr)

    def done() -> None:
        if tty:
            print(file=sys.stderr)

    return report, done


def cmd_generate(args: argparse.Namespace) -> int:
    from symgrad.output import diff_package, read_package, write_package
    from symgrad.render import (
        DEFAULT_OUT,
        DEFAULT_PACKAGE,
        environment,
        render_index,
        render_package,
    )

    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    package = args.package or DEFAULT_PACKAGE
    all_ops = _specs(None)
    only = _specs(args.only) if args.only else all_ops
    report, done = _progress(len(only))
    files = render_package(all_ops if not args.only else only, package, progress=report)
    done()
    target = out_dir / package
    if args.only:
        # Keep the other ops' modules as they are; the package index still lists every op.
        existing = read_package(target)
        rendered_ops = {f"{s.name}.py" for s in only}
        kept = {k: v for k, v in existing.items() if k not in rendered_ops and k not in files}
        files = {**kept, **files}
        files["__init__.py"] = render_index(environment(), package, all_ops)
    if args.check:
        diff = diff_package(files, target)
        if diff:
            sys.stdout.write(diff)
            print(f"symgrad: {target} is stale; run `python -m symgrad generate`",
                  file=sys.stderr)
            return FAILURE
        print(f"{target}: up to date ({len(files)} files)")
        return 0
    changed = write_package(files, out_dir, package)
    if changed:
        print(f"{target}: {len(changed)} file(s) changed: {', '.join(changed)}")
    else:
        print(f"{target}: up to date ({len(files)} files), nothing changed")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    specs = _specs(None)
    families: dict[str, list] = {}
    for s in specs:
        families.setdefault(s.family, []).append(s)
    for family, members in families.items():
        print(f"{'losses' if family == 'loss' else family + 's'}:")
        for s in members:
            params = ", ".join(f"{p.name}={p.default!r}" for p in s.params)
            extra = getattr(s, "tensor_params", ())
            if extra:
                params = ", ".join(filter(None, [params, *(f"{p.name}=None" for p in extra)]))
            if s.kind in ("rowwise",):
                params = ", ".join(filter(None, [f"dim={s.default_dim}", params]))
            if s.kind == "class_index_loss":
                params = ", ".join(filter(None, ["weight=None", "ignore_index=-100", params]))
            print(f"  {s.name:<36} {s.kind:<18} {params}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from symgrad.derive import derive
    from symgrad.spec import REGISTRY

    (spec,) = _specs([args.op])
    d = derive(spec)
    print(f"{spec.name} ({spec.family}, kind {spec.kind}): {spec.summary}")
    print(f"  spec:      {REGISTRY.source_of(spec.name)}")
    for field, expr in spec.formulas().items():
        print(f"  {field + ':':<10} {expr}")
    for name in ("grad_x", "grad_y", "grad", "jac_diag", "jac_left", "jac_right",
                 "coeff_target", "coeff_softmax"):
        value = getattr(d, name, None)
        if value is not None:
            print(f"  {name + ':':<10} {value}")
    needs = getattr(d, "backward_needs", None)
    if needs:
        meaning = {"y": "the saved output y (or the input x)", "x": "the input x"}[needs]
        print(f"  backward needs: {meaning}")
    elif spec.family == "loss":
        print("  backward needs: input and target")
    print(f"  generated: generated/symgrad_kernels/{spec.name}.py: {spec.name}_forward, "
          f"{spec.name}_backward, {spec.name}_forward_backward")
    return 0


def cmd_latex(args: argparse.Namespace) -> int:
    from symgrad.latex import render_latex

    (spec,) = _specs([args.op])
    print(render_latex(spec, args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m symgrad",
        description="Write an op once in SymPy; get derived, proven Numba kernels.")
    parser.add_argument("--version", action="version", version=f"symgrad {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("generate", help="(re)emit the kernels into generated/",
                       description="Derive every op and write the kernel package.",
                       epilog="example: python -m symgrad generate --only sigmoid softmax")
    p.add_argument("--only", nargs="+", metavar="OP", help="regenerate only these ops")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 with a diff if generated/ is stale")
    p.add_argument("--out", metavar="DIR", help="output folder (default: generated/)")
    p.add_argument("--package", metavar="NAME", help="package name (default: symgrad_kernels)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("list", help="every op with its kind and parameters",
                       epilog="example: python -m symgrad list")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="an op's spec, derivatives and what backward needs",
                       epilog="example: python -m symgrad show elu")
    p.add_argument("op")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("latex", help="the derivation of an op, step by step, as LaTeX",
                       epilog="example: python -m symgrad latex sigmoid")
    p.add_argument("op")
    p.add_argument("--format", choices=("latex", "markdown"), default="latex")
    p.set_defaults(func=cmd_latex)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_ERROR
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"symgrad: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("symgrad: interrupted; generated/ was left as it was", file=sys.stderr)
        return FAILURE
    except Exception as exc:  # one line, no traceback, unless --debug
        if args.debug:
            raise
        print(f"symgrad: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return FAILURE
