"""The wire contract between the coordinator and the stage workers: one frozen dataclass per
control message, each with :meth:`~.Message.to_wire` (the JSON object sent) and a strict
:meth:`~.Message.parse`, and the tensor groups that follow some of them.

A control message travels as one frame of canonical JSON (:meth:`Transport.send_json
<stagewarden.runtime.transport.Transport.send_json>`). Parsing is strict: an unknown ``type``, a
missing or unexpected key, a value of the wrong type, out of range or not in its one canonical
encoding (lower-case hex, ``float.hex`` text, decimal stage numbers as map keys) raises
:class:`.ProtocolError` with one line naming the message and the key. So whatever a parser accepts
is exactly what :meth:`~.Message.to_wire` of the parsed message gives back.

Three types name two messages each, told apart by their keys: ``snapshot`` is a request
(:class:`.SnapshotRequest`) or the state sent back (:class:`.Snapshot`), ``fetched`` a unit
(:class:`.Fetched`) or a refusal (:class:`.FetchUnavailable`), ``loaded`` a stage's state
(:class:`.Loaded`) or a checker's replica (:class:`.ReplicaLoaded`).
"""

from __future__ import annotations

from stagewarden.runtime.protocol.dispatch import MESSAGES, parse_message, receive, send_message, send_tensor_group
from stagewarden.runtime.protocol.fields import (
    FAILURE_CAUSES,
    INPUT_VIAS,
    MAX_ITEMS,
    UNIT_KINDS,
    Message,
    ProtocolError,
    TensorMeta,
)
from stagewarden.runtime.protocol.heads import Cosigned, WitnessHead
from stagewarden.runtime.protocol.replies import (
    Calibrated,
    CheckReport,
    Commit,
    ErrorReport,
    Evidence,
    Fetched,
    FetchUnavailable,
    Loaded,
    Pushed,
    ReplicaLoaded,
    Restored,
    Snapshot,
    TensorGroupMessage,
    UpdateCommitment,
    Updated,
)
from stagewarden.runtime.protocol.requests import (
    Admitted,
    Assign,
    Calibrate,
    Discard,
    Fetch,
    Hello,
    Idle,
    Load,
    Push,
    Ranks,
    Reattest,
    Refused,
    Release,
    Restore,
    Shutdown,
    SnapshotRequest,
    Step,
    Update,
)

__all__ = [
    "FAILURE_CAUSES",
    "INPUT_VIAS",
    "UNIT_KINDS",
    "MAX_ITEMS",
    "MESSAGES",
    "Admitted",
    "Assign",
    "Calibrate",
    "Calibrated",
    "CheckReport",
    "Commit",
    "Cosigned",
    "Discard",
    "ErrorReport",
    "Evidence",
    "Fetch",
    "FetchUnavailable",
    "Fetched",
    "Hello",
    "Idle",
    "Load",
    "Loaded",
    "Message",
    "ProtocolError",
    "Push",
    "Pushed",
    "Ranks",
    "Reattest",
    "Refused",
    "Release",
    "ReplicaLoaded",
    "Restore",
    "Restored",
    "Shutdown",
    "Snapshot",
    "SnapshotRequest",
    "Step",
    "TensorGroupMessage",
    "TensorMeta",
    "UpdateCommitment",
    "Update",
    "WitnessHead",
    "Updated",
    "parse_message",
    "receive",
    "send_message",
    "send_tensor_group",
]
