"""A stage's share of data parallelism: before its update, a worker exchanges its accumulated
gradients (its *contribution*) with the same stage of the other replicas and replaces them with
their aggregate (:mod:`stagewarden.runtime.aggregation`).

The exchange is point to point over the run's transport: each worker posts its contribution to
every worker whose group takes it and then receives its own group's, in replica order (a group
holds one copy per replica, :meth:`~stagewarden.runtime.layout.Layout.group`). The group is what the
coordinator's last map of slots names (a replica taken out of the run is not in it), which a fixed
``torch.distributed`` subgroup could not follow: gloo subgroups are made by every rank at start, so
a standby taking a slot mid-run would have none.

Every contribution a worker receives must be the one its sender committed to before the update:
the coordinator sends each worker the digests the group's commitments named (``Update``), and a
contribution with another digest is refused before anything is aggregated: the receiver reports
the failure, which is its word against the sender's (the bytes it received are not evidence), so
the run stops without blaming either. Every replica then aggregates the same contributions
with the same deterministic rule, so honest replicas apply bit-identical updates.
"""

from __future__ import annotations

import torch

from stagewarden.attest.tensor_digest import gradients_digest
from stagewarden.runtime.aggregation import aggregate
from stagewarden.runtime.transport import Transport, TransportError


def flat_gradients(module: torch.nn.Module) -> torch.Tensor:
    """The stage's accumulated gradients in parameter order, one vector.

    Raises:
        TransportError: A parameter has no gradient (the step computed no backward unit).
    """
    grads = [p.grad for p in module.parameters()]
    if any(g is None for g in grads):
        raise TransportError("the stage has parameters without gradients: it has nothing to contribute")
    return torch.cat([g.detach().reshape(-1) for g in grads if g is not None])


def shaped_digest(module: torch.nn.Module, flat: torch.Tensor) -> bytes:
    """The :func:`~stagewarden.attest.tensor_digest.gradients_digest` of ``flat`` read as the
    stage's gradients (one tensor per parameter, in order): what the sender's gradient trace
    committed to, when ``flat`` is its contribution."""
    views, offset = [], 0
    for p in module.parameters():
        views.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    if offset != flat.numel():
        raise TransportError(f"a contribution of {flat.numel()} values does not fit the stage's {offset} parameters")
    return gradients_digest(views, flat)


def exchange(
    module: torch.nn.Module,
    transport: Transport,
    group: list[tuple[int, str]],
    own_rank: int,
    own: torch.Tensor,
    expected: tuple[bytes, ...],
    audience: list[int] | None = None,
    *,
    sent: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Send ``own`` to ``audience`` (the ranks whose group takes it; by default every other
    member of ``group``) and return every member of ``group`` (``(rank, worker id)`` in replica
    order)'s contribution in that order, each checked against ``expected`` (the committed
    digests, in the same order). ``sent``, when given, goes out instead of ``own`` (a test hook's
    equivocating replica).

    Raises:
        TransportError: A receive failed, or a contribution is not the committed one (``peer``
            is its sender).
    """
    if len(expected) != len(group):
        raise TransportError(
            f"the update names {len(expected)} committed contributions for a group of {len(group)} replicas"
        )
    for rank in audience if audience is not None else [rank for rank, _ in group if rank != own_rank]:
        transport.send_tensor(rank, own if sent is None else sent, blocking=False)
    out: list[torch.Tensor] = []
    for (rank, worker), digest in zip(group, expected, strict=True):
        if rank == own_rank:
            out.append(own)
            continue
        got = transport.recv_tensor(rank, own.dtype, tuple(own.shape)).to(own.device)
        if shaped_digest(module, got) != digest:
            raise TransportError(
                f"worker {worker} sent another gradient contribution than the one it committed to", peer=rank
            )
        out.append(got)
    transport.flush()
    return out


def apply_aggregate(module: torch.nn.Module, rule: str, contributions: list[torch.Tensor]) -> torch.Tensor:
    """Replace the stage's gradients with the aggregate of ``contributions`` under ``rule``;
    return the aggregate (flat, parameter order)."""
    flat = aggregate(rule, contributions).tensor
    offset = 0
    with torch.no_grad():
        for p in module.parameters():
            chunk = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            p.grad = chunk.clone()
    return flat
