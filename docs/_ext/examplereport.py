"""Sphinx extension: build the example security report into the HTML output (``example-report/``).

The report is made from the packaged ``demo`` spec and the two run directories recorded under
``docs/report-example/`` (see :doc:`report` for how they were made). It is built in a separate
process, so that its own Sphinx build cannot disturb this one; any failure fails the docs build.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

RUNS = ("clean", "attacked")


def _build(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    recorded = Path(app.srcdir) / "report-example"
    target = Path(app.outdir) / "example-report"
    command = [
        sys.executable,
        "-c",
        "from stagewarden.cli import main; main()",
        "report",
        "--example",
        "demo",
        "--out",
        str(target),
    ]
    for run in RUNS:
        command += ["--run", str(recorded / run)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ExtensionError(f"the example report could not be built:\n{proc.stdout}{proc.stderr}")


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the hook that builds the example report once the builder exists."""
    app.connect("builder-inited", _build)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
