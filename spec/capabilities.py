"""What skyloom can act on today, per infra: fields that parse but are not supported yet.

`launch` refuses a task whose meaning it cannot honour (asking for GPUs where there are
none) and warns about fields it can safely ignore (labels on a local node).
"""

from __future__ import annotations

from dataclasses import dataclass

from skyloom.spec.models import Task

SUPPORTED_INFRA = ("local", "ssh")


@dataclass
class Gap:
    field: str
    why: str
    blocking: bool


_IGNORABLE = (
    "disk_size", "disk_tier", "network_tier", "local_disk", "labels", "image_id", "ports",
    "instance_type", "max_hourly_cost", "priority", "priority_class", "ephemeral_storage",
)  # fmt: skip


def gaps(task: Task, infra: str) -> list[Gap]:
    out: list[Gap] = []
    cloud = infra.split("/", 1)[0].lower()
    if cloud not in SUPPORTED_INFRA:
        out.append(
            Gap(
                "resources.infra",
                f"infra {infra!r} is not supported yet (supported: {', '.join(SUPPORTED_INFRA)})",
                True,
            )
        )
    r = task.resources
    if r.accelerators and cloud == "local":
        out.append(Gap("resources.accelerators", "the local infra has no accelerators", True))
    if r.any_of or r.ordered:
        out.append(
            Gap(
                "resources.any_of/ordered",
                "failover over candidates is not supported yet; the first candidate is used",
                False,
            )
        )
    if r.volumes:
        out.append(Gap("resources.volumes", "extra disks are not supported yet", True))
    if r.use_spot and cloud == "local":
        out.append(
            Gap(
                "resources.use_spot",
                "spot on the local infra only matters for managed jobs (`skyloom jobs launch`)",
                False,
            )
        )
    if r.job_recovery:
        out.append(Gap("resources.job_recovery", "applies to managed jobs only", False))
    for name in _IGNORABLE:
        if getattr(r, name) is not None:
            out.append(Gap(f"resources.{name}", f"ignored on the {cloud} infra", False))
    if task.workdir is not None and not isinstance(task.workdir, str):
        out.append(Gap("workdir", "a git workdir is not supported yet", True))
    for target, src in task.file_mounts.items():
        if not isinstance(src, str) or "://" in src:
            out.append(Gap(f"file_mounts.{target}", "bucket mounts are not supported yet", True))
    for name, why in (
        ("volumes", "volumes are not supported yet"),
        ("volume_mounts", "volumes are not supported yet"),
        ("managed_secrets", "managed secrets are not supported yet"),
        ("event_callback", "event callbacks are not supported yet"),
        ("service", "services run with `skyloom serve up`, not launch"),
        ("pool", "worker pools are not supported yet"),
        ("config", "per-task config overrides are not supported yet"),
    ):
        if getattr(task, name) is not None:
            out.append(Gap(name, why, name not in ("service", "config", "event_callback")))
    if isinstance(task.secrets, list):
        out.append(Gap("secrets", "references to managed secrets are not supported yet", True))
    return out
