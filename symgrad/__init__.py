"""symgrad: neural-network math written once in SymPy, derived, emitted as Numba kernels.

The catalog lives in ``symgrad.ops`` (one spec per op), derivations in ``symgrad.derive``, the
Numba printer in ``symgrad.printer`` and the templates in ``templates/``. The generated kernels are
the separate package ``symgrad_kernels`` (NumPy + Numba only).
"""

__version__ = "0.1.0"
