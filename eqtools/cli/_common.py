"""What every subcommand shares: the error boundary, JSON output, progress display.

Nothing here imports torch; commands import it inside their function bodies so that
``eqtools --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from eqtools.device import DEVICE_HELP
from eqtools.errors import EqtoolsError, refused_write, unusable_path

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2

# every stage that runs the model takes the same --device (resolved by eqtools.device.resolve_device)
DeviceOption = Annotated[str, typer.Option("--device", metavar="DEVICE", help=DEVICE_HELP)]


def debug_enabled() -> bool:
    """``--debug`` (which sets EQTOOLS_DEBUG for this process and its workers) or the variable itself."""
    return os.environ.get("EQTOOLS_DEBUG", "") not in ("", "0")


def choices(values: Any) -> str:
    """The metavar of an option that takes one of ``values``: ``<a|b|c>``, as typer shows an enum's.

    For options whose command checks the value itself (with its own one-paragraph error naming the
    allowed values), so help shows the choices without typer's generic refusal taking over.
    """
    return "<" + "|".join(values) + ">"


def print_error(message: str) -> None:
    width = 100
    text = textwrap.fill(message, width=width, initial_indent="error: ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)
    if sys.stderr.isatty():
        text = f"\x1b[31m{text}\x1b[0m"
    print(text, file=sys.stderr)


def handle_errors(fn: F) -> F:
    """Turn :class:`EqtoolsError` into one paragraph on stderr and exit status 2.

    With ``--debug`` the traceback is printed first; the status stays 2, so a script sees the same
    outcome whether or not someone was debugging it.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if "force" in kwargs:  # a writing command: its --force decides whether an artifact may be replaced
                from eqtools.artifacts import replace_policy

                with replace_policy(bool(kwargs["force"])):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        except EqtoolsError as exc:
            _exit_user_error(str(exc))
        except Exception as exc:
            # the operating system refusing a path the user gave, or a write refused for lack of room outside an
            # artifact's own write (which reports it with the path): a scratch file, torch.compile's cache
            message = unusable_path(exc) or _refused_write_message(exc)
            if message is None:
                raise
            _exit_user_error(message)

    return wrapper  # type: ignore[return-value]


def _exit_user_error(message: str) -> NoReturn:
    """Inside an ``except`` block: the traceback with --debug, then the one paragraph, then status 2."""
    if debug_enabled():
        import traceback

        traceback.print_exc(file=sys.stderr)
    print_error(message)
    raise typer.Exit(EXIT_USER_ERROR) from None


def _refused_write_message(exc: Exception) -> str | None:
    """The paragraph for a write the machine refused for lack of room, else None."""
    reason = refused_write(exc)
    if reason is None:
        return None
    import tempfile

    # TMPDIR as given: gettempdir() skips a full one for the next writable candidate
    scratch = os.environ.get("TMPDIR") or tempfile.gettempdir()
    first = (str(exc).splitlines() or [""])[0][:200]
    wrapped = "" if isinstance(exc, OSError) else f" ({type(exc).__name__}: {first})"  # a library's own error
    return (
        f"the machine refused a write: {reason}{wrapped}. No artifact was written or "
        f"changed (each is written whole, as the last step). Free space, or raise the limit, where the command "
        f"writes: the output directory, the temporary directory {scratch} (set TMPDIR to move "
        "it) and torch.compile's cache there (`sample` and `train` skip it with --no-compile), then run the command again"
    )


FORCE_HELP = ("Replace an existing artifact at the output path (atomically: a complete artifact stays there "
              "throughout). Without it the command refuses before computing anything. A path that is not an "
              "eqtools artifact is never replaced.")


def echo(message: str, quiet: bool = False) -> None:
    """Human-readable progress notes go to stderr, so stdout stays clean for --json."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str), flush=True)


def emit_artifact(artifact: Any, **extra: Any) -> None:
    """The --json answer of every command that writes an artifact: one shape to script against.

    ``path``, ``kind`` and ``metrics`` (the manifest's) always; command-specific keys after them.
    """
    emit_json({"path": str(artifact.path), "kind": artifact.kind, "metrics": artifact.metrics, **extra})


@contextmanager
def progress(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar on a terminal, plain periodic lines otherwise.

    Yields ``advance(n=1, **fields)``; ``fields`` are shown after the bar (losses, rates).
    """
    if not enabled:
        yield lambda n=1, **fields: None
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: Any) -> None:
                info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
                bar.update(task, advance=n, info=info)

            yield advance
        return
    import time

    state = {"done": 0, "last": 0.0}
    start = time.monotonic()

    def advance_plain(n: int = 1, **fields: Any) -> None:
        state["done"] += n
        now = time.monotonic()
        finished = total is not None and state["done"] >= total
        if now - state["last"] >= 10.0 or finished:
            state["last"] = now
            info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
            of = f"/{total}" if total is not None else ""
            eta = ""
            if total is not None and 0 < state["done"] < total and "ETA" not in fields:  # sample gives its own
                eta = f"  ETA {(now - start) * (total - state['done']) / state['done']:.0f}s"
            print(f"{description}: {state['done']}{of}  {now - start:.0f}s{eta}  {info}".rstrip(), file=sys.stderr, flush=True)

    yield advance_plain


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
