"""Differential test: the Z3 prover agrees with the independent brute-force checker on random small
specs (S <= 5, R <= 2, budget <= 2, every scheme, capability and guarantee kind)."""

from __future__ import annotations

import random
from collections import Counter

from bruteforce import brute_force
from random_specs import random_loaded_spec

from stagewarden.prover import verify

SPECS = 300


def test_prover_agrees_with_brute_force() -> None:
    """On 300 random specs every verdict agrees, and so do the figures where both compute one."""
    rng = random.Random(20261128)
    kinds: Counter[tuple[str, str]] = Counter()
    disagreements = []
    for index in range(SPECS):
        loaded = random_loaded_spec(rng)
        expected = brute_force(loaded.spec)
        for result in verify(loaded).guarantees:
            reference = expected[result.id]
            kinds[(result.kind, result.verdict)] += 1
            same = result.verdict == reference.verdict
            exact_figure = result.kind in ("detection", "overhead") or (result.kind == "bounded_damage" and result.verdict == "violated")
            if same and exact_figure and reference.figure is not None and result.figure is not None:
                scale = max(1.0, abs(float(reference.figure)))
                same = abs(float(reference.figure) - result.figure.value) <= 1e-9 * scale
            if not same:
                disagreements.append((index, result.id, result.verdict, reference.verdict, loaded.text))
    assert not disagreements, disagreements[:3]
    # The random specs exercise both verdicts of every guarantee kind.
    for kind in ("detection", "bounded_damage", "no_framing", "liveness", "data_integrity", "overhead"):
        assert kinds[(kind, "holds")] > 0 and kinds[(kind, "violated")] > 0, kind
