"""The runtime-overhead benchmark's arithmetic: side-by-side ratios from alternating rounds, the
sweep's table rows, the verdicts against the targets, and the figure."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

#: Throughput targets, as the lowest acceptable ratio of a setting against no security.
RATIO_TARGETS = {"receipts": 0.98, "spot_check": 0.93}
#: No-security stagewarden against PyTorch's Schedule1F1B on the same job.
PYTORCH_TARGET = 1.0
#: The added security CPU may be at most this many times the idle-priced limit.
CPU_LIMIT_FACTOR = 1.5


def round_order(keys: list[str], round_index: int) -> list[str]:
    """The order of ``keys`` in round ``round_index``: as given in even rounds, reversed in odd
    ones, so that no setting always runs right after the same one."""
    return list(keys) if round_index % 2 == 0 else list(reversed(keys))


def paired_ratios(
    runs: dict[str, list[dict[str, Any]]], key: str, base: str, field: str = "tokens_per_second"
) -> list[float]:
    """Round by round, ``runs[key][r][field] / runs[base][r][field]`` (runs made side by side)."""
    return [a[field] / b[field] for a, b in zip(runs[key], runs[base], strict=True)]


def paired_differences(runs: dict[str, list[dict[str, Any]]], key: str, base: str, field: str) -> list[float] | None:
    """Round by round, ``runs[key][r][field] - runs[base][r][field]``; ``None`` if a value is missing."""
    pairs = list(zip(runs[key], runs[base], strict=True))
    if any(a.get(field) is None or b.get(field) is None for a, b in pairs):
        return None
    return [a[field] - b[field] for a, b in pairs]


def ratio_summary(ratios: list[float]) -> dict[str, Any]:
    """Median and slowest (smallest) of per-round ratios."""
    return {"median": statistics.median(ratios), "slowest": min(ratios), "rounds": ratios}


def verdict(value: float | None, minimum: float | None = None, maximum: float | None = None) -> str:
    """``meets``, ``misses`` or ``-`` (no target, or nothing measured)."""
    if value is None or (minimum is None and maximum is None):
        return "-"
    ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    return "meets" if ok else "misses"


def sweep_row(point: dict[str, Any], key: str, limit_ms: float) -> dict[str, Any]:
    """One security setting of one sweep point, against the no-security runs of the same rounds.

    ``point["runs"]`` maps each setting to its runs (one per round); ``limit_ms`` is the idle-priced
    CPU the setting must add a step (:mod:`overhead_limit`).
    """
    runs = point["runs"]
    ratios = ratio_summary(paired_ratios(runs, key, "none"))
    added = paired_differences(runs, key, "none", "cpu_seconds_per_step")
    added_ms = None if added is None else 1000 * statistics.median(added)
    factor = None if added_ms is None or limit_ms <= 0 else added_ms / limit_ms
    return {
        "setting": key,
        "ratio": ratios,
        "ratio_verdict": verdict(ratios["median"], minimum=RATIO_TARGETS.get(key)) if point["targets"] else "-",
        "added_cpu_ms_per_step": added_ms,
        "limit_ms_per_step": limit_ms,
        "added_over_limit": factor,
        "cpu_verdict": verdict(factor, maximum=CPU_LIMIT_FACTOR),
    }


def slowest(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sweep row with the smallest single-round ratio (the slowest configuration seen)."""
    return min(rows, key=lambda r: r["ratio"]["slowest"], default=None)


def plot(sweep: list[dict[str, Any]], path: Path, note: str) -> None:
    """Ratio against no security over the sweep: width and micro-batch size (left), stages (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    styles = {"receipts": ("o", "tab:blue", "receipts only"), "spot_check": ("s", "tab:red", "spot check p=0.05")}
    for axis, group, x_field in ((left, "width", "n_embd"), (right, "stages", "stages")):
        points = [p for p in sweep if p["group"] == group]
        for key, (marker, colour, label) in styles.items():
            for batch, dash in zip(sorted({p["job"]["batch_size"] for p in points}), ("-", "--", ":"), strict=False):
                chosen = [p for p in points if p["job"]["batch_size"] == batch]
                if not chosen:
                    continue
                xs = [p["job"][x_field] for p in chosen]
                rows = [next(r for r in p["rows"] if r["setting"] == key) for p in chosen]
                medians = [r["ratio"]["median"] for r in rows]
                lows = [r["ratio"]["median"] - r["ratio"]["slowest"] for r in rows]
                axis.errorbar(
                    xs,
                    medians,
                    yerr=[lows, [0.0] * len(lows)],
                    marker=marker,
                    color=colour,
                    linestyle=dash,
                    capsize=3,
                    label=f"{label}, B={batch}",
                )
        for key, target in RATIO_TARGETS.items():
            axis.axhline(target, color=styles[key][1], linewidth=0.8, linestyle=":")
        axis.set_xscale("log", base=2)
        ticks = sorted({p["job"][x_field] for p in points})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
    left.set_xlabel("model width C (4 stages, 4 layers, M=4)")
    right.set_xlabel("stages S (16 layers, C=128, B=8, M=4)")
    left.set_ylabel("throughput / no security (median; bar: slowest round)")
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7, loc="lower left")
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
