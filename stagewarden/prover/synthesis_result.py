"""What defence synthesis returns: the candidate defences, their cost items, the obstacles that
rule a defence out, and the result with its JSON form and exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from stagewarden.prover.verdict import GuaranteeResult, Report

#: Version of the JSON document that ``stagewarden synthesize --format json`` prints.
SYNTHESIS_FORMAT_VERSION = 1

CheckKey = tuple[tuple[str, Any], ...]


#: Search outcomes.
FOUND = "found"


NO_DEFENCE = "none"


GAVE_UP = "gave_up"


CONTRADICTORY = "vacuous"


@dataclass(frozen=True)
class Candidate:
    """One point of the defence space and its cost by the ``overhead`` cost model."""

    receipts: bool
    attestation: bool
    data_commitment: bool
    checks: tuple[CheckKey, ...]
    response: tuple[str, ...]
    standby: int
    checkpoint_every: int
    compute: Fraction
    memory: Fraction

    @property
    def features(self) -> int:
        """Switches, checks, responses and standby workers the defence uses (fewer is preferred)."""
        return (
            int(self.receipts)
            + int(self.attestation)
            + int(self.data_commitment)
            + len(self.checks)
            + len(self.response)
            + self.standby
        )

    def defense(self) -> dict[str, Any]:
        """The ``defense:`` mapping, every key written out."""
        return {
            "receipts": self.receipts,
            "attestation": self.attestation,
            "data_commitment": self.data_commitment,
            "checks": [dict(c) for c in self.checks],
            "response": list(self.response),
            "checkpoint_every": self.checkpoint_every,
        }

    def describe(self) -> str:
        """One line for people: switches, checks, response and standby pool."""
        parts = [
            name
            for name, on in (
                ("receipts", self.receipts),
                ("attestation", self.attestation),
                ("data commitment", self.data_commitment),
            )
            if on
        ]
        parts += [_describe_check(dict(c)) for c in self.checks] or ["no checks"]
        parts += [f"response {'+'.join(self.response)}", f"standby {self.standby}"]
        return ", ".join(parts)


def _describe_check(check: dict[str, Any]) -> str:
    scheme = check["scheme"]
    if scheme == "redundant_neighbour":
        return f"redundant_neighbour via {check['input_via'].replace('_', ' ')}"
    if scheme == "spot_check":
        by = {"coordinator": "the coordinator", "tee": "a TEE", "peer": "a peer"}[check["verifier"]]
        return f"spot_check at rate {check['rate']} by {by}"
    if scheme == "replicate":
        return f"replicate x{check['factor']} ({check['resolve']})"
    if scheme == "statistical":
        return f"statistical (power {check['power']}, min_deviation {check['min_deviation']})"
    return f"{scheme} ({check.get('rule', '')})"


@dataclass(frozen=True)
class CostItem:
    """One item of the cost model for a defence: what it is, where it stands, its cost."""

    item: str
    location: str
    compute: Fraction
    memory: Fraction

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "item": self.item,
            "location": self.location,
            "compute": float(self.compute),
            "memory": float(self.memory),
        }


@dataclass
class Obstacle:
    """Why one guarantee stands in the way when no defence in the space works.

    ``cheapest_alone`` is the cheapest candidate under which the guarantee holds on its own
    (None: none in the space). ``witness`` is the defence the ``result`` was computed under:
    the cheapest candidate under which every other guarantee holds, or, when the guarantee
    holds under no candidate, the costliest candidate the search reached.
    """

    id: str
    kind: str
    message: str
    cheapest_alone: Candidate | None = None
    witness: Candidate | None = None
    result: GuaranteeResult | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "id": self.id,
            "kind": self.kind,
            "message": self.message,
            "cheapest_alone": _candidate_json(self.cheapest_alone),
            "witness": _candidate_json(self.witness),
            "result": self.result.to_json() if self.result is not None else None,
        }


def _candidate_json(candidate: Candidate | None) -> dict[str, Any] | None:
    if candidate is None:
        return None
    return {
        "defense": candidate.defense(),
        "standby": candidate.standby,
        "description": candidate.describe(),
        "compute": float(candidate.compute),
        "memory": float(candidate.memory),
    }


@dataclass
class SynthesisResult:
    """The outcome of :func:`~stagewarden.prover.synthesis.synthesize`: the cheapest defence with its
    proof, or why none works."""

    status: str
    spec_file: str
    spec_name: str
    candidates_tried: int
    seconds: float
    candidate: Candidate | None = None
    yaml_block: str | None = None
    spec_text: str | None = None
    proof_file: str | None = None
    defense_lines: tuple[int, int] | None = None
    original_standby: int = 0
    costs: list[CostItem] = field(default_factory=list)
    report: Report | None = None
    reason: str = ""
    obstacles: list[Obstacle] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def defense(self) -> dict[str, Any] | None:
        """The chosen ``defense:`` mapping (None when no defence was found)."""
        return self.candidate.defense() if self.candidate else None

    @property
    def compute(self) -> Fraction | None:
        """Extra compute of the chosen defence, a fraction of unprotected training."""
        return self.candidate.compute if self.candidate else None

    @property
    def memory(self) -> Fraction | None:
        """Extra memory of the chosen defence, a fraction of unprotected training."""
        return self.candidate.memory if self.candidate else None

    @property
    def standby(self) -> int | None:
        """The ``topology.standby`` the chosen defence needs."""
        return self.candidate.standby if self.candidate else None

    @property
    def exit_code(self) -> int:
        """0 a defence was found, 1 none exists in the space, 2 the spec's assumptions contradict
        each other, 3 the search gave up."""
        return {FOUND: 0, NO_DEFENCE: 1, CONTRADICTORY: 2}.get(self.status, 3)

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON document printed by ``synthesize --format json``."""
        cand = self.candidate
        return {
            "version": SYNTHESIS_FORMAT_VERSION,
            "spec": self.spec_file,
            "name": self.spec_name,
            "status": self.status,
            "exit_code": self.exit_code,
            "defense": self.defense,
            "yaml": self.yaml_block,
            "topology": None if cand is None else {"standby": cand.standby, "was": self.original_standby},
            "cost": None
            if cand is None
            else {
                "compute": float(cand.compute),
                "memory": float(cand.memory),
                "exact": {"compute": _exact(cand.compute), "memory": _exact(cand.memory)},
                "items": [c.to_json() for c in self.costs],
            },
            "proof_file": self.proof_file,
            "spec_text": self.spec_text,
            "proof": self.report.to_json() if self.report is not None else None,
            "candidates_tried": self.candidates_tried,
            "seconds": round(self.seconds, 3),
            "reason": self.reason,
            "obstacles": [o.to_json() for o in self.obstacles],
            "notes": self.notes,
        }


def _exact(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
