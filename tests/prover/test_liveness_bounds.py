"""The liveness check where the state search does not fit: the counts decide where no removal rule
depends on the run's state; otherwise the closed-form bound proves holds where it can, and the
verdict is unknown with its reason, never a guess, and the unrolling is never built past its
limit."""

from __future__ import annotations

from stagewarden.prover import verify
from stagewarden.prover.guarantees.liveness import UNROLL_LIMIT
from stagewarden.spec import load_text

LARGE = """version: 1
name: liveness-large
topology: {{stages: 40, replicas: 1, microbatches: 4, steps: 1000, standby: 16}}
trust: {{honest: [0, 39]}}
adversary:
  max_malicious: 16
  capabilities: [tamper_activations, tamper_gradients{withhold}]
  faults: {{crash: {crash}}}
defense:
  receipts: true
  checks:
    - {check}
  response: [{response}]
guarantees:
  - {{id: liveness, kind: liveness}}
"""


def _liveness(text: str) -> tuple[str, str]:
    result = verify(load_text(text, "<liveness-large>.yaml")).guarantees[0]
    return result.verdict, f"{result.summary} {result.reason or ''}"


SPOT = "{scheme: spot_check, rate: 0.05}"


def test_a_world_too_large_to_search_is_decided_by_the_counts() -> None:
    """40 stages with 16 malicious and 16 standby workers, a withholder and eject: the state search
    gives up and the unrolled runs would exceed the limit, but a withholder can always be ejected,
    so the counts decide: 16 ejections and the one crash are the 17 removals that spend the pool
    and empty the replica."""
    result = verify(
        load_text(LARGE.format(withhold=", withhold", crash=1, response="rollback, eject", check=SPOT), "<l>.yaml")
    ).guarantees[0]
    assert result.verdict == "violated", (result.summary, result.reason)
    assert result.trace is not None and len(result.trace["malicious"]) == 16
    kinds = [e["event"] for e in result.trace["dynamics"]["events"]]
    assert kinds.count("eject") == 16 and kinds.count("crash") == 1 and kinds.count("enter") == 16


def test_a_world_the_counts_cannot_decide_and_too_large_to_unroll_is_unknown() -> None:
    """The same world checked by redundant_neighbour without a withholder: whether a worker is caught
    depends on its neighbour being present, so the counts do not decide; the bound allows a
    violation and the unrolled runs would exceed the limit, so the answer is unknown and says why."""
    verdict, why = _liveness(
        LARGE.format(withhold="", crash=1, response="rollback, eject", check="{scheme: redundant_neighbour}")
    )
    assert verdict == "unknown", (verdict, why)
    assert "too large to decide exactly" in why and f"more than {UNROLL_LIMIT}" in why
    assert "the counts do not decide them" in why


def test_the_closed_form_bound_still_proves_holds_in_a_large_world() -> None:
    """The same world without withhold, crash faults or eject cannot lose a stage nor stall (rollback
    only retries): the bound every violating run meets is unsatisfiable, so liveness holds without
    unrolling anything."""
    verdict, why = _liveness(LARGE.format(withhold="", crash=0, response="rollback", check=SPOT))
    assert verdict == "holds", (verdict, why)
