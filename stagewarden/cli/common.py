"""What every ``stagewarden`` command shares: exit codes, consoles, the bad-input exceptions, the
command group that turns Ctrl-C and file-system errors into one line and an exit code, the options
several commands take, and the parsing of hex values and key files given on the command line."""

from __future__ import annotations

import difflib
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from click.decorators import FC

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_BAD_INPUT = 2
EXIT_UNKNOWN = 3
#: Interrupted by Ctrl-C (SIGINT): 128 + the signal number, as shells report it.
EXIT_INTERRUPTED = 130


#: Width given to output that is not a terminal: wide enough that no table of ours wraps, so a
#: table in a log or CI output is as wide as its content (tables shrink to their content).
UNWRAPPED_WIDTH = 4096


def make_console(err: bool = False) -> Console:
    """A console without syntax highlighting that wraps softly (so output can be piped).

    On a terminal, tables fit the terminal's width. Elsewhere (a pipe, a file, CI) they are as
    wide as their content, or ``COLUMNS`` wide where that variable is set.
    """
    stream = sys.stderr if err else sys.stdout
    width = None
    if not os.environ.get("COLUMNS") and not _is_terminal(stream):
        width = UNWRAPPED_WIDTH
    return Console(stderr=err, highlight=False, soft_wrap=True, width=width)


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def nearest_choice(value: str, choices: Sequence[str]) -> str | None:
    """The choice closest to ``value`` (a typo, or another case), or None when none is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = {c.lower(): c for c in choices}
    return lowered.get(value.lower())


class Choice(click.Choice[str]):
    """A choice-valued option whose error names the nearest choice first, as spec keys do:
    ``'revrese': did you mean 'reverse'? (choose from 'reverse', 'random', ...)``."""

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        choices = [str(c) for c in self.choices]
        nearest = nearest_choice(str(value), choices)
        if nearest is None:
            return super().get_invalid_choice_message(value, ctx)
        listed = ", ".join(repr(c) for c in choices)
        return f"{value!r}: did you mean {nearest!r}? (choose from {listed})"


class BadInput(click.ClickException):
    """Bad input named by the user: printed without a traceback, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        make_console(err=True).print(f"[bold red]error:[/] {escape(self.message)}", markup=True)


class BadSpec(BadInput):
    """A spec that does not load: one ``file:line:column: message`` line per problem, exit code 2."""

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


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


def format_option(help: str = "Output format.") -> Callable[[FC], FC]:
    """``--format text|json`` (the ``fmt`` parameter, text by default), with ``help`` in ``--help``."""
    return click.option("--format", "fmt", type=Choice(["text", "json"]), default="text", show_default=True, help=help)


#: ``--format text|json`` of the commands that print a result.
FORMAT_OPTION = format_option()
#: The optional SPEC argument of the commands that take a spec (or ``--example NAME``).
SPEC_ARGUMENT = click.argument("spec", required=False, type=click.Path(dir_okay=True))
#: ``--example NAME``: a packaged example spec in place of SPEC.
EXAMPLE_OPTION = click.option(
    "--example", metavar="NAME", help="Use a packaged example spec instead of a file (see `stagewarden examples list`)."
)
#: ``--timeout SECONDS``: the prover's wall-clock limit per guarantee.
TIMEOUT_OPTION = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Wall-clock limit per guarantee; a guarantee that runs out is reported unknown.",
)
#: ``--rlimit N``: the prover's deterministic resource limit per solver call.
RLIMIT_OPTION = click.option(
    "--rlimit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Deterministic Z3 resource limit per solver call (reproducible across machines, unlike --timeout).",
)

#: ``--policy FILE``: the appraisal policy of the attestation verifiers.
POLICY_OPTION = click.option(
    "--policy", "policy_file", type=click.Path(dir_okay=False), default=None, help="Appraisal policy (JSON or YAML)."
)
#: ``--verifier-key FILE``: the verifier's signing key for the attestation results it issues.
VERIFIER_KEY_OPTION = click.option(
    "--verifier-key",
    "verifier_key_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the verifier's Ed25519 secret key (hex seed); default: an ephemeral key.",
)


def parse_hex(value: str, size: int, what: str) -> bytes:
    """``value`` as exactly ``size`` bytes of hex; :class:`click.BadParameter` naming ``what`` otherwise."""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter(f"{what} must be hex, got {value!r}") from None
    if len(raw) != size:
        raise click.BadParameter(f"{what} must be {size} bytes ({2 * size} hex digits), got {len(raw)} bytes")
    return raw


def load_verifier_key(path: str, data: bytes) -> Any:
    """The verifier's Ed25519 signing key from a key file's bytes (a hex seed); :class:`BadInput`
    naming ``path`` when they are not one."""
    from nacl.signing import SigningKey

    text = data.decode("ascii", "replace").strip()
    try:
        return SigningKey(parse_hex(text, 32, "the verifier key file"))
    except click.BadParameter as exc:
        raise BadInput(f"{path}: {exc.message}") from None


def occupied(path: Path) -> bool:
    """Whether ``path`` holds something an output folder must not overwrite unasked: a file, or a
    folder that is not empty."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def print_rows(console: Console, rows: list[tuple[str, str]]) -> None:
    """Label-value rows, the labels padded to one width (the text form of an appraisal)."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        console.print(f"  {label.ljust(width)}  {value}", markup=False)
