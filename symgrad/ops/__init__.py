"""The built-in catalog: importing this package registers every op in ``symgrad.spec.REGISTRY``."""

from symgrad.ops import activations, losses  # noqa: F401  (imported for their registrations)
