"""symgrad: neural-network math written once in SymPy, derived, emitted as Numba kernels.

The catalog lives in ``symgrad.ops`` (one spec per op), derivations in ``symgrad.derive``, the
Numba printer in ``symgrad.printer`` and the templates in ``templates/``. The generated kernels are
the separate package ``symgrad_kernels`` (NumPy + Numba only).

Your own ops, as formulas (``import symgrad`` stays cheap: these load on first use)::

    import symgrad
    swish = symgrad.activation("swish_beta", "x * sigmoid(beta * x)", params={"beta": 1.0})
    cauchy = symgrad.loss("cauchy", "log(1 + (x - t)**2)")
    K = symgrad.generate([swish, cauchy], package="my_kernels", out="build").load()
"""

from __future__ import annotations

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "activation": "symgrad.userops",
    "loss": "symgrad.userops",
    "generate": "symgrad.userops",
    "Generated": "symgrad.userops",
    "UserOpError": "symgrad.userops",
    "load_spec_file": "symgrad.specfile",
    "parse_formula": "symgrad.specfile",
    "FormulaError": "symgrad.specfile",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'symgrad' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
