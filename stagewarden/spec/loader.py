"""Loading a spec from YAML or JSON, keeping source locations, and turning every problem into
``file:line:column: message`` diagnostics.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from stagewarden.spec import model as m
from stagewarden.spec.errors import SourceLocation, SpecDiagnostic, SpecError
from stagewarden.spec.semantics import check_semantics
from stagewarden.spec.source import Path, SourceMap

#: Largest spec file accepted, in bytes.
MAX_SPEC_BYTES = 1 << 20
#: Deepest nesting of mappings and sequences accepted.
MAX_DEPTH = 32
#: Most mapping entries and sequence items accepted in one document.
MAX_NODES = 100_000

_TOO_DEEP = f"the document is nested more than {MAX_DEPTH} levels deep"
_NO_ANCHORS = "YAML anchors and aliases (&name, *name) are not allowed in a spec: write each value out"


@dataclass
class LoadedSpec:
    """A validated spec together with where each of its parts stands in the source."""

    spec: m.Spec
    source: SourceMap
    text: str
    warnings: list[SpecDiagnostic] = field(default_factory=list)

    @property
    def file(self) -> str:
        """The name the spec was loaded under (a path, or ``example:NAME``)."""
        return self.source.file


def _fail(file: str, line: int, column: int, message: str) -> SpecError:
    return SpecError([SpecDiagnostic(SourceLocation(file, line, column), message)])


def _did_you_mean(word: object, choices: list[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        close = [c for c in choices if c.lower() == word.lower().replace("-", "_")]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _quoted(word: object) -> str:
    """``word`` in quotes for a one-line message; escaped where it holds a newline or a quote."""
    text = str(word)
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


def _line_col_of_offset(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _decode(raw: bytes, file: str) -> str:
    if b"\x00" in raw:
        line, column = _line_col_of_offset(raw.decode("latin-1"), raw.index(b"\x00"))
        raise _fail(file, line, column, "the file is binary (it contains a NUL byte), not a YAML or JSON spec")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_col_of_offset(raw[: exc.start].decode("utf-8", "replace"), exc.start)
        raise _fail(file, line, column, "the file is not UTF-8 text") from None
    return text.removeprefix("\ufeff")


def _plain(node: Any, path: Path, source: SourceMap, depth: int, seen: set[int], file: str) -> Any:
    """Copy the ruamel tree into plain Python values, recording positions and enforcing limits."""
    if depth > MAX_DEPTH:
        line, column = source.value(path).line, source.value(path).column
        raise _fail(file, line, column, _TOO_DEEP)
    if getattr(getattr(node, "anchor", None), "value", None) is not None:
        loc = source.value(path)
        raise _fail(file, loc.line, loc.column, _NO_ANCHORS)
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag is not None:
        loc = source.value(path)
        shown = str(tag).replace("tag:yaml.org,2002:", "!!")
        raise _fail(file, loc.line, loc.column, f"YAML tags ({shown}) are not allowed in a spec: write the plain value")
    if isinstance(node, (CommentedMap, CommentedSeq)):
        if id(node) in seen:
            loc = source.value(path)
            raise _fail(file, loc.line, loc.column, _NO_ANCHORS)
        seen.add(id(node))
        if len(seen) > MAX_NODES:
            raise _fail(file, 1, 1, f"the document has more than {MAX_NODES} nodes")
    if isinstance(node, CommentedMap):
        merged = list(getattr(node, "merge", None) or [])
        if merged:  # "<<: {...}"; point at the first merged mapping
            first = merged[0][1] if isinstance(merged[0], tuple) else merged[0]
            has_lc = hasattr(first, "lc")
            loc = SourceLocation(file, first.lc.line + 1, first.lc.col + 1) if has_lc else source.value(path)
            message = "YAML merge keys (<<) are not allowed in a spec: write each key out"
            raise _fail(file, loc.line, loc.column, message)
        out: dict[str, Any] = {}
        for raw_key in node:
            line, column = node.lc.key(raw_key)
            if not isinstance(raw_key, str):
                raise _fail(file, line + 1, column + 1, f"mapping keys must be strings, got {_describe(raw_key)}")
            key = _unicode(str(raw_key), file, line + 1, column + 1)
            if key in out:
                raise _fail(file, line + 1, column + 1, f"YAML syntax error: duplicate key {_quoted(key)}")
            sub = (*path, key)
            source.keys[sub] = node.lc.key(raw_key)
            source.values[sub] = node.lc.value(raw_key)
            if node[raw_key] is None and source.values[sub][0] != source.keys[sub][0]:
                # An empty value ("stages:") has no position of its own: ruamel gives the next token's.
                source.values[sub] = source.keys[sub]
            if len(source.values) > MAX_NODES:
                raise _fail(file, 1, 1, f"the document has more than {MAX_NODES} nodes")
            out[key] = _plain(node[raw_key], sub, source, depth + 1, seen, file)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, item in enumerate(node):
            sub = (*path, index)
            source.values[sub] = node.lc.item(index)
            if len(source.values) > MAX_NODES:
                raise _fail(file, 1, 1, f"the document has more than {MAX_NODES} nodes")
            items.append(_plain(item, sub, source, depth + 1, seen, file))
        return items
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        loc = source.value(path)
        return _unicode(str(node), file, loc.line, loc.column)
    return node


_SURROGATES = re.compile("[\ud800-\udfff]")


def _unicode(text: str, file: str, line: int, column: int) -> str:
    """Join the surrogate pairs of JSON escapes (\\ud83d\\ude00), which the YAML reader keeps
    apart; a lone surrogate is not a character."""
    if not _SURROGATES.search(text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        message = "the string holds a lone surrogate escape (\\ud800 to \\udfff), which is not a character"
        raise _fail(file, line, column, message) from None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, AbstractSet):
        return "a set"
    if isinstance(value, date):
        return "a date"
    return f"a {type(value).__name__}"


class _Constructor(RoundTripConstructor):
    """ruamel's round-trip constructor, but a scalar it cannot build (a date such as 2024-13-45,
    an integer beyond Python's digit limit, ``!!int x``) becomes a located YAML error instead of a
    bare ``ValueError``."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            reason = "the number has too many digits" if "digits" in str(exc) else f"cannot read the value ({exc})"
            raise ConstructorError(problem=reason, problem_mark=node.start_mark) from None


def _yaml_error(exc: MarkedYAMLError, file: str) -> SpecError:
    """A located diagnostic for a YAML syntax (or value) error."""
    mark = exc.problem_mark or exc.context_mark
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    if "maximum depth of data structure exceeded" in problem and mark is not None:
        return _fail(file, mark.line + 1, mark.column + 1, _TOO_DEEP)
    if "found duplicate key" in problem:
        key = re.search(r'found duplicate key "([^"]*)"', problem)
        problem = f"duplicate key '{key.group(1)}'" if key else "duplicate key"
    elif problem.startswith("but ") and exc.context:
        # "but found another document" reads only after its context ("expected a single document ...").
        problem = f"{exc.context.strip()}, {problem}"
    elif exc.context and exc.context_mark is not None and exc.problem and exc.context_mark is not mark:
        # Where the construct that the problem breaks starts, e.g. an unclosed '['.
        start = exc.context_mark
        problem = f"{problem} ({exc.context.strip()} at line {start.line + 1}, column {start.column + 1})"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    what = "invalid YAML value" if isinstance(exc, ConstructorError) else "YAML syntax error"
    return _fail(file, line, column, f"{what}: {problem}")


def _reader_failure(text: str, file: str, exc: Exception) -> SpecError:
    """The diagnostic for a document that ruamel's round-trip reader fails on internally (it
    raises NotImplementedError for some comment placements, e.g. ``key: >`` then ``: # note``)."""
    safe = YAML(typ="safe", pure=True)
    safe.max_depth = MAX_DEPTH + 1
    try:
        safe.load(text)
    except MarkedYAMLError as syntax:
        return _yaml_error(syntax, file)
    except Exception:
        pass  # fall through to the round-trip reader's own complaint
    if "comment" not in str(exc):
        return _fail(file, 1, 1, f"YAML error: the YAML reader failed ({type(exc).__name__}: {str(exc)[:200]!r})")
    # The reader's message names the token it stumbled on: "CommentToken('# note', line: 1, col: 2)".
    where = re.search(r"line: (\d+), col: (\d+)", str(exc))
    line, column = (int(where.group(1)) + 1, int(where.group(2)) + 1) if where else (1, 1)
    return _fail(file, line, column, "YAML error: the YAML reader cannot handle the comment here (remove or move it)")


def _parse(text: str, file: str) -> tuple[Any, SourceMap]:
    source = SourceMap(file)
    if file.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(file, exc.lineno, exc.colno, f"JSON syntax error: {exc.msg}") from None
        except (RecursionError, ValueError):
            pass  # too deep, or an integer beyond the digit limit: the YAML reader locates it
    directive = re.search(r"(?m)^%", text)
    if directive is not None and not file.endswith(".json"):
        line, column = _line_col_of_offset(text, directive.start())
        raise _fail(
            file,
            line,
            column,
            "YAML directives (%YAML, %TAG) are not allowed in a spec: they change how values are read",
        )
    yaml = YAML(typ="rt", pure=True)
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    # Stop composing at the depth limit: ruamel's scanner slows down quadratically with nesting,
    # and 1000 nested lists would take seconds to reach Python's recursion limit.
    yaml.max_depth = MAX_DEPTH + 1
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from None
    except YAMLError as exc:
        raise _fail(file, 1, 1, f"YAML error: {str(exc).strip().splitlines()[0]}") from None
    except RecursionError:
        raise _fail(file, 1, 1, _TOO_DEEP) from None
    except Exception as exc:  # a failure inside the round-trip reader is still bad input
        raise _reader_failure(text, file, exc) from None
    if tree is None:
        raise _fail(
            file, 1, 1, "the spec is empty: expected a mapping with version, name, topology, adversary and guarantees"
        )
    if getattr(getattr(tree, "lc", None), "line", None) is not None:
        source.values[()] = (tree.lc.line, tree.lc.col)
    if not isinstance(tree, CommentedMap):
        loc, got = source.value(()), _describe(_plain(tree, (), source, 0, set(), file))
        raise _fail(file, loc.line, loc.column, f"the spec must be a mapping of keys to values, got {got}")
    data = _plain(tree, (), source, 0, set(), file)
    return data, source


# -- pydantic errors to diagnostics ------------------------------------------------------


def _model_for(path: Path, data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (following union tags in ``data``)."""
    current: type[BaseModel] | None = m.Spec
    node = data
    index = 0
    while index < len(path):
        if current is None:
            return None
        key = path[index]
        info = current.model_fields.get(str(key))
        if info is None or not isinstance(node, dict):
            return None
        node = node.get(str(key))
        annotation = info.annotation
        index += 1
        target = _unwrap(annotation, node)
        if target == "list":
            if index >= len(path) or not isinstance(node, list):
                return None
            position = path[index]
            if not isinstance(position, int) or position >= len(node):
                return None
            node = node[position]
            index += 1
            target = _unwrap(_list_item(annotation), node)
        current = target if isinstance(target, type) else None
    return current


def _list_item(annotation: Any) -> Any:
    from typing import get_args

    for arg in get_args(annotation) or (annotation,):
        inner = get_args(arg)
        if inner:
            return inner[0]
    return None


def _unwrap(annotation: Any, node: Any) -> Any:
    """Pick the model class an annotation stands for, given the data it validates."""
    from typing import Annotated, Union, get_args, get_origin

    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0], node)
    if origin is list:
        return "list"
    if origin is Union or origin is types.UnionType:
        candidates = [a for a in get_args(annotation) if a is not type(None)]
        if any(get_origin(c) is list for c in candidates):
            return "list"
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        for model_cls in models:
            tag_field = next((n for n in ("scheme", "kind") if n in model_cls.model_fields), None)
            if tag_field and isinstance(node, dict):
                expected = get_args(model_cls.model_fields[tag_field].annotation)
                if node.get(tag_field) in expected:
                    return model_cls
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
}

_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the spec"


def _resolve(loc: tuple[Any, ...], data: Any) -> Path:
    """Map a pydantic location onto a path of the document, dropping union branch names."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            continue
        path.append(part)
    return tuple(path)


def _diagnostic_for(error: Any, data: Any, source: SourceMap) -> tuple[Path, SpecDiagnostic]:
    kind = error["type"]
    loc = tuple(error["loc"])
    path = _resolve(loc, data)
    value = error.get("input")
    name = _dotted(path)

    if kind == "extra_forbidden":
        key = loc[-1]
        parent = path[:-1] if path and path[-1] == key else path
        model_cls = _model_for(parent, data)
        allowed = sorted(model_cls.model_fields) if model_cls else []
        hint = _did_you_mean(key, allowed)
        where = f" in {_dotted(parent)}" if parent else ""
        known = f"; allowed keys: {', '.join(allowed)}" if allowed and not hint else ""
        full = (*parent, key)
        return full, SpecDiagnostic(source.key(full), f"unknown key {_quoted(key)}{where}{hint}{known}")
    if kind == "missing":
        key = loc[-1]
        parent = path
        where = f" in {_dotted(parent)}" if parent else ""
        return parent, SpecDiagnostic(
            source.key(parent) if parent else source.value(()), f"missing required key '{key}'{where}"
        )
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        tag_name = ctx.get("discriminator", "").strip("'")
        choices = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        tag = ctx.get("tag")
        what = "check scheme" if tag_name == "scheme" else "guarantee kind"
        full = (*path, tag_name)
        actual = value.get(tag_name) if isinstance(value, dict) else tag
        if not isinstance(actual, str):
            return full, SpecDiagnostic(
                source.value(full), f"{_dotted(full)} must be a {what} ({', '.join(choices)}), got {_describe(actual)}"
            )
        return full, SpecDiagnostic(
            source.value(full),
            f"unknown {what} {_quoted(tag)}{_did_you_mean(tag, choices)}; expected one of: {', '.join(choices)}",
        )
    if kind == "union_tag_not_found":
        tag_name = error.get("ctx", {}).get("discriminator", "").strip("'")
        return path, SpecDiagnostic(source.value(path), f"missing required key '{tag_name}' in {name}")
    if kind == "literal_error" and path == ("version",):
        if isinstance(value, (dict, list)):
            return path, SpecDiagnostic(source.value(path), f"version must be 1, got {_describe(value)}")
        if value is None or isinstance(value, (bool, int, float)):
            shown = json.dumps(value)  # as written in YAML: null, true, 1.0
        else:
            shown = _describe(value).removeprefix("the string ")
        message = f"unsupported spec version {shown}: this stagewarden reads version 1"
        return path, SpecDiagnostic(source.value(path), message)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'|(\b\d+\b)", error.get("ctx", {}).get("expected", ""))
        options = [a or b for a, b in choices]
        return path, SpecDiagnostic(
            source.value(path),
            f"{name}: {_describe(value)} is not allowed{_did_you_mean(value, options)}; expected one of: "
            f"{', '.join(options)}",
        )
    if kind in _TYPE_NAMES:
        return path, SpecDiagnostic(source.value(path), f"{name} must be {_TYPE_NAMES[kind]}, got {_describe(value)}")
    if kind in _BOUNDS:
        bound = next(iter(error.get("ctx", {}).values()), "?")
        return path, SpecDiagnostic(source.value(path), f"{name} must be {_BOUNDS[kind]} {bound}, got {value}")
    if kind in ("too_short", "string_too_short"):
        return path, SpecDiagnostic(source.value(path), f"{name} must not be empty")
    if kind == "string_pattern_mismatch":
        return path, SpecDiagnostic(
            source.value(path),
            f"{name}: {_describe(value)} is not a valid id "
            "(letters, digits, '_', '.', '-'; not starting with '.' or '-')",
        )
    if kind == "value_error":
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        # "must be ..." reads as a sentence about the value: "x must be >= 0", not "x: must be >= 0".
        message = f"{name} {message}" if message.startswith("must ") else f"{name}: {message}"
        return path, SpecDiagnostic(source.value(path), message)
    return path, SpecDiagnostic(source.value(path), f"{name}: {error.get('msg', 'invalid value')}")


_UNION_EXPECTATIONS = {
    ("trust", "honest"): "a stage index (3) or a worker ('3:1')",
    ("trust", "tee"): "a stage index (3) or a worker ('3:1')",
    ("adversary", "max_malicious"): "a whole number (2) or a percentage ('10%')",
}


def _union_message(path: Path, value: Any) -> str | None:
    for prefix, expected in _UNION_EXPECTATIONS.items():
        if path[: len(prefix)] == prefix:
            return f"{_dotted(path)} must be {expected}, got {_describe(value)}"
    if path and path[-1] in ("probability", "silent_corruption"):
        return f"{_dotted(path)} must be a number in [0, 1] or '1 - EPSILON', got {_describe(value)}"
    return None


def _validation_diagnostics(exc: ValidationError, data: Any, source: SourceMap) -> list[SpecDiagnostic]:
    by_path: dict[Path, list[tuple[Any, SpecDiagnostic]]] = {}
    for error in exc.errors():
        path, diagnostic = _diagnostic_for(error, data, source)
        by_path.setdefault(path, []).append((error, diagnostic))
    diagnostics: list[SpecDiagnostic] = []
    # A misspelt key explains the matching "missing key" error at the same place: keep only the former.
    explained = {
        (path[:-1], d.message.split("did you mean '")[1].split("'")[0])
        for path, entries in by_path.items()
        for e, d in entries
        if e["type"] == "extra_forbidden" and "did you mean" in d.message
    }
    for path, entries in list(by_path.items()):
        entries[:] = [(e, d) for e, d in entries if not (e["type"] == "missing" and (path, e["loc"][-1]) in explained)]
        if not entries:
            continue
        if len(entries) == 1:
            diagnostics.append(entries[0][1])
            continue
        # Several errors at one place come from the branches of a union (int | str, ...).
        value_errors = [d for e, d in entries if e["type"] == "value_error"]
        if value_errors:
            diagnostics.append(value_errors[0])
            continue
        message = _union_message(path, entries[0][0].get("input"))
        if message is None:
            diagnostics.extend(d for _, d in entries)
        else:
            diagnostics.append(SpecDiagnostic(source.value(path), message))
    return diagnostics


def _sorted(diagnostics: list[SpecDiagnostic]) -> list[SpecDiagnostic]:
    unique = list(dict.fromkeys(diagnostics))
    return sorted(unique, key=lambda d: (d.location.line, d.location.column))


def load_text(text: str, file: str = "<spec>") -> LoadedSpec:
    """Validate spec source text. ``file`` names it in diagnostics (``.json`` selects JSON)."""
    if len(text.encode("utf-8", "replace")) > MAX_SPEC_BYTES:
        raise _fail(file, 1, 1, f"the spec is larger than {MAX_SPEC_BYTES} bytes")
    data, source = _parse(text, file)
    try:
        spec = m.Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_sorted(_validation_diagnostics(exc, data, source))) from None
    errors, warnings = check_semantics(spec, source)
    if errors:
        raise SpecError(_sorted(errors))
    return LoadedSpec(spec=spec, source=source, text=text, warnings=_sorted(warnings))


def load_bytes(raw: bytes, file: str = "<spec>") -> LoadedSpec:
    """Validate spec source given as bytes (checked for size, NUL bytes and UTF-8 first)."""
    if len(raw) > MAX_SPEC_BYTES:
        raise _fail(file, 1, 1, f"the spec is larger than {MAX_SPEC_BYTES} bytes")
    return load_text(_decode(raw, file), file)


def load_spec(path: str | os.PathLike[str]) -> LoadedSpec:
    """Load and validate the spec file at ``path``.

    Raises:
        SpecError: the file is missing, unreadable or not a valid spec; every diagnostic
            names ``file:line:column``.
    """
    name = os.fspath(path)
    fs_path = FsPath(name)
    try:
        if fs_path.is_dir():
            raise _fail(name, 1, 1, "is a directory, not a spec file")
        with fs_path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise _fail(name, 1, 1, "no such file") from None
    except PermissionError:
        raise _fail(name, 1, 1, "permission denied: the file cannot be read") from None
    except OSError as exc:
        raise _fail(name, 1, 1, f"cannot read the file: {exc.strerror or exc}") from None
    return load_bytes(raw, name)
