"""Starting a command under test as a user's shell would, whatever started the test run."""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """``preexec_fn`` of a command that a test interrupts with SIGINT: the default disposition.

    A shell starts a background job (``pytest ... &``) with SIGINT ignored, and a process keeps an
    ignored signal ignored across ``exec``: the command would then never see the test's Ctrl-C,
    as it never would a user's. Resetting it gives the command what an interactive shell gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
