"""The built-in catalog: importing this package registers every op in ``symgrad.spec.REGISTRY``."""

from symgrad.ops import activations, dropout, losses, optimizers  # noqa: F401  (registrations)
