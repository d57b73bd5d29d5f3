"""Task YAML in and out: parse a file into Task/Pipeline with errors a person can act on.

An error names the file, the dotted field path and what was expected; an unknown field
gets a did-you-mean from the fields the model has at that place.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from skyloom.spec.models import Pipeline, Resources, ResourcesBase, Task


@dataclass
class SpecError(Exception):
    """Bad input: which file, which field, what was expected."""

    source: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        return f"{where}: {self.message}"


def load_documents(text: str, source: str) -> list[dict[str, Any]]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(source, where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    if not docs:
        return [{}]
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            field = f"document {i + 1}" if len(docs) > 1 else ""
            raise SpecError(
                source, field, f"expected a mapping of task fields, got {type(d).__name__}"
            )
    return docs


def parse_task(data: dict[str, Any], source: str, prefix: str = "") -> Task:
    try:
        return Task.model_validate(data)
    except ValidationError as e:
        raise _to_spec_error(e, source, prefix) from None


def parse_pipeline(text: str, source: str) -> Pipeline:
    """One or more documents; a leading document with only `name` names the pipeline."""
    docs = load_documents(text, source)
    name = None
    if len(docs) > 1 and set(docs[0]) == {"name"}:
        name = docs[0]["name"]
        docs = docs[1:]
    multi = len(docs) > 1
    tasks = [
        parse_task(d, source, f"document {i + 1}: " if multi else "") for i, d in enumerate(docs)
    ]
    return Pipeline(name=name or tasks[0].name, tasks=tasks)


def load_task_file(path: str | Path) -> Pipeline:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(str(path), "", f"cannot read: {e}") from None
    return parse_pipeline(text, str(path))


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that owns the field at `path` (for did-you-mean suggestions)."""
    model: type[BaseModel] | None = Task
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return model
        nxt: type[BaseModel] | None = None
        cands: list[type[BaseModel]] = [Resources, ResourcesBase, *_submodels(field.annotation)]
        for cand in cands:
            if field.annotation is not None and _mentions(field.annotation, cand):
                nxt = cand
                break
        model = nxt
    return model


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    out = []
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            out.append(arg)
        out.extend(_submodels(arg))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    return out


def _mentions(annotation: Any, cand: type[BaseModel]) -> bool:
    return cand in _submodels(annotation)


def _loc_text(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p.startswith(("function-", "tagged-union")) or p in ("str", "list[str]", "dict[str,"):
            continue
        else:
            parts.append(("." if parts else "") + p)
    return "".join(parts)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch labels (e.g. 'GitWorkdir', 'str') from a location."""
    out = []
    for p in loc:
        if isinstance(p, str) and (
            p[:1].isupper() or "[" in p or p in ("str", "int", "float", "bool")
        ):
            continue
        if isinstance(p, str) and p.startswith("function-"):
            continue
        out.append(p)
    return tuple(out)


def _to_spec_error(e: ValidationError, source: str, prefix: str) -> SpecError:
    errors = e.errors(include_url=False)
    # Prefer the most specific error: unknown fields first, then the deepest location.
    errors.sort(key=lambda er: (er["type"] != "extra_forbidden", -len(er["loc"])))
    er = errors[0]
    loc = _clean_loc(tuple(er["loc"]))
    field = prefix + _loc_text(loc)
    if er["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1])
        known = [(f.alias or n) for n, f in (owner.model_fields.items() if owner else [])]
        bad = str(loc[-1])
        close = difflib.get_close_matches(bad, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if not close and known:
            hint = f"; expected one of: {', '.join(sorted(known))}"
        return SpecError(source, field, f"unknown field{hint}")
    msg = er["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif er["type"] not in ("value_error", "assertion_error"):
        got = er.get("input")
        if not isinstance(got, dict | list):
            msg = f"{msg} (got {json.dumps(got, default=str)})"
    more = len({_loc_text(_clean_loc(tuple(x["loc"]))) for x in errors}) - 1
    if more > 0:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return SpecError(source, field, msg)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of one task document."""
    schema = Task.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "skyloom task"
    return schema


def dump_task(task: Task) -> str:
    return yaml.safe_dump(
        task.model_dump(mode="json", exclude_defaults=True, by_alias=True), sort_keys=False
    )
