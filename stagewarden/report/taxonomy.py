"""The threat taxonomy of Lu et al. (hardware, data and model threats) applied to a spec: which of
its adversary's capabilities and faults fall in each family, which defences act on them and which
guarantees speak about them."""

from __future__ import annotations

import dataclasses

from stagewarden.prover import Report
from stagewarden.spec import TAMPERING_CAPABILITIES, DetectionGuarantee, ReplicateCheck, Spec, probability_fraction

#: Family of each threat: the three of the paper, and the protocol-level threats it does not name.
FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("hardware", "faulty or malicious devices and silent corruption", ("crash", "silent_corruption", "withhold")),
    ("data", "a participant feeding samples that are not from the training set", ("poison_data",)),
    (
        "model",
        "tampering with activations, gradients or weights passing through a stage",
        ("tamper_activations", "tamper_gradients", "tamper_weights"),
    ),
    ("protocol", "attacks on the protocol itself, outside the paper's three families", ("equivocate", "false_accuse")),
)

#: Guarantee kinds that speak about a threat, beside ``detection`` (which names its capabilities).
_KINDS: dict[str, tuple[str, ...]] = {
    "crash": ("liveness",),
    "silent_corruption": ("detection",),
    "withhold": ("liveness",),
    "poison_data": ("data_integrity", "bounded_damage"),
    "tamper_activations": ("bounded_damage",),
    "tamper_gradients": ("bounded_damage",),
    "tamper_weights": ("bounded_damage",),
    "equivocate": ("no_framing", "bounded_damage"),
    "false_accuse": ("no_framing",),
}


@dataclasses.dataclass(frozen=True)
class Threat:
    """One threat of a family as the spec sees it."""

    family: str
    name: str
    in_spec: bool
    defences: list[str]
    guarantees: list[tuple[str, str]]  # (id, verdict)


def _present(spec: Spec, name: str) -> bool:
    faults = spec.adversary.faults
    if name == "crash":
        return faults.crash > 0
    if name == "silent_corruption":
        return probability_fraction(faults.silent_corruption) > 0
    return name in spec.adversary.capabilities


def _defences(spec: Spec, name: str) -> list[str]:
    d = spec.defense
    schemes = [c.scheme for c in d.checks]
    out: list[str] = []
    if name in ("tamper_activations", "tamper_gradients", "tamper_weights", "silent_corruption"):
        out += [s for s in schemes if s not in ("robust_aggregation", "statistical")]
        if "statistical" in schemes and name != "tamper_weights":
            out.append("statistical")
        if "robust_aggregation" in schemes:
            out.append("robust_aggregation (masks, does not detect)")
    elif name == "poison_data":
        out += ["data_commitment"] if d.data_commitment else []
        out += [s for s in schemes if s == "replicate"]
    elif name in ("equivocate", "false_accuse"):
        out += ["receipts"] if d.receipts else []
        out += ["replicate (referee)" for c in d.checks if isinstance(c, ReplicateCheck) and c.resolve == "referee"]
    if name in ("withhold", "crash"):
        out += [f"response {r}" for r in d.response if r in ("eject", "skip_stage")]
        out += [f"{spec.topology.standby} standby"] if spec.topology.standby else []
    if name != "crash" and spec.trust.tee and d.attestation:
        out.append("attested TEE workers")
    return out


def _speaks(spec: Spec, report: Report, name: str) -> list[tuple[str, str]]:
    out = []
    for g in spec.guarantees:
        if isinstance(g, DetectionGuarantee):
            scope = g.of or [c for c in spec.adversary.capabilities if c in TAMPERING_CAPABILITIES]
            hit = name in scope or (name == "silent_corruption")
        else:
            hit = g.kind in _KINDS.get(name, ())
        if hit:
            out.append((g.id, _verdict(report, g.id)))
    return out


def _verdict(report: Report, gid: str) -> str:
    try:
        return report.by_id(gid).verdict
    except KeyError:
        return "not checked"


def classify(spec: Spec, report: Report) -> list[Threat]:
    """Every threat of the taxonomy, with whether the spec's adversary has it and what covers it."""
    return [
        Threat(family, name, _present(spec, name), _defences(spec, name), _speaks(spec, report, name))
        for family, _, names in FAMILIES
        for name in names
    ]
