"""What every ``stagewarden`` command shares: exit codes, consoles, the bad-input exception, and the
command group that turns Ctrl-C and file-system errors into one line and an exit code."""

from __future__ import annotations

import errno
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_BAD_INPUT = 2
EXIT_UNKNOWN = 3
#: Interrupted by Ctrl-C (SIGINT): 128 + the signal number, as shells report it.
EXIT_INTERRUPTED = 130


def make_console(err: bool = False) -> Console:
    """A console without syntax highlighting that wraps softly (so output can be piped)."""
    return Console(stderr=err, highlight=False, soft_wrap=True)


class BadInput(click.ClickException):
    """Bad input named by the user: printed without a traceback, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        make_console(err=True).print(f"[bold red]error:[/] {escape(self.message)}", markup=True)


class Interrupted(click.ClickException):
    """Ctrl-C (SIGINT) stopped the command: one line on standard error, exit code 130."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted (Ctrl-C)")

    def show(self, file: Any = None) -> None:
        # The blank line ends the terminal's ``^C`` echo.
        click.echo("", err=True)
        make_console(err=True).print(f"[bold red]error:[/] {escape(self.message)}", markup=True)


def os_error_message(exc: OSError) -> str:
    """One line for a file-system error: the path (or paths) and what is wrong with it."""
    path = exc.filename if exc.filename is not None else None
    reason = (exc.strerror or str(exc)).rstrip(".")
    if path is None:
        return f"file system error: {reason}"
    where = f"{path} -> {exc.filename2}" if exc.filename2 is not None else str(path)
    if isinstance(exc, FileNotFoundError):
        return f"{where}: no such file or directory"
    if isinstance(exc, IsADirectoryError):
        return f"{where}: is a directory, not a file"
    if isinstance(exc, NotADirectoryError):
        return f"{where}: not a directory (a part of the path is a file)"
    if isinstance(exc, PermissionError):
        return f"{where}: permission denied"
    if isinstance(exc, FileExistsError):
        return f"{where}: already exists"
    return f"{where}: {reason[:1].lower()}{reason[1:]}"


class CommandGroup(click.Group):
    """A click group whose commands never end in a traceback for Ctrl-C or a file-system error.

    Ctrl-C (KeyboardInterrupt) becomes :class:`Interrupted` (exit code 130) instead of click's
    ``Aborted!`` (exit code 1); an :class:`OSError` that a command did not handle itself becomes
    :class:`BadInput` naming the path (exit code 2). A broken pipe is left to click. Commands write
    their outputs atomically (:mod:`stagewarden.attest.files`), so neither leaves a partial file.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            raise BadInput(os_error_message(exc)) from None
