"""The aggregation rules of a stage's replicas: hand-computed cases, the masking each rule promises
(corrupted replicas with arbitrary values, up to the rule's tolerance), Krum's choice of an honest
contribution, bit-identical results (twice, under a permutation, over any block size and thread
count), and the refusal of bad input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stagewarden.runtime import aggregation
from stagewarden.runtime.aggregation import AGGREGATION_RULES, aggregate, check_rule, tolerated


def vec(*values: float) -> torch.Tensor:
    """A 1-D float32 contribution holding ``values``."""
    return torch.tensor(values, dtype=torch.float32)


def bits(tensor: torch.Tensor) -> list[int]:
    """The float32 bit patterns of a tensor, so that comparisons are bit for bit."""
    return tensor.view(torch.int32).tolist()


finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
#: Values whose float32 sums do not overflow, for comparisons with torch's float32 mean.
moderate = st.floats(-(2.0**100), 2.0**100, width=32)
#: Anything a corrupted replica may send: huge, infinite, NaN, or ordinary.
anything = st.one_of(
    st.floats(width=32),
    st.sampled_from([3.4e38, -3.4e38, math.inf, -math.inf, math.nan, 1e30, -1e30]),
)


@st.composite
def contribution_sets(
    draw: st.DrawFn, min_replicas: int = 1, max_replicas: int = 9, values: st.SearchStrategy[float] = finite
) -> list[torch.Tensor]:
    """Between ``min_replicas`` and ``max_replicas`` contributions of one length, drawn from ``values``."""
    replicas = draw(st.integers(min_replicas, max_replicas))
    length = draw(st.integers(0, 8))
    return [vec(*draw(st.lists(values, min_size=length, max_size=length))) for _ in range(replicas)]


@st.composite
def corrupted_sets(draw: st.DrawFn, rule: str) -> tuple[list[torch.Tensor], list[int], int]:
    """Honest replicas plus up to ``tolerated(rule, R)`` corrupted ones at drawn positions.

    The honest contributions are drawn freely (they need not agree); returns the contributions,
    the honest replicas' indices and the number of coordinates.
    """
    replicas = draw(st.integers(1, 9))
    length = draw(st.integers(1, 6))
    corrupted = draw(st.integers(0, tolerated(rule, replicas)))
    bad = set(draw(st.permutations(range(replicas)))[:corrupted])
    honest_values = st.lists(finite, min_size=length, max_size=length)
    bad_values = st.lists(anything, min_size=length, max_size=length)
    contributions = [vec(*draw(bad_values if r in bad else honest_values)) for r in range(replicas)]
    return contributions, [r for r in range(replicas) if r not in bad], length


# -- rules and their requirements -------------------------------------------------------------------


def test_rules_are_listed_in_order() -> None:
    """The rules are the plain mean and the spec's three robust rules."""
    assert AGGREGATION_RULES == ("mean", "median", "trimmed_mean", "krum")


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean"])
@pytest.mark.parametrize("replicas", [1, 2, 3, 10])
def test_averaging_and_sorting_rules_run_with_any_replica_count(rule: str, replicas: int) -> None:
    """mean, median and trimmed_mean run with one replica or more."""
    assert check_rule(rule, replicas) is None


def test_krum_needs_three_replicas() -> None:
    """krum runs from three replicas on and says why it cannot below that."""
    assert check_rule("krum", 3) is None
    assert check_rule("krum", 2) == (
        "krum needs at least 3 replicas (R >= 2f + 3 for f >= 0 corrupted ones), got 2: use median or mean"
    )


def test_unknown_rule_lists_the_rules() -> None:
    """An unknown rule is named, with the rules there are."""
    assert check_rule("average", 4) == (
        "unknown aggregation rule 'average': the rules are mean, median, trimmed_mean, krum"
    )


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_no_rule_runs_without_replicas(rule: str) -> None:
    """Zero replicas is refused by every rule."""
    assert check_rule(rule, 0) == "aggregation needs at least 1 replica, got 0"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("mean", [0, 0, 0, 0, 0, 0, 0, 0]),
        ("median", [0, 0, 1, 1, 2, 2, 3, 3]),
        ("trimmed_mean", [0, 0, 1, 1, 2, 2, 3, 3]),
    ],
)
def test_tolerance_of_averaging_and_sorting_rules(rule: str, expected: list[int]) -> None:
    """mean masks nothing; median and trimmed_mean mask fewer than half of R = 1..8."""
    assert [tolerated(rule, r) for r in range(1, 9)] == expected


def test_tolerance_of_krum() -> None:
    """krum masks the largest f with R >= 2f + 3, for R = 3..9."""
    assert [tolerated("krum", r) for r in range(3, 10)] == [0, 0, 1, 1, 2, 2, 3]


def test_tolerance_of_a_rule_that_cannot_run_is_refused() -> None:
    """Asking how much krum masks among two replicas raises the reason it cannot run."""
    with pytest.raises(ValueError, match="krum needs at least 3 replicas"):
        tolerated("krum", 2)


# -- hand-computed cases ----------------------------------------------------------------------------


def test_mean_by_hand() -> None:
    """The mean of (1, 2) and (3, 6) is (2, 4), and every replica entered it."""
    result = aggregate("mean", [vec(1, 2), vec(3, 6)])
    assert result.tensor.tolist() == [2.0, 4.0]
    assert result.selected == (0, 1)


def test_median_of_odd_replicas_by_hand() -> None:
    """The median of three replicas is taken coordinate by coordinate."""
    result = aggregate("median", [vec(1, 10, -5), vec(2, 0, 7), vec(3, 5, 1)])
    assert result.tensor.tolist() == [2.0, 5.0, 1.0]
    assert result.selected == (0, 1, 2)


def test_median_of_even_replicas_is_the_mean_of_the_middle_two() -> None:
    """With four replicas the median of (1, 2, 3, 10) is 2.5."""
    assert aggregate("median", [vec(10, 0), vec(1, -4), vec(3, 4), vec(2, 8)]).tensor.tolist() == [2.5, 2.0]


def test_trimmed_mean_by_hand() -> None:
    """Five replicas: the two smallest and the two largest values of each coordinate are dropped."""
    result = aggregate("trimmed_mean", [vec(100, 1), vec(1, 2), vec(2, 3), vec(3, 4), vec(-100, 5)])
    assert result.tensor.tolist() == [2.0, 3.0]


def test_trimmed_mean_of_two_replicas_is_their_mean() -> None:
    """With two replicas nothing is trimmed."""
    assert aggregate("trimmed_mean", [vec(1, -3), vec(4, 3)]).tensor.tolist() == [2.5, 0.0]


def test_krum_by_hand_with_four_replicas() -> None:
    """R = 4, f = 0, two neighbours: scores 5, 2, 5, 145 choose replica 1."""
    result = aggregate("krum", [vec(0), vec(1), vec(2), vec(10)])
    assert result.selected == (1,)
    assert result.tensor.tolist() == [1.0]


def test_krum_tie_goes_to_the_lowest_replica() -> None:
    """R = 5, f = 1: the values 1 and 3 both score 5; the lower replica index wins, whatever its value."""
    assert aggregate("krum", [vec(0), vec(1), vec(3), vec(4), vec(100)]).selected == (1,)
    result = aggregate("krum", [vec(0), vec(3), vec(1), vec(4), vec(100)])
    assert result.selected == (1,)
    assert result.tensor.tolist() == [3.0]


def test_krum_distances_are_over_all_coordinates() -> None:
    """Krum scores whole vectors: a replica close in one coordinate but far in another is not chosen."""
    result = aggregate("krum", [vec(0, 50), vec(0, 0), vec(1, 1), vec(2, 0)])
    assert result.selected == (2,)


def test_krum_ranks_a_non_finite_contribution_last() -> None:
    """A NaN contribution is everyone's farthest neighbour: R = 5 picks value 3 (scores 13, 5, 10, big)."""
    assert aggregate("krum", [vec(math.nan), vec(1), vec(3), vec(4), vec(100)]).selected == (2,)


def test_krum_chooses_an_infinite_score_only_when_no_score_is_finite() -> None:
    """With every contribution holding an infinity, the tie among infinite scores goes to replica 0."""
    assert aggregate("krum", [vec(math.inf), vec(-math.inf), vec(math.inf)]).selected == (0,)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_empty_contributions_give_an_empty_result(rule: str) -> None:
    """Contributions with no coordinates aggregate to an empty tensor."""
    result = aggregate(rule, [vec(), vec(), vec()])
    assert result.tensor.shape == (0,)
    assert result.tensor.dtype == torch.float32


# -- properties -------------------------------------------------------------------------------------


def assert_mean_close(actual: torch.Tensor, expected: torch.Tensor, contributions: list[torch.Tensor]) -> None:
    """Two means of the same contributions differ by rounding only: at most 1e-5 of the mean magnitude."""
    magnitude = torch.stack(contributions).to(torch.float64).abs().mean(dim=0)
    error = (actual.to(torch.float64) - expected.to(torch.float64)).abs()
    assert bool((error <= 1e-5 * magnitude).all()), (actual, expected)


@given(contribution_sets(values=moderate))
def test_mean_equals_torch_mean(contributions: list[torch.Tensor]) -> None:
    """The mean rule is torch.mean over the replicas, up to float rounding."""
    expected = torch.stack(contributions).mean(dim=0)
    assert_mean_close(aggregate("mean", contributions).tensor, expected, contributions)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
@pytest.mark.parametrize("replicas", [3, 4, 5])
@pytest.mark.parametrize("outlier", [3.4e38, -3.4e38, math.inf, -math.inf, math.nan, 1e6])
def test_one_outlier_replica_is_masked(rule: str, replicas: int, outlier: float) -> None:
    """With R = 3, 4, 5 agreeing honest replicas, one replica sending an outlier changes nothing."""
    honest = vec(0.25, -7.0, 1e-3)
    for position in range(replicas):
        contributions = [honest.clone() for _ in range(replicas)]
        contributions[position] = vec(outlier, -outlier, outlier)
        assert bits(aggregate(rule, contributions).tensor) == bits(honest)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
@given(data=st.data())
def test_agreeing_honest_value_survives_up_to_the_tolerance(rule: str, data: st.DataObject) -> None:
    """Up to tolerated(rule, R) corrupted replicas with arbitrary values leave the honest value exact."""
    replicas = data.draw(st.integers(1, 9), label="replicas")
    honest = vec(*data.draw(st.lists(finite.filter(lambda x: x != 0.0), min_size=1, max_size=6), label="honest"))
    corrupted = data.draw(st.integers(0, tolerated(rule, replicas)), label="corrupted")
    bad = data.draw(st.permutations(range(replicas)), label="order")[:corrupted]
    contributions = [honest.clone() for _ in range(replicas)]
    for r in bad:
        contributions[r] = vec(*data.draw(st.lists(anything, min_size=honest.numel(), max_size=honest.numel())))
    assert bits(aggregate(rule, contributions).tensor) == bits(honest)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
@given(data=st.data())
def test_result_stays_within_the_honest_values(rule: str, data: st.DataObject) -> None:
    """With corrupted replicas up to the tolerance, each coordinate lies between the honest extremes."""
    contributions, honest, length = data.draw(corrupted_sets(rule))
    result = aggregate(rule, contributions).tensor
    low = torch.stack([contributions[r] for r in honest]).min(dim=0).values
    high = torch.stack([contributions[r] for r in honest]).max(dim=0).values
    assert result.shape == (length,)
    assert bool(((low <= result) & (result <= high)).all())


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
@pytest.mark.parametrize("replicas", [3, 4, 5, 6])
def test_one_corrupted_replica_beyond_the_tolerance_moves_the_result(rule: str, replicas: int) -> None:
    """The tolerance is tight: tolerated + 1 corrupted replicas sending a huge value move the result."""
    honest = vec(1.0)
    contributions = [honest.clone() for _ in range(replicas)]
    for r in range(tolerated(rule, replicas) + 1):
        contributions[r] = vec(1e30)
    assert aggregate(rule, contributions).tensor.item() > 1.0


def test_mean_is_moved_by_a_single_corrupted_replica() -> None:
    """mean tolerates nothing: one replica of five drags the result."""
    contributions = [vec(1.0) for _ in range(4)] + [vec(1e30)]
    assert aggregate("mean", contributions).tensor.item() > 1e29


@given(data=st.data())
def test_krum_picks_an_honest_replica_when_the_corrupted_are_far(data: st.DataObject) -> None:
    """With f corrupted replicas far from honest ones that lie in [-1, 1] per coordinate, Krum chooses an honest one."""
    replicas = data.draw(st.integers(3, 9), label="replicas")
    length = data.draw(st.integers(1, 6), label="length")
    faulty = tolerated("krum", replicas)
    bad = set(data.draw(st.permutations(range(replicas)), label="order")[:faulty])
    collude = data.draw(st.booleans(), label="collude")
    unit = st.floats(-1, 1, width=32)
    far = st.one_of(
        st.floats(min_value=2.0**14, allow_infinity=False, width=32),
        st.floats(max_value=-(2.0**14), allow_infinity=False, width=32),
        st.sampled_from([math.inf, -math.inf, math.nan]),
    )
    shared = vec(*data.draw(st.lists(far, min_size=length, max_size=length), label="shared"))
    contributions = []
    for r in range(replicas):
        if r in bad:
            drawn = vec(*data.draw(st.lists(far, min_size=length, max_size=length)))
            contributions.append(shared.clone() if collude else drawn)
        else:
            contributions.append(vec(*data.draw(st.lists(unit, min_size=length, max_size=length))))
    result = aggregate("krum", contributions)
    (chosen,) = result.selected
    assert chosen not in bad
    assert bits(result.tensor) == bits(contributions[chosen])


def naive_krum_scores(contributions: list[torch.Tensor]) -> tuple[torch.Tensor, list[float]]:
    """Squared distances of every pair and Krum scores, computed directly with torch in float64."""
    replicas = len(contributions)
    neighbours = replicas - tolerated("krum", replicas) - 2
    stacked = torch.stack(contributions).to(torch.float64)
    distances = ((stacked[:, None, :] - stacked[None, :, :]) ** 2).sum(dim=2)
    scores = []
    for i in range(replicas):
        others = sorted(distances[i, j].item() for j in range(replicas) if j != i)
        scores.append(math.fsum(others[:neighbours]))
    return distances, scores


@given(data=st.data())
def test_krum_choice_stays_near_the_honest_contributions(data: st.DataObject) -> None:
    """With f corrupted replicas (any finite values), the choice is honest or within the best honest score of one."""
    replicas = data.draw(st.integers(3, 9), label="replicas")
    length = data.draw(st.integers(1, 5), label="length")
    bad = set(data.draw(st.permutations(range(replicas)), label="order")[: tolerated("krum", replicas)])
    values = st.lists(moderate, min_size=length, max_size=length)
    contributions = [vec(*data.draw(values)) for _ in range(replicas)]
    (chosen,) = aggregate("krum", contributions).selected
    distances, scores = naive_krum_scores(contributions)
    honest = [r for r in range(replicas) if r not in bad]
    if chosen in bad:
        nearest_honest = min(distances[chosen, h].item() for h in honest)
        assert nearest_honest <= min(scores[h] for h in honest) * (1 + 1e-9)


@given(contribution_sets(min_replicas=3))
def test_krum_score_is_lowest_for_the_chosen_replica(contributions: list[torch.Tensor]) -> None:
    """The chosen replica's Krum score, recomputed naively in float64, is the minimum."""
    _, scores = naive_krum_scores(contributions)
    (chosen,) = aggregate("krum", contributions).selected
    best = min(scores)
    # the naive sum rounds differently, so the chosen score is the best up to rounding
    assert scores[chosen] <= best * (1 + 1e-9)


@given(contribution_sets())
def test_trimmed_mean_coincides_with_the_median(contributions: list[torch.Tensor]) -> None:
    """With t = floor((R - 1) / 2), trimmed_mean and median agree bit for bit, as documented."""
    assert bits(aggregate("trimmed_mean", contributions).tensor) == bits(aggregate("median", contributions).tensor)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
@given(contributions=contribution_sets(), data=st.data())
def test_sorting_rules_ignore_replica_order(rule: str, contributions: list[torch.Tensor], data: st.DataObject) -> None:
    """median and trimmed_mean give the same bits for any order of the replicas."""
    shuffled = data.draw(st.permutations(contributions))
    assert bits(aggregate(rule, shuffled).tensor) == bits(aggregate(rule, contributions).tensor)


@given(contributions=contribution_sets(), data=st.data())
def test_mean_ignores_replica_order_up_to_rounding(contributions: list[torch.Tensor], data: st.DataObject) -> None:
    """The mean of the replicas in another order differs by rounding at most."""
    shuffled = data.draw(st.permutations(contributions))
    assert_mean_close(aggregate("mean", shuffled).tensor, aggregate("mean", contributions).tensor, contributions)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
@given(data=st.data())
def test_same_input_gives_the_same_bits(rule: str, data: st.DataObject) -> None:
    """Aggregating the same contributions twice gives identical bits and the same selection."""
    contributions = data.draw(contribution_sets(min_replicas=3 if rule == "krum" else 1))
    first = aggregate(rule, contributions)
    second = aggregate(rule, [c.clone() for c in contributions])
    assert bits(first.tensor) == bits(second.tensor)
    assert first.selected == second.selected


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean"])
def test_result_never_holds_negative_zero(rule: str) -> None:
    """A coordinate that is zero comes out as +0.0, whatever the replicas' signs of zero or their order."""
    for contributions in ([vec(-0.0), vec(0.0), vec(-0.0)], [vec(0.0), vec(-0.0), vec(-0.0)]):
        assert bits(aggregate(rule, contributions).tensor) == [0]


def _large_contributions(replicas: int, length: int) -> list[torch.Tensor]:
    """Seeded random contributions long enough to span several blocks when blocks are made small."""
    gen = torch.Generator().manual_seed(1234)
    return [torch.randn(length, generator=gen, dtype=torch.float32) * (r + 1) for r in range(replicas)]


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_block_size_does_not_change_the_bits(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Aggregating in blocks of 7 coordinates (and Krum in odd-sized blocks) gives the same bits as in one block."""
    contributions = _large_contributions(5, 1001)
    whole = aggregate(rule, contributions)
    monkeypatch.setattr(aggregation, "_BLOCK", 7)
    monkeypatch.setattr(aggregation, "_KRUM_BLOCK_ELEMENTS", 10 * 12)
    blocked = aggregate(rule, contributions)
    assert bits(blocked.tensor) == bits(whole.tensor)
    assert blocked.selected == whole.selected


def test_krum_distances_match_a_float64_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked pairwise-tree distances equal torch's float64 sum up to rounding, for any block size."""
    contributions = _large_contributions(4, 999)
    stacked = torch.stack(contributions).to(torch.float64)
    reference = ((stacked[:, None, :] - stacked[None, :, :]) ** 2).sum(dim=2)
    for elements in (1 << 22, 6 * 5, 6 * 64, 6):
        monkeypatch.setattr(aggregation, "_KRUM_BLOCK_ELEMENTS", elements)
        distances = torch.tensor(aggregation._squared_distances(contributions), dtype=torch.float64)
        torch.testing.assert_close(distances, reference, rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_thread_count_does_not_change_the_bits(rule: str) -> None:
    """One thread and four threads aggregate a long vector to the same bits."""
    contributions = _large_contributions(5, 300_001)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = aggregate(rule, contributions)
        torch.set_num_threads(4)
        several = aggregate(rule, contributions)
    finally:
        torch.set_num_threads(threads)
    assert bits(single.tensor) == bits(several.tensor)
    assert single.selected == several.selected


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_contributions_are_left_alone_and_the_result_is_new(rule: str) -> None:
    """Aggregation modifies no contribution, and writing to the result touches none of them."""
    contributions = [vec(1, 2), vec(3, 5), vec(4, 9)]
    before = [c.clone() for c in contributions]
    result = aggregate(rule, contributions).tensor
    result.fill_(-1.0)
    for kept, original in zip(contributions, before, strict=True):
        assert bits(kept) == bits(original)


def test_gradient_tracking_inputs_give_a_plain_tensor() -> None:
    """Contributions that require grad produce a result outside autograd."""
    contributions = [vec(1, 2).requires_grad_(), vec(3, 4).requires_grad_(), vec(5, 7).requires_grad_()]
    for rule in AGGREGATION_RULES:
        assert not aggregate(rule, contributions).tensor.requires_grad


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "contributions", "message"),
    [
        ("mean", [], "aggregation needs at least one contribution, got none"),
        ("mean", [vec(1), [1.0]], "contribution 1 is a list, not a tensor"),
        ("median", [vec(1), torch.zeros(2, 2)], r"contribution 1 has shape \(2, 2\); each contribution must be 1-D"),
        ("median", [torch.tensor(1.0)], r"contribution 0 has shape \(\); each contribution must be 1-D"),
        (
            "trimmed_mean",
            [vec(1), torch.zeros(1, dtype=torch.float64)],
            "contribution 1 has dtype torch.float64; each contribution must be torch.float32",
        ),
        (
            "krum",
            [vec(1, 2), vec(1, 2), vec(1)],
            "contribution 2 has 1 values but contribution 0 has 2; all contributions must have one length",
        ),
        (
            "mean",
            [vec(1), torch.zeros(1, device="meta")],
            "contribution 1 is on meta but contribution 0 is on cpu; all contributions must be on one device",
        ),
        ("krum", [vec(1), vec(2)], "krum needs at least 3 replicas"),
        ("average", [vec(1)], "unknown aggregation rule 'average'"),
    ],
)
def test_bad_input_is_refused_with_one_sentence(rule: str, contributions: Sequence[torch.Tensor], message: str) -> None:
    """Each malformed call raises ValueError with a message that names the problem."""
    with pytest.raises(ValueError, match=message):
        aggregate(rule, contributions)


def test_distance_sums_follow_a_fixed_pairwise_tree() -> None:
    """Krum's partial sums add halves elementwise: (1e16, 1, -1e16, 1) sums to 2, where left to right gives 1."""
    values = torch.tensor([[1e16, 1.0, -1e16, 1.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    assert aggregation._tree_sum(values).tolist() == [2.0, 10.0]
    odd = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0]], dtype=torch.float64)
    assert aggregation._tree_sum(odd).tolist() == [31.0]
