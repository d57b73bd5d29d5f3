"""Task YAML in and out: parse a file into Task/Pipeline with errors a person can act on.

An error names the file, the dotted field path and what was expected; an unknown field
gets a did-you-mean from the fields the model has at that place.

Loading follows the order SkyPilot loads a task in, because the order decides what a
document means: duplicate keys are refused, `envs`/`secrets` values become strings, the
command line's --env/--secret overrides are applied, an env var still without a value is
an error, and only then are `$VAR`/`${VAR}` references in file_mounts, service, workdir
and volumes filled in from envs and secrets.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from skyloom.spec import models
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


_JOB_NAME = re.compile(r"^[\w-]+$")


def _group_name_ok(name: Any) -> bool:
    """SkyPilot checks a job group's name character by character (or item by item)."""
    if not name or not isinstance(name, str | list | dict):
        return False
    return all(isinstance(c, str) and (c.isalnum() or c in "-_") for c in name)


# ---- YAML -------------------------------------------------------------------------------------


def _yaml_error(e: yaml.YAMLError, source: str) -> SpecError:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return SpecError(source, where, f"not valid YAML: {getattr(e, 'problem', None) or e}")


def _check_duplicate_keys(text: str, source: str) -> None:
    """PyYAML keeps the last of two equal keys silently; SkyPilot refuses the file."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return  # reported by the loading itself

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        field = f"{path}.{key.value}" if path else str(key.value)
                        raise SpecError(
                            source,
                            field,
                            f"duplicate key (line {line}; also on line {seen[key.value]}): "
                            "keep one",
                        )
                    seen[key.value] = line
                    walk(value, f"{path}.{key.value}" if path else str(key.value))
                else:
                    walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    for doc in nodes:
        if doc is not None:
            walk(doc, "")


def load_documents(text: str, source: str) -> list[Any]:
    """The YAML documents of a file (empty ones as None), duplicate keys refused."""
    _check_duplicate_keys(text, source)
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from None
    return docs or [{}]


# ---- pipelines --------------------------------------------------------------------------------


def parse_pipeline(
    text: str,
    source: str,
    env_overrides: Mapping[str, str] | None = None,
    secret_overrides: Mapping[str, str] | None = None,
) -> Pipeline:
    """One or more task documents, with the command line's --env/--secret overrides.

    A first document with only `name` (and optionally `execution: serial`) is a header
    naming the pipeline; with `execution: parallel` the file is a job group.
    """
    docs = load_documents(text, source)
    if not any(docs):
        raise SpecError(source, "", "empty: no task in the file; add at least `run:`")
    envs = dict(env_overrides or {})
    secrets = dict(secret_overrides or {})
    first = docs[0]
    if len(docs) >= 2 and first is not None:
        if not isinstance(first, dict):
            raise SpecError(source, "document 1", _not_a_mapping(first))
        if first.get("execution") == "parallel":
            return _job_group(docs, source, envs, secrets)
    return _chain(docs, source, envs, secrets)


def _not_a_mapping(doc: Any) -> str:
    return f"expected a mapping of task fields, got {type(doc).__name__}"


def _chain(docs: list[Any], source: str, envs: dict[str, str], secrets: dict[str, str]) -> Pipeline:
    first = docs[0]
    name = None
    offset = 0
    if isinstance(first, dict) and set(first) in ({"name"}, {"name", "execution"}):
        name = first["name"]
        if first.get("execution") not in (None, "serial"):
            raise SpecError(
                source,
                "document 1: execution",
                f"{first['execution']!r}: a pipeline runs `serial` (write `parallel` for a "
                "job group)",
            )
        # A header alone still makes one task (named by it), reported as the file's.
        offset = 1 if len(docs) > 1 else 0
        docs = docs[1:] or [{"name": name}]
    elif len(docs) == 1 and isinstance(first, dict):
        name = first.get("name")
    multi = len(docs) + offset > 1
    tasks = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        prefix = f"document {i + 1 + offset}: " if multi else ""
        tasks.append(parse_task(doc, source, prefix, envs, secrets))
    return Pipeline(name=name if name is not None else tasks[0].name, tasks=tasks)


def _job_group(
    docs: list[Any], source: str, envs: dict[str, str], secrets: dict[str, str]
) -> Pipeline:
    header = docs[0]
    group = header.get("name")
    if not _group_name_ok(group):
        raise SpecError(
            source,
            "document 1: name",
            "a job group needs a name of letters, digits, '-' and '_'",
        )
    tasks: list[Task] = []
    names: list[str] = []
    for i, doc in enumerate(docs[1:], start=2):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise SpecError(source, f"document {i}", _not_a_mapping(doc))
        job = doc.get("name")
        if not isinstance(job, str) or not _JOB_NAME.match(job):
            raise SpecError(
                source,
                f"document {i}: name",
                "each job of a job group needs a name of letters, digits, '-' and '_'",
            )
        if job in names:
            raise SpecError(source, f"document {i}: name", f"duplicate job name {job!r}")
        names.append(job)
        tasks.append(parse_task(doc, source, f"document {i}: ", envs, secrets))
    if not tasks:
        raise SpecError(source, "", "a job group needs at least one job after its header")
    primary = header.get("primary_tasks")
    if primary is not None:
        if not isinstance(primary, list) or not all(isinstance(p, str) for p in primary):
            raise SpecError(source, "document 1: primary_tasks", "expected a list of job names")
        unknown = [p for p in primary if p not in names]
        if unknown:
            raise SpecError(
                source, "document 1: primary_tasks", f"unknown jobs {unknown}; jobs: {names}"
            )
    delay = header.get("termination_delay")
    if delay is not None:
        delay = _termination_delay(delay, names, source)
    inter = header.get("inter_connection")
    if inter is not None and not isinstance(inter, bool):
        raise SpecError(source, "document 1: inter_connection", "expected true or false")
    return Pipeline(
        name=group,
        tasks=tasks,
        execution="parallel",
        primary_tasks=primary or None,
        termination_delay=delay,
        inter_connection=inter,
    )


def _termination_delay(delay: Any, names: list[str], source: str) -> str | dict[str, str]:
    field = "document 1: termination_delay"

    def check(v: Any, where: str) -> str:
        if (
            isinstance(v, bool)
            or not isinstance(v, str | int)
            or not models._SECONDS.search(str(v))
        ):
            raise SpecError(
                source, where, f"expected seconds or a duration like 30s, 5m; got {v!r}"
            )
        return str(v)

    if isinstance(delay, dict):
        out = {}
        for k, v in delay.items():
            if k != "default" and k not in names:
                raise SpecError(source, field, f"unknown job {k!r}; jobs: {names} (or default)")
            out[str(k)] = check(v, f"{field}.{k}")
        return out
    return check(delay, field)


# ---- one task ---------------------------------------------------------------------------------


def _stringify(values: dict[Any, Any]) -> dict[str, str | None]:
    """SkyPilot exports `N: 4` as '4' (Python's str of whatever YAML read)."""
    return {str(k): (None if v is None else str(v)) for k, v in values.items()}


_VAR = re.compile(r"\$\{?\b([a-zA-Z_][a-zA-Z0-9_]*)\b\}?")


def _fill_in(value: Any, env: dict[str, str], field: str) -> Any:
    """`$NAME` / `${NAME}` in any string of `value` → the env value (unknown names stay).

    Done on the JSON text of the value, as SkyPilot does, so a value with a quote or a
    backslash in it breaks the document there too.
    """

    def default(o: Any) -> Any:
        if isinstance(o, datetime.date | datetime.datetime):
            raise ValueError(f"a date ({o}) where a string was expected")
        raise ValueError(f"{type(o).__name__} values are not allowed")

    try:
        text = json.dumps(value, default=default)
    except (TypeError, ValueError) as e:
        raise SpecError("", field, f"cannot be read: {e}") from None
    text = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise SpecError(
            "", field, "an env value filled in here contains a quote or backslash that breaks it"
        ) from None


def _prepare(data: dict[str, Any], envs: dict[str, str], secrets: dict[str, str]) -> dict[str, Any]:
    """The document as SkyPilot reads it before checking its fields (see module doc)."""
    data = dict(data)
    if isinstance(data.get("envs"), dict):
        data["envs"] = _stringify(data["envs"])
    if isinstance(data.get("secrets"), dict):
        data["secrets"] = _stringify(data["secrets"])
    elif isinstance(data.get("secrets"), list):
        data["secrets"] = [str(x) for x in data["secrets"]]
    if "envs" in data and data["envs"] is None:
        raise SpecError("", "envs", "empty: give NAME: value pairs, or remove `envs:`")
    for key in ("inputs", "outputs"):
        if key in data and data[key] is None:
            raise SpecError("", key, "expected a mapping of one path to its size in GB, got null")
    if not isinstance(data.get("envs", {}), dict):
        return data  # the wrong type is reported by the model
    if envs:
        data["envs"] = {**data.get("envs", {}), **envs}
    existing = data.get("secrets")
    if isinstance(existing, list):
        # With --secret values at hand (the CLI always passes the list, maybe empty), a list
        # of references becomes a mapping of names without values.
        data["secrets"] = {**{x: None for x in existing}, **secrets}
    elif secrets and (existing is None or isinstance(existing, dict)):
        data["secrets"] = {**(existing or {}), **secrets}
    for k, v in data.get("envs", {}).items():
        if v is None:
            raise SpecError(
                "", f"envs.{k}", f"no value; give one with --env {k}=VALUE (or {k}: '' for empty)"
            )
    given = data.get("secrets")
    secret_values: dict[str, Any] = given if isinstance(given, dict) else {}
    env = {**data.get("envs", {}), **{k: v for k, v in secret_values.items() if v is not None}}
    for key in ("file_mounts", "service", "workdir", "volumes"):
        if data.get(key) is not None:
            data[key] = _fill_in(data[key], env, key)
    return data


def parse_task(
    data: Any,
    source: str,
    prefix: str = "",
    env_overrides: Mapping[str, str] | None = None,
    secret_overrides: Mapping[str, str] | None = None,
) -> Task:
    """One task document → Task, with the command line's --env/--secret overrides applied."""
    if not isinstance(data, dict):
        raise SpecError(source, prefix.rstrip(": "), _not_a_mapping(data))
    try:
        prepared = _prepare(data, dict(env_overrides or {}), dict(secret_overrides or {}))
        return Task.model_validate(prepared)
    except ValidationError as e:
        raise _to_spec_error(e, source, prefix) from None
    except SpecError as e:
        raise SpecError(source, prefix + e.field, e.message) from None


def load_task_file(
    path: str | Path,
    env_overrides: Mapping[str, str] | None = None,
    secret_overrides: Mapping[str, str] | None = None,
) -> Pipeline:
    """A task YAML file as the command line sees it: --env/--secret values applied.

    `envs` entries without a value are errors unless `env_overrides` gives one, as with
    SkyPilot's --env; `secrets` entries without a value are references resolved at launch.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(str(path), "", f"cannot read: {e}") from None
    return parse_pipeline(text, str(path), env_overrides, secret_overrides)


# ---- errors -----------------------------------------------------------------------------------

_MODEL_NAMES = {
    name
    for name, obj in vars(models).items()
    if isinstance(obj, type) and issubclass(obj, BaseModel)
}


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that owns the field at `path` (for did-you-mean suggestions)."""
    model: type[BaseModel] | None = Task
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return model
        nxt: type[BaseModel] | None = None
        cands: list[type[BaseModel]] = [Resources, ResourcesBase, *_submodels(field.annotation)]
        for cand in cands:
            if field.annotation is not None and cand in _submodels(field.annotation):
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
    for meta in getattr(annotation, "__metadata__", ()) or ():
        del meta
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and hasattr(annotation, "__metadata__"):
        out.extend(_submodels(origin))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    return out


def _is_branch_label(p: Any) -> bool:
    """pydantic's names for union branches and validator wrappers in an error location."""
    if not isinstance(p, str):
        return False
    return (
        p in _MODEL_NAMES
        or "[" in p
        or p in ("str", "int", "float", "bool", "list", "dict", "none", "constrained-str")
    )


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(p for p in loc if not _is_branch_label(p))


def _loc_text(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _to_spec_error(e: ValidationError, source: str, prefix: str) -> SpecError:
    errors = e.errors(include_url=False)
    # Prefer the most specific error: unknown fields first, then the deepest location.
    errors.sort(key=lambda er: (er["type"] != "extra_forbidden", -len(_clean_loc(er["loc"]))))
    er = errors[0]
    loc = _clean_loc(tuple(er["loc"]))
    raised = (er.get("ctx") or {}).get("error")
    if isinstance(raised, models.FieldError) and raised.field:
        # A model-level rule names the field below the model that broke it.
        loc = (*loc, *raised.field.split("."))
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


# ---- out --------------------------------------------------------------------------------------


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
