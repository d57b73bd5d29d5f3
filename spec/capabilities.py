"""What skyloom can act on today: fields that parse but are not supported yet.

`launch` refuses a task whose meaning it cannot honour (a bucket mount) and warns about
fields it can safely ignore (labels on a local node). What one infra can or cannot do
(GPUs, spot, node counts) is its provider's to say, when the workers plan the launch.
"""

from __future__ import annotations

from dataclasses import dataclass

from skyloom.spec.models import Task

SUPPORTED_INFRA = ("local", "ssh", "aws", "gcp", "azure")


@dataclass
class Gap:
    field: str
    why: str
    blocking: bool


# Honoured when placing on a cloud; a local or SSH node has its own disk, image and ports.
_CLOUD_ONLY = ("disk_size", "disk_tier", "labels", "image_id", "ports")
_IGNORABLE = (
    "network_tier", "local_disk", "max_hourly_cost", "priority", "priority_class",
    "ephemeral_storage",
)  # fmt: skip
_CLOUDS = ("aws", "gcp", "azure")


def gaps(task: Task) -> list[Gap]:
    """Fields skyloom cannot honour yet, whatever the infra (what each infra can do, the
    workers' providers say when they plan the launch)."""
    out: list[Gap] = []

    def note(gap: Gap) -> None:
        if gap not in out:
            out.append(gap)

    for r in task.resources.candidates():
        if r.volumes:
            note(Gap("resources.volumes", "extra disks are not supported yet", True))
        cloud = r.placement()[0]
        for name in _CLOUD_ONLY:
            if getattr(r, name) is not None and cloud is not None and cloud not in _CLOUDS:
                note(Gap(f"resources.{name}", f"used on clouds only; ignored on {cloud}", False))
        for name in _IGNORABLE:
            if getattr(r, name) is not None:
                note(Gap(f"resources.{name}", "not used yet", False))
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
    return out
