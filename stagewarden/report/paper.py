"""The paper-reproduction page of a report: the result file of ``benchmarks/paper_reproduction.py``
(its table, and its figure when it lies beside the file), checked field by field."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

from stagewarden.report import rst
from stagewarden.report.errors import ReportError
from stagewarden.report.pages import Context

FORMAT = "stagewarden.paper_reproduction"
FIGURE = "paper_reproduction.png"
_ROW_NUMBERS = ("final_loss", "final_loss_sd", "steps_reached", "detections", "recomputed_steps", "wall_seconds")


@dataclasses.dataclass(frozen=True)
class PaperReproduction:
    """A read result file.

    Attributes:
        path: the JSON file.
        steps: steps per run.
        seeds: seeds per configuration.
        command: the command that wrote it.
        rows: one row per configuration (see the benchmark's ``aggregate``).
        figure: the figure beside the file, if there is one.
    """

    path: Path
    steps: int
    seeds: int
    command: str
    rows: list[dict[str, Any]]
    figure: Path | None


def read_paper(path: str | Path) -> PaperReproduction:
    """Read and check a result file of ``benchmarks/paper_reproduction.py``.

    Raises:
        ReportError: it cannot be read or is not such a file.
    """
    where = Path(path)
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"--paper {where}: cannot read it as JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != 1:
        raise ReportError(f"--paper {where}: not a result file of benchmarks/paper_reproduction.py (format {FORMAT})")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ReportError(f"--paper {where}: it has no rows")
    for row in rows:
        ok = isinstance(row, dict) and isinstance(row.get("setting"), str)
        ok = ok and all(isinstance(row.get(k), int | float) for k in _ROW_NUMBERS)
        if not ok:
            raise ReportError(f"--paper {where}: a row is malformed: {str(row)[:200]}")
    steps, seeds = data.get("steps"), data.get("seeds")
    if type(steps) is not int or type(seeds) is not int:
        raise ReportError(f"--paper {where}: steps and seeds must be integers")
    figure = where.parent / FIGURE
    return PaperReproduction(
        where, steps, seeds, str(data.get("command", "")), rows, figure if figure.is_file() else None
    )


def paper_page(ctx: Context, paper: PaperReproduction) -> str:
    """The benchmark's table and figure, with what was run."""
    out = [
        rst.heading("Paper reproduction", "="),
        f"From {rst.literal(paper.path)}, written by "
        f"{rst.literal(paper.command or 'benchmarks/paper_reproduction.py')}: "
        f"{paper.steps} steps per run, {paper.seeds} seed(s) per configuration, a malicious stage 1 of 4. "
        "Final loss is the mean over seeds of each run's last loss; a run that stopped counts with the loss "
        "it reached. Skipped or restarted steps are the steps a response recomputed.",
        "",
    ]
    if paper.figure is not None:
        shutil.copyfile(paper.figure, ctx.folder / FIGURE)
        out += [rst.image(FIGURE, "mean loss against step and against training time, per configuration"), ""]
    rows = []
    for row in paper.rows:
        final = float(row["final_loss"])
        vs = row.get("vs_clean_percent")
        rows.append(
            [
                rst.literal(row["setting"]),
                rst.text(f"{row.get('completed', '?')} / {row.get('seeds', '?')}"),
                rst.text(f"{float(row['steps_reached']):.0f}"),
                rst.text("-" if math.isnan(final) else f"{final:.3f} ({float(row['final_loss_sd']):.3f})"),
                rst.text("-" if not isinstance(vs, int | float) or math.isnan(vs) else f"{vs:+.1f}%"),
                rst.text(f"{float(row['detections']):.1f}"),
                rst.text(f"{float(row['recomputed_steps']):.1f}"),
                rst.text(_optional(row.get("computations"), ".1f")),
                rst.text(f"{float(row['wall_seconds']):.0f}"),
            ]
        )
    header = ["configuration", "completed", "steps", "final loss (sd)", "vs clean", "detections", "recomputed"]
    out += [rst.table([*header, "computations", "wall s"], rows), ""]
    return "\n".join(out)


def _optional(value: object, spec: str) -> str:
    """A number a result file may lack (files written before it was recorded): ``-`` then."""
    return format(float(value), spec) if isinstance(value, int | float) and not isinstance(value, bool) else "-"
