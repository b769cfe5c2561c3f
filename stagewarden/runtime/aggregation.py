"""Aggregation of the replicas' weight updates of one stage: the plain mean and the robust rules.

With data-parallel replicas, the ``R`` workers of a stage each compute a gradient on their own data
shard, exchange them, and every one of them applies the same rule to the ``R`` contributions, so
that all replicas take the identical optimizer step. A contribution is a 1-D ``float32`` tensor (a
stage's flattened gradient); contributions are given in replica order.

Rules, the replicas ``R`` each needs (:func:`check_rule`) and how many corrupted contributions each
masks by construction (:func:`tolerated`):

``mean``
    The coordinate-wise average, ordinary data parallelism. Runs with ``R >= 1``; masks nothing
    (tolerates 0): one corrupted contribution moves the result arbitrarily far.
``median``
    The coordinate-wise median. For an even ``R`` the median is the mean of the two middle values.
    Runs with ``R >= 1``; tolerates ``floor((R - 1) / 2)`` corrupted contributions, the largest
    number that is fewer than half (so none for ``R <= 2``). Where the honest contributions agree
    on a coordinate, the result equals their value; in general it lies between the smallest and
    the largest honest value of the coordinate.
``trimmed_mean``
    Per coordinate, the ``t`` smallest and ``t`` largest values are dropped and the rest averaged,
    with ``t = floor((R - 1) / 2)``. Runs with ``R >= 1``; tolerates ``t``. This trim is what the
    spec's claim (masks fewer than half the replicas) requires, and with it the rule keeps one
    value (odd ``R``) or the two middle values (even ``R``): it coincides with ``median`` for
    every ``R``, bit for bit. The name is kept so that a spec's choice is carried out as written.
``krum``
    Krum (Blanchard et al., 2017) with ``f = floor((R - 3) / 2)``, the largest ``f`` with
    ``R >= 2f + 3``. The score of contribution ``i`` is the sum of its squared Euclidean distances
    to its ``R - f - 2`` nearest other contributions; the contribution with the lowest score is
    returned unchanged (ties go to the lowest replica index). Runs with ``R >= 3`` (below that no
    neighbour is left to score against); tolerates ``f``, so ``R = 3`` and ``R = 4`` mask nothing
    and ``R = 5`` masks one. Krum's masking is of another kind than the median's: with at most
    ``f`` corrupted contributions, a corrupted one is chosen only if its squared distance to some
    honest contribution is at most the lowest score of an honest one (at least two of its scored
    neighbours are honest), so the update stays near the honest ones but need not equal any of them.

Non-finite values are values, not errors. ``mean`` propagates them. ``median`` and
``trimmed_mean`` order them as ``torch.sort`` does (``NaN`` after ``+inf``), so contributions
holding ``NaN`` or infinities are masked like any other outlier, up to the rule's tolerance.
``krum`` counts a squared distance that is not finite (a contribution holding ``NaN`` or an
infinity) as ``+inf``: such a contribution is everyone's farthest neighbour and its own score is
infinite, so it is chosen only when no contribution has a finite score.

Determinism: every process that aggregates the same contributions in the same order, with the same
version of this module, gets a bit-identical result and selection, whatever its thread count or
CPU vector width (the payload of a ``NaN`` in the result excepted). Only elementwise IEEE 754
operations, which round exactly, and sorts are used: sums over replicas run in a fixed order in
``float64``; Krum's squared distances are summed in ``float64`` by a fixed pairwise tree of
elementwise additions within a block and by ``math.fsum`` (exactly rounded) across blocks; no
library reduction, whose order of additions depends on the hardware, takes part. The same argument
covers a CUDA device, which rounds these operations alike; the tests check the CPU, across thread
counts and block sizes. ``median`` and ``trimmed_mean`` are moreover exactly invariant under a
permutation of the replicas (a result never holds ``-0.0``); ``mean`` is invariant up to rounding.

Memory: the contributions are processed in blocks of coordinates, so besides the result only one
block of ``R`` rows (and, for Krum, of the replica pairs) is held at a time; there is no loop over
single coordinates in Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

#: The name of an aggregation rule.
AggregationRule = Literal["mean", "median", "trimmed_mean", "krum"]

#: Every aggregation rule, in the order the documentation lists them.
AGGREGATION_RULES: tuple[AggregationRule, ...] = get_args(AggregationRule)

#: Coordinates aggregated at a time by the sort-based and averaging rules.
_BLOCK = 1 << 18

#: Elements (replica pairs times coordinates) held at a time by Krum's distance computation.
_KRUM_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class Aggregate:
    """The result of aggregating the contributions of one stage's replicas."""

    #: The aggregated update, a new 1-D ``float32`` tensor on the contributions' device.
    tensor: torch.Tensor
    #: The replicas whose values entered the result, in ascending order. Every replica for
    #: ``mean``, ``median`` and ``trimmed_mean`` (which value of a coordinate survives depends on
    #: the coordinate); the one chosen replica for ``krum``.
    selected: tuple[int, ...]


def check_rule(rule: str, replicas: int) -> str | None:
    """Say whether ``rule`` can aggregate the contributions of ``replicas`` replicas.

    Args:
        rule: The name of an aggregation rule.
        replicas: The number of replicas ``R`` of the stage.

    Returns:
        ``None`` when the rule can run, else one sentence that says why not.
    """
    if rule not in AGGREGATION_RULES:
        names = ", ".join(AGGREGATION_RULES)
        return f"unknown aggregation rule {rule!r}: the rules are {names}"
    if replicas < 1:
        return f"aggregation needs at least 1 replica, got {replicas}"
    if rule == "krum" and replicas < 3:
        return (
            f"krum needs at least 3 replicas (R >= 2f + 3 for f >= 0 corrupted ones), got {replicas}: "
            "use median or mean"
        )
    return None


def tolerated(rule: str, replicas: int) -> int:
    """How many corrupted contributions ``rule`` masks by construction among ``replicas``.

    Args:
        rule: The name of an aggregation rule.
        replicas: The number of replicas ``R`` of the stage.

    Returns:
        0 for ``mean``, ``floor((R - 1) / 2)`` for ``median`` and ``trimmed_mean``,
        ``floor((R - 3) / 2)`` for ``krum``.

    Raises:
        ValueError: The rule cannot run with ``replicas`` replicas (see :func:`check_rule`).
    """
    problem = check_rule(rule, replicas)
    if problem is not None:
        raise ValueError(problem)
    if rule == "mean":
        return 0
    if rule == "krum":
        return (replicas - 3) // 2
    return (replicas - 1) // 2


def aggregate(rule: str, contributions: Sequence[torch.Tensor]) -> Aggregate:
    """Aggregate the contributions of a stage's replicas with ``rule``.

    Args:
        rule: The name of an aggregation rule.
        contributions: One 1-D ``float32`` tensor per replica, in replica order, all of one length
            and on one device. They are not modified.

    Returns:
        The aggregated update (always a new tensor) and the replicas whose values entered it.

    Raises:
        ValueError: The rule is unknown or cannot run with this many replicas, or the
            contributions are empty or not 1-D ``float32`` tensors of one length on one device.
    """
    _check_contributions(contributions)
    problem = check_rule(rule, len(contributions))
    if problem is not None:
        raise ValueError(problem)
    everyone = tuple(range(len(contributions)))
    masked = tolerated(rule, len(contributions))
    with torch.no_grad():
        if rule == "mean":
            return Aggregate(_trimmed_mean(contributions, trim=0, sort=False), everyone)
        if rule in ("median", "trimmed_mean"):
            return Aggregate(_trimmed_mean(contributions, trim=masked, sort=True), everyone)
        chosen = _krum_choice(contributions, faulty=masked)
        return Aggregate(contributions[chosen].clone(), (chosen,))


def _check_contributions(contributions: Sequence[torch.Tensor]) -> None:
    """Raise :class:`ValueError` unless the contributions are 1-D float32 tensors of one length and device."""
    if len(contributions) == 0:
        raise ValueError("aggregation needs at least one contribution, got none")
    first = contributions[0]
    for index, tensor in enumerate(contributions):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"contribution {index} is a {type(tensor).__name__}, not a tensor")
        if tensor.dim() != 1:
            raise ValueError(f"contribution {index} has shape {tuple(tensor.shape)}; each contribution must be 1-D")
        if tensor.dtype != torch.float32:
            raise ValueError(f"contribution {index} has dtype {tensor.dtype}; each contribution must be torch.float32")
        if tensor.numel() != first.numel():
            raise ValueError(
                f"contribution {index} has {tensor.numel()} values but contribution 0 has {first.numel()}; "
                "all contributions must have one length"
            )
        if tensor.device != first.device:
            raise ValueError(
                f"contribution {index} is on {tensor.device} but contribution 0 is on {first.device}; "
                "all contributions must be on one device"
            )


def _trimmed_mean(contributions: Sequence[torch.Tensor], trim: int, sort: bool) -> torch.Tensor:
    """Per coordinate, drop the ``trim`` smallest and largest values (after sorting) and average the rest.

    The kept rows are summed one after another in float64, starting from ``+0.0`` (so a ``-0.0``
    never survives), divided by their count and rounded to float32: only elementwise operations,
    in a fixed order.
    """
    replicas, length = len(contributions), contributions[0].numel()
    kept = replicas - 2 * trim
    out = torch.empty(length, dtype=torch.float32, device=contributions[0].device)
    for start in range(0, length, _BLOCK):
        stop = min(start + _BLOCK, length)
        rows = [c[start:stop] for c in contributions]
        if sort:
            block = torch.stack(rows)  # (R, B)
            rows = list(torch.sort(block, dim=0, stable=True).values[trim : replicas - trim])
        total = torch.zeros(stop - start, dtype=torch.float64, device=out.device)
        for row in rows:
            total += row.to(torch.float64)
        out[start:stop] = (total / kept).to(torch.float32)
    return out


def _krum_choice(contributions: Sequence[torch.Tensor], faulty: int) -> int:
    """The index of the contribution with the lowest Krum score (ties to the lowest index)."""
    replicas = len(contributions)
    distances = _squared_distances(contributions)
    neighbours = replicas - faulty - 2
    scores: list[float] = []
    for i in range(replicas):
        nearest = sorted(distances[i][j] for j in range(replicas) if j != i)[:neighbours]
        scores.append(math.fsum(nearest))
    return min(range(replicas), key=lambda i: (scores[i], i))


def _squared_distances(contributions: Sequence[torch.Tensor]) -> list[list[float]]:
    """The squared Euclidean distance of every pair of contributions, ``+inf`` where it is not finite.

    Each block of coordinates gives one float64 partial sum per pair, summed by ``_tree_sum``;
    the partial sums of a pair are added with ``math.fsum``, which rounds exactly and so does
    not depend on their order.
    """
    replicas, length = len(contributions), contributions[0].numel()
    first, second = torch.triu_indices(replicas, replicas, offset=1, device=contributions[0].device)
    pairs = first.numel()
    block_length = max(1, _KRUM_BLOCK_ELEMENTS // pairs)
    partials: list[list[float]] = [[] for _ in range(pairs)]
    for start in range(0, length, block_length):
        stop = min(start + block_length, length)
        block = torch.stack([c[start:stop] for c in contributions]).to(torch.float64)  # (R, B)
        difference = block[first] - block[second]  # (P, B)
        for pair, value in enumerate(_tree_sum(difference * difference).tolist()):
            partials[pair].append(value)
    distances = [[0.0] * replicas for _ in range(replicas)]
    for pair, (i, j) in enumerate(zip(first.tolist(), second.tolist(), strict=True)):
        values = partials[pair]
        # finite float32 inputs give squares below 1e78, so the exact sum cannot overflow a float64
        total = math.fsum(values) if all(math.isfinite(v) for v in values) else math.inf
        distances[i][j] = distances[j][i] = total
    return distances


def _tree_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum each row of a 2-D tensor by halving it with elementwise additions, a fixed pairwise tree.

    Unlike ``torch.sum``, whose order of additions depends on the device, the vector width and
    the thread count, this gives the same bits everywhere.
    """
    while values.shape[1] > 1:
        width = values.shape[1]
        half = width // 2
        folded = values[:, :half] + values[:, half : 2 * half]
        if width % 2:
            folded[:, -1] += values[:, -1]
        values = folded
    if values.shape[1] == 0:
        return torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    return values[:, 0]
