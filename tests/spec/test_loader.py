"""The task YAML: SkyPilot's schema accepted, mistakes named by file and field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from skyloom.spec.capabilities import gaps
from skyloom.spec.loader import SpecError, json_schema, load_task_file, parse_pipeline
from skyloom.spec.models import JobRecoveryStrategy, parse_accelerators

FULL = """
name: train
workdir: .
num_nodes: 2
resources:
  infra: aws/us-east-1
  accelerators: A100:8
  cpus: 8+
  memory: 32+
  instance_type: p4d.24xlarge
  use_spot: true
  disk_size: 256
  disk_tier: best
  ports: [8080, "10000-10010"]
  image_id: docker:pytorch/pytorch
  labels: {team: ml}
  job_recovery:
    strategy: EAGER_NEXT_REGION
    max_restarts_on_errors: 3
    recover_on_exit_codes: [33, 34]
  autostop: 10m
envs:
  LR: 0.001
  EPOCHS: 3
secrets:
  HF_TOKEN: null
file_mounts:
  /data: ./data
setup: pip install -r requirements.txt
run: python train.py --lr $LR
"""


def parse(text: str):
    return parse_pipeline(text, "task.yaml")


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as e:
        parse(text)
    return e.value


def test_a_full_skypilot_task_parses():
    task = parse(FULL).tasks[0]
    r = task.resources
    assert task.num_nodes == 2
    assert r.accelerators == {"A100": 8}
    assert r.use_spot is True and r.disk_size == 256
    assert r.ports == ["8080", "10000-10010"]
    assert r.job_recovery is not None
    assert r.job_recovery.strategy is JobRecoveryStrategy.EAGER_NEXT_REGION
    assert r.job_recovery.recover_on_exit_codes == [33, 34]
    assert r.autostop is not None and r.autostop.idle_minutes == 10
    # envs are strings, as SkyPilot exports them.
    assert task.envs == {"LR": "0.001", "EPOCHS": "3"}
    assert task.secret_refs() == ["HF_TOKEN"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("A100", {"A100": 1}),
        ("A100:8", {"A100": 8}),
        ("T4:0.5", {"T4": 0.5}),
        ({"A100": 1, "V100": 2}, {"A100": 1, "V100": 2}),
        ({"H100": 4}, {"H100": 4}),
        (["A100:8", "H100"], {"A100": 8, "H100": 1}),
    ],
)
def test_accelerators_in_every_form(value, expected):
    assert parse_accelerators(value) == expected


# SkyPilot reads '{A100:1, V100:1}' as one name with a bad count, so it is refused too.
@pytest.mark.parametrize("bad", ["A100:x", "{A100:1, V100:2}", "A100:0", 7, [{"A100": 1}], []])
def test_bad_accelerators_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_accelerators(bad)


def test_unknown_field_is_an_error_with_did_you_mean():
    e = error("name: x\nresources:\n  acclerators: A100\n")
    assert e.source == "task.yaml"
    assert e.field == "resources.acclerators"
    assert "accelerators" in e.message


def test_unknown_top_level_field_suggests_the_close_one():
    e = error("nme: x\n")
    assert e.field == "nme" and "name" in e.message


def test_wrong_type_names_the_field_and_expectation():
    e = error("num_nodes: zero\n")
    assert e.field == "num_nodes"
    assert "integer" in e.message


def test_invalid_yaml_names_line_and_column():
    e = error("name: [unclosed\n")
    assert "line" in e.field and "not valid YAML" in e.message


def test_a_document_that_is_not_a_mapping_is_rejected():
    e = error("- a\n- b\n")
    assert "mapping" in e.message


def test_any_of_and_ordered_together_are_rejected():
    e = error("resources:\n  any_of: [{cpus: 2}]\n  ordered: [{cpus: 4}]\n")
    assert "either" in e.message


def test_candidates_inherit_shared_fields():
    task = parse(
        "resources:\n  cloud: aws\n  cpus: 4\n  ordered:\n    - {region: us-east-1}\n"
        "    - {cloud: gcp, cpus: 8}\n"
    ).tasks[0]
    first, second = task.resources.candidates()
    assert first.cloud == "aws" and first.region == "us-east-1" and first.cpus == 4
    assert second.cloud == "gcp" and second.region is None and second.cpus == 8


def test_a_candidate_infra_conflicts_with_a_shared_cloud():
    # SkyPilot merges the entry into the shared fields, then refuses infra + cloud.
    e = error("resources:\n  cloud: aws\n  ordered:\n    - {infra: gcp}\n")
    assert e.field == "resources.ordered[0].infra"


def test_pipeline_documents_are_tasks_in_order_with_errors_located():
    p = parse("name: pipe\n---\nname: a\nrun: echo a\n---\nname: b\nrun: echo b\n")
    assert p.name == "pipe" and [t.name for t in p.tasks] == ["a", "b"]
    e = error("name: a\nrun: x\n---\nname: b\nsetpu: y\n")
    assert e.field.startswith("document 2") and "setup" in e.message


def test_empty_file_is_refused():
    e = error("")
    assert "empty" in e.message


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as e:
        load_task_file(tmp_path / "nope.yaml")
    assert "no such file" in str(e.value)


def test_schema_is_json_and_describes_resources():
    schema = json_schema()
    json.dumps(schema)
    assert "resources" in schema["properties"]


def test_features_not_acted_on_yet_are_parsed_but_reported():
    task = parse("resources:\n  infra: gcp\n  accelerators: A100\nservice:\n  replicas: 2\n").tasks[
        0
    ]
    found = {g.field: g for g in gaps(task)}
    assert "service" in found


def test_local_infra_plain_task_has_no_blocking_gaps():
    task = parse("run: echo hi\nresources:\n  cpus: 1\n").tasks[0]
    assert not [g for g in gaps(task) if g.blocking]


names = st.from_regex(r"[A-Z][A-Z0-9]{0,7}", fullmatch=True)


@given(names, st.integers(min_value=1, max_value=64))
def test_accelerator_string_forms_agree(name, count):
    as_str = parse_accelerators(f"{name}:{count}")
    assert as_str == parse_accelerators({name: count}) == parse_accelerators([f"{name}:{count}"])


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True),
        st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.floats(allow_nan=False)),
        max_size=5,
    )
)
def test_envs_always_become_strings(envs):
    import yaml

    task = parse(yaml.safe_dump({"envs": envs})).tasks[0]
    assert set(task.envs) == set(envs)
    assert all(isinstance(v, str) for v in task.envs.values())
