"""Pictures of the proof side of a report: the attack-trace swimlane, the topology with its
who-checks-whom graph, and the sensitivity curves. Drawn with matplotlib's object API on the Agg
canvas (no display, no global pyplot state) and saved as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from stagewarden.prover import check_graph
from stagewarden.report.sweeps import Sweep
from stagewarden.spec import Spec, parse_worker

TAMPER = "#d62728"
OTHER_ACTION = "#ff7f0e"
CATCHES = "#2ca02c"
PASSES = "#7f7f7f"
SCHEME_COLOURS = {
    "dataflow": "#000000",
    "redundant_neighbour": "#1f77b4",
    "spot_check": "#9467bd",
    "replicate": "#8c564b",
    "statistical": "#17becf",
}
_TAMPER_ACTIONS = {
    "tamper_activations",
    "tamper_gradients",
    "tamper_weights",
    "poison_data",
    "tamper",
    "silent_corruption",
    "tamper or withhold",
}


def save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` on the Agg canvas into ``path`` (PNG, no timestamp metadata)."""
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def _columns(microbatches: int, steps: list[int]) -> list[tuple[int, str]]:
    cols = []
    for t in steps:
        cols += [(t, f"F{m}") for m in range(microbatches)]
        cols += [(t, f"B{m}") for m in range(microbatches)]
        cols.append((t, "U"))
    return cols


def _cell(state: dict[str, Any]) -> tuple[int, str] | None:
    unit = state.get("unit")
    step = int(state.get("step") or 0)
    mb = state.get("microbatch")
    if unit == "forward":
        return step, f"F{mb or 0}"
    if unit == "backward":
        return step, f"B{mb or 0}"
    if unit == "update":
        return step, "U"
    return None


def swimlane(trace: dict[str, Any], spec: Spec, path: Path) -> Path:
    """The attack trace as a swimlane: one lane per worker (stages of each replica, the coordinator
    and any other worker the trace names), one column per unit of the steps the trace covers
    (forward and backward per micro-batch, then the update); tampered units and the other actions
    filled, every check drawn as an arrow from its checker, green when it catches, grey when it passes."""
    states = [s for s in trace.get("states", []) if isinstance(s, dict)]
    roles = {m["worker"]: m.get("role", "") for m in trace.get("malicious", []) if isinstance(m, dict)}
    t = spec.topology
    lanes = ["coordinator"] + [f"{s}:{r}" for r in range(t.replicas) for s in range(t.stages)]
    named = [str(s.get("worker")) for s in states if s.get("worker")] + list(roles)
    named += [str(c.get("checker")) for s in states for c in s.get("checks", []) if c.get("checker")]
    for name in named:
        for part in (p.strip() for p in name.split(",")):
            if part and part not in lanes and len(part) < 40:
                lanes.append(part)
    steps = sorted({int(s.get("step") or 0) for s in states}) or [0]
    cols = _columns(t.microbatches, steps)
    index = {c: i for i, c in enumerate(cols)}
    row = {name: i for i, name in enumerate(lanes)}
    fig = Figure(figsize=(max(6.0, 0.42 * len(cols) + 2.5), max(2.5, 0.42 * len(lanes) + 1.6)))
    ax = fig.add_subplot()
    for y in range(len(lanes)):
        for x in range(len(cols)):
            ax.add_patch(Rectangle((x + 0.05, y - 0.4), 0.9, 0.8, facecolor="#f2f2f2", edgecolor="#d0d0d0", lw=0.5))
    lane_notes: list[str] = []
    for state in states:
        workers = [p.strip() for p in str(state.get("worker", "")).split(",") if p.strip()]
        action = str(state.get("action", ""))
        colour = TAMPER if action in _TAMPER_ACTIONS else OTHER_ACTION
        cell = _cell(state)
        for worker in workers:
            if worker not in row:
                continue
            y = row[worker]
            if cell is not None and cell in index:
                x = index[cell]
                ax.add_patch(Rectangle((x + 0.05, y - 0.4), 0.9, 0.8, facecolor=colour, edgecolor="black", lw=0.8))
                label = action.replace("tamper_", "")[:11]
                if state.get("count"):
                    label += f"\nx{state['count']}"
                ax.annotate(label, (x + 0.5, y), ha="center", va="center", fontsize=6, color="white")
                for check in state.get("checks", []):
                    checker = check.get("checker")
                    if checker is None:
                        ax.annotate("no check", (x + 0.5, y - 0.45), ha="center", va="top", fontsize=7, color=PASSES)
                        continue
                    source = row.get(str(checker), row["coordinator"])
                    caught = check.get("result") == "catches"
                    colour_check = CATCHES if caught else PASSES
                    ax.annotate(
                        "",
                        xy=(x + 0.95, y),
                        xytext=(x + 0.95, source),
                        arrowprops={
                            "arrowstyle": "->",
                            "color": colour_check,
                            "lw": 1.5,
                            "ls": "-" if caught else "--",
                            "connectionstyle": "arc3,rad=-0.4",
                        },
                    )
                    ax.annotate(
                        f"{check.get('check')}: {check.get('result')} (p={check.get('probability')})",
                        (x + 1.25, (y + source) / 2),
                        fontsize=7,
                        va="center",
                        color=colour_check,
                    )
            else:
                ax.add_patch(
                    Rectangle(
                        (0.05, y - 0.4),
                        len(cols) - 0.1,
                        0.8,
                        facecolor=colour,
                        alpha=0.35,
                        edgecolor=colour,
                        hatch="//",
                    )
                )
                ax.annotate(action, (len(cols) / 2, y), ha="center", va="center", fontsize=8)
        if not any(w in row for w in workers):
            lane_notes.append(f"{action}: {state.get('detail', '')}".strip())
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xticks([i + 0.5 for i in range(len(cols))], [c[1] for c in cols], fontsize=7)
    ax.set_yticks(range(len(lanes)), [f"{n} ({roles[n]})" if roles.get(n) else n for n in lanes], fontsize=8)
    for tick, name in zip(ax.get_yticklabels(), lanes, strict=True):
        if name in roles:
            tick.set_color(TAMPER)
    ax.set_xlabel(
        "step " + ", ".join(str(s) for s in steps) + ": forward and backward units per micro-batch, then the update"
    )
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    handles = [
        Patch(color=TAMPER, label="tampered unit"),
        Patch(color=OTHER_ACTION, label="other malicious action"),
        Line2D([], [], color=CATCHES, label="check catches"),
        Line2D([], [], color=PASSES, ls="--", label="check passes"),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 0.02 * len(lane_notes)),
        ncol=4,
        fontsize=7,
        frameon=False,
    )
    if lane_notes:
        fig.text(0.01, -0.02, "\n".join(lane_notes[:6]), fontsize=7, va="top")
    ax.set_title(str(trace.get("#meta", {}).get("guarantee", "")), fontsize=9)
    return save(fig, path)


def _node_colour(spec: Spec, node: str) -> str:
    if ":" not in node:
        return "#ffe9a8"
    stage, replica = parse_worker(node)

    def covers(refs: list[int | str]) -> bool:
        for ref in refs:
            s, r = parse_worker(ref)
            if s == stage and (r is None or r == replica):
                return True
        return False

    if covers(list(spec.trust.honest)):
        return "#a6dba0"
    if covers(list(spec.trust.tee)):
        return "#9ecae1" if spec.defense.attestation and not spec.adversary.tee_compromise else "#fdd0a2"
    return "#e0e0e0"


def topology(spec: Spec, path: Path) -> Path:
    """The pipeline's slots, the data flow between them and every check edge (checker -> checked)."""
    graph = check_graph(spec)
    t = spec.topology
    pos: dict[str, tuple[float, float]] = {}
    for node, data in graph.nodes(data=True):
        if "stage" in data:
            pos[node] = (float(data["stage"]), -1.3 * float(data["replica"]))
    verifiers = [n for n in graph.nodes if n not in pos]
    for i, node in enumerate(verifiers):
        pos[node] = ((t.stages - 1) / 2 + 1.6 * (i - (len(verifiers) - 1) / 2), 1.5)
    for i in range(t.standby):
        name = f"standby:{i}"
        graph.add_node(name)
        pos[name] = (float(i), -1.3 * t.replicas)
    fig = Figure(figsize=(max(5.5, 1.3 * t.stages + 2), max(3.0, 1.3 * (t.replicas + (1 if t.standby else 0)) + 2.2)))
    ax = fig.add_subplot()
    nodes = list(graph.nodes)
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=nodes,
        ax=ax,
        node_size=900,
        node_color=[_node_colour(spec, n) if not n.startswith("standby") else "#ffffff" for n in nodes],
        edgecolors="black",
        linewidths=0.8,
    )
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8)
    schemes = sorted({d["scheme"] for _, _, d in graph.edges(data=True)})
    for scheme in schemes:
        edges = [(u, v) for u, v, d in graph.edges(data=True) if d["scheme"] == scheme]
        loops = [(u, v) for u, v in edges if u == v]
        plain = [(u, v) for u, v in edges if u != v]
        colour = SCHEME_COLOURS.get(scheme, "#333333")
        if plain:
            nx.draw_networkx_edges(
                graph,
                pos,
                edgelist=plain,
                ax=ax,
                edge_color=colour,
                node_size=900,
                arrows=True,
                arrowstyle="-|>",
                width=1.6 if scheme == "dataflow" else 1.2,
                style="solid" if scheme in ("dataflow", "redundant_neighbour") else "dashed",
                connectionstyle="arc3" if scheme == "dataflow" else "arc3,rad=0.3",
            )
        for u, _ in loops:
            x, y = pos[u]
            ax.annotate(
                "",
                xy=(x + 0.12, y + 0.2),
                xytext=(x - 0.12, y + 0.2),
                arrowprops={"arrowstyle": "->", "color": colour, "connectionstyle": "arc3,rad=-1.6"},
            )
    handles: list[Artist] = [
        Line2D(
            [],
            [],
            color=SCHEME_COLOURS.get(s, "#333333"),
            label="data flow" if s == "dataflow" else f"{s} (checker -> checked)",
        )
        for s in schemes
    ]
    handles += [
        Patch(facecolor="#a6dba0", edgecolor="black", label="honest by assumption"),
        Patch(facecolor="#9ecae1", edgecolor="black", label="attested TEE"),
        Patch(facecolor="#fdd0a2", edgecolor="black", label="TEE claim without attestation"),
        Patch(facecolor="#e0e0e0", edgecolor="black", label="corruptible"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=7, frameon=False)
    ax.set_axis_off()
    ax.margins(0.15)
    return save(fig, path)


def sensitivity(sweep: Sweep, detection_bound: float | None, damage_bound: float | None, path: Path) -> Path:
    """Two panels: the worst-case per-unit detection probability and Pr[more than K undetected]
    against the swept parameter, the spec's own value marked with a star."""
    # one panel per row, so that each is as wide as the page's column (side by side they were
    # half as wide and their labels too small to read)
    fig = Figure(figsize=(8, 7.2))
    left, right = fig.subplots(2, 1)
    log_x = sweep.parameter.startswith("spot")
    det = [(p.x, p.detection) for p in sweep.points if p.detection is not None]
    dam = [(p.x, p.damage) for p in sweep.points if p.damage is not None]
    if det:
        left.plot([x for x, _ in det], [y for _, y in det], marker="o", ms=3, color="#1f77b4")
    if detection_bound is not None:
        left.axhline(detection_bound, color="#555555", ls="--", lw=1, label=f"required {detection_bound:g}")
    left.set_ylim(-0.03, 1.05)
    left.set_ylabel("worst-case detection probability per unit")
    positive = [(x, y) for x, y in dam if y > 0]
    zeros = [x for x, y in dam if y == 0]
    floor = min([y for _, y in positive] + [damage_bound or 1.0, 1e-12]) / 10
    if positive:
        right.plot([x for x, _ in positive], [y for _, y in positive], marker="o", ms=3, color=TAMPER)
    if zeros:
        right.plot(zeros, [floor] * len(zeros), ls="none", marker="v", color=TAMPER, mfc="white", label="exactly 0")
    if damage_bound is not None and damage_bound > 0:
        right.axhline(damage_bound, color="#555555", ls="--", lw=1, label=f"allowed {damage_bound:g}")
    right.set_yscale("log")
    right.set_ylim(floor / 3, 2.0)
    right.set_ylabel(f"Pr[more than {sweep.damage_k} undetected units]")
    for ax, points in ((left, det), (right, dam)):
        spec_y = next((y for x, y in points if x == sweep.spec_x), None)
        if spec_y is not None:
            shown = spec_y if (ax is left or spec_y > 0) else floor
            ax.plot([sweep.spec_x], [shown], marker="*", ms=14, color="gold", mec="black", ls="none", label="this spec")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(sweep.parameter)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    return save(fig, path)
