"""The exception hierarchy of mtlsolve.

Every error the library raises on purpose derives from :class:`MtlsolveError`,
and each also derives from the built-in exception a caller would expect
(``ValueError`` for bad input, ``LookupError`` for an unknown name), so both
``except mtlsolve.MtlsolveError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class MtlsolveError(Exception):
    """Base class of every mtlsolve error."""


class InvalidSystemError(MtlsolveError, ValueError):
    """A gradient system has the wrong shape, dtype or a missing input."""


class NonFiniteError(InvalidSystemError):
    """A gradient, Gramian or loss holds NaN or Inf."""


class UnknownSolverError(MtlsolveError, LookupError):
    """No registered solver has the requested name."""


class InvalidConfigError(MtlsolveError, ValueError):
    """Solver keyword arguments or a config mapping are unknown or invalid."""


class UnknownStrategyError(InvalidConfigError, LookupError):
    """No registered training strategy has the requested name (also an :class:`InvalidConfigError`)."""


class PluginError(MtlsolveError):
    """A plugin failed to load or registered something invalid."""


class SolverError(MtlsolveError, RuntimeError):
    """A solver was used in a way its protocol forbids (e.g. a missing post-step call)."""


class StateError(MtlsolveError, ValueError):
    """A state given to ``load_state_dict`` does not belong to this solver or does not fit it."""


class ConvergenceWarning(UserWarning):
    """A solve did not certify its defining condition; the result is a named fallback.

    Issued once per solver instance and reason; ``result.diagnostics`` says the same for every
    step (``converged``, ``residual``, ``tolerance``, ``fallback``).
    """


class PluginWarning(UserWarning):
    """A plugin could not be loaded or clashes with another; the rest of the registry works."""
