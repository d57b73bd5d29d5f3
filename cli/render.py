"""Human-readable rendering of CLI results (tables via rich, imported on first use)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from skyloom.activities.models import PlanResult
from skyloom.spec.models import Task
from skyloom.workflows.models import AutostopConfig, ClusterDescription
from skyloom.workflows.policies import order_placements


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, box=None, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def _ago(ts: Any) -> str:
    if not ts:
        return "-"
    when = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    secs = int((datetime.now(UTC) - when).total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit} ago"
    return f"{secs}s ago"


def plan(
    name: str,
    task: Task,
    autostop: AutostopConfig | None,
    result: PlanResult | None,
    ordered: bool,
    existing: ClusterDescription | None = None,
) -> None:
    """What the launch will do: the cluster, and the optimizer's placements in the order
    they will be tried (the first that has capacity wins), as SkyPilot shows them."""
    r = task.resources
    parts = [f"{task.num_nodes} node{'s' if task.num_nodes > 1 else ''}"]
    if r.cpus is not None:
        parts.append(f"cpus={r.cpus}")
    if r.memory is not None:
        parts.append(f"memory={r.memory}")
    if r.accelerators:
        parts.append("gpus=" + ",".join(f"{k}:{v:g}" for k, v in r.accelerators.items() if v))
    stop = ""
    if autostop and autostop.idle_minutes is not None:
        action = "down" if autostop.down else "stop"
        stop = f"; autostop: {action} after {autostop.idle_minutes} idle min"
    if existing is not None and result is None:
        where = f"existing cluster on {existing.infra} ({existing.status.value})"
        print(f"Cluster {name}: {where}{stop}")
        return
    print(f"Cluster {name}: {', '.join(parts)}{stop}")
    if result is None:
        return
    rows = plan_rows(result, ordered, task.num_nodes)
    shown = rows[:MAX_PLAN_ROWS]
    title = "Placements, tried in this order until one has capacity"
    _table(
        title if len(rows) > 1 else "Placement",
        ["INFRA", "INSTANCE", "vCPUs", "Mem(GB)", "GPUS", "SPOT", "$/HOUR", "CHOSEN"],
        [
            [
                row["infra"],
                row["instance_type"] or "-",
                _amount(row["vcpus"]),
                _amount(row["memory_gb"]),
                ",".join(f"{k}:{v:g}" for k, v in row["accelerators"].items()) or "-",
                "yes" if row["spot"] else "-",
                f"{row['price_per_hour']:.2f}",
                "\u2714" if i == 0 else "",
            ]
            for i, row in enumerate(shown)
        ],
    )
    if len(rows) > len(shown):
        print(f"  ... and {len(rows) - len(shown)} more (all of them: -o json)")


# Placements shown in the plan table (the JSON has all of them).
MAX_PLAN_ROWS = 12


def plan_rows(result: PlanResult, ordered: bool, num_nodes: int) -> list[dict[str, Any]]:
    """The placements in the order they will be tried, priced for the whole cluster:
    `launch --dryrun -o json`'s `plan`."""
    placements, _ = order_placements(result, ordered)
    return [
        {
            "infra": p.offer.where,
            "instance_type": p.offer.instance_type,
            "vcpus": p.offer.cpus,
            "memory_gb": p.offer.memory_gb,
            "accelerators": dict(p.offer.accelerators),
            "spot": p.offer.spot,
            "price_per_hour": round(p.offer.price_per_hour * num_nodes, 6),
        }
        for p in placements
    ]


def _amount(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def managed_jobs_summary(counts: dict[str, int]) -> None:
    if counts:
        states = ", ".join(f"{n} {state}" for state, n in counts.items())
        print(f"\nManaged jobs in progress: {states} (details: skyloom jobs queue)")


def clusters(rows: list[dict]) -> None:
    if not rows:
        print("No existing clusters.")
        return
    _table(
        "Clusters",
        ["NAME", "INFRA", "NODES", "STATUS", "LAUNCHED", "USER"],
        [
            [
                r["name"],
                r["infra"],
                str(r["num_nodes"]),
                r["status"],
                _ago(r["launched_at"]),
                r["user"],
            ]
            for r in rows
        ],
    )


def jobs(cluster: str, rows: list[dict]) -> None:
    if not rows:
        print(f"No jobs on {cluster}.")
        return
    _table(
        f"Job queue of {cluster}",
        ["ID", "NAME", "SUBMITTED", "STATUS", "EXIT", "NODES"],
        [
            [
                str(j["id"]),
                j["name"] or "-",
                _ago(j["submitted_at"]),
                j["status"],
                "-" if j["exit_code"] is None else str(j["exit_code"]),
                str(j["num_nodes"]),
            ]
            for j in rows
        ],
    )


def engine(data: dict) -> None:
    up = "running" if data["server_running"] else "stopped"
    wk = "running" if data["worker_running"] else "stopped"
    print(f"Engine:  {up} at {data['address'] or '-'} (pid {data['server_pid'] or '-'})")
    print(f"Worker:  {wk} (pid {data['worker_pid'] or '-'})")
    print(f"Web UI:  {data['ui_url'] or '-'}")
    print(f"State:   {data['state_dir']}")


def managed_jobs(rows: list[dict]) -> None:
    if not rows:
        print("No managed jobs.")
        return
    _table(
        "Managed jobs",
        ["ID", "NAME", "SUBMITTED", "STATUS", "RECOVERIES", "CLUSTER", "INFRA"],
        [
            [
                str(j["id"]),
                j["name"] or "-",
                _ago(j["submitted_at"]),
                j["status"],
                str(j["recovery_count"]),
                j["cluster"] or "-",
                j["infra"] or "-",
            ]
            for j in rows
        ],
    )


def gpu_summary(rows: list[list[str]]) -> None:
    if not rows:
        print("No GPU in the catalog.")
        return
    _table("GPUs in the catalog (details: skyloom show-gpus NAME)", ["GPU", "QTY", "CLOUDS"], rows)


def gpu_offers(rows: list[dict]) -> None:
    def price(x: float | None) -> str:
        return "-" if x is None else f"$ {x:.3f}"

    _table(
        "",
        ["GPU", "QTY", "INFRA", "INSTANCE_TYPE", "vCPUs", "HOST_MEM", "$/HOUR", "SPOT $/HOUR"],
        [
            [
                r["accelerator"],
                f"{r['count']:g}",
                r["infra"],
                r["instance_type"] or "(attachable)",
                _amount(r["vcpus"]),
                "-" if r["memory_gb"] is None else f"{r['memory_gb']:g}GB",
                price(r["price_per_hour"]),
                price(r["spot_price_per_hour"]),
            ]
            for r in rows
        ],
    )


def services(rows: list[dict]) -> None:
    if not rows:
        print("No live services.")
        return
    _table(
        "Services",
        ["NAME", "VERSION", "STATUS", "REPLICAS", "QPS", "ENDPOINT"],
        [
            [
                r["name"],
                str(r["version"]),
                r["status"],
                f"{sum(1 for x in r['replicas'] if x['status'] == 'READY')}/{r['target_replicas']}",
                f"{r['qps']:g}",
                r["endpoint"] or "-",
            ]
            for r in rows
        ],
    )
    _table(
        "Service Replicas",
        ["SERVICE", "ID", "VERSION", "STATUS", "INFRA", "SPOT", "ADDRESS"],
        [
            [
                r["name"],
                str(x["id"]),
                str(x["version"]),
                x["status"],
                x["infra"] or "-",
                "yes" if x["spot"] else "no",
                x["address"] or "-",
            ]
            for r in rows
            for x in r["replicas"]
        ],
    )
