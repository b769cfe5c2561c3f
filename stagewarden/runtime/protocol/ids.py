"""Who is who in a run: the coordinator's rank and the ids of stage workers, standbys and devices."""

from __future__ import annotations

#: The coordinator's rank.
COORDINATOR = 0


def worker_id_for(stage: int, replica: int = 0) -> str:
    """The id of the worker running ``stage`` of ``replica`` (``s<stage>r<replica>``)."""
    return f"s{stage}r{replica}"


def standby_id_for(index: int) -> str:
    """The id of standby worker ``index`` (``standby<index>``)."""
    return f"standby{index}"


def device_id_for(rank: int) -> str:
    """The simulated device id of the process of ``rank``."""
    return f"sim-device-{rank}"
