"""User-facing errors.

Every mistake a user can make (a bad spec, a missing file, a wrong artifact, an infeasible budget)
raises a subclass of :class:`EqtoolsError`. The CLI catches these once, prints the message as one
paragraph and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "EqtoolsError",
    "InfeasibleError",
    "ModelError",
    "NumericError",
    "ResourceError",
    "SpecError",
    "out_of_memory_advice",
    "refused_write",
    "unusable_path",
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


class NumericError(EqtoolsError):
    """A computation produced NaN or infinity (a diverging training run); nothing was kept from it."""


class ResourceError(EqtoolsError):
    """The machine ran out of a resource (memory) for the settings given."""


_WRITE_REFUSED = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                  errno.EFBIG: "File too large"}


def refused_write(exc: BaseException) -> str | None:
    """The reason when ``exc`` (or an exception it was raised from) is the machine refusing a write for
    lack of room (a full disk, a quota, a file-size limit), else None.

    Libraries wrap that OSError in their own types (torch's InductorError writing its compile cache,
    safetensors' SafetensorError), so their text is read too.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_REFUSED:
            where = f" (writing {current.filename})" if current.filename else ""
            return _WRITE_REFUSED[current.errno] + where
        text = str(current)
        for code, reason in _WRITE_REFUSED.items():
            if reason in text or f"[Errno {code}]" in text or f"os error {code}" in text:
                return reason
        current = current.__cause__ or current.__context__
    return None


def unusable_path(exc: BaseException) -> str | None:
    """What is wrong when ``exc`` is the operating system refusing a path the user gave as such (a name
    too long for the file system, a loop of symbolic links), else None.

    Every command checks its paths with ``Path.exists`` and the like, which raise these rather than
    answering, so they are recognised once, at the command boundary.
    """
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return (f"the path {exc.filename!r} cannot be used: a name in it is longer than the file system allows "
                "(usually 255 bytes per name); give a shorter path")
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return f"the path {exc.filename!r} cannot be used: its symbolic links form a loop; give a path without one"
    if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop from "):  # pathlib.resolve before 3.13
        return f"the path {str(exc)[len('Symlink loop from '):]} cannot be used: its symbolic links form a loop; " \
               "give a path without one"
    return None


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


@contextlib.contextmanager
def out_of_memory_advice(what: str, setting: str, value: int) -> Iterator[None]:
    """Turn an allocation failure into advice naming the setting to lower, instead of a crash dump."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        text = str(exc).lower()
        if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
                or any(marker in text for marker in _OOM_MARKERS)):
            raise
        smaller = max(1, value // 2)
        first_line = (str(exc).splitlines() or [""])[0][:160]
        cause = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        raise ResourceError(
            f"ran out of memory while {what} with {setting} = {value} ({cause}); lower it, e.g. "
            f"--set {setting}={smaller}, or run on a machine with more memory"
        ) from None
