"""Whole-spec checks: warnings with their locations, the malicious budget, exact probabilities and
trust-list helpers."""

# Expected diagnostics stay on one line each, as the loader prints them: easier to read and grep.
# ruff: noqa: E501

from __future__ import annotations

from fractions import Fraction

import pytest

from stagewarden.spec import (
    SpecError,
    example_names,
    expand_workers,
    load_example,
    load_text,
    parse_worker,
    probability_fraction,
)

# A valid spec without warnings; line numbers down the left margin.
BASE_LINES = [
    "version: 1",  # 1
    "name: semantics",  # 2
    "topology:",  # 3
    "  stages: 4",  # 4
    "  replicas: 3",  # 5
    "  steps: 100",  # 6
    "trust:",  # 7
    "  honest: [0]",  # 8
    "  tee: []",  # 9
    "  coordinator: trusted",  # 10
    "adversary:",  # 11
    "  max_malicious: 1",  # 12
    "  tee_compromise: false",  # 13
    "  capabilities: [tamper_activations, tamper_gradients]",  # 14
    "defense:",  # 15
    "  receipts: true",  # 16
    "  attestation: true",  # 17
    "  checks:",  # 18
    "    - scheme: spot_check",  # 19
    "      rate: 0.5",  # 20
    "      verifier: coordinator",  # 21
    "    - scheme: robust_aggregation",  # 22
    "      rule: median",  # 23
    "    - scheme: replicate",  # 24
    "      factor: 3",  # 25
    "      resolve: referee",  # 26
    "  response: [rollback]",  # 27
    "  checkpoint_every: 10",  # 28
    "guarantees:",  # 29
    "  - id: integrity",  # 30
    "    kind: detection",  # 31
    "    of: [tamper_activations]",  # 32
]
BASE = "\n".join(BASE_LINES) + "\n"
F = "w.yaml"


def edit(line: int, text: str | None = None, *, through: int | None = None) -> str:
    """BASE with lines ``line``..``through`` replaced by ``text`` (``None`` deletes them)."""
    lines = list(BASE_LINES)
    lines[line - 1 : through or line] = [] if text is None else text.split("\n")
    return "\n".join(lines) + "\n"


def warnings_of(text: str) -> list[str]:
    """The warnings of a spec that loads, as ``file:line:column: message`` strings."""
    return [str(w) for w in load_text(text, F).warnings]


def test_base_has_no_warnings() -> None:
    """A spec without questionable settings loads with no warnings."""
    assert warnings_of(BASE) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            edit(9, "  tee: [1]").replace("  attestation: true", "  attestation: false"),
            [
                f"{F}:9:8: trust.tee lists workers but defense.attestation is false: TEE claims count only with attestation"
            ],
            id="tee-without-attestation",
        ),
        pytest.param(
            edit(16, "  receipts: false"),
            [
                f"{F}:19:7: spot_check without defense.receipts detects nothing: an uncommitted worker recomputes "
                "honestly when challenged"
            ],
            id="spot-check-without-receipts",
        ),
        pytest.param(
            edit(5, "  replicas: 2"),
            [
                f"{F}:22:7: robust_aggregation (median) over 2 replica(s) cannot outvote a corrupted replica (needs at least 3)"
            ],
            id="robust-aggregation-two-replicas",
        ),
        pytest.param(
            edit(32, "    of: [tamper_weights]"),
            [
                f"{F}:32:10: 'tamper_weights' is not among adversary.capabilities: this part of the guarantee holds trivially"
            ],
            id="of-capability-adversary-lacks",
        ),
        pytest.param(
            edit(8, '  honest: [0, "0:1"]'),
            [f"{F}:8:15: trust.honest[1]: worker '0:1' is already covered by stage 0"],
            id="worker-covered-by-stage",
        ),
        pytest.param(
            edit(14, "  capabilities: [tamper_activations, poison_data]"),
            [
                f"{F}:14:38: poison_data can only be used by stage-0 workers, and every stage-0 worker is in "
                "trust.honest: the capability has no effect"
            ],
            id="poison-data-stage-0-honest",
        ),
        pytest.param(
            edit(13, "  tee_compromise: true"),
            [f"{F}:13:19: adversary.tee_compromise is true but trust.tee is empty"],
            id="tee-compromise-without-tee",
        ),
        pytest.param(
            edit(21, "      verifier: tee"),
            [
                f"{F}:19:7: spot_check verifier 'tee' but trust.tee is empty: the verifier is a TEE outside the listed workers"
            ],
            id="tee-verifier-without-tee",
        ),
        pytest.param(
            edit(10, "  coordinator: untrusted"),
            [
                f"{F}:24:7: replicate with resolve 'referee' relies on the coordinator, which trust.coordinator says is untrusted"
            ],
            id="referee-untrusted-coordinator",
        ),
        pytest.param(
            edit(28, "  checkpoint_every: 101"),
            [
                f"{F}:28:21: checkpoint_every (101) exceeds the horizon (100 steps): rollback can only return to the start"
            ],
            id="checkpoint-beyond-horizon",
        ),
        pytest.param(
            edit(32, "    of: [tamper_activations]\n  - id: data\n    kind: data_integrity"),
            [f"{F}:33:5: data_integrity: the adversary lacks poison_data, so the guarantee holds trivially"],
            id="data-integrity-without-poison-data",
        ),
        pytest.param(
            edit(16, "  receipts: false\n  attestation: false", through=17).replace("  tee: []", "  tee: [1]"),
            [
                f"{F}:9:8: trust.tee lists workers but defense.attestation is false: TEE claims count only with attestation",
                f"{F}:19:7: spot_check without defense.receipts detects nothing: an uncommitted worker recomputes "
                "honestly when challenged",
            ],
            id="several-in-source-order",
        ),
    ],
)
def test_warning(text: str, expected: list[str]) -> None:
    """Each questionable setting loads, with exactly this warning at the offending key or value."""
    assert warnings_of(text) == expected


def test_checkpoint_beyond_horizon_needs_rollback() -> None:
    """A checkpoint interval beyond the horizon is harmless (no warning) without rollback."""
    assert warnings_of(edit(27, "  response: [eject]").replace("checkpoint_every: 10", "checkpoint_every: 101")) == []


def test_tee_with_attestation_has_no_warning() -> None:
    """TEE workers under attestation are what the spec language intends: no warning."""
    assert warnings_of(edit(9, "  tee: [1, 2]")) == []


@pytest.mark.parametrize("name", example_names())
def test_examples_warn_only_where_intended(name: str) -> None:
    """Every packaged example loads without warnings, except the one that shows unattested TEEs."""
    warnings = [w.message for w in load_example(name).warnings]
    if name == "tee-unattested":
        assert warnings == [
            "trust.tee lists workers but defense.attestation is false: TEE claims count only with attestation"
        ]
    else:
        assert warnings == []


def test_semantic_errors_are_all_reported_in_source_order() -> None:
    """Several whole-spec errors come together, sorted by location."""
    text = edit(8, '  honest: [0, 9, "1:5"]').replace("  max_malicious: 1", "  max_malicious: 100")
    with pytest.raises(SpecError) as info:
        load_text(text, F)
    assert [str(d) for d in info.value.diagnostics] == [
        f"{F}:8:15: trust.honest[1]: stage 9 does not exist (stages are 0 to 3)",
        f"{F}:8:18: trust.honest[2]: replica 5 does not exist (replicas are 0 to 2)",
        f"{F}:12:18: adversary.max_malicious is 100 but the topology has only 36 workers "
        "(4 stages x 3 replicas x 3 copies + 0 standby)",
    ]


# -- the malicious budget ---------------------------------------------------------------------


def _spec_with(budget: str, *, standby: int = 0, factor: int | None = 3) -> str:
    """BASE with the given budget, standby count and replicate factor (None: no replicate check)."""
    text = BASE.replace("  max_malicious: 1", f"  max_malicious: {budget}")
    text = text.replace("  steps: 100", f"  steps: 100\n  standby: {standby}")
    if factor is None:
        text = text.replace("    - scheme: replicate\n      factor: 3\n      resolve: referee\n", "")
    else:
        text = text.replace("      factor: 3", f"      factor: {factor}")
    return text


@pytest.mark.parametrize(
    ("budget", "standby", "factor", "workers", "expected"),
    [
        pytest.param("2", 0, None, 12, 2, id="integer"),
        pytest.param('"10%"', 0, None, 12, 1, id="10-percent-of-12-rounds-down"),
        pytest.param('"10%"', 1, 2, 25, 2, id="10-percent-counts-standby-and-copies"),
        pytest.param('"12.5%"', 0, 2, 24, 3, id="fractional-percent"),
        pytest.param('"8.3%"', 0, None, 12, 0, id="just-under-one-worker"),
        pytest.param('"8.4%"', 0, None, 12, 1, id="just-over-one-worker"),
        pytest.param('"0%"', 3, 3, 39, 0, id="zero-percent"),
        pytest.param('"100%"', 3, 3, 39, 39, id="everyone"),
        pytest.param('" 50 % "', 0, None, 12, 6, id="spaces-allowed"),
    ],
)
def test_malicious_budget(budget: str, standby: int, factor: int | None, workers: int, expected: int) -> None:
    """A percentage budget counts every worker (S x R x replicate factor + standby), rounded down."""
    spec = load_text(_spec_with(budget, standby=standby, factor=factor), F).spec
    assert spec.total_workers == workers
    assert spec.replication_factor == (factor or 1)
    assert spec.malicious_budget == expected


# -- exact probabilities ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "exact"),
    [
        pytest.param("1 - 1e-6", Fraction(999999, 1000000), id="complement-exponent"),
        pytest.param("1-0.05", Fraction(19, 20), id="complement-decimal-no-spaces"),
        pytest.param("1 - 1E+0", Fraction(0), id="complement-upper-case-exponent"),
        pytest.param(0.999999, Fraction(999999, 1000000), id="float-keeps-written-decimal"),
        pytest.param(0.1, Fraction(1, 10), id="float-one-tenth"),
        pytest.param(1, Fraction(1), id="integer-one"),
        pytest.param(0, Fraction(0), id="integer-zero"),
    ],
)
def test_probability_fraction(written: float | str, exact: Fraction) -> None:
    """Probabilities are read exactly, as the decimal the user wrote, not a binary float."""
    assert probability_fraction(written) == exact


@pytest.mark.parametrize(
    "written", ["0.5", "1 + 1e-6", "2 - 1e-6", "1 - ", "one", "1 - 1e-1000", float("nan"), float("inf")]
)
def test_probability_fraction_rejects(written: float | str) -> None:
    """Anything but a finite number or '1 - EPSILON' (exponent of at most three digits) is a ValueError."""
    with pytest.raises(ValueError, match="probability"):
        probability_fraction(written)


def test_loaded_probability_is_exact() -> None:
    """A guarantee's '1 - 1e-6' survives loading as the exact fraction."""
    spec = load_text(edit(32, "    probability: 1 - 1e-6"), F).spec
    assert probability_fraction(spec.guarantees[0].probability) == Fraction(999999, 1000000)


# -- trust-list helpers ------------------------------------------------------------------------


def test_parse_worker() -> None:
    """A stage index means every replica (replica None); 's:r' names one worker."""
    assert parse_worker(3) == (3, None)
    assert parse_worker("3:1") == (3, 1)
    assert parse_worker("0:0") == (0, 0)


def test_expand_workers() -> None:
    """Trust entries expand to the set of (stage, replica) workers they name, without duplicates."""
    assert expand_workers([0, "2:1", "0:1"], replicas=2) == {(0, 0), (0, 1), (2, 1)}
    assert expand_workers([], replicas=3) == set()
