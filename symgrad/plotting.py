"""`python -m symgrad plot OP`: f, f' and (where it exists) f' in output form, on one figure.

The curves come from the derivation's kernel forms, lambdified with NumPy: every SymPy
expression of the derivation that is a function of x alone (or of x and the target t, or of the
saved output y) is drawn, labelled with its field name and formula. Needs matplotlib (the
``plot`` extra); the CLI says how to install it when it is missing.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import sympy as sp

from symgrad.functions import elementary_form
from symgrad.spec import OpSpec, T, X, Y


def plottable_curves(spec: OpSpec, derivation, target: float = 0.0) -> list[tuple[str, object]]:
    """(label, f(xs) -> ys) for each expression of the derivation that depends on x or y only."""
    subs = {p.symbol: float(p.default) for p in spec.numeric_params}  # type: ignore[arg-type]
    subs.update({p.symbol: p.default for p in getattr(spec, "tensor_params", ())})
    subs[T] = target
    exprs = {f.name: getattr(derivation, f.name) for f in fields(derivation)
             if isinstance(getattr(derivation, f.name), sp.Expr)}
    forward_name = next(iter(exprs), None)
    if forward_name is None:
        return []
    forward = elementary_form(exprs[forward_name].subs(subs))
    if forward.free_symbols - {X}:
        return []
    f = sp.lambdify([X], forward, modules="numpy")
    curves = []
    for name, expr in exprs.items():
        e = elementary_form(expr.subs(subs))
        if not e.free_symbols <= {X, Y} or not e.free_symbols:
            continue
        g = sp.lambdify([X, Y], e, modules="numpy")
        if name == forward_name:
            label = f"f(x) = {_short(expr)}"
        elif Y in e.free_symbols:
            label = f"f'(x) from the output y = f(x) ({name}): {_short(expr)}"
        else:
            label = f"f'(x) ({name}): {_short(expr)}"
        curves.append((label, lambda xs, g=g: np.broadcast_to(g(xs, f(xs)), xs.shape)))
    return curves


def _short(expr: sp.Expr) -> str:
    text = sp.sstr(expr)
    return text if len(text) <= 60 else text[:57] + "..."


def plot_op(spec: OpSpec, derivation, out: Path, lo: float, hi: float,
            target: float = 0.0) -> None:
    import matplotlib.pyplot as plt

    curves = plottable_curves(spec, derivation, target)
    if not curves:
        raise ValueError(f"plot draws ops whose formula is a function of x alone; {spec.name}'s "
                         "depends on more (e.g. the whole row)")
    xs = np.linspace(lo, hi, 801)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, fn) in enumerate(curves):
        with np.errstate(all="ignore"):
            ys = np.asarray(fn(xs), dtype=np.float64)
        ax.plot(xs, ys, label=label, linestyle="-" if i < 2 else "--", linewidth=1.8)
    ax.axhline(0, color="0.7", linewidth=0.8)
    ax.axvline(0, color="0.7", linewidth=0.8)
    ax.set_xlabel("x" + (f"  (target t = {target:g})" if T in spec.formula_symbols else ""))
    ax.set_ylabel("f(x), f'(x)")
    params = ", ".join(f"{p.name}={p.default}" for p in spec.params)
    ax.set_title(f"{spec.name}{'(' + params + ')' if params else ''}: {spec.summary}"[:90])
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


__all__ = ["plot_op", "plottable_curves"]
