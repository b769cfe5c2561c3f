"""The liveness check where neither the state search nor a bounded unrolling fits: the closed-form
bound proves holds where it can, and otherwise the verdict is unknown with its reason, never a
guess, and the unrolling is never built past its limit."""

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
    - scheme: spot_check
      rate: 0.05
  response: [{response}]
guarantees:
  - {{id: liveness, kind: liveness}}
"""


def _liveness(text: str) -> tuple[str, str]:
    result = verify(load_text(text, "<liveness-large>.yaml")).guarantees[0]
    return result.verdict, f"{result.summary} {result.reason or ''}"


def test_a_world_too_large_to_unroll_is_unknown_with_the_reason() -> None:
    """40 stages with 16 malicious and 16 standby workers, a withholder and eject: the state search
    gives up, the bound allows a violation, and the unrolled runs would exceed the limit, so the
    answer is unknown and says why."""
    verdict, why = _liveness(LARGE.format(withhold=", withhold", crash=1, response="rollback, eject"))
    assert verdict == "unknown", (verdict, why)
    assert "too large to decide exactly" in why and f"more than {UNROLL_LIMIT}" in why


def test_the_closed_form_bound_still_proves_holds_in_a_large_world() -> None:
    """The same world without withhold, crash faults or eject cannot lose a stage nor stall (rollback
    only retries): the bound every violating run meets is unsatisfiable, so liveness holds without
    unrolling anything."""
    verdict, why = _liveness(LARGE.format(withhold="", crash=0, response="rollback"))
    assert verdict == "holds", (verdict, why)
