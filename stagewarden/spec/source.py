"""Source maps: where each key and value of a loaded spec stands in its file."""

from __future__ import annotations

from dataclasses import dataclass, field

from stagewarden.spec.errors import SourceLocation

#: A path into the spec document: mapping keys and sequence indices, from the root.
Path = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Positions (0-based internally) of every value and mapping key of a spec document."""

    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def _loc(self, pos: tuple[int, int]) -> SourceLocation:
        return SourceLocation(self.file, pos[0] + 1, pos[1] + 1)

    def value(self, path: Path) -> SourceLocation:
        """Where the value at ``path`` starts; falls back to the nearest enclosing value."""
        for n in range(len(path), -1, -1):
            pos = self.values.get(path[:n])
            if pos is not None:
                return self._loc(pos)
        return SourceLocation(self.file, 1, 1)

    def key(self, path: Path) -> SourceLocation:
        """Where the mapping key that names ``path`` stands (the value's position for list items)."""
        pos = self.keys.get(path)
        if pos is not None:
            return self._loc(pos)
        return self.value(path)

    def has(self, path: Path) -> bool:
        """Whether the document spells out ``path`` (as opposed to it taking its default)."""
        return path in self.values
