"""What every ``stagewarden`` command shares: exit codes, consoles and the bad-input exception."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_BAD_INPUT = 2
EXIT_UNKNOWN = 3


def make_console(err: bool = False) -> Console:
    """A console without syntax highlighting that wraps softly (so output can be piped)."""
    return Console(stderr=err, highlight=False, soft_wrap=True)


class BadInput(click.ClickException):
    """Bad input named by the user: printed without a traceback, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        make_console(err=True).print(f"[bold red]error:[/] {self.message}", markup=True)
