"""Op specs: the single source of truth for every op.

A spec says *what* an op computes, as a SymPy expression over canonical symbols, plus its
parameters; it never says how to differentiate or print it. Specs are frozen and validated on
construction; errors name the op, the field and the fix. Everything downstream (derive, printer,
render, tests) reads specs through the registry and knows ops only by their ``kind``.
"""

from __future__ import annotations

import keyword
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import sympy as sp

from symgrad.functions import ALLOWED_FUNCTIONS

_ROOT = Path(__file__).resolve().parent.parent

# Canonical symbols. Specs build their expressions from these so that derive/printer find them.
X = sp.Symbol("x", real=True)  # the input element (logit for losses)
T = sp.Symbol("t", real=True)  # the target element of an elementwise loss
Y = sp.Symbol("y", real=True)  # the saved output element
LSE = sp.Symbol("L", real=True)  # log-sum-exp of the row, for rowwise ops and class-index losses
XT = sp.Symbol("x_t", real=True)  # the logit of the target class, for class-index losses

ParamValue = float | int | bool | str | None

REDUCTIONS = ("none", "mean", "sum")
FAMILIES = ("activation", "loss", "optimizer", "dropout")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the templates use for arrays, loop variables and kernel locals.
RESERVED_NAMES = frozenset({
    "x", "y", "t", "g", "gx", "e", "s", "m", "n", "i", "j", "k", "L", "x_t", "out", "out_y",
    "out_g", "xs", "ys", "gs", "ts", "input", "target", "grad_output", "dim", "fn", "params",
    "dtype", "memo", "np", "math", "njit", "prange",
})


class SpecError(ValueError):
    """A spec is malformed. The message names the op, the field and how to fix it."""


def _fail(op: str, field_name: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"op {op!r}, field {field_name!r}: {problem}. Fix: {fix}.")


@dataclass(frozen=True)
class Param:
    """A scalar hyper-parameter passed to the kernel by keyword, as in torch.nn.functional.

    ``minimum``/``maximum`` bound the values the generated wrapper accepts; ``strict`` makes the
    bounds exclusive. ``choices`` turns the parameter into a string option.
    """

    name: str
    default: ParamValue
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    strict: bool = False
    choices: tuple[str, ...] = ()
    integer: bool = False

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, real=True)

    @property
    def is_option(self) -> bool:
        """A string or None-able option (not a symbol in formulas)."""
        return bool(self.choices)

    def check(self, op: str) -> None:
        if not isinstance(self.name, str) or not _IDENT.match(self.name):
            raise _fail(op, "params", f"parameter name {self.name!r} is not an identifier",
                        "use letters, digits and underscores, not starting with a digit")
        if keyword.iskeyword(self.name) or self.name.startswith("_"):
            raise _fail(op, "params", f"parameter name {self.name!r} is a Python keyword or "
                        "starts with an underscore", "rename it, e.g. with a trailing underscore")
        if self.choices:
            if self.default not in self.choices:
                raise _fail(op, f"params.{self.name}.default",
                            f"{self.default!r} is not one of {self.choices}",
                            "make the default one of the choices")
            return
        if isinstance(self.default, bool) or not isinstance(self.default, int | float):
            raise _fail(op, f"params.{self.name}.default",
                        f"default {self.default!r} is not a number",
                        "give every numeric parameter a numeric default")
        if not math.isfinite(float(self.default)):
            raise _fail(op, f"params.{self.name}.default", "default is not finite",
                        "give a finite default")
        try:
            self.validate(op, self.default)
        except ValueError as exc:
            raise _fail(op, f"params.{self.name}.default", str(exc),
                        "choose a default inside the declared bounds") from None

    def validate(self, op: str, value: ParamValue) -> None:
        """Raise ValueError if ``value`` is outside the declared domain (used by tests)."""
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"{op}: {self.name} must be one of {self.choices}, got {value!r}")
            return
        v = float(value)  # type: ignore[arg-type]
        if self.minimum is not None and (v <= self.minimum if self.strict else v < self.minimum):
            raise ValueError(f"{op}: {self.name} must be {'>' if self.strict else '>='} "
                             f"{self.minimum}, got {value!r}")
        if self.maximum is not None and (v >= self.maximum if self.strict else v > self.maximum):
            raise ValueError(f"{op}: {self.name} must be {'<' if self.strict else '<='} "
                             f"{self.maximum}, got {value!r}")


@dataclass(frozen=True)
class TensorParam:
    """An optional array operand broadcast against the loss (e.g. ``weight``, ``pos_weight``).

    When the caller passes None the formula sees ``default`` instead.
    """

    name: str
    default: float = 1.0
    doc: str = ""

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, real=True)


@dataclass(frozen=True)
class TorchRef:
    """Where the op lives in PyTorch, for the parity tests and the docs."""

    function: str  # dotted path, e.g. "torch.nn.functional.softmax"
    # Parameters of ours that torch spells differently or lacks: name -> torch name (or None).
    rename: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class OpSpec:
    """Fields every op has. Subclasses add the formula in the shape their ``kind`` needs."""

    name: str
    family: str  # one of FAMILIES
    summary: str
    params: tuple[Param, ...] = ()
    torch: TorchRef | None = None
    latex_name: str = ""
    # (condition over the parameters, message as torch words it): checked by the wrapper.
    constraints: tuple[tuple[sp.Basic, str], ...] = ()
    # Stability rewrites beyond the default chain (symgrad/rewrite.py, e.g. its OPT_IN ones),
    # applied to the kernel forms; the derivation proves the result equal all the same.
    rewrites: tuple[str, ...] = ()

    kind: ClassVar[str] = ""
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _IDENT.match(self.name):
            raise _fail(str(self.name), "name", "not a Python identifier",
                        "use lower_snake_case letters, digits and underscores")
        if keyword.iskeyword(self.name):
            raise _fail(self.name, "name", "is a Python keyword", "pick another name")
        if self.family not in FAMILIES:
            raise _fail(self.name, "family", f"unknown family {self.family!r}",
                        f"use one of {FAMILIES}")
        if not self.summary:
            raise _fail(self.name, "summary", "is empty", "describe the op in one line")
        seen: set[str] = set()
        for p in self.params:
            p.check(self.name)
            if p.name in seen:
                raise _fail(self.name, "params", f"parameter {p.name!r} is declared twice",
                            "declare each parameter once")
            if p.name in RESERVED_NAMES:
                raise _fail(self.name, "params", f"parameter name {p.name!r} is reserved",
                            "rename it")
            seen.add(p.name)
        names = {p.symbol for p in self.params}
        for condition, _ in self.constraints:
            if not condition.free_symbols <= names | self.allowed_symbols():
                raise _fail(self.name, "constraints", f"{condition} uses unknown symbols",
                            "write constraints over the op's parameters")
        self._check_rewrites()
        self._check_formulas()

    def _check_rewrites(self) -> None:
        from symgrad.rewrite import REWRITES  # here: the rewrites import the library functions

        if isinstance(self.rewrites, str) or not all(isinstance(r, str) for r in self.rewrites):
            raise _fail(self.name, "rewrites", f"{self.rewrites!r} is not a list of names",
                        "give a tuple of rewrite names, e.g. ('branch_exp_guard',)")
        object.__setattr__(self, "rewrites", tuple(self.rewrites))  # hashable, like the rest
        for name in self.rewrites:
            if name not in REWRITES:
                raise _fail(self.name, "rewrites", f"unknown rewrite {name!r}",
                            f"use one of {', '.join(REWRITES)}")

    # -- helpers for subclasses ------------------------------------------------------------------
    @property
    def numeric_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.is_option)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def formulas(self) -> dict[str, sp.Expr]:
        raise NotImplementedError

    def allowed_symbols(self) -> set[sp.Symbol]:
        return set(self.formula_symbols) | {p.symbol for p in self.numeric_params}

    def _check_formulas(self) -> None:
        allowed = self.allowed_symbols()
        for field_name, expr in self.formulas().items():
            if not isinstance(expr, sp.Expr):
                raise _fail(self.name, field_name, f"{expr!r} is not a SymPy expression",
                            "build it from symgrad.spec symbols and SymPy functions")
            unknown = expr.free_symbols - allowed
            if unknown:
                names = ", ".join(sorted(str(s) for s in unknown))
                raise _fail(self.name, field_name, f"unknown symbol(s) {names}",
                            f"use only {sorted(str(s) for s in allowed)} or declare a Param")
            bad = sorted({str(f.func) for f in expr.atoms(sp.Function)
                          if f.func not in ALLOWED_FUNCTIONS})
            if bad:
                raise _fail(self.name, field_name, f"unsupported function(s) {', '.join(bad)}",
                            f"use only {', '.join(sorted(map(str, ALLOWED_FUNCTIONS)))}")


@dataclass(frozen=True)
class Elementwise(OpSpec):
    """y = f(x) applied to every element. ``forward`` is an expression in X and the params."""

    forward: sp.Expr = sp.S.Zero

    kind: ClassVar[str] = "elementwise"
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset({X})

    def formulas(self) -> dict[str, sp.Expr]:
        return {"forward": self.forward}


@dataclass(frozen=True)
class LogSumExpRowwise(OpSpec):
    """y_i = F(x_i, L) along ``dim``, with L = log Σ_j exp(input_sign · x_j) over the same row.

    The softmax family: softmax is F = exp(x - L), log_softmax F = x - L, softmin
    F = exp(-x - L) with input_sign = -1.
    """

    forward: sp.Expr = sp.S.Zero
    input_sign: int = 1
    default_dim: int = -1

    kind: ClassVar[str] = "rowwise"
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset({X, LSE})

    def __post_init__(self) -> None:
        if self.input_sign not in (1, -1):
            raise _fail(self.name, "input_sign", f"{self.input_sign!r} is not ±1", "use 1 or -1")
        super().__post_init__()

    def formulas(self) -> dict[str, sp.Expr]:
        return {"forward": self.forward}


@dataclass(frozen=True)
class ElementwiseLoss(OpSpec):
    """ℓ_i = loss(x_i, t_i) elementwise, then reduced by ``reduction`` (none | mean | sum)."""

    loss: sp.Expr = sp.S.Zero
    tensor_params: tuple[TensorParam, ...] = ()

    kind: ClassVar[str] = "elementwise_loss"
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset({X, T})

    def allowed_symbols(self) -> set[sp.Symbol]:
        return super().allowed_symbols() | {p.symbol for p in self.tensor_params}

    def formulas(self) -> dict[str, sp.Expr]:
        return {"loss": self.loss}


@dataclass(frozen=True)
class ClassIndexLoss(OpSpec):
    """Per row over the class dim (1, or 0 for 1-D input): ℓ = Σ_c w_c t'_c · loss(x_c, L), with
    L = log Σ_c exp(x_c), class ``weight`` w and t' the one-hot of an integer target, optionally
    smoothed, t' = (1 - ε)·t + ε/C, by the parameter named ``smoothing_param``. With
    ``probability_targets`` a float target of the input's shape is t itself (chosen by shape, as
    torch's cross_entropy does). ``loss`` is written in XT (the logit of class c) and LSE.
    'mean' divides by the summed weight of the non-ignored targets (torch's nll_loss rule), or by
    the number of rows for probability targets.
    """

    loss: sp.Expr = sp.S.Zero
    smoothing_param: str | None = None
    probability_targets: bool = False

    kind: ClassVar[str] = "class_index_loss"
    formula_symbols: ClassVar[frozenset[sp.Symbol]] = frozenset({XT, LSE})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.smoothing_param is not None and self.smoothing_param not in {
                p.name for p in self.numeric_params}:
            raise _fail(self.name, "smoothing_param", f"{self.smoothing_param!r} is not a "
                        "numeric parameter", "declare it, e.g. Param('label_smoothing', 0.0)")

    def formulas(self) -> dict[str, sp.Expr]:
        return {"loss": self.loss}


def reduction_param(default: str = "mean") -> Param:
    return Param("reduction", default, "how to reduce the per-element losses", choices=REDUCTIONS)


class Registry:
    """Ops by name. Registering a second op under a taken name is an error, not an override."""

    def __init__(self) -> None:
        self._ops: dict[str, OpSpec] = {}
        self._sources: dict[str, str] = {}

    def register(self, spec: OpSpec, source: str | None = None) -> OpSpec:
        if not isinstance(spec, OpSpec):
            raise TypeError(f"expected an OpSpec, got {type(spec).__name__}")
        if spec.name in self._ops:
            raise SpecError(f"op {spec.name!r} is already registered; pick another name")
        if source is None:
            path = Path(sys._getframe(1).f_code.co_filename)
            source = path.relative_to(_ROOT).as_posix() if path.is_relative_to(_ROOT) else path.name
        self._ops[spec.name] = spec
        self._sources[spec.name] = source
        return spec

    def source_of(self, name: str) -> str:
        """The file that registered ``name`` (for generated headers and `show`)."""
        return self._sources[name]

    def __getitem__(self, name: str) -> OpSpec:
        try:
            return self._ops[name]
        except KeyError:
            close = [n for n in self._ops if n.startswith(name[:3])] if name else []
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown op {name!r}.{hint} See `python -m symgrad list`.") from None

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def __iter__(self) -> Iterator[OpSpec]:
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def names(self) -> list[str]:
        return list(self._ops)


REGISTRY = Registry()
register = REGISTRY.register

__all__ = [
    "LSE", "REDUCTIONS", "REGISTRY", "T", "X", "XT", "Y", "ClassIndexLoss", "Elementwise",
    "ElementwiseLoss", "LogSumExpRowwise", "OpSpec", "Param", "Registry", "SpecError",
    "TensorParam", "TorchRef", "reduction_param", "register",
]
