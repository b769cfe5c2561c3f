"""Traces and holds verdicts on large specs, as people read them: malicious workers that act are
listed and idle ones counted; a verdict whose assumptions could not be isolated lists none."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from stagewarden.prover import GuaranteeResult
from stagewarden.prover.verdict import AssumptionRef
from stagewarden.render import acting_malicious, guarantee_block, listed_assumptions, trace_lines

NOT_ISOLATED = "the verdict is proven, but the assumptions it rests on could not be isolated within the effort limit"


def _trace(acting: int, idle: int) -> dict[str, Any]:
    malicious = [
        {"worker": f"{s}:0", "role": "tamperer", "capabilities": ["tamper_activations"]} for s in range(acting)
    ]
    malicious += [{"worker": f"{s}:1", "role": "idle", "capabilities": ["tamper_activations"]} for s in range(idle)]
    states = [
        {"step": 0, "microbatch": 0, "worker": m["worker"], "action": "tamper_activations", "unit": "forward",
         "detection_probability": "0", "checks": []}
        for m in malicious[:acting]
    ]  # fmt: skip
    return {"malicious": malicious, "states": states}


def _render(result: GuaranteeResult) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(guarantee_block(result))
    return console.export_text()


def test_idle_malicious_workers_are_counted_not_listed() -> None:
    """Of 25 malicious workers, the one that acts is named and the 24 idle ones are a count."""
    lines = trace_lines(_trace(1, 24))
    assert lines[0] == "malicious: 0:0 (tamperer); 24 more malicious workers are idle"
    assert not any("(idle)" in line for line in lines)
    assert acting_malicious(_trace(1, 24))[1] == 24


def test_trace_without_idle_workers_reads_as_before() -> None:
    """A trace whose malicious workers all act lists them all, with no count."""
    assert trace_lines(_trace(2, 0))[0] == "malicious: 0:0 (tamperer), 1:0 (tamperer)"
    assert trace_lines(_trace(0, 1))[0] == "malicious: 1 malicious worker is idle"


def test_holds_without_isolated_assumptions_lists_none() -> None:
    """A holds verdict that says its assumptions could not be isolated does not go on to list one."""
    response = AssumptionRef("response.eject", "the response includes eject", "big.yaml:30")
    result = GuaranteeResult(
        "damage", "bounded_damage", "holds", "holds: ...", assumptions=[response], notes=[NOT_ISOLATED]
    )
    assert listed_assumptions(result) == []
    text = _render(result)
    assert "could not be isolated" in text
    assert "rests on:" not in text and "big.yaml:30" not in text


def test_holds_with_its_assumptions_lists_them() -> None:
    """An isolated proof lists its assumptions under 'rests on'."""
    ref = AssumptionRef("adversary.max_malicious", "at most 1 malicious worker", "demo.yaml:19")
    result = GuaranteeResult("integrity", "detection", "holds", "holds: ...", assumptions=[ref])
    text = _render(result)
    assert "rests on:" in text and "demo.yaml:19  at most 1 malicious worker" in text
