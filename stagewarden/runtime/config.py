"""The configuration of a distributed training run: one frozen dataclass, serialisable to JSON.

The same :class:`RunConfig` is written to ``summary.json`` and read by every process of the run
(the coordinator and the stage workers); a worker's view of it is part of its attested
measurement, so a worker started with another configuration is refused at admission.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stagewarden.runtime.aggregation import check_rule
from stagewarden.runtime.defaults import (
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_MAX_RECOMPUTATIONS,
    MAX_RECOMPUTATIONS_LIMIT,
)
from stagewarden.runtime.errors import RuntimeSetupError
from stagewarden.runtime.layout import Layout
from stagewarden.runtime.model import GPTConfig
from stagewarden.runtime.units import TrainConfig

#: The ``format`` value of a serialised run configuration.
CONFIG_FORMAT = "stagewarden.run-config"
#: The configuration version this module writes and reads.
CONFIG_VERSION = 1

SCHEDULES = ("gpipe", "1f1b")
BACKENDS = ("gloo", "nccl")
DEVICES = ("cpu", "cuda")
VERIFICATION_MODES = ("none", "spot_check", "redundant_neighbour", "replicate")
AGGREGATIONS = ("mean", "median", "trimmed_mean", "krum")
REPLICATE_RESOLVES = ("majority", "referee")
INPUT_CHANNELS = ("coordinator", "upstream", "checked_worker")
RESPONSES = ("eject", "rollback", "skip_stage", "restart")
ATTESTATION_KINDS = ("simulated", "dcap")
SPOT_CHECK_COMPARES = ("bitwise", "tolerance")
#: The most replicas (or copies) a run takes.
MAX_REPLICAS = 64
#: The most processes a run takes.
MAX_WORLD = 1024


#: The layout settings and their defaults, which :meth:`RunConfig.to_json` leaves out.
_LAYOUT_DEFAULTS = {"replicas": 1, "aggregation": "mean", "replicate_factor": 3, "replicate_resolve": "majority"}


class ConfigError(RuntimeSetupError):
    """A run configuration that is inconsistent or cannot be read."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines a distributed training run.

    Where its workers sit (stages, replicas, ``replicate`` copies) is its :attr:`layout`.
    """

    stages: int = 2
    """Pipeline stages ``S``."""
    replicas: int = 1
    """Data-parallel replicas ``R``: whole pipelines, each training on its own shard of every
    batch (the global batch is ``R`` times a pipeline's), whose workers of one stage aggregate
    their gradients before every update (:attr:`aggregation`)."""
    aggregation: str = "mean"
    """How the replicas of a stage combine their gradients (:mod:`stagewarden.runtime.aggregation`):
    ``mean`` (ordinary data parallelism), or a robust rule, ``median``, ``trimmed_mean`` or ``krum``."""
    replicate_factor: int = 3
    """With ``verification: replicate``: the copies ``k`` that compute every unit of every stage
    of every replica (at least 2)."""
    replicate_resolve: str = "majority"
    """With ``verification: replicate``: who decides whom a disagreement between copies blames,
    the ``majority`` of the copies (a tie blames every copy in it) or the coordinator as
    ``referee``, re-executing the unit."""
    microbatches: int = 4
    """Micro-batches ``M`` per optimizer step."""
    steps: int = 10
    """Optimizer steps to train."""
    schedule: str = "1f1b"
    """Pipeline schedule, ``gpipe`` or ``1f1b``."""
    model: GPTConfig = dataclasses.field(default_factory=GPTConfig)
    """The model shape."""
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """Optimizer and numerics (AdamW, CPU threads per worker)."""
    batch_size: int = 8
    """Sequences per micro-batch ``B``."""
    seed: int = 0
    """The run seed (initial weights and data order)."""
    data: Sequence[str] = ()
    """Corpus files or folders; empty means the default corpus (the Python standard library)."""
    max_bytes: int | None = None
    """Read at most this many corpus bytes (``None``: all of ``data``, or 2 MiB of the default corpus)."""
    backend: str = "gloo"
    """The torch.distributed backend, ``gloo`` (CPU) or ``nccl`` (one GPU per stage)."""
    device: str = "cpu"
    """Where the stages compute, ``cpu`` or ``cuda``."""
    receipts: bool = True
    """Sign a receipt for every unit of work and log it."""
    attestation: bool = True
    """Admit workers only with a valid attestation result."""
    attestation_kind: str = "simulated"
    """Which evidence the workers attest with, ``simulated`` (the software TEE of a vendor folder)
    or ``dcap`` (Intel TDX/SGX quotes from configfs-tsm, verified against Intel's PKI)."""
    dcap_collateral: str | None = None
    """With ``dcap``, the coordinator's collateral bundle file or collateral cache folder (not measured)."""
    dcap_policy: str | None = None
    """With ``dcap``, the coordinator's DCAP policy file (default UpToDate only, no reference
    values; not measured)."""
    tsm_report_root: str = "/sys/kernel/config/tsm/report"
    """With ``dcap``, the workers' configfs-tsm report folder."""
    standby: int = 0
    """Standby workers ``K`` that attest at start and wait for an assignment."""
    verification: str = "none"
    """Verification mode of
    :meth:`Checks.verify_step <stagewarden.runtime.coordinator.checks.Checks.verify_step>`:
    ``none``, ``spot_check`` (commit-then-sample re-execution by the coordinator) or
    ``redundant_neighbour`` (the paper's defence: stage ``s + 1`` keeps a replica of stage ``s``
    and recomputes its forward and backward units)."""
    input_via: str = "coordinator"
    """With ``redundant_neighbour``: how the checker gets the checked stage's input, relayed by the
    coordinator (``coordinator``), sent by stage ``s - 1`` (``upstream``) or by the checked stage
    itself (``checked_worker``, which lets a stage forge a consistent input and output)."""
    spot_check_rate: float = 0.1
    """With ``spot_check``: the probability ``p`` in (0, 1] that each committed unit is sampled."""
    spot_check_compare: str = "bitwise"
    """With ``spot_check``: how a re-executed unit is compared with the committed one, ``bitwise``
    (digest equality: identical hardware with deterministic algorithms) or ``tolerance`` (within a
    per-stage tolerance calibrated at admission from the worker's honest executions on seed-derived
    inputs; see :mod:`stagewarden.runtime.calibration`)."""
    response: str = "eject"
    """What the coordinator does on a detection (``eject``, ``rollback``, ``skip_stage``, ``restart``)."""
    max_recomputations: int = DEFAULT_MAX_RECOMPUTATIONS
    """How often one step may be recomputed after detections (and how often one step may be rolled
    back to) before the run stops as ``stopped``: a step is computed at most
    ``max_recomputations + 1`` times. Raise it for ``restart`` against an attacker that fires on a
    fraction of the computations (each restart draws again); at most
    :data:`~stagewarden.runtime.defaults.MAX_RECOMPUTATIONS_LIMIT`."""
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    """Write a verified checkpoint of every stage's weights and optimizer state at step 0 and then
    after every ``checkpoint_every`` steps whose checks all passed; ``0`` writes none. A rollback
    or an eject goes back to one, and a run resumes from the newest one after a crash, so
    ``checkpoint_every`` bounds the steps a crash or a response costs. Each checkpoint moves every
    stage's state to the coordinator: the default
    (:data:`~stagewarden.runtime.defaults.DEFAULT_CHECKPOINT_EVERY`) keeps that
    under 2% of training time on the runtime-overhead benchmark's job; lower it to lose fewer steps
    to a response or a crash, raise it for large models."""
    result_lifetime: int = 3600
    """Seconds an attestation result of the simulated verifier stays valid (a DCAP policy file sets
    its own). The coordinator re-attests every admitted worker once half of the shortest lifetime
    left has passed, so that a valid result covers every receipt of a run however long it is, and
    a worker refused then (a revoked device) is handled as a failed one; from 2 s to 7 days."""
    keep_checkpoints: int = 2
    """How many of the newest verified checkpoints stay on disk (``0``: all). Older ones are
    deleted once a newer one is recorded (manifest first, so an interrupted delete never leaves a
    complete-looking folder); step 0's, the initial state, is always kept, so a rollback to before
    the kept ones goes back to it."""
    overlap_checks: bool = True
    """Check a step's sampled units and write the checkpoint after it while the next step
    computes (the workers push the sampled units and their new state with the update); ``False``
    settles both before the next step starts. Either way no checkpoint holds a step whose checks
    have not passed, and the last step, a recomputation and a step with a bypassed stage settle
    before the next starts. A check that fails while the next step computes discards that step."""
    timeout: float = 300.0
    """Seconds to wait for every process to join, and the limit on any single receive (a peer
    that dies is noticed at once, as its connections close)."""
    heartbeat_timeout: float = 10.0
    """Seconds without a heartbeat after which the coordinator declares a worker unresponsive
    (died, stopped or hung); workers beat every quarter of it."""
    silence_timeout: float = 60.0
    """Seconds a worker may keep a peer waiting while it waits on nobody before the coordinator
    declares it withholding (longer than any honest unit of work takes); at most half of
    ``timeout`` is used, so that the verdict comes before any receive times out."""
    attack: Any = None
    """An attack plan as JSON data (opaque to the engine; see
    :func:`stagewarden.runtime.attacks.make_attack`); ``None`` runs honestly; not measured."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(self.data))
        checks = [
            (self.stages >= 1, f"stages must be at least 1, got {self.stages}"),
            (
                self.stages <= self.model.n_layer,
                f"stages ({self.stages}) cannot exceed model.n_layer ({self.model.n_layer})",
            ),
            (self.microbatches >= 1, f"microbatches must be at least 1, got {self.microbatches}"),
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.standby >= 0, f"standby must be at least 0, got {self.standby}"),
            (
                type(self.replicas) is int and 1 <= self.replicas <= MAX_REPLICAS,
                f"replicas must be a whole number from 1 to {MAX_REPLICAS}, got {self.replicas!r}",
            ),
            (
                self.aggregation in AGGREGATIONS,
                f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {self.aggregation!r}",
            ),
            (
                type(self.replicate_factor) is int and 2 <= self.replicate_factor <= MAX_REPLICAS,
                f"replicate_factor must be a whole number from 2 to {MAX_REPLICAS}, got {self.replicate_factor!r}",
            ),
            (
                self.replicate_resolve in REPLICATE_RESOLVES,
                f"replicate_resolve must be one of {', '.join(REPLICATE_RESOLVES)}, not {self.replicate_resolve!r}",
            ),
            (
                self.verification != "replicate" or self.receipts,
                "verification replicate compares the copies' receipts: it needs receipts on",
            ),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}"),
            (self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, not {self.device!r}"),
            (self.backend != "nccl" or self.device == "cuda", "the nccl backend needs device cuda"),
            (
                self.verification in VERIFICATION_MODES,
                f"verification must be one of {', '.join(VERIFICATION_MODES)}, not {self.verification!r}",
            ),
            (
                0.0 < self.spot_check_rate <= 1.0,
                f"spot_check_rate must be in (0, 1], got {self.spot_check_rate}",
            ),
            (
                self.spot_check_compare in SPOT_CHECK_COMPARES,
                f"spot_check_compare must be one of {', '.join(SPOT_CHECK_COMPARES)}, not {self.spot_check_compare!r}",
            ),
            (
                self.spot_check_compare != "tolerance" or self.verification == "spot_check",
                "spot_check_compare tolerance compares spot-check re-executions: it needs verification spot_check, "
                f"not {self.verification!r}",
            ),
            (
                self.verification != "spot_check" or self.receipts,
                "verification spot_check checks units against their receipts: it needs receipts on",
            ),
            (
                self.model.dropout == 0.0 or self.verification == "none",
                f"model.dropout {self.model.dropout} draws a random mask in every unit, so no re-execution or "
                f"neighbour's recomputation can agree with it: verification {self.verification} needs dropout 0",
            ),
            (
                self.input_via in INPUT_CHANNELS,
                f"input_via must be one of {', '.join(INPUT_CHANNELS)}, not {self.input_via!r}",
            ),
            (
                self.verification != "redundant_neighbour" or self.stages >= 2,
                "verification redundant_neighbour needs at least 2 stages (stage s + 1 checks stage s)",
            ),
            (self.response in RESPONSES, f"response must be one of {', '.join(RESPONSES)}, not {self.response!r}"),
            (
                isinstance(self.max_recomputations, int)
                and not isinstance(self.max_recomputations, bool)
                and 0 <= self.max_recomputations <= MAX_RECOMPUTATIONS_LIMIT,
                f"max_recomputations must be an integer from 0 to {MAX_RECOMPUTATIONS_LIMIT}, "
                f"got {self.max_recomputations!r}",
            ),
            (
                type(self.result_lifetime) is int and 2 <= self.result_lifetime <= 7 * 86400,
                f"result_lifetime must be a whole number of seconds from 2 to {7 * 86400}, "
                f"got {self.result_lifetime!r}",
            ),
            (self.checkpoint_every >= 0, f"checkpoint_every must be at least 0, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 0, f"keep_checkpoints must be at least 0, got {self.keep_checkpoints}"),
            (
                isinstance(self.overlap_checks, bool),
                f"overlap_checks must be true or false, got {self.overlap_checks!r}",
            ),
            (self.timeout > 0, f"timeout must be positive, got {self.timeout}"),
            (self.heartbeat_timeout > 0, f"heartbeat_timeout must be positive, got {self.heartbeat_timeout}"),
            (self.silence_timeout > 0, f"silence_timeout must be positive, got {self.silence_timeout}"),
            (self.seed >= 0, f"seed must be at least 0, got {self.seed}"),
            (
                self.attestation_kind in ATTESTATION_KINDS,
                f"attestation_kind must be one of {', '.join(ATTESTATION_KINDS)}, not {self.attestation_kind!r}",
            ),
            (
                self.attestation_kind != "dcap" or not self.attestation or self.dcap_collateral is not None,
                "attestation_kind dcap needs dcap_collateral (a collateral file or cache folder)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._check_layout()
        if self.attack is not None:
            check_attack(self.attack, self.stages, self.verification, self.layout.pipelines)

    def _check_layout(self) -> None:
        """What runs with more than one pipeline (:class:`~stagewarden.runtime.layout.Layout`)."""
        rule = check_rule(self.aggregation, self.replicas)
        if rule is not None:
            raise ConfigError(rule)
        if self.layout.pipelines == 1:
            return
        pipelines = f"{self.replicas} replica(s) x {self.layout.copies} copies"
        if self.verification == "redundant_neighbour":
            raise ConfigError(
                f"verification redundant_neighbour checks one pipeline; {pipelines} need verification none, "
                "spot_check or replicate"
            )
        if self.response == "skip_stage":
            raise ConfigError(
                f"response skip_stage bypasses a stage of a single pipeline; with {pipelines} use eject, rollback "
                "or restart (a convict without a standby to replace it takes its pipeline out instead)"
            )
        if self.layout.slots + self.standby + 1 > MAX_WORLD:
            raise ConfigError(f"{self.layout.slots + self.standby + 1} processes exceed the limit of {MAX_WORLD}")

    @property
    def layout(self) -> Layout:
        """The run's stages, replicas and ``replicate`` copies (where its workers sit)."""
        copies = self.replicate_factor if self.verification == "replicate" else 1
        return Layout(self.stages, self.replicas, copies)

    @property
    def world_size(self) -> int:
        """Processes of the run (the coordinator, one worker per slot and ``K`` standby workers)."""
        return 1 + self.layout.slots + self.standby

    @property
    def tokens_per_step(self) -> int:
        """Tokens trained on per optimizer step, ``R * M * B * T``."""
        return self.replicas * self.microbatches * self.batch_size * self.model.block_size

    def to_json(self) -> dict[str, Any]:
        """The configuration as a JSON object."""
        data = dataclasses.asdict(self)
        data["data"] = list(self.data)
        # the layout's settings are left out at their defaults: a single pipeline's configuration
        # (and so its workers' measurement) reads as it always has
        for name, default in _LAYOUT_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any) -> RunConfig:
        """Check and convert a JSON object made by :meth:`to_json`; raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError("a run configuration must be a JSON object")
        if data.get("format") != CONFIG_FORMAT or data.get("version") != CONFIG_VERSION:
            raise ConfigError(f"not a {CONFIG_FORMAT} version {CONFIG_VERSION} object")
        fields = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        unknown = set(body) - fields
        if unknown:
            raise ConfigError(f"unknown run configuration keys: {', '.join(sorted(unknown))}")
        try:
            model = GPTConfig(**body.pop("model", {}))
            train = TrainConfig(**body.pop("train", {}))
            body["data"] = tuple(body.get("data", ()))
            return cls(model=model, train=train, **body)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"bad run configuration: {str(exc)[:500]}") from None

    def measured_json(self) -> dict[str, Any]:
        """What a worker's measurement covers of the configuration: floats as exact strings.

        Canonical JSON carries no floating-point numbers, so every float is written as
        ``float.hex()``.
        """

        def exact(value: Any) -> Any:
            if isinstance(value, float):
                return value.hex()
            if isinstance(value, dict):
                return {k: exact(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [exact(v) for v in value]
            return value

        data = self.to_json()
        for volatile in (
            "timeout",
            "heartbeat_timeout",
            "silence_timeout",
            "steps",
            "max_recomputations",
            "result_lifetime",
            "attack",
            "dcap_collateral",
            "dcap_policy",
        ):
            data.pop(volatile)
        return {key: exact(value) for key, value in data.items()}


def check_attack(data: Any, stages: int, verification: str = "none", pipelines: int = 1) -> None:
    """Check that an attack plan (JSON data) can be mounted in ``pipelines`` pipelines of
    ``stages`` stages verified by ``verification``.

    Raises:
        ConfigError: The plan is malformed, names a stage that does not exist, or asks for an
            attack the engine cannot mount there (the message says why).
    """
    from stagewarden.runtime.attacks import TENSOR_KINDS, AttackKind, AttackPlan, Direction

    try:
        plan = AttackPlan.from_json(data)
    except ValueError as exc:
        raise ConfigError(f"attack: {exc}") from None
    bad = sorted(s for s in plan.stages | plan.covers if s >= stages)
    if bad:
        raise ConfigError(f"attack: stages {bad} do not exist in a pipeline of {stages} stages (0..{stages - 1})")
    outside = sorted(p for p in plan.pipelines if p >= pipelines)
    if outside:
        raise ConfigError(f"attack: pipelines {outside} do not exist in a run of {pipelines} (0..{pipelines - 1})")
    if plan.kind is AttackKind.FALSE_ACCUSE:
        if verification != "redundant_neighbour":
            raise ConfigError(
                "attack: false_accuse needs checking workers (verification redundant_neighbour); "
                f"under {verification} the only verifier is the coordinator"
            )
        if 0 in plan.stages:
            raise ConfigError("attack: stage 0 checks no stage; a false accusation comes from a stage s >= 1")
    if plan.kind in TENSOR_KINDS or plan.kind is AttackKind.EQUIVOCATE:
        # A stage that sends no such message may still be named: it colludes (as a checker) only.
        if plan.direction is Direction.FORWARD and plan.stages <= {stages - 1}:
            raise ConfigError(
                f"attack: the last stage ({stages - 1}) sends no activation; use direction backward for it"
            )
        if plan.direction is Direction.BACKWARD and plan.stages <= {0}:
            raise ConfigError("attack: stage 0 sends no gradient; use direction forward for it")
        if plan.direction is Direction.INPUT and 0 in plan.stages:
            raise ConfigError("attack: stage 0's input is token ids, not an activation; use poison_data for it")
    if plan.kind is AttackKind.EQUIVOCATE and plan.direction is Direction.INPUT:
        raise ConfigError("attack: equivocate acts on a message a stage sends: use direction forward or backward")


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run configuration written by :meth:`RunConfig.to_json` (raises :class:`ConfigError`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"cannot read the run configuration {path}: {exc}") from None
    return RunConfig.from_json(data)
