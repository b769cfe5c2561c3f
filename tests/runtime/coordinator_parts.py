"""The coordinator's collaborators built through their public constructors, on a scripted
transport and without a run directory, for the tests of one collaborator at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.coordinator.accusations import DetectionSigner
from stagewarden.runtime.coordinator.checks import Checks
from stagewarden.runtime.coordinator.commitments import Commitments
from stagewarden.runtime.coordinator.context import CurrentAttempt, RunContext
from stagewarden.runtime.coordinator.ledger import Ledger
from stagewarden.runtime.coordinator.reexecution import Reexecution
from stagewarden.runtime.coordinator.roster import Roster
from stagewarden.runtime.coordinator.sealing import Sealer
from stagewarden.runtime.coordinator.tally import RunTally
from stagewarden.runtime.route import Route


class Parts:
    """A context and the state-owning collaborators over it: roster, ledger, tally, signer,
    re-execution, and the current computation (no stage bypassed unless ``bypass``); and the
    collaborators that work on them: the commitments and the checks."""

    def __init__(
        self, config: RunConfig, transport: Any, run_id: str = "run", bypass: int | None = None, signing_key: Any = None
    ) -> None:
        self.ctx = RunContext(
            config=config,
            transport=transport,
            run_dir=Path("no-run-dir"),
            keys_dir=Path("no-run-dir.keys"),
            vendor_dir=None,
            heartbeats=None,
            run_id=run_id,
            session=0,
        )
        self.ctx.log = None
        self.ctx.signing_key = signing_key if signing_key is not None else SigningKey.generate()
        self.current = CurrentAttempt(Route(config.stages, bypass), bypass)
        self.roster = Roster(self.ctx)
        self.ledger = Ledger(self.ctx)
        self.tally = RunTally(self.ctx, self.roster, self.ledger)
        self.signer = DetectionSigner(self.ctx, self.roster)
        self.reexec = Reexecution(self.ctx, self.roster, self.ledger, self.tally, self.signer)
        self.sealer = Sealer(self.ctx, self.roster)
        self.commitments = Commitments(self.ctx, self.roster, self.tally, self.current, self.sealer)
        self.checks = Checks(self.ctx, self.roster, self.ledger, self.tally, self.signer, self.reexec, self.current)
