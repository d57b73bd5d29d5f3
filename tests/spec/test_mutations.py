"""Randomly mutated task documents: loading fails only with SpecError, never a traceback,
and `skyloom validate FILE` answers 0 (valid) or 2 (invalid)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skyloom.cli.main import cli
from skyloom.spec.loader import SpecError, parse_pipeline

CORPUS = Path(__file__).parent / "skypilot_corpus" / "written"


def _seeds() -> list[dict[str, Any]]:
    out = []
    for p in sorted(CORPUS.glob("*.yaml")):
        try:
            docs = list(yaml.safe_load_all(p.read_text()))
        except yaml.YAMLError:
            continue
        out.extend(d for d in docs if isinstance(d, dict) and d)
    return out


SEEDS = _seeds()
FIELDS = [
    "name", "run", "setup", "envs", "secrets", "resources", "num_nodes", "workdir",
    "file_mounts", "service", "pool", "config", "volumes", "cpus", "memory", "accelerators",
    "infra", "cloud", "region", "use_spot", "ports", "labels", "disk_size", "autostop",
    "job_recovery", "any_of", "ordered", "replica_policy", "replicas", "readiness_probe",
    "min_replicas", "max_replicas", "target_qps_per_replica", "mode", "store", "source",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["A100:8", "8+", "2h", "256GB", "/abs", "rel/", "s3://b", "$HOME", "*/x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), inner, max_size=3),
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(SEEDS))))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(doc)))
        parent: Any = doc
        for p in path[:-1]:
            parent = parent[p]
        op = draw(st.sampled_from(["drop", "rename", "value", "add"]))
        if not path:
            doc[draw(st.sampled_from(FIELDS))] = draw(values)
        elif op == "drop":
            del parent[path[-1]]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELDS))] = parent.pop(path[-1])
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELDS))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return doc


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_loading_a_mutated_document_raises_only_spec_errors(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse_pipeline(text, "mutated.yaml")
    except SpecError as e:
        assert e.source == "mutated.yaml" and e.message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutated())
def test_validate_exits_0_or_2_on_mutated_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 2), result.output
