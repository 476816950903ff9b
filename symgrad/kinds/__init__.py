"""Spec kinds: how each *shape* of op is derived and which template renders it.

A kind bundles a spec class, its derivation and its template context. Adding a new shape of op
(optimizers, dropout, ops with learnable parameters...) is a new module here that calls
``register_kind``; nothing else in the pipeline changes, and no kind knows an op by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from symgrad.spec import OpSpec


def default_exports(spec: OpSpec) -> list[str]:
    return [f"{spec.name}_forward", f"{spec.name}_backward", f"{spec.name}_forward_backward"]


@dataclass(frozen=True)
class Kind:
    spec_type: type[OpSpec]
    derive: Callable  # spec -> derivation (a frozen dataclass with .steps and .proofs)
    template: str  # file name in templates/<backend>/
    context: Callable  # derivation -> dict for the template
    exports: Callable[[OpSpec], list[str]] = field(default=default_exports)
    # spec -> the options a caller can set, e.g. "dim=-1" (for `list`); None: read them off the
    # generated wrapper.
    signature: Callable[[OpSpec], str] | None = None

    @property
    def name(self) -> str:
        return self.spec_type.kind


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    if kind.name in KINDS:
        raise ValueError(f"spec kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def kind_of(spec: OpSpec) -> Kind:
    try:
        return KINDS[spec.kind]
    except KeyError:
        raise ValueError(f"op {spec.name!r}: no kind {spec.kind!r} is registered") from None


# The built-in kinds register themselves on import.
from symgrad.kinds import (  # noqa: E402, F401
    class_index_loss,
    elementwise,
    elementwise_loss,
    rowwise,
)
