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
) -> str:
    """What the launch will do: the cluster, and the placements in the order they will be
    tried (the first that has capacity wins)."""
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
        return f"Cluster {name}: {where}{stop}"
    lines = [f"Cluster {name}: {', '.join(parts)}{stop}"]
    if result is not None:
        placements, _ = order_placements(result, ordered)
        if len(placements) > 1:
            lines.append("Placements, tried in this order until one has capacity:")
        for i, p in enumerate(placements, 1):
            o = p.offer
            what = [o.instance_type or "", "spot" if o.spot else ""]
            gpus = ",".join(f"{k}:{v:g}" for k, v in o.accelerators.items())
            extra = " ".join(x for x in (*what, gpus) if x)
            cost = f"${o.price_per_hour * task.num_nodes:.2f}/h"
            lines.append(f"  {i}. {o.where}" + (f" {extra}" if extra else "") + f"  {cost}")
    return "\n".join(lines)


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
