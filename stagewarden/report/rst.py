"""Small reStructuredText writers for the generated report: escaped text, headings, tables."""

from __future__ import annotations

import re
from collections.abc import Sequence

_SPECIAL = re.compile(r"([\\`*_|\[\]<>])")


def text(value: object) -> str:
    """``value`` as inline text: one line, every markup character escaped."""
    flat = " ".join(str(value).split())
    escaped = _SPECIAL.sub(r"\\\1", flat)
    if escaped and not escaped[0].isalnum() and escaped[0] != "\\":
        escaped = "\\" + escaped
    return escaped


def literal(value: object) -> str:
    """``value`` as an inline literal (empty text gives an empty string)."""
    flat = " ".join(str(value).split())
    if not flat:
        return ""
    return ":literal:`" + flat.replace("\\", "\\\\").replace("`", "\\`") + "`"


def heading(title: str, char: str) -> str:
    """A section title underlined with ``char``."""
    return f"{title}\n{char * max(len(title), 3)}\n"


def label(name: str) -> str:
    """A label name made of lowercase letters, digits and hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[int] | None = None, caption: str = ""
) -> str:
    """A ``list-table`` of cells that are already reStructuredText (use :func:`text` on plain values)."""
    lines = [f".. list-table:: {caption}".rstrip(), "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [list(header), *[list(r) for r in rows]]:
        for i, cell in enumerate(row):
            lines.append(("   * - " if i == 0 else "     - ") + (cell if cell.strip() else "\\ "))
    return "\n".join(lines) + "\n"


def image(path: str, alt: str, width: str = "100%") -> str:
    """An image directive."""
    return f".. image:: {path}\n   :alt: {' '.join(alt.split())}\n   :width: {width}\n"


def number(value: float | None) -> str:
    """A probability or ratio for a table: 4 significant digits, ``-`` when absent."""
    if value is None:
        return "\\-"
    return f"{value:.4g}"
