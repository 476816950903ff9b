"""Helpers the kinds share to turn derivations into template context (printed Numba code)."""

from __future__ import annotations

import sympy as sp

from symgrad.printer import print_block
from symgrad.spec import OpSpec


def sstr(expr: sp.Expr) -> str:
    return sp.sstr(expr)


def param_context(spec: OpSpec) -> list[dict]:
    out = []
    for p in spec.numeric_params:
        out.append({"name": p.name, "default_repr": repr(p.default), "doc": p.doc or p.name,
                    "minimum": repr(p.minimum), "maximum": repr(p.maximum),
                    "strict": repr(p.strict)})
    return out


def indent(lines: list[str], by: int = 8) -> str:
    return "\n".join(" " * by + line.lstrip() if line.strip() else "" for line in lines)


def block(outputs: dict[str, sp.Expr], dt: str) -> tuple[list[str], int]:
    lines, ops = print_block(outputs, dt, indent=0)
    return lines, ops


def needs_nan_guard(*exprs: sp.Expr | None) -> bool:
    """Branches on a nan compare false and would hide it; smooth formulas propagate it."""
    return any(e is not None and e.has(sp.Piecewise, sp.Max, sp.Min) for e in exprs)
