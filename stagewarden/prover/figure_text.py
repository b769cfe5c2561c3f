"""Text for a computed figure beside the bound it is compared with.

A figure and its bound are rounded for display independently, so two values that differ only in
their fifth digit would both print as ``0.75`` and a verdict would read ``0.75 < 0.75``. The
functions here round a pair together: with more significant digits until the shown values differ
(12 at most), and beyond that one of them is written as the other plus or minus the difference.
Values that are exactly equal print identically.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from typing import Literal, TypeAlias

from stagewarden.prover.probability import Prob
from stagewarden.prover.verdict import Figure

#: A number as the prover holds it: exact, a float, or a probability that may be either.
Number: TypeAlias = Fraction | float | int | Prob
#: How a figure reads: a probability (``1 - 1e-06`` near one) or a cost fraction (``0.833``).
Style: TypeAlias = Literal["probability", "cost"]

#: Figures that are fractions of unprotected training rather than probabilities.
COST_FIGURES = frozenset({"extra compute", "extra memory"})
#: Most significant digits shown before the figure is written as ``bound +/- difference``.
MAX_DIGITS = 12
#: Probabilities above this are written as their distance to one (``1 - 2.5e-07``).
_NEAR_ONE = Fraction(999, 1000)
_NEAR_ZERO = Fraction(1, 1000)


def exact_value(value: Number | str) -> Fraction:
    """The exact rational a number stands for (a float's own binary value; ``"p/q"`` text parsed)."""
    if isinstance(value, Prob):
        return value.exact if value.exact is not None else Fraction(value.value)
    if isinstance(value, str):
        return Fraction(value)
    return Fraction(value)


def _rounded(value: Fraction, digits: int) -> Decimal:
    """``value`` correctly rounded to ``digits`` significant digits."""
    context = Context(prec=digits, rounding=ROUND_HALF_EVEN, Emin=-(10**9), Emax=10**9)
    return context.divide(Decimal(value.numerator), Decimal(value.denominator))


def _decimal_text(value: Decimal) -> str:
    """``value`` as Python's ``g`` format writes it, without trailing zeros: ``0.05``, ``1.97e-07``."""
    value = value.normalize()
    if value == 0:
        return "0"
    sign, digits, _ = value.as_tuple()
    exponent = value.adjusted()
    if exponent < -4 or exponent >= max(len(digits), 6):
        mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        return f"{'-' if sign else ''}{mantissa}e{exponent:+03d}"
    return format(value, "f")


def _default_digits(value: Fraction, style: Style) -> int:
    if style == "probability" and _NEAR_ZERO <= value <= _NEAR_ONE:
        return 4
    return 3


def _shown(value: Fraction, digits: int, style: Style) -> tuple[str, Fraction]:
    """The text of ``value`` at ``digits`` significant digits, and the number that text reads as."""
    if style == "probability" and value in (0, 1):
        return str(value), value
    if style == "probability" and _NEAR_ONE < value < 1:
        distance = _rounded(1 - value, digits)
        return f"1 - {_decimal_text(distance)}", 1 - Fraction(distance)
    rounded = _rounded(value, digits)
    return _decimal_text(rounded), Fraction(rounded)


def format_number(value: Number | str, style: Style = "probability") -> str:
    """One figure on its own: a probability compactly (``0.05``, ``1 - 1e-06``), a cost to three
    significant digits."""
    exact = exact_value(value)
    return _shown(exact, _default_digits(exact, style), style)[0]


def format_pair(value: Number | str, bound: Number | str, style: Style = "probability") -> tuple[str, str]:
    """``value`` and ``bound`` as text whose shown numbers order as the exact ones do.

    Rounding is monotone, so once the two shown numbers differ they differ in the right
    direction; equal values print identically.
    """
    a, b = exact_value(value), exact_value(bound)
    extra = 0
    while True:
        a_text, a_shown = _shown(a, _default_digits(a, style) + extra, style)
        b_text, b_shown = _shown(b, _default_digits(b, style) + extra, style)
        if a == b or a_shown != b_shown:
            return a_text, b_text
        if max(_default_digits(a, style), _default_digits(b, style)) + extra >= MAX_DIGITS:
            break
        extra += 1
    # Too close for digits: write one as the other plus or minus the difference, anchored on
    # whichever the text shows exactly (the bound when neither is).
    difference = _decimal_text(_rounded(abs(a - b), 3))
    if a_shown == a and b_shown != b:
        return a_text, f"{a_text} {'+' if b > a else '-'} {difference}"
    return f"{b_text} {'+' if a > b else '-'} {difference}", b_text


def format_comparison(value: Number | str, relation: str, bound: Number | str, style: Style = "probability") -> str:
    """``value relation bound`` as text, e.g. ``0.74999 < 0.75``, rounded by :func:`format_pair`."""
    value_text, bound_text = format_pair(value, bound, style)
    return f"{value_text} {relation} {bound_text}"


def format_figure(figure: Figure) -> tuple[str, str]:
    """A verdict's figure and its bound as text, exact where the figure carries the rationals, in
    the style its name calls for (extra compute and memory are costs)."""
    style: Style = "cost" if figure.name in COST_FIGURES else "probability"
    value = figure.exact if figure.exact is not None else figure.value
    bound = figure.bound_exact if figure.bound_exact is not None else figure.bound
    return format_pair(value, bound, style)
