"""Differential check: does skyloom's task-YAML loader accept and reject what SkyPilot's does?

Run by hand, never in CI. SkyPilot 0.14.1 lives in its own venv (the oracle), e.g.

    python3 -m venv /tmp/skyoracle && /tmp/skyoracle/bin/pip install skypilot==0.14.1
    .venv/bin/python bench/skypilot_agreement.py --oracle /tmp/skyoracle/bin/python
    .venv/bin/python bench/skypilot_agreement.py --oracle ... --record      # refresh the corpus
    .venv/bin/python bench/skypilot_agreement.py --oracle ... --dir ~/skypilot/examples
    .venv/bin/python bench/skypilot_agreement.py --oracle ... --dir ... --fill-envs \
        --dir-mutations 4000                      # held-out documents, deeper and mutated

The documents: every YAML under tests/spec/skypilot_corpus/written/ (written for this
project, one rule or shape each), random mutations of them (seeded, so a run is
repeatable), and any --dir given (held out: measured, never committed). A document's
first line may carry command-line overrides as a comment: `# overrides: --env A=1`.
Many published examples leave a value to the command line (`HF_TOKEN:`), and both loaders
stop there; --fill-envs gives each held-out document the `--env`/`--secret` a user would
pass for those, so the rest of it is compared too. --dir-mutations mutates the held-out
documents the way the written ones are (as their own group).

The oracle is what a user of `sky launch` / `sky jobs launch` sees before anything is
provisioned: the client loads the YAML with the --env/--secret overrides (chain DAG or
job group), checks file-mount paths, then the API server reloads the DAG with its strict
schema and validates names, the run command and the recovery strategy. Checks that need a
cloud catalog, enabled credentials, the network or local files are left out on both
sides (see README of the corpus and the report in the issue).

This file runs in two interpreters: the project's (skyloom) and, with --worker, the
oracle's, which imports only SkyPilot and the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "spec" / "skypilot_corpus"
WRITTEN = CORPUS / "written"
VERDICTS = CORPUS / "verdicts.json"
MUTATIONS = CORPUS / "mutations.jsonl"


# ---- cases ------------------------------------------------------------------------------------


def overrides_of(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """`# overrides: --env A=1 --secret B=2` on the first line → ({A: 1}, {B: 2})."""
    first = text.split("\n", 1)[0]
    envs: dict[str, str] = {}
    secrets: dict[str, str] = {}
    if not first.startswith("# overrides:"):
        return envs, secrets
    words = shlex.split(first[len("# overrides:") :])
    for flag, value in zip(words[::2], words[1::2], strict=True):
        key, _, val = value.partition("=")
        (envs if flag == "--env" else secrets)[key] = val
    return envs, secrets


def case(name: str, text: str) -> dict[str, Any]:
    envs, secrets = overrides_of(text)
    return {"id": name, "text": text, "envs": envs, "secrets": secrets}


def written_cases() -> list[dict[str, Any]]:
    return [case(f"written/{p.name}", p.read_text()) for p in sorted(WRITTEN.glob("*.yaml"))]


def dir_cases(folder: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix in (".yaml", ".yml") and p.is_file():
            try:
                out.append(case(f"{folder.name}/{p.relative_to(folder)}", p.read_text()))
            except UnicodeDecodeError:
                continue
    return out


def with_filled_overrides(c: dict[str, Any]) -> dict[str, Any]:
    """The case with `--env NAME=...`/`--secret NAME=...` for each env/secret left null."""
    import yaml

    if c["envs"] or c["secrets"]:
        return c
    try:
        docs = list(yaml.safe_load_all(c["text"]))
    except yaml.YAMLError:
        return c
    words: list[str] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        for field, flag in (("envs", "--env"), ("secrets", "--secret")):
            values = doc.get(field)
            if isinstance(values, dict):
                words += [
                    f"{flag} {shlex.quote(f'{k}=filled-{k}')}"
                    for k, v in values.items()
                    if v is None and isinstance(k, str)
                ]
    if not words:
        return c
    return case(c["id"], "# overrides: " + " ".join(dict.fromkeys(words)) + "\n" + c["text"])


# ---- mutations --------------------------------------------------------------------------------

_ODD_VALUES: list[Any] = [
    None, 0, -1, 1, 2.5, True, "", "x", "A100:8", "8+", "1h", "256GB", "/abs", "rel",
    [], ["a"], [1, 2], {}, {"a": 1}, {"name": "x"}, 65536, 1001, "${HOME}", "s3://b",
]  # fmt: skip

_FIELD_NAMES = [
    "name", "run", "setup", "envs", "secrets", "resources", "num_nodes", "workdir",
    "file_mounts", "service", "pool", "config", "volumes", "cpus", "memory", "accelerators",
    "infra", "cloud", "region", "zone", "use_spot", "ports", "labels", "disk_size",
    "autostop", "job_recovery", "any_of", "ordered", "replica_policy", "replicas",
    "readiness_probe", "min_replicas", "max_replicas", "target_qps_per_replica", "mode",
    "store", "source", "persistent", "image_id", "priority", "strategy", "path", "tls",
]  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def mutate(doc: Any, rng: random.Random) -> Any:
    """One random edit: drop, rename, retype, duplicate or re-value a field."""
    doc = copy.deepcopy(doc)
    if not isinstance(doc, dict):
        return {"run": doc}
    paths = [p for p in _paths(doc) if p]
    if not paths:
        doc[rng.choice(_FIELD_NAMES)] = rng.choice(_ODD_VALUES)
        return doc
    path = rng.choice(paths)
    parent = _get(doc, path[:-1])
    key = path[-1]
    op = rng.choice(["drop", "rename", "retype", "value", "add", "number", "wrap"])
    if op == "drop":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        new = rng.choice([*_FIELD_NAMES, str(key)[:-1], str(key) + "s", str(key).upper()])
        parent[new] = parent.pop(key)
    elif op == "add" and isinstance(_get(doc, path), dict):
        _get(doc, path)[rng.choice(_FIELD_NAMES)] = rng.choice(_ODD_VALUES)
    elif op == "number":
        parent[key] = rng.choice([0, -1, 1, 0.5, 2**31, 255, 256, 65535, 65536, -1000, 1000])
    elif op == "wrap":
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"x": parent[key]}
    elif op == "retype":
        v = parent[key]
        parent[key] = str(v) if not isinstance(v, str) else rng.choice([1, [v], {"k": v}])
    else:
        parent[key] = rng.choice(_ODD_VALUES)
    return doc


def mutation_cases(base: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    import yaml

    rng = random.Random(seed)
    parsed = []
    for c in base:
        try:
            docs = list(yaml.safe_load_all(c["text"]))
        except yaml.YAMLError:
            continue
        if docs and all(isinstance(d, dict) for d in docs):
            parsed.append((c, docs))
    out = []
    for i in range(n):
        c, docs = rng.choice(parsed)
        docs = copy.deepcopy(docs)
        j = rng.randrange(len(docs))
        for _ in range(rng.choice([1, 1, 2, 3])):
            docs[j] = mutate(docs[j], rng)
        text = yaml.safe_dump_all(docs, sort_keys=False)
        first = c["text"].split("\n", 1)[0]
        if first.startswith("# overrides:"):
            text = first + "\n" + text
        out.append(case(f"mutation/{i:04d}<-{c['id'].split('/', 1)[1]}", text))
    return out


# ---- the oracle (runs in SkyPilot's venv) -----------------------------------------------------


def _oracle_one(text: str, envs: dict[str, str], secrets: dict[str, str]) -> dict[str, Any]:
    from sky.utils import dag_utils

    env_list = list(envs.items())
    secret_list = list(secrets.items())
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "task.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        # Client: what `sky launch FILE` does before talking to the server. The CLI always
        # passes the override lists (possibly empty), which matters for `secrets` lists.
        if dag_utils.is_job_group_yaml(path):
            dag = dag_utils.load_job_group_from_yaml(path, env_list, secret_list)
        else:
            dag = dag_utils.load_chain_dag_from_yaml(path, env_list, secret_list)
        for task in dag.tasks:
            _client_path_checks(task)
        # Server: /validate reloads the dumped DAG with the strict schema.
        dumped = dag_utils.dump_dag_to_yaml_str(dag)
    with _server_mode():
        dag = dag_utils.load_dag_from_yaml_str(dumped)
        for task in dag.tasks:
            task.validate_name()
            task.validate_run()
            for r in task.resources:
                r._try_validate_managed_job_attributes()
                r._try_validate_max_hourly_cost()
    return {"ok": True}


def _client_path_checks(task: Any) -> None:
    """The file-mount checks of SkyPilot's client validation that do not touch the disk."""
    from sky.data import data_utils

    for target, source in (task.file_mounts or {}).items():
        where = f"file_mounts.{target}: {source}"
        task._validate_mount_path(target, where)
        task._validate_path(source, where)
        if data_utils.is_cloud_store_url(target):
            raise ValueError("File mount destination paths cannot be cloud storage")


@contextlib.contextmanager
def _server_mode() -> Any:
    from sky.server import plugins
    from sky.utils import annotations

    os.environ["IS_SKYPILOT_SERVER"] = "1"
    old = plugins._plugins_loaded, annotations.is_on_api_server
    plugins._plugins_loaded = True
    annotations.is_on_api_server = True
    try:
        yield
    finally:
        os.environ.pop("IS_SKYPILOT_SERVER", None)
        plugins._plugins_loaded, annotations.is_on_api_server = old


_NETWORK_ERRORS = ("ConnectionError", "NameResolutionError", "Max retries exceeded")


def worker() -> None:
    cases = json.load(sys.stdin)
    results = {}
    real_stdout = sys.stdout
    for c in cases:
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                results[c["id"]] = _oracle_one(c["text"], c["envs"], c["secrets"])
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            error = f"{type(e).__name__}: {e}"[:400]
            # No network here: a rule that fetches SkyPilot's catalog cannot be decided.
            unknown = any(m in error for m in _NETWORK_ERRORS)
            results[c["id"]] = {"ok": None if unknown else False, "error": error}
    json.dump(results, real_stdout)


def run_oracle(python: str, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    with tempfile.TemporaryDirectory() as home:
        env["HOME"] = home
        proc = subprocess.run(
            [python, __file__, "--worker"],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"oracle failed:\n{proc.stderr[-3000:]}")
    result: dict[str, dict[str, Any]] = json.loads(proc.stdout)
    return result


# ---- skyloom ----------------------------------------------------------------------------------


def skyloom_verdict(c: dict[str, Any]) -> dict[str, Any]:
    from skyloom.spec.loader import SpecError, parse_pipeline

    try:
        parse_pipeline(c["text"], c["id"], env_overrides=c["envs"], secret_overrides=c["secrets"])
    except SpecError as e:
        return {"ok": False, "error": str(e)}
    except Exception as e:
        return {"ok": False, "error": f"CRASH {type(e).__name__}: {e}", "crash": True}
    return {"ok": True}


# ---- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--oracle", default="/tmp/skyoracle/bin/python", help="SkyPilot's python")
    ap.add_argument("--mutations", type=int, default=1500, help="How many mutated documents.")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", action="append", default=[], help="Held-out YAMLs (not recorded).")
    ap.add_argument(
        "--fill-envs",
        action="store_true",
        help="Give held-out documents the --env/--secret overrides their null values ask for.",
    )
    ap.add_argument(
        "--dir-mutations", type=int, default=0, help="Mutated held-out documents per --dir."
    )
    ap.add_argument("--record", action="store_true", help="Write the corpus verdicts.")
    ap.add_argument("--quiet", action="store_true", help="Only the figures.")
    args = ap.parse_args()
    if args.worker:
        worker()
        return
    groups: dict[str, list[dict[str, Any]]] = {"written": written_cases()}
    groups["mutation"] = mutation_cases(groups["written"], args.mutations, args.seed)
    for folder in args.dir:
        name = Path(folder).name
        held_out = dir_cases(Path(folder).expanduser())
        if args.fill_envs:
            held_out = [with_filled_overrides(c) for c in held_out]
        groups[name] = held_out
        if args.dir_mutations:
            mutated = mutation_cases(held_out, args.dir_mutations, args.seed)
            for c in mutated:
                c["id"] = f"{name}-{c['id']}"
            groups[f"{name}-mutation"] = mutated
    everything = [c for cs in groups.values() for c in cs]
    oracle = run_oracle(args.oracle, everything)
    total_agree = total = 0
    for group, cases in groups.items():
        agree = undecided = 0
        for c in cases:
            ours = skyloom_verdict(c)
            theirs = oracle[c["id"]]
            c["oracle"] = theirs
            if theirs["ok"] is None:
                undecided += 1
                if not args.quiet:
                    print(
                        f"UNDECIDED {c['id']} (needs SkyPilot's catalog): {theirs['error'][:100]}"
                    )
                continue
            if ours["ok"] == theirs["ok"] and not ours.get("crash"):
                agree += 1
            elif not args.quiet:
                print(f"DISAGREE {c['id']}: skypilot={'accept' if theirs['ok'] else 'reject'}")
                if not theirs["ok"]:
                    print(f"    skypilot: {theirs['error'][:300]}")
                if not ours["ok"]:
                    print(f"    skyloom:  {ours['error'][:300]}")
                if group != "written" or args.quiet is False:
                    print("    " + c["text"][:600].replace("\n", "\n    "))
        decided = len(cases) - undecided
        total_agree += agree
        total += decided
        accepted = sum(1 for c in cases if c["oracle"]["ok"])
        rate = 100.0 * agree / decided if decided else 100.0
        print(
            f"{group}: {agree}/{decided} agree ({rate:.1f}%); SkyPilot accepts {accepted}, "
            f"rejects {decided - accepted}; {undecided} undecided (need SkyPilot's catalog)"
        )
    print(f"all: {total_agree}/{total} agree")
    if args.record:
        record(groups["written"], groups["mutation"])


def record(written: list[dict[str, Any]], mutations: list[dict[str, Any]]) -> None:
    verdicts = {
        c["id"].split("/", 1)[1]: {
            "accepted": c["oracle"]["ok"],
            **({"skypilot_error": c["oracle"]["error"]} if not c["oracle"]["ok"] else {}),
        }
        for c in written
    }
    VERDICTS.write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
    with MUTATIONS.open("w") as f:
        for c in mutations:
            if c["oracle"]["ok"] is None:
                continue
            row = {"id": c["id"], "text": c["text"], "accepted": c["oracle"]["ok"]}
            if not c["oracle"]["ok"]:
                row["skypilot_error"] = c["oracle"]["error"]
            f.write(json.dumps(row, sort_keys=True) + "\n")
    print(f"recorded {len(verdicts)} written and {len(mutations)} mutated documents")


if __name__ == "__main__":
    main()
