"""Sphinx extension: spec-language key tables generated from the pydantic models.

``.. spec-model:: stagewarden.spec.Topology`` renders one row per field of the model (key, type,
default, meaning), read from ``model_fields``, so that the reference cannot drift from the code.
Each table gets the label ``spec-model-<class name in lower case>``, which other tables link to.

The build also fails (with ``-W``) when a public spec model has no table, a name of
``stagewarden.spec.__all__`` has no API entry, a packaged example is not included in the docs,
or a spec snippet of the ``spec_snippets`` setting no longer loads with the diagnostics the text
shows. The HTML build carries the JSON Schema as ``schema/spec-v1.json``.
"""

from __future__ import annotations

import importlib
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from docutils import nodes
from docutils.parsers.rst import directives
from pydantic import BaseModel
from pydantic.functional_validators import AfterValidator
from pydantic_core import PydanticUndefined
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: Readable names for the annotated types of ``stagewarden.spec.model``, keyed by validator.
_VALIDATED_TYPES = {
    "_check_worker_ref": 'stage index (integer >= 0) or worker ``"stage:replica"``',
    "_check_budget": 'integer >= 0 or percentage ``"N%"`` (see :ref:`spec-budget`)',
    "_check_probability": 'number in [0, 1] or ``"1 - EPSILON"`` (see :ref:`spec-probabilities`)',
}


def _label(model: type[BaseModel]) -> str:
    return f"spec-model-{model.__name__.lower()}"


def _import(dotted: str) -> Any:
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _yaml(value: Any) -> str:
    """A default value as it would be written in a spec (YAML flow style)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _tag(model: type[BaseModel]) -> str | None:
    """The ``scheme`` or ``kind`` value that selects ``model`` in a tagged list."""
    for name in ("scheme", "kind"):
        info = model.model_fields.get(name)
        if info is not None and get_origin(info.annotation) is Literal:
            return str(get_args(info.annotation)[0])
    return None


def _named_literals() -> dict[frozenset[str], str]:
    from stagewarden.spec import model as m

    return {
        frozenset(m.CAPABILITIES): ":ref:`capability <spec-capabilities>`",
        frozenset(m.RESPONSES): ":ref:`response <spec-responses>`",
    }


def _constraints(metadata: list[Any]) -> tuple[list[str], bool]:
    """Readable constraints of a field, and whether it must be non-empty."""
    out: list[str] = []
    non_empty = False
    for item in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None and type(item).__name__.lower() == attr:
                out.append(f"{symbol} {bound}")
        if type(item).__name__ == "MinLen":
            if item.min_length == 1:
                non_empty = True
            else:
                out.append(f"at least {item.min_length} items")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"matching ``{pattern}``")
    return out, non_empty


def describe_type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """reStructuredText for the type of a field (``metadata``: the field's own constraints)."""
    metadata = list(metadata or [])
    for item in metadata:
        if isinstance(item, AfterValidator) and item.func.__name__ in _VALIDATED_TYPES:
            return _VALIDATED_TYPES[item.func.__name__]
    constraints, non_empty = _constraints(metadata)
    text = _describe(annotation)
    if non_empty:
        text = f"non-empty {text}"
    if constraints:
        text = f"{text} {', '.join(constraints)}"
    return text


def _describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        base, *extra = args
        for item in extra:
            if isinstance(item, AfterValidator) and item.func.__name__ in _VALIDATED_TYPES:
                return _VALIDATED_TYPES[item.func.__name__]
        return _describe(base)
    if origin is Literal:
        named = _named_literals().get(frozenset(map(str, args)))
        if named is not None:
            return named
        return " | ".join(f"``{_yaml(a)}``" for a in args)
    if origin is list:
        item = _describe(args[0])
        if item.startswith("mapping, one of: "):
            return f"list of mappings, each one of: {item.removeprefix('mapping, one of: ')}"
        return f"list of {item}"
    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if options and all(isinstance(a, type) and issubclass(a, BaseModel) for a in options):
            links = ", ".join(f":ref:`{_tag(a) or a.__name__} <{_label(a)}>`" for a in options)
            return f"mapping, one of: {links}"
        return " or ".join(_describe(a) for a in options)
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is float:
        return "number"
    if annotation is str:
        return "string"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping (:ref:`{annotation.__name__} <{_label(annotation)}>`)"
    raise ValueError(f"spec-model cannot describe the type {annotation!r}: extend docs/_ext/specmodel.py")


def describe_default(info: Any) -> str:
    """reStructuredText for a field's default: *required*, *unset* or the YAML value."""
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return "all defaults"
        return f"``{_yaml(value)}``"
    if info.default is PydanticUndefined:
        return "*required*"
    if info.default is None:
        return "*unset*"
    if info.default == "":
        return "empty"
    return f"``{_yaml(info.default)}``"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ")


def describe_meaning(name: str, info: Any) -> str:
    """reStructuredText for what a field means (its description, or what the type says)."""
    if info.description:
        return str(info.description)
    annotation = info.annotation
    if get_origin(annotation) is Literal and len(get_args(annotation)) == 1 and name in ("scheme", "kind"):
        return f"Selects this {'check scheme' if name == 'scheme' else 'guarantee kind'}."
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _first_line(annotation.__doc__)
    raise ValueError(f"spec-model: field {name!r} has no description: give it Field(description=...)")


class SpecModelDirective(SphinxDirective):
    """``.. spec-model:: dotted.path.Model``: a table of the model's keys.

    Option ``:caption:`` gives the table a title (inline reStructuredText).
    """

    required_arguments = 1
    has_content = False
    option_spec = {"caption": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        try:
            model = _import(self.arguments[0])
        except (ImportError, AttributeError) as exc:
            raise self.error(f"spec-model: cannot import {self.arguments[0]!r}: {exc}") from None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise self.error(f"spec-model: {self.arguments[0]!r} is not a pydantic model")
        rows = []
        try:
            for name, info in model.model_fields.items():
                rows.append(
                    (
                        f"``{name}``",
                        describe_type(info.annotation, info.metadata),
                        describe_default(info),
                        describe_meaning(name, info),
                    )
                )
        except ValueError as exc:
            raise self.error(str(exc)) from None

        table = nodes.table(classes=["spec-model"])
        if "caption" in self.options:
            title_nodes, messages = self.parse_inline(self.options["caption"], lineno=self.lineno)
            table += nodes.title("", "", *title_nodes)
        else:
            messages = []
        group = nodes.tgroup(cols=4)
        table += group
        for width in (18, 30, 14, 38):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(("key", "type", "default", "meaning"))
        body = nodes.tbody()
        group += body
        for row in rows:
            body += self._row(row, messages)

        label = _label(model)
        target = nodes.target("", "", ids=[label], names=[label])
        self.state.document.note_explicit_target(target)
        models: dict[str, set[str]] = getattr(self.env, "spec_models", {})
        models.setdefault(self.env.docname, set()).add(f"{model.__module__}.{model.__qualname__}")
        self.env.spec_models = models  # type: ignore[attr-defined]
        return [target, table, *messages]

    def _row(self, cells: tuple[str, ...], messages: list[nodes.Node] | None = None) -> nodes.row:
        row = nodes.row()
        for text in cells:
            inline, problems = self.parse_inline(text, lineno=self.lineno)
            if messages is not None:
                messages.extend(problems)
            entry = nodes.entry()
            entry += nodes.paragraph("", "", *inline)
            row += entry
        return row


# -- consistency checks ------------------------------------------------------------------


def _public_models() -> Iterator[str]:
    from stagewarden.spec import model as m

    for name in dir(m):
        obj = getattr(m, name)
        if (
            not name.startswith("_")
            and isinstance(obj, type)
            and issubclass(obj, BaseModel)
            and obj.__module__ == m.__name__
        ):
            yield f"{obj.__module__}.{obj.__qualname__}"


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    getattr(env, "spec_models", {}).pop(docname, None)


def _merge(app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment) -> None:
    models: dict[str, set[str]] = getattr(env, "spec_models", {})
    for docname, names in getattr(other, "spec_models", {}).items():
        if docname in docnames:
            models[docname] = names
    env.spec_models = models  # type: ignore[attr-defined]


def _check(app: Sphinx, env: BuildEnvironment) -> None:
    rendered = set().union(*getattr(env, "spec_models", {}).values())
    for name in _public_models():
        if name not in rendered:
            logger.warning("spec model %s has no '.. spec-model::' table in the docs", name)

    import stagewarden.spec

    objects = env.domains.python_domain.objects
    for name in stagewarden.spec.__all__:
        if f"stagewarden.spec.{name}" not in objects:
            logger.warning("stagewarden.spec.%s is in __all__ but has no entry in the API reference", name)


def _check_examples_included(app: Sphinx, env: BuildEnvironment) -> None:
    from importlib import resources

    included = {
        (Path(app.srcdir) / str(dependency)).resolve()
        for dependencies in env.dependencies.values()
        for dependency in dependencies
    }
    folder = resources.files("stagewarden.spec").joinpath("examples")
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml") and Path(str(entry)).resolve() not in included:
            logger.warning("packaged example %s is not included in the documentation", entry.name)


def _check_snippets(app: Sphinx) -> None:
    """Load every spec snippet of ``spec_snippets`` and compare with the diagnostics the text shows."""
    from stagewarden.spec import SpecError, load_text

    for relative, (shown_as, expected) in app.config.spec_snippets.items():
        path = Path(app.srcdir) / relative
        try:
            loaded = load_text(path.read_text(encoding="utf-8"), shown_as)
            got = [f"{w.location}: warning: {w.message}" for w in loaded.warnings]
        except SpecError as error:
            got = [str(d) for d in error.diagnostics]
        if got != list(expected):
            logger.warning(
                "%s: loading it gives %s, but the documentation shows %s; update the text and conf.py",
                relative,
                got,
                list(expected),
            )


def _write_schema(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from stagewarden.spec import json_schema

    target = Path(app.outdir) / "schema" / "spec-v1.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")


# -- autodoc of the models ---------------------------------------------------------------


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _is_spec_model(obj: Any) -> bool:
    return _is_model(obj) and obj.__module__.startswith("stagewarden.spec")


def _model_signature(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None, return_annotation: str | None
) -> tuple[str, str | None] | None:
    """Hide the generated keyword signature of a pydantic model: its key table (a spec model) or
    its documented attributes (the run record) say what it holds."""
    if what == "class" and _is_model(obj):
        return "", return_annotation
    return None


def _model_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Point a spec model's API entry at its key table in the spec reference."""
    if what == "class" and _is_spec_model(obj):
        lines.extend(["", f"Its keys are listed in :ref:`{_label(obj)}`."])


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("spec-model", SpecModelDirective)
    app.connect("autodoc-process-signature", _model_signature)
    app.connect("autodoc-process-docstring", _model_docstring)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.add_config_value("spec_snippets", {}, "env", types=[dict])
    app.connect("builder-inited", _check_snippets)
    app.connect("env-check-consistency", _check)
    app.connect("env-check-consistency", _check_examples_included)
    app.connect("build-finished", _write_schema)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
