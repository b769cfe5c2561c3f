"""Tests of defence synthesis: the defence found is proven, no cheaper candidate works, its YAML
block loads back into the spec, and when nothing in the space works the result says why."""

from __future__ import annotations

import functools
import itertools
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from stagewarden.prover import HOLDS, Limits, verify
from stagewarden.prover.defense_text import defense_yaml, spec_text_with
from stagewarden.prover.synthesis import (
    FOUND,
    GAVE_UP,
    NO_DEFENCE,
    SYNTHESIS_FORMAT_VERSION,
    SynthesisResult,
    _response_reading,
    cost_items,
    synthesize,
)
from stagewarden.spec import RESPONSES, LoadedSpec, example_text, load_example, load_spec, load_text

# -- helpers --------------------------------------------------------------------------------


def without_guarantee(text: str, gid: str) -> str:
    """The spec text without the guarantee ``gid`` (a ``  - id: gid`` item of ``guarantees``)."""
    return re.sub(rf"  - id: {re.escape(gid)}\n(    .*\n)*", "", text)


def substitute_defense(text: str, block: str) -> str:
    """The spec text with its top-level ``defense:`` block replaced by ``block``."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("defense:"))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"[A-Za-z]", lines[i])), len(lines))
    return "".join(lines[:start]) + block + "\n" + "".join(lines[end:])


def cost(loaded: LoadedSpec) -> tuple[Fraction, Fraction]:
    """(compute, memory) of a spec's defence by the overhead cost model."""
    items = cost_items(loaded)
    return sum((c for _, _, c, _ in items), Fraction(0)), sum((m for _, _, _, m in items), Fraction(0))


@functools.cache
def synthesized(example: str) -> SynthesisResult:
    """The synthesis result for a packaged example (computed once per test session)."""
    return synthesize(load_example(example))


def all_hold(loaded: LoadedSpec) -> bool:
    """Whether the prover shows every guarantee of the spec to hold."""
    return all(g.verdict == HOLDS for g in verify(loaded).guarantees)


@pytest.fixture(scope="module")
def adjacent() -> LoadedSpec:
    """Worked example 2 (two colluding adjacent stages) without its 0.25 compute bound."""
    return load_text(without_guarantee(example_text("paper-adjacent-collusion"), "cheap"), "adjacent.yaml")


@pytest.fixture(scope="module")
def adjacent_result(adjacent: LoadedSpec) -> SynthesisResult:
    """The synthesis result for :func:`adjacent`."""
    return synthesize(adjacent)


@pytest.fixture(scope="module")
def relay_result() -> SynthesisResult:
    """The synthesis result for worked example 8 (input relayed through the checked stage)."""
    return synthesized("paper-checked-worker-relay")


# -- a defence is found -----------------------------------------------------------------------


def test_adjacent_collusion_defence_makes_every_guarantee_hold(adjacent_result: SynthesisResult) -> None:
    """With two colluding stages, the synthesized defence comes with a proof that every guarantee holds."""
    result = adjacent_result
    assert result.status == FOUND and result.exit_code == 0
    assert result.report is not None and result.report.exit_code == 0
    assert [g.id for g in result.report.guarantees] == ["integrity", "no-framing", "liveness"]
    for g in result.report.guarantees:
        assert g.verdict == HOLDS
        assert g.assumptions, g.id
        assert all(a.location.startswith(f"{result.proof_file}:") for a in g.assumptions)


def test_adjacent_collusion_defence_is_the_pinned_cheapest(adjacent_result: SynthesisResult) -> None:
    """The defence for worked example 2 is receipts with a spot check of every unit by the coordinator (+1.01)."""
    assert adjacent_result.defense == {
        "receipts": True,
        "attestation": False,
        "data_commitment": False,
        "checks": [{"scheme": "spot_check", "rate": 1.0, "verifier": "coordinator"}],
        "response": ["skip_stage"],
        "checkpoint_every": 50,
    }
    assert (adjacent_result.compute, adjacent_result.memory) == (Fraction(101, 100), Fraction(0))


ALTERNATIVES: list[dict[str, Any]] = [
    {"checks": [{"scheme": "redundant_neighbour"}]},
    {"receipts": True, "checks": [{"scheme": "redundant_neighbour"}]},
    {"receipts": True, "checks": [{"scheme": "redundant_neighbour"}, {"scheme": "spot_check", "rate": 0.1}]},
    {"receipts": True, "checks": [{"scheme": "spot_check", "rate": 1.0, "verifier": "peer"}]},
    {"checks": [{"scheme": "replicate", "factor": 2}]},
    {"checks": [{"scheme": "replicate", "factor": 3, "resolve": "referee"}]},
    {"checks": [{"scheme": "redundant_neighbour"}, {"scheme": "replicate", "factor": 2, "resolve": "referee"}]},
]


@pytest.mark.parametrize(
    "alternative",
    ALTERNATIVES,
    ids=lambda a: "+".join(c["scheme"] for c in a["checks"]) + ("+receipts" if a.get("receipts") else ""),
)
def test_no_hand_picked_alternative_is_cheaper_and_valid(
    adjacent: LoadedSpec, adjacent_result: SynthesisResult, alternative: dict[str, Any]
) -> None:
    """A hand-picked defence for worked example 2 either fails some guarantee or costs at least as much."""
    defense = {"response": ["skip_stage"], **alternative}
    loaded = load_text(spec_text_with(adjacent, defense, 0), "alternative.yaml")
    assert cost(loaded) >= (adjacent_result.compute, adjacent_result.memory) or not all_hold(loaded)


def test_some_alternative_works_so_the_comparison_means_something(adjacent: LoadedSpec) -> None:
    """Full replication with a referee also makes worked example 2 hold, at twice the synthesized cost."""
    loaded = load_text(
        spec_text_with(
            adjacent,
            {"checks": [{"scheme": "replicate", "factor": 3, "resolve": "referee"}], "response": ["skip_stage"]},
            0,
        ),
        "alt.yaml",
    )
    assert all_hold(loaded)
    assert cost(loaded) == (Fraction(2), Fraction(2))


def test_checked_worker_relay_gets_receipts_or_a_cheaper_equivalent(relay_result: SynthesisResult) -> None:
    """Worked example 8's defence costs no more than adding receipts, and does not relay through the
    checked stage without them."""
    loaded = load_example("paper-checked-worker-relay")
    with_receipts = load_text(
        spec_text_with(loaded, {**loaded.spec.defense.model_dump(), "receipts": True}, 0), "receipts.yaml"
    )
    assert all_hold(with_receipts)
    result = relay_result
    assert result.status == FOUND
    assert (result.compute, result.memory) <= cost(with_receipts)
    checks = result.defense["checks"] if result.defense else []
    assert result.defense and (
        result.defense["receipts"] or all(c.get("input_via") != "checked_worker" for c in checks)
    )


def test_the_spec_own_working_defence_bounds_the_cost() -> None:
    """When the spec's own defence already works (the demo), the synthesized one costs no more."""
    loaded = load_example("demo")
    assert all_hold(loaded)
    result = synthesized("demo")
    assert result.status == FOUND
    assert (result.compute, result.memory) <= cost(loaded)


def test_cost_is_the_overhead_guarantees_figure() -> None:
    """The reported cost is what the prover's overhead guarantee computes for the defence."""
    result = synthesized("demo")
    assert result.report is not None and result.compute is not None
    figure = result.report.by_id("cheap").figure
    assert figure is not None and figure.value == pytest.approx(float(result.compute))
    assert sum(item.compute for item in result.costs) == result.compute


# -- the YAML block and the proof's source ------------------------------------------------------


@pytest.mark.parametrize("example", ["paper-checked-worker-relay", "spot-check-eject", "demo", "tee-unattested"])
def test_yaml_block_substituted_into_the_spec_loads_and_verifies(example: str) -> None:
    """The printed defense: block, pasted over the spec's own, loads and makes every guarantee hold."""
    result = synthesized(example)
    assert result.status == FOUND and result.yaml_block is not None
    assert result.standby == load_example(example).spec.topology.standby
    loaded = load_text(substitute_defense(example_text(example), result.yaml_block), f"{example}.yaml")
    assert loaded.spec.defense.model_dump() == load_text(result.spec_text or "", "x.yaml").spec.defense.model_dump()
    assert all_hold(loaded)


def test_spec_text_keeps_every_line_outside_the_defense_block(relay_result: SynthesisResult) -> None:
    """The proof's spec text is the user's text with only the defense: block replaced, so other line
    numbers still match."""
    original = example_text("paper-checked-worker-relay").splitlines()
    proof = (relay_result.spec_text or "").splitlines()
    assert relay_result.defense_lines is not None
    first, last = relay_result.defense_lines
    assert proof[first - 1] == "defense:"
    old_first = original.index("defense:")
    assert proof[: first - 1] == original[:old_first]
    assert proof[last:] == original[len(original) - (len(proof) - last) :]


def test_defense_yaml_writes_an_empty_check_list_that_loads() -> None:
    """A defence without checks is written as `checks: []` and loads back."""
    block = defense_yaml(
        {
            "receipts": False,
            "attestation": True,
            "data_commitment": False,
            "checks": [],
            "response": ["eject"],
            "checkpoint_every": 50,
        }
    )
    assert "  checks: []\n" in block
    loaded = load_text(substitute_defense(example_text("tee-attested"), block), "tee.yaml")
    assert loaded.spec.defense.checks == [] and loaded.spec.defense.attestation


def test_spec_without_a_defense_block_gets_one() -> None:
    """A spec that states no defence gets the block inserted before its guarantees."""
    text = example_text("paper-checked-worker-relay")
    text = re.sub(r"defense:\n(  .*\n)*", "", text)
    loaded = load_text(text, "bare.yaml")
    result = synthesize(loaded)
    assert result.status == FOUND and result.spec_text is not None
    assert "\ndefense:\n" in result.spec_text
    assert load_text(result.spec_text, "x.yaml").spec.defense.model_dump() == result.defense


def test_json_spec_is_written_back_as_yaml(tmp_path: Path) -> None:
    """A JSON spec's proof text is the whole document written as YAML, with the defence in it."""
    data = load_example("paper-checked-worker-relay").spec.model_dump(mode="json", exclude_defaults=True)
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(data, indent=2))
    result = synthesize(load_spec(path))
    assert result.status == FOUND and result.spec_text is not None
    assert result.proof_file == str(tmp_path / "relay.synthesized.yaml")
    assert load_text(result.spec_text, "x.yaml").spec.defense.model_dump() == result.defense


def test_standby_change_is_reported_and_applied() -> None:
    """A crash fault under a liveness guarantee needs a standby worker: the result sets topology.standby and says so."""
    text = example_text("paper-eject-no-standby").replace(
        "  collusion: true\n", "  collusion: true\n  faults:\n    crash: 1\n"
    )
    result = synthesize(load_text(text, "crash.yaml"))
    assert result.status == FOUND and result.spec_text is not None
    assert (result.standby, result.original_standby) == (1, 0)
    assert any("topology.standby" in note for note in result.notes)
    assert result.to_json()["topology"] == {"standby": 1, "was": 0}
    loaded = load_text(result.spec_text, "x.yaml")
    assert loaded.spec.topology.standby == 1
    assert all_hold(loaded)
    without = load_text(spec_text_with(loaded, result.defense or {}, 0), "none.yaml")
    assert not all_hold(without)


# -- no defence ---------------------------------------------------------------------------------


def test_impossible_overhead_bound_reports_no_defence_with_the_reason() -> None:
    """A zero compute bound with a budget that needs checks: no defence, and the bound is named with
    the cheapest sufficient cost."""
    text = example_text("paper-redundant-neighbour").replace("max_compute: 0.25", "max_compute: 0")
    assert "max_compute: 0\n" in text
    result = synthesize(load_text(text, "zero.yaml"))
    assert result.status == NO_DEFENCE and result.exit_code == 1
    assert result.candidate is None and result.report is None
    assert "'cheap'" in result.reason and "+0.833 compute" in result.reason
    by_id = {o.id: o for o in result.obstacles}
    cheap = by_id["cheap"]
    assert cheap.witness is not None and cheap.witness.compute > 0
    assert cheap.result is not None and cheap.result.verdict == "violated" and cheap.result.trace is not None
    integrity = by_id["integrity"]
    assert integrity.cheapest_alone is not None and integrity.cheapest_alone.compute == Fraction(5, 6)
    assert integrity.result is not None and integrity.result.trace is not None


def test_shipped_adjacent_collusion_exceeds_its_compute_bound() -> None:
    """Worked example 2 as shipped has no defence: everything that stops two colluding stages costs over 0.25."""
    result = synthesized("paper-adjacent-collusion")
    assert result.status == NO_DEFENCE
    assert "+1.01 compute" in result.reason


HOPELESS = """\
version: 1
name: hopeless
topology:
  stages: 3
trust:
  coordinator: untrusted
adversary:
  max_malicious: "100%"
  tee_compromise: true
  capabilities: [tamper_activations]
guarantees:
  - id: integrity
    kind: detection
"""


def test_budget_that_defeats_every_scheme_is_explained() -> None:
    """When every worker may be malicious, with no trusted coordinator or TEE, no scheme detects:
    the attack is shown under the costliest candidate."""
    result = synthesize(load_text(HOPELESS, "hopeless.yaml"))
    assert result.status == NO_DEFENCE
    assert "'integrity'" in result.reason
    [obstacle] = result.obstacles
    assert obstacle.cheapest_alone is None
    assert obstacle.witness is not None and obstacle.witness.checks
    assert obstacle.result is not None and obstacle.result.verdict == "violated" and obstacle.result.trace is not None


# -- giving up ----------------------------------------------------------------------------------


def test_time_limit_gives_up() -> None:
    """A whole-search limit that runs out makes the search give up (exit code 3), never claim anything."""
    result = synthesize(load_example("paper-adjacent-collusion"), max_seconds=0)
    assert result.status == GAVE_UP and result.exit_code == 3
    assert result.candidate is None and "limit" in result.reason


def test_solver_giving_up_on_every_candidate_gives_up() -> None:
    """When the solver decides no candidate, the search gives up rather than report that no defence exists."""
    result = synthesize(load_example("paper-checked-worker-relay"), Limits(timeout=1e-6))
    assert result.status == GAVE_UP and result.exit_code == 3
    assert "gave up" in result.reason


# -- JSON -----------------------------------------------------------------------------------------


def test_json_shape(relay_result: SynthesisResult) -> None:
    """The JSON document is versioned and carries the defence, its YAML, its cost and the proof."""
    doc = json.loads(json.dumps(relay_result.to_json()))
    assert doc["version"] == SYNTHESIS_FORMAT_VERSION == 1
    assert set(doc) >= {
        "spec",
        "name",
        "status",
        "exit_code",
        "defense",
        "yaml",
        "topology",
        "cost",
        "proof",
        "proof_file",
        "spec_text",
        "candidates_tried",
        "seconds",
        "reason",
        "obstacles",
        "notes",
    }
    assert doc["status"] == "found" and doc["exit_code"] == 0
    assert doc["defense"] == relay_result.defense
    assert doc["cost"]["exact"] == {"compute": "5/6", "memory": "5/6"}
    assert doc["proof"]["version"] == 1 and doc["proof"]["exit_code"] == 0
    assert doc["candidates_tried"] >= 1


def test_json_shape_without_a_defence() -> None:
    """Without a defence the JSON document has null defence fields and one obstacle per guarantee."""
    doc = synthesized("paper-redundant-neighbour").to_json()
    assert doc["status"] == "none" and doc["exit_code"] == 1
    assert doc["defense"] is None and doc["proof"] is None and doc["cost"] is None
    assert [o["id"] for o in doc["obstacles"]] == ["integrity", "no-framing", "liveness", "cheap"]
    json.dumps(doc)


# -- the search's shortcuts agree with the prover -------------------------------------------------


@pytest.mark.parametrize("example", ["spot-check-eject", "demo"])
def test_response_reading_agrees_with_the_prover(example: str) -> None:
    """Responses that the search treats as the same for a guarantee kind get the same verdict from the prover."""
    base = load_example(example)
    seen: dict[tuple[str, Any], str] = {}
    for n in range(1, len(RESPONSES) + 1):
        for response in itertools.combinations(RESPONSES, n):
            loaded = load_text(
                spec_text_with(
                    base, {**base.spec.defense.model_dump(), "response": list(response)}, base.spec.topology.standby
                ),
                "r.yaml",
            )
            for g in verify(loaded).guarantees:
                key = (g.id, _response_reading(g.kind, response))
                assert seen.setdefault(key, g.verdict) == g.verdict, (g.id, response)


def test_contradictory_spec_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the prover finds the spec's assumptions vacuous, synthesis reports that (exit code 2),
    not a missing defence."""
    from stagewarden.prover import VACUOUS, GuaranteeResult, Prover

    def vacuous(self: Prover, gid: str) -> GuaranteeResult:
        return GuaranteeResult(gid, "detection", VACUOUS, "the spec's assumptions contradict each other")

    monkeypatch.setattr(Prover, "check", vacuous)
    result = synthesize(load_example("paper-checked-worker-relay"))
    assert result.status == "vacuous" and result.exit_code == 2
    assert "contradict" in result.reason
