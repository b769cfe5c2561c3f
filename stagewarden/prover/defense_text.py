"""Writing a defence into a spec: the ``defense:`` block as YAML ready to paste, and the spec's
own text with that block in place, every other line kept where it was so that a proof of the
new text cites the user's line numbers."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from stagewarden.spec import Defense, LoadedSpec, SpecError, load_text


def _yaml() -> YAML:
    yaml = YAML(typ="rt", pure=True)
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.default_flow_style = False
    yaml.width = 100
    return yaml


def _block_map(defense: dict[str, Any]) -> CommentedMap:
    block = CommentedMap()
    for key, value in defense.items():
        if key == "checks":
            checks = CommentedSeq(CommentedMap(c) for c in value)
            if not value:
                checks.fa.set_flow_style()
            block[key] = checks
        elif key == "response":
            response = CommentedSeq(value)
            response.fa.set_flow_style()
            block[key] = response
        else:
            block[key] = value
    return block


def defense_yaml(defense: dict[str, Any]) -> str:
    """A ``defense:`` block as YAML, ready to paste in place of a spec's own."""
    out = io.StringIO()
    document = CommentedMap()
    document["defense"] = _block_map(defense)
    _yaml().dump(document, out)
    return out.getvalue()


def proof_file(file: str) -> str:
    """The file the spec with a synthesized defence is written to, and the name its proof cites:
    ``X.synthesized.yaml`` beside a spec ``X.yaml``; ``NAME.synthesized.yaml`` in the working
    folder for a packaged example ``example:NAME``."""
    if file.startswith("example:"):
        return file.removeprefix("example:") + ".synthesized.yaml"
    for suffix in (".yaml", ".yml", ".json"):
        if file.endswith(suffix):
            return file[: -len(suffix)] + ".synthesized.yaml"
    return file + ".synthesized.yaml"


def spec_text_with(loaded: LoadedSpec, defense: dict[str, Any], standby: int) -> str:
    """The spec's text with its ``defense:`` block replaced (and ``topology.standby`` set).

    Lines outside the block keep their place and their comments where the spec is block-style
    YAML; otherwise the whole document is written out again.
    """
    text = _splice(loaded, defense, standby)
    if text is not None:
        try:
            check = load_text(text, proof_file(loaded.file))
        except SpecError:
            check = None
        if (
            check is not None
            and check.spec.defense == Defense.model_validate(defense)
            and check.spec.topology.standby == standby
        ):
            return text
    return _rewrite(loaded, defense, standby)


def _splice(loaded: LoadedSpec, defense: dict[str, Any], standby: int) -> str | None:
    """Edit the text in place: the ``defense`` block's lines and the standby value."""
    source = loaded.source
    if loaded.file.endswith(".json"):
        return None
    top = {path[0]: pos for path, pos in source.keys.items() if len(path) == 1}
    if any(col != 0 for _, col in top.values()):
        return None
    lines = loaded.text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    edits: list[tuple[int, int, list[str]]] = []  # (start, end, replacement lines)
    block = defense_yaml(defense).splitlines(keepends=True)
    if "defense" in top:
        start = top["defense"][0]
        later = sorted(line for line, _ in top.values() if line > start)
        end = later[0] if later else len(lines)
        while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
            end -= 1
        edits.append((start, end, block))
    else:
        at = top["guarantees"][0] if "guarantees" in top else len(lines)
        edits.append((at, at, block + ["\n"]))
    if standby != loaded.spec.topology.standby or source.has(("topology", "standby")):
        if source.has(("topology", "standby")):
            line, col = source.values[("topology", "standby")]
            match = re.match(r"\d+", lines[line][col:])
            if match is None:
                return None
            edits.append((line, line + 1, [lines[line][:col] + str(standby) + lines[line][col + match.end() :]]))
        else:
            children = [pos for path, pos in source.keys.items() if len(path) == 2 and path[0] == "topology"]
            if "topology" not in top or not children or any(line <= top["topology"][0] for line, _ in children):
                return None
            line = max(line for line, _ in children)
            edits.append((line + 1, line + 1, [" " * children[0][1] + f"standby: {standby}\n"]))
    for start, end, replacement in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[start:end] = replacement
    return "".join(lines)


def _rewrite(loaded: LoadedSpec, defense: dict[str, Any], standby: int) -> str:
    """Write the whole document again (for JSON specs and flow-style YAML)."""
    yaml = _yaml()
    document: Any = json.loads(loaded.text) if loaded.file.endswith(".json") else yaml.load(loaded.text)
    if not isinstance(document, CommentedMap):
        document = CommentedMap(document)
    document["defense"] = _block_map(defense)
    if standby != loaded.spec.topology.standby or "standby" in document.get("topology", {}):
        document["topology"]["standby"] = standby
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()
