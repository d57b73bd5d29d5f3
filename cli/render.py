"""Human-readable rendering of CLI results (tables via rich, imported on first use)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from skyloom.spec.models import Task
from skyloom.workflows.models import AutostopConfig


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


def plan(name: str, infra: str, task: Task, autostop: AutostopConfig | None) -> str:
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
    return f"Cluster {name} on {infra}: {', '.join(parts)}{stop}"


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
