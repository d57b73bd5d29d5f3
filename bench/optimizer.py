"""Plan time of skyloom's optimizer over the shipped catalog, next to SkyPilot 0.14.1's.

Run by hand, never in CI. SkyPilot lives in its own venv (the oracle), e.g.

    python3 -m venv /tmp/skyoracle && /tmp/skyoracle/bin/pip install skypilot==0.14.1
    .venv/bin/python bench/optimizer.py [--runs 200] [--oracle-runs 30]
    .venv/bin/python bench/optimizer.py --no-oracle          # skyloom only

Per task shape (infra, resources as a task's resources dump, node count) it prints the
median and p95 milliseconds per plan, what the plan holds and its cheapest placement (price
per node and hour), and once the catalog load time. The issue's goal is ≤ 50 ms per plan.
One untimed plan per shape comes first, so steady state is measured.

skyloom: `catalog.offers(catalog, infra, resources, num_nodes)` on `catalog.load()`, from
the resources dict (parsing included); it returns up to MAX_OFFERS offers, one per zone
(the cheapest instance type there), cheapest first.

SkyPilot: `Optimizer.optimize(dag, quiet=True)` on a one-task DAG built before the clock
starts. Its plan is one Resources, the cheapest of the launchables it makes: each enabled
cloud's cheapest instance type, spread over that type's regions (or zones); the count of
those is shown. The oracle runs in SkyPilot's interpreter (this file with --worker, which
imports only SkyPilot and the standard library), offline, on the same catalog facts:

  * HOME is a temporary directory; ~/.sky/catalogs/v8/{aws,gcp,azure}/vms.csv are our
    shipped CSVs without their `#` lines, with the nine columns SkyPilot's catalog
    readers use on these plans, under the same names (ours were read from schema v7 for
    AWS and GCP, v6 for Azure; 0.14.1 reads v8). Azure's empty AvailabilityZone column
    is left out, as in SkyPilot's own Azure catalog: with it, SkyPilot drops every row
    with no zone and finds no Azure region. SkyPilot's other columns (GpuInfo, Arch,
    Generation, LocalDisk*, MaximumEfaInterfaces) are absent; it reads them only to list
    GPUs, match local disks and pick images, EFA or VM generation when provisioning.
    With no `.meta/*.md5`, SkyPilot takes the files as edited by hand and never
    refetches them.
  * ~/.sky/catalogs/v8/common/accelerators.csv (AcceleratorName, Clouds), which SkyPilot
    canonicalizes accelerator names with, is made from the names in our CSVs.
  * AWS has no user identity (as with no AWS credentials; SkyPilot would otherwise run
    `aws configure list`), so it keeps zone IDs (use1-az1), as our catalog does, and
    needs no zone-mapping file. No image or quota files: read only when provisioning.
  * Enabled clouds: `sky.check.get_cached_enabled_clouds_or_refresh` returns AWS, GCP and
    Azure (no credential checks).
  * Request-level caches are cleared before each plan, as SkyPilot's API server does per
    request.
  * Sockets cannot connect and subprocesses cannot start in the worker; attempts are
    counted and printed (0: the plans needed neither).

What differs by design, not by speed: SkyPilot applies its default memory (4 GiB per
vCPU) and default instance families (m6i/c6i/r6i..., n2-standard, Ds_v5/Es_v5/Fs_v2) to a
task that names no instance type or accelerator; its AWS and Azure on-demand launchables
are per region, ours per zone.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLOUDS = {"aws": "AWS", "gcp": "GCP", "azure": "Azure"}

# (label, infra, resources, num_nodes)
SHAPES: list[tuple[str, str, dict[str, Any], int]] = [
    ("A100:8", "*", {"accelerators": {"A100": 8}}, 1),
    ("A100:8 gcp/us-central1", "gcp/us-central1", {"accelerators": {"A100": 8}}, 1),
    ("H100:8 spot", "*", {"accelerators": {"H100": 8}, "use_spot": True}, 1),
    ("T4:1 x4 nodes", "*", {"accelerators": {"T4": 1}}, 4),
    ("A10G:1 aws", "aws", {"accelerators": {"A10G": 1}}, 1),
    ("cpus 4+ memory 32+", "*", {"cpus": "4+", "memory": "32+"}, 1),
    ("m6i.2xlarge", "*", {"instance_type": "m6i.2xlarge"}, 1),
    ("default node", "*", {}, 1),
    ("cpus 8+ azure", "azure", {"cpus": "8+"}, 1),
]
GOAL_MS = 50.0


def median_p95(xs: list[float]) -> tuple[float, float]:
    """Median and nearest-rank 95th percentile."""
    ordered = sorted(xs)
    return statistics.median(ordered), ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def placement(
    infra: str,
    region: str | None,
    zone: str | None,
    instance_type: str | None,
    accelerators: dict[str, float] | None,
    price: float,
) -> str:
    acc = " ".join(f"{k}:{v:g}" for k, v in (accelerators or {}).items())
    where = "/".join(p for p in (infra, region, zone) if p)
    return f"{where} {instance_type or '-'}{' ' + acc if acc else ''} ${price:.4g}"


# ---- skyloom ----------------------------------------------------------------------------


def bench_ours(runs: int) -> dict[str, Any]:
    t = time.perf_counter()
    from skyloom.activities import catalog

    imported = time.perf_counter() - t
    t = time.perf_counter()
    cat = catalog.load()
    loaded = time.perf_counter() - t
    shapes = []
    for label, infra, resources, num_nodes in SHAPES:
        offers = catalog.offers(cat, infra, resources, num_nodes)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            catalog.offers(cat, infra, resources, num_nodes)
            times.append(time.perf_counter() - t)
        best = offers[0] if offers else None
        shapes.append(
            {
                "label": label,
                "times": times,
                "count": len(offers),
                "cheapest": placement(
                    best.infra,
                    best.region,
                    best.zone,
                    best.instance_type,
                    best.accelerators,
                    best.price_per_hour,
                )
                if best
                else "none",
            }
        )
    return {"import": imported, "load": loaded, "rows": len(cat.vms), "shapes": shapes}


def shipped_csvs() -> dict[str, str]:
    from importlib import resources as package_files

    data = package_files.files("skyloom.activities.catalog").joinpath("data")
    return {c: data.joinpath(f"{c}.csv").read_text() for c in CLOUDS}


# ---- the oracle (runs in SkyPilot's venv) -----------------------------------------------


def write_skypilot_catalog(home: Path, texts: dict[str, str]) -> None:
    """Our CSVs in the layout SkyPilot 0.14.1 reads, plus its accelerator-name table."""
    root = home / ".sky" / "catalogs" / "v8"
    names: dict[str, set[str]] = {}
    for cloud, text in texts.items():
        body = "".join(line for line in text.splitlines(True) if not line.startswith("#"))
        rows = list(csv.DictReader(io.StringIO(body)))
        columns = list(rows[0])
        # SkyPilot's Azure catalog has no zones column (ours keeps it, empty); with one,
        # SkyPilot drops every row whose zone is missing and finds no Azure region.
        if not any(row["AvailabilityZone"] for row in rows):
            columns.remove("AvailabilityZone")
        (root / cloud).mkdir(parents=True)
        with (root / cloud / "vms.csv").open("w", newline="") as f:
            vms = csv.DictWriter(f, columns, extrasaction="ignore")
            vms.writeheader()
            vms.writerows(rows)
        for row in rows:
            if row["AcceleratorName"]:
                names.setdefault(row["AcceleratorName"], set()).add(CLOUDS[cloud])
    (root / "common").mkdir(parents=True)
    with (root / "common" / "accelerators.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["AcceleratorName", "Clouds"])
        for name, clouds in sorted(names.items()):
            out.writerow([name, str(sorted(clouds))])


class _Offline:
    """Refuses and counts network connections and subprocesses."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def install(self) -> None:
        import socket

        def refuse(what: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                self.attempts.append(f"{what} {args[1:2] or args[:1]}"[:200])
                raise OSError(f"bench/optimizer.py: no {what} in the oracle")

            return call

        socket.socket.connect = refuse("connect")  # type: ignore[method-assign]
        socket.create_connection = refuse("connect")
        subprocess.Popen.__init__ = refuse("subprocess")  # type: ignore[method-assign]


def worker() -> None:
    request = json.load(sys.stdin)
    offline = _Offline()
    offline.install()
    t = time.perf_counter()
    import sky
    from sky import check, clouds, optimizer
    from sky.catalog import aws_catalog, azure_catalog, gcp_catalog
    from sky.catalog.common import LazyDataFrame
    from sky.utils import accelerator_registry, annotations

    imported = time.perf_counter() - t

    def no_aws_identity(cls: Any) -> Any:
        raise sky.exceptions.CloudUserIdentityError("no AWS credentials (bench)")

    # As with no AWS credentials: zone IDs are kept (SkyPilot asks `aws configure list`).
    clouds.AWS.get_active_user_identity = classmethod(no_aws_identity)
    t = time.perf_counter()
    # AWS's table is a plain DataFrame once zone IDs are mapped, lazy when they are kept.
    tables = [aws_catalog._get_df(), gcp_catalog._df, azure_catalog._df]
    rows = sum(len(f._load_df() if isinstance(f, LazyDataFrame) else f) for f in tables)
    accelerator_registry._accelerator_df._load_df()
    loaded = time.perf_counter() - t

    enabled = [clouds.AWS(), clouds.GCP(), clouds.Azure()]
    check.get_cached_enabled_clouds_or_refresh = lambda *a, **k: list(enabled)

    def dag_of(infra: str, resources: dict[str, Any], num_nodes: int) -> tuple[Any, Any]:
        with sky.Dag() as dag:
            task = sky.Task(run="true", num_nodes=num_nodes)
            task.set_resources(sky.Resources(infra=None if infra == "*" else infra, **resources))
        return dag, task

    shapes = []
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        for label, infra, resources, num_nodes in request["shapes"]:
            entry: dict[str, Any] = {"label": label}
            try:
                dag, task = dag_of(infra, resources, num_nodes)
                launchable, _, _, _ = optimizer._fill_in_launchable_resources(task, None, True)
                optimizer.Optimizer.optimize(dag, quiet=True)
                times = []
                for _ in range(request["runs"]):
                    annotations.clear_request_level_cache()
                    dag, task = dag_of(infra, resources, num_nodes)
                    t = time.perf_counter()
                    optimizer.Optimizer.optimize(dag, quiet=True)
                    times.append(time.perf_counter() - t)
                best = task.best_resources
                entry["times"] = times
                entry["count"] = sum(len(v) for v in launchable.values())
                entry["cheapest"] = placement(
                    str(best.cloud).lower(),
                    best.region,
                    best.zone,
                    best.instance_type,
                    best.accelerators,
                    best.get_cost(3600),
                )
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:150]
            shapes.append(entry)
    result = {
        "import": imported,
        "load": loaded,
        "rows": rows,
        "shapes": shapes,
        "version": sky.__version__,
        "offline_attempts": offline.attempts,
    }
    Path(request["out"]).write_text(json.dumps(result))


def bench_oracle(python: str, runs: int) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SKYPILOT_", "SKY_")) and k != "VIRTUAL_ENV"
    }
    env["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
    with tempfile.TemporaryDirectory(prefix="skyoracle-home-") as home:
        env["HOME"] = home
        write_skypilot_catalog(Path(home), shipped_csvs())
        out = Path(home) / "result.json"
        request = {"shapes": SHAPES, "runs": runs, "out": str(out)}
        proc = subprocess.run(
            [python, os.path.abspath(__file__), "--worker"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"oracle failed:\n{proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
    return result


# ---- main -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=200, help="Timed plans per shape (skyloom).")
    ap.add_argument("--oracle", default="/tmp/skyoracle/bin/python", help="SkyPilot's python")
    ap.add_argument("--oracle-runs", type=int, default=30, help="Timed plans per shape (SkyPilot).")
    ap.add_argument("--no-oracle", action="store_true", help="Measure skyloom only.")
    args = ap.parse_args()
    if args.worker:
        worker()
        return
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    ours = bench_ours(args.runs)
    theirs = None if args.no_oracle else bench_oracle(args.oracle, args.oracle_runs)
    print(
        f"skyloom : import {ours['import'] * 1000:.0f} ms, catalog.load() "
        f"{ours['load'] * 1000:.1f} ms ({ours['rows']} rows); {args.runs} plans per shape"
    )
    if theirs is not None:
        print(
            f"SkyPilot {theirs['version']}: import {theirs['import'] * 1000:.0f} ms, "
            f"catalog read {theirs['load'] * 1000:.1f} ms ({theirs['rows']} rows); "
            f"{args.oracle_runs} plans per shape; network/subprocess attempts: "
            f"{len(theirs['offline_attempts'])}"
        )
        for attempt in theirs["offline_attempts"][:5]:
            print(f"    {attempt}")
    print()
    width = max(len(s[0]) for s in SHAPES)
    pair = f"{'median':>8} {'p95':>8}"
    print(f"{'ms per plan':<{width}}  {'skyloom':^17}" + (f"  {'SkyPilot':^17}" if theirs else ""))
    print(f"{'shape':<{width}}  {pair}" + (f"  {pair}  {'SkyPilot/skyloom':>16}" if theirs else ""))
    worst = 0.0
    for i, mine in enumerate(ours["shapes"]):
        med, p95 = median_p95(mine["times"])
        worst = max(worst, p95)
        line = f"{mine['label']:<{width}}  {med * 1000:>8.2f} {p95 * 1000:>8.2f}"
        if theirs is not None:
            other = theirs["shapes"][i]
            if "error" in other:
                line += f"  {'no plan':>17}"
            else:
                omed, op95 = median_p95(other["times"])
                ratio = f"{omed / med:.0f}x (median)"
                line += f"  {omed * 1000:>8.2f} {op95 * 1000:>8.2f}  {ratio:>16}"
        print(line)
    met = "met" if worst * 1000 <= GOAL_MS else "NOT met"
    print(f"goal ≤ {GOAL_MS:.0f} ms per plan (skyloom): {met}, worst p95 {worst * 1000:.2f} ms")
    print()
    print(f"{'shape':<{width}}  plan (prices per node and hour)")
    for i, mine in enumerate(ours["shapes"]):
        count, cheapest = mine["count"], mine["cheapest"]
        print(f"{mine['label']:<{width}}  skyloom : {count:>3} offers, cheapest {cheapest}")
        if theirs is not None:
            other = theirs["shapes"][i]
            if "error" in other:
                print(f"{'':<{width}}  SkyPilot: no plan ({other['error']})")
            else:
                print(
                    f"{'':<{width}}  SkyPilot: {other['count']:>3} launchables, "
                    f"best {other['cheapest']}"
                )


if __name__ == "__main__":
    main()
