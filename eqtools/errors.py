"""User-facing errors.

Every mistake a user can make (a bad spec, a missing file, a wrong artifact, an infeasible budget)
raises a subclass of :class:`EqtoolsError`. The CLI catches these once, prints the message as one
paragraph and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "EqtoolsError",
    "InfeasibleError",
    "ModelError",
    "SpecError",
]


class EqtoolsError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class SpecError(EqtoolsError):
    """A spec file is missing, malformed or names values outside what is allowed."""


class ConfigError(EqtoolsError):
    """A subnet config does not fit the elastic space it is applied to."""


class ArtifactError(EqtoolsError):
    """An artifact is missing, corrupted, of the wrong kind, too new or from another space."""


class DataError(EqtoolsError):
    """A dataset is missing or not in the expected layout."""


class ModelError(EqtoolsError):
    """An unknown model name or weights that do not fit the model."""


class InfeasibleError(EqtoolsError):
    """A search budget that no config in the space can meet."""
