"""The modelling assumptions every report states: what the verdicts rest on beyond the spec's own
lines (the prover's model, see the documentation's "The prover's model" page) and what the runs'
TEE attestation establishes, in the words of the kind their verified results show (see
:mod:`stagewarden.report.attestation_kinds`): a software model with a simulated vendor, or Intel
TDX/SGX quotes verified against Intel's collateral."""

from __future__ import annotations

#: The notice on every page of a report whose runs attested with the simulated TEE (or of a report
#: without runs).
TEE_NOTICE = (
    "TEE attestation here is a software model: a simulated hardware vendor, simulated devices and "
    "their evidence. It exercises the protocol (certificate chains, nonces, key binding, "
    "measurements, TCB status, expiry) but proves nothing about real hardware."
)

#: What admission with Intel quotes (the ``dcap`` kind) establishes and what it does not.
DCAP_ADMISSION = (
    "workers admitted with Intel TDX/SGX quotes, each verified with dcap-qvl against Intel's collateral "
    "(the quote's signature chain to Intel's root CA, the platform's TCB status, the measurements under "
    "the run's policy, and the report data that binds the worker's receipt key). That does not prove that "
    "no TEE was compromised (a hardware or firmware flaw, a leaked attestation key): the spec's "
    "adversary.tee_compromise models that. The report checks each EAR result against the run's verifier "
    "key; it does not verify the quotes again"
)

#: The notice on every page of a report whose every run attested with Intel quotes.
DCAP_NOTICE = f"TEE attestation here is Intel's DCAP, not a software model: {DCAP_ADMISSION}."

#: The simulated kind, in a notice that names which runs used which kind.
SIMULATED_ADMISSION = (
    "a software model of TEE attestation (a simulated hardware vendor, simulated devices and their "
    "evidence) that proves nothing about real hardware"
)

#: Runs whose results name Intel quotes but do not all verify, in such a notice.
UNVERIFIED_ADMISSION = (
    "attestation results that name Intel quotes but do not all verify against the run's verifier key "
    "(or whose audit rejects them), so the report vouches for no TEE there"
)

#: Runs without any attestation result, in such a notice.
UNATTESTED_ADMISSION = "no attestation result: no worker was admitted by attestation"

#: How such a notice begins.
MIXED_OPENING = "TEE attestation differs between the runs of this report."

#: The modelling assumptions behind every verdict besides what the runs' attestation is (the
#: report's notice, which leads the list), each with where the documentation states it.
ASSUMPTIONS: tuple[tuple[str, str], ...] = (
    (
        "A ``tee`` entry counts only with ``defense.attestation: true`` and ``adversary.tee_compromise: false``; "
        "a TEE verifier is a separate enclave outside the worker set.",
        "semantics",
    ),
    (
        "Signatures cannot be forged: while ``receipts`` is on, no worker can claim that a message came from "
        "another; without receipts any worker can.",
        "spec language, adversary capabilities",
    ),
    (
        "Re-execution is exact: a check that recomputes an honest unit from its committed input gets the same "
        "output, so an honest unit never fails a check (bitwise determinism; the runtime compares bitwise on "
        "identical hardware).",
        "semantics, detection",
    ),
    (
        "Checks sample units independently of each other and of every other check; a worker's units are "
        "independent trials. A unit's detection probability is ``1 - prod(1 - d_i)`` over its checks, and "
        "the detection latency of a spot check is geometric.",
        "semantics; prover.probability",
    ),
    (
        "The coordinator is trusted unless the spec says ``trust.coordinator: untrusted``; an untrusted "
        "coordinator's relay, spot checks, detector, receipt linkage and referee role count as absent.",
        "semantics",
    ),
    (
        "With ``collusion: true`` a check made by a malicious checker always passes; without it a malicious "
        "checker checks honestly.",
        "semantics",
    ),
    (
        "A ``peer`` verifier is drawn uniformly from the other computing workers after the unit is committed; "
        "standby workers do not verify.",
        "semantics",
    ),
    (
        "The adversary places its malicious workers within the budget as it likes (the prover checks every "
        "placement); a percentage budget is taken of all workers, standby included, rounded down.",
        "semantics",
    ),
    (
        "``bounded_damage`` with ``eject`` lets a caught worker use the whole horizon (an upper bound); with "
        "``rollback`` the model returns to a verified checkpoint before the convict's first tampered unit and "
        "its units do not count.",
        "semantics",
    ),
    (
        "No check other than receipts with a trusted coordinator is credited against equivocation "
        "(a conservative choice).",
        "semantics",
    ),
    ("Silent data corruption is modelled for ``detection`` only, as a wrong unit of an honest worker.", "semantics"),
    (
        "Liveness is about progress, not speed: slow-downs that leave some progress are not violations; a "
        "crashed worker is replaced by a free standby whatever the response.",
        "semantics",
    ),
    (
        "The overhead cost model assumes equal stages; the constants for ``statistical`` checks and receipts "
        "(0.01 each) are estimates for the runtime benchmark to refine.",
        "semantics, overhead",
    ),
)
