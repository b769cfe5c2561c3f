"""A figure beside its bound never reads as an impossible comparison such as ``0.75 < 0.75``: the
shown values order as the exact ones do, equal values print identically, and the verdict text of
a real spec shows the digits that tell a rate of 0.74999 from a bound of 0.75."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from stagewarden.cli import cli
from stagewarden.prover.figure_text import (
    MAX_DIGITS,
    Style,
    format_comparison,
    format_figure,
    format_number,
    format_pair,
)
from stagewarden.prover.probability import Prob, format_probability
from stagewarden.prover.verdict import Figure

_TERM = re.compile(r" ([+-]) ")


def shown(text: str) -> Fraction:
    """The number a figure's text reads as: ``0.75``, ``1.97e-07``, ``1 - 1e-06``, ``0.75 - 1e-30``."""
    first, *rest = _TERM.split(text)
    value = Fraction(first)
    for sign, term in zip(rest[::2], rest[1::2], strict=True):
        value += Fraction(term) if sign == "+" else -Fraction(term)
    return value


def _sign(x: Fraction) -> int:
    return (x > 0) - (x < 0)


CLOSE_PAIRS = [
    (Fraction(74999, 100000), Fraction(3, 4)),  # the 5th significant digit
    (Fraction(749999, 1000000), Fraction(3, 4)),  # the 6th
    (Fraction(3, 4) - Fraction(1, 10**11), Fraction(3, 4)),  # the 11th
    (Fraction(3, 4) - Fraction(1, 10**30), Fraction(3, 4)),  # beyond MAX_DIGITS
    (1 - Fraction(1, 10**7), 1 - Fraction(1, 10**6)),  # near one
    (1 - Fraction(1, 10**20), Fraction(1)),  # closer to one than a float can tell
    (Fraction(999, 1000), Fraction(9990001, 10**7)),  # across the "1 - x" style boundary
    (Fraction(1, 3), Fraction(1, 3) + Fraction(1, 10**20)),
    (Fraction(197, 10**9), Fraction(1971, 10**10)),  # small probabilities
    (Fraction(0), Fraction(1, 10**20)),
]


@pytest.mark.parametrize("style", ["probability", "cost"])
@pytest.mark.parametrize(
    ("value", "bound"), CLOSE_PAIRS, ids=[f"{float(a):.6g}-vs-{float(b):.6g}" for a, b in CLOSE_PAIRS]
)
def test_close_values_show_their_difference(value: Fraction, bound: Fraction, style: Style) -> None:
    """Values that differ only far down print differently, and in the order of the exact values
    (both ways round)."""
    for a, b in ((value, bound), (bound, value)):
        a_text, b_text = format_pair(a, b, style)
        assert a_text != b_text
        assert _sign(shown(a_text) - shown(b_text)) == _sign(a - b), (a_text, b_text)


def test_the_fifth_digit_is_shown() -> None:
    """The motivating case: a rate of 0.74999 against a bound of 0.75."""
    assert format_comparison(Fraction(74999, 100000), "<", Fraction(3, 4)) == "0.74999 < 0.75"
    assert format_comparison(Fraction(3, 4), ">=", Fraction(74998, 100000)) == "0.75 >= 0.74998"


@pytest.mark.parametrize(
    "value", [Fraction(0), Fraction(1), Fraction(3, 4), Fraction(1, 3), 1 - Fraction(1, 10**6), 0.05]
)
def test_equal_values_print_identically(value: Fraction | float) -> None:
    """Exactly equal values print the same, compactly, whatever form each arrives in."""
    a_text, b_text = format_pair(value, Fraction(value))
    assert a_text == b_text == format_number(value)
    assert format_comparison(value, ">=", value) == f"{a_text} >= {a_text}"


def test_a_lone_figure_reads_as_before() -> None:
    """Apart from a pair that needs it, a probability prints as compactly as ever."""
    for value in (0.0, 1.0, 0.05, 1.97e-07, 0.9999, 0.5, 2.5e-05, 0.999, 0.123456):
        assert format_number(value) == format_probability(value)
    assert format_number(Fraction(5, 6), "cost") == "0.833"


def test_a_log_space_probability_is_compared_by_its_value() -> None:
    """A probability known only as a float (computed in log space) is shown from that float."""
    a_text, b_text = format_pair(Prob(0.2500000001), Fraction(1, 4))
    assert shown(a_text) > shown(b_text)


@given(
    st.fractions(min_value=0, max_value=1, max_denominator=10**40),
    st.fractions(min_value=0, max_value=1, max_denominator=10**40),
    st.sampled_from(["probability", "cost"]),
)
def test_the_shown_order_is_the_exact_order(a: Fraction, b: Fraction, style: Style) -> None:
    """For any two values the shown numbers compare as the exact ones do, and neither takes
    more than MAX_DIGITS significant digits."""
    a_text, b_text = format_pair(a, b, style)
    assert _sign(shown(a_text) - shown(b_text)) == _sign(a - b), (a, b, a_text, b_text)
    for text in (a_text, b_text):
        for term in _TERM.split(text)[::2]:
            digits = re.sub(r"e.*$", "", term).replace(".", "").lstrip("0")
            assert len(digits) <= MAX_DIGITS, text


def test_a_figure_uses_its_exact_rationals() -> None:
    """A verdict figure is shown from its exact value and bound, not from their floats (which
    are both 1.0 here)."""
    figure = Figure(
        "detection probability", 1.0, 1.0, ">=", exact=f"{10**20 - 10}/{10**20}", bound_exact=f"{10**20 - 1}/{10**20}"
    )
    value, bound = format_figure(figure)
    assert shown(value) < shown(bound)
    assert format_figure(Figure("extra compute", 5 / 6, 0.8333, "<=", exact="5/6", bound_exact="8333/10000")) == (
        "0.83333",
        "0.8333",
    )


CLOSE_SPEC = """\
version: 1
name: close-to-the-bound
topology:
  stages: 4
adversary:
  max_malicious: 1
  capabilities: [tamper_activations]
defense:
  receipts: true
  checks:
    - scheme: spot_check
      rate: 0.74999
  response: [rollback]
guarantees:
  - id: just-below
    kind: detection
    probability: 0.75
  - id: just-above
    kind: detection
    probability: 0.74998
  - id: exact
    kind: detection
    probability: 0.74999
"""

_NUMBER = r"\d[\d.e+-]*(?: [+-] \d[\d.e+-]*)*"
#: "A < B" in a sentence; "A (needs >= B)" in the figure column; ">= B (worst case A)" in a summary.
_COMPARISONS = [
    (re.compile(rf"(?<![\w.])({_NUMBER}) (<=|>=|<|>) ({_NUMBER})(?! \(worst)"), (0, 1, 2)),
    (re.compile(rf"({_NUMBER}) \(needs (<=|>=) ({_NUMBER})\)"), (0, 1, 2)),
    (re.compile(rf"(>=) ({_NUMBER}) \(worst case ({_NUMBER})\)"), (2, 0, 1)),
]
_HOLDS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def comparisons(text: str) -> list[tuple[str, str, str, bool]]:
    """Every comparison of two numbers that ``text`` prints, as (value, relation, bound, whether
    it is claimed to hold). The figure column states what a guarantee needs: the need is met
    on a row that holds, and not on a row that is violated."""
    found = []
    for line in text.splitlines():
        for number, (pattern, (a, op, b)) in enumerate(_COMPARISONS):
            claimed = number != 1 or "violated" not in line
            found += [(match[a], match[op], match[b], claimed) for match in pattern.findall(line)]
    return found


def test_verify_text_never_prints_an_impossible_comparison(tmp_path: Path) -> None:
    """``verify`` on a spot-check rate of 0.74999: every comparison it prints holds for the
    numbers as shown, and the figure column shows the 5th digit where the bound differs."""
    spec = tmp_path / "close.yaml"
    spec.write_text(CLOSE_SPEC, encoding="utf-8")
    result = CliRunner().invoke(cli, ["verify", str(spec)])
    out = result.stdout
    assert result.exit_code == 1, out
    found = comparisons(out)
    assert len(found) >= 6, (found, out)
    for a, op, b, claimed in found:
        assert _HOLDS[op](shown(a), shown(b)) == claimed, f"{a} {op} {b} should {'' if claimed else 'not '}hold"
    assert "detected with probability 0.74999 < 0.75" in out
    assert "0.74999 (needs >= 0.75)" in out
    assert "0.74999 (needs >= 0.74998)" in out
    assert ">= 0.74998 (worst case 0.74999)" in out
    assert "0.75 (needs >= 0.75)" in out  # the "exact" guarantee: the same value on both sides
