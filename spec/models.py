"""The user's language: SkyPilot's task YAML as pydantic models.

Every model forbids unknown fields and describes each field, so the same classes give
validation, did-you-mean errors and the published JSON Schema. Values are normalised on
the way in (accelerators in any of their three forms become one mapping, `autostop: 5`
becomes an Autostop) so the rest of skyloom sees one shape per concept.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Clouds SkyPilot names in `cloud:` / `infra:`, plus `local`, skyloom's embedded default.
CLOUDS = (
    "aws", "azure", "gcp", "lambda", "ibm", "scp", "oci", "kubernetes", "runpod", "vast",
    "vsphere", "cudo", "fluidstack", "paperspace", "do", "nebius", "hyperbolic", "seeweb",
    "ssh", "slurm", "primeintellect", "shadeform", "local",
)  # fmt: skip

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([kKmMgGtTpP][bB]?|[bB])?$")
_CPUS_OR_MEM = re.compile(r"^\d+(\.\d+)?\s*([kKmMgGtTpP][bB]?)?\+?$")
_TIME = re.compile(r"^\d+\s*[smhdwSMHDW]?$")
_PORT_RANGE = re.compile(r"^\d{1,5}(-\d{1,5})?$")


class Model(BaseModel):
    """Base for every YAML-facing model: unknown keys are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


class JobRecoveryStrategy(StrEnum):
    FAILOVER = "FAILOVER"
    EAGER_NEXT_REGION = "EAGER_NEXT_REGION"


class JobRecovery(Model):
    """How a managed job recovers (SkyPilot's `resources.job_recovery`)."""

    strategy: JobRecoveryStrategy | None = Field(
        None, description="Recovery strategy after preemption; default EAGER_NEXT_REGION."
    )
    max_restarts_on_errors: int = Field(
        0, ge=0, description="How many times a user-code failure is retried."
    )
    recover_on_exit_codes: list[Annotated[int, Field(ge=0, le=255)]] = Field(
        default_factory=list,
        description="Exit codes that always trigger a recovery (not counted as errors).",
    )

    @field_validator("strategy", mode="before")
    @classmethod
    def _upper_strategy(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("recover_on_exit_codes", mode="before")
    @classmethod
    def _one_or_many_codes(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        if isinstance(v, list) and len(set(map(str, v))) != len(v):
            raise ValueError("exit codes must be unique")
        return v


class AutostopWaitFor(StrEnum):
    JOBS_AND_SSH = "jobs_and_ssh"
    JOBS = "jobs"
    NONE = "none"


class Autostop(Model):
    """Stop (or tear down) the cluster after it has been idle this long."""

    enabled: bool = Field(True, description="False disables autostop.")
    idle_minutes: int = Field(5, ge=0, description="Idle minutes before stopping.")
    down: bool = Field(False, description="Tear the cluster down instead of stopping it.")
    wait_for: AutostopWaitFor | None = Field(
        None, description="What counts as activity: jobs_and_ssh, jobs or none."
    )
    hook: str | None = Field(None, description="Command run before autostop (deprecated).")
    hook_timeout: int | None = Field(None, ge=1, description="Seconds the hook may take.")

    @field_validator("wait_for", mode="before")
    @classmethod
    def _lower_wait_for(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {"enabled": v}
        if isinstance(v, int):
            return {"idle_minutes": v}
        if isinstance(v, str):
            return {"idle_minutes": parse_minutes(v)}
        return v


def parse_minutes(text: str) -> int:
    """'90' → 90, '2h' → 120, '30s' → 1 (rounded up): SkyPilot's time pattern."""
    t = text.strip()
    if not _TIME.match(t):
        raise ValueError(f"expected minutes or a duration like 30m, 2h, 1d; got {text!r}")
    unit = t[-1].lower() if t[-1].isalpha() else "m"
    n = int(t.rstrip("smhdwSMHDW").strip())
    seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    return -(-seconds // 60)


class AcceleratorArgs(Model):
    runtime_version: str | None = Field(None, description="TPU runtime version.")
    tpu_name: str | None = Field(None, description="Existing TPU node name.")
    tpu_vm: bool | None = Field(None, description="Use a TPU VM.")
    gcp_queued_resource: bool | None = Field(None, description="Use GCP queued resources.")


class DiskTier(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    ULTRA = "ultra"
    BEST = "best"


class NetworkTier(StrEnum):
    STANDARD = "standard"
    BEST = "best"


class ResourceVolume(Model):
    """A disk attached to the instance (`resources.volumes` entry)."""

    path: str | None = Field(None, description="Mount path on the node.")
    name: str | None = Field(None, description="Volume name.")
    disk_size: int | str | None = Field(None, description="Size in GB or with a unit.")
    disk_tier: str | None = Field(None, description="Disk performance tier.")
    auto_delete: bool | None = Field(None, description="Delete with the instance.")
    storage_type: str | None = Field(None, description="network or instance.")
    attach_mode: str | None = Field(None, description="read_write or read_only.")


def _check_size(v: Any, what: str) -> Any:
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    if isinstance(v, str) and _SIZE.match(v.strip()):
        return v
    raise ValueError(f"expected {what} as a number of GB or a size like 256GB; got {v!r}")


class ResourcesBase(Model):
    """Fields shared by `resources:` and each entry of `any_of:` / `ordered:`."""

    infra: str | None = Field(
        None, description="Where to run: cloud[/region[/zone]], k8s/<context>, ssh/<pool>, local."
    )
    cloud: str | None = Field(None, description="Cloud name (prefer `infra`).")
    region: str | None = Field(None, description="Region (prefer `infra`).")
    zone: str | None = Field(None, description="Zone (prefer `infra`).")
    cpus: int | float | str | None = Field(
        None, description="vCPUs per node: 4 for exactly 4, '4+' for at least 4."
    )
    memory: int | float | str | None = Field(
        None, description="Memory per node in GB: 32, '32+', '32GB'."
    )
    accelerators: dict[str, float | None] | None = Field(
        None,
        description=(
            "Accelerators per node: 'A100:8', {A100: 8}, a list or set of choices "
            "['A100:8', 'H100:8']."
        ),
    )
    instance_type: str | None = Field(None, description="Cloud instance type.")
    use_spot: bool | None = Field(None, description="Use spot (preemptible) instances.")
    job_recovery: JobRecovery | None = Field(
        None, description="Managed-job recovery: a strategy name or a mapping."
    )
    disk_size: int | str | None = Field(None, description="OS disk size in GB (default 256).")
    ephemeral_storage: int | str | None = Field(
        None, description="Deprecated alias of disk_size for Kubernetes."
    )
    disk_tier: DiskTier | None = Field(None, description="OS disk tier.")
    network_tier: NetworkTier | None = Field(None, description="Network tier.")
    local_disk: str | None = Field(None, description="Local disk mode, e.g. 'mode=performance'.")
    max_hourly_cost: float | None = Field(None, gt=0, description="Price cap per node-hour.")
    ports: list[str] | None = Field(None, description="Ports to open: 8080, '10000-10010', list.")
    labels: dict[str, str] | None = Field(None, description="Labels/tags on cloud resources.")
    accelerator_args: AcceleratorArgs | None = Field(None, description="TPU-specific arguments.")
    image_id: str | dict[str, str] | None = Field(
        None, description="Machine or container image (per region as a mapping)."
    )
    autostop: Autostop | None = Field(None, description="Autostop: minutes, a duration, or a map.")
    volumes: list[ResourceVolume] | None = Field(None, description="Extra disks on each node.")
    priority: int | None = Field(None, ge=0, le=1000, description="Job priority (0-1000).")
    priority_class: str | None = Field(None, description="Kubernetes priority class.")

    @field_validator("infra")
    @classmethod
    def _infra_shape(cls, v: str | None) -> str | None:
        if v is None:
            return v
        head = v.split("/", 1)[0].lower()
        if head in ("k8s", "kubernetes", "*") or head in CLOUDS:
            return v
        raise ValueError(
            f"expected cloud[/region[/zone]] with a cloud among {', '.join(CLOUDS)}, "
            f"'k8s/<context>' or '*'; got {v!r}"
        )

    @field_validator("cloud")
    @classmethod
    def _known_cloud(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in CLOUDS:
            raise ValueError(f"expected one of {', '.join(CLOUDS)}; got {v!r}")
        return v.lower() if v else v

    @field_validator("cpus", "memory")
    @classmethod
    def _amount(cls, v: Any) -> Any:
        if v is None or (isinstance(v, int | float) and not isinstance(v, bool)):
            return v
        if isinstance(v, str) and _CPUS_OR_MEM.match(v.strip()):
            return v.strip()
        raise ValueError(f"expected a number, optionally with '+' (at least); got {v!r}")

    @field_validator("disk_size", "ephemeral_storage")
    @classmethod
    def _disk(cls, v: Any) -> Any:
        return _check_size(v, "a disk size")

    @field_validator("disk_tier", "network_tier", mode="before")
    @classmethod
    def _lower_tier(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("accelerators", mode="before")
    @classmethod
    def _accelerators(cls, v: Any) -> Any:
        return parse_accelerators(v)

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> Any:
        if v is None:
            return None
        items = v if isinstance(v, list) else [v]
        out = []
        for p in items:
            if isinstance(p, bool) or not isinstance(p, int | str):
                raise ValueError(f"expected a port or range like 8080 or '10000-10010'; got {p!r}")
            s = str(p).strip()
            if not _PORT_RANGE.match(s) or any(not 1 <= int(x) <= 65535 for x in s.split("-")):
                raise ValueError(
                    f"expected a port 1-65535 or a range like '10000-10010'; got {p!r}"
                )
            out.append(s)
        return out

    @field_validator("job_recovery", mode="before")
    @classmethod
    def _recovery_shorthand(cls, v: Any) -> Any:
        return {"strategy": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _infra_or_cloud(self) -> ResourcesBase:
        if self.infra and (self.cloud or self.region or self.zone):
            raise ValueError("give either `infra` or `cloud`/`region`/`zone`, not both")
        return self

    def placement(self) -> tuple[str | None, str | None, str | None]:
        """(cloud, region, zone) from `infra` or the legacy fields; '*' means any."""
        if self.infra:
            parts = self.infra.split("/")
            cloud = parts[0].lower()
            if cloud in ("k8s", "kubernetes"):
                return "kubernetes", "/".join(parts[1:]) or None, None
            if cloud == "ssh":
                return "ssh", "/".join(parts[1:]) or None, None
            region = parts[1] if len(parts) > 1 and parts[1] != "*" else None
            zone = parts[2] if len(parts) > 2 else None
            return (None if cloud == "*" else cloud), region, zone
        return self.cloud, self.region, self.zone

    def gpus_per_node(self) -> float:
        if not self.accelerators:
            return 0
        return max((n or 1) for n in self.accelerators.values())


def parse_accelerators(v: Any) -> dict[str, float | None] | None:
    """'A100', 'A100:8', '{A100:1, V100:1}', {A100: 8}, ['A100:8', 'H100'] → {name: count}."""
    if v is None:
        return None
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("{") and s.endswith("}"):
            return parse_accelerators([x for x in s[1:-1].split(",") if x.strip()])
        name, _, count = s.partition(":")
        if not name.strip():
            raise ValueError(f"expected NAME or NAME:COUNT; got {v!r}")
        try:
            n = float(count) if count else 1.0
        except ValueError:
            raise ValueError(f"expected NAME:COUNT with a numeric count; got {v!r}") from None
        if n <= 0:
            raise ValueError(f"accelerator count must be positive; got {v!r}")
        return {name.strip(): n}
    if isinstance(v, list):
        out: dict[str, float | None] = {}
        for item in v:
            if not isinstance(item, str):
                raise ValueError(f"expected strings like 'A100:8' in the list; got {item!r}")
            parsed = parse_accelerators(item)
            assert parsed is not None
            out.update(parsed)
        return out
    if isinstance(v, dict):
        for name, n in v.items():
            if n is not None and (isinstance(n, bool) or not isinstance(n, int | float) or n <= 0):
                raise ValueError(f"expected a positive count for {name!r}; got {n!r}")
        return dict(v)
    raise ValueError(f"expected a string, a mapping or a list; got {type(v).__name__}")


class Resources(ResourcesBase):
    """`resources:`: what each node needs; `any_of`/`ordered` list alternatives."""

    any_of: list[ResourcesBase] | None = Field(
        None, description="Candidates; skyloom picks the cheapest that is available."
    )
    ordered: list[ResourcesBase] | None = Field(None, description="Candidates tried in this order.")

    @model_validator(mode="after")
    def _one_list(self) -> Resources:
        if self.any_of is not None and self.ordered is not None:
            raise ValueError("give either `any_of` or `ordered`, not both")
        return self

    def candidates(self) -> list[ResourcesBase]:
        """Each alternative with the shared fields filled in (SkyPilot's override rule)."""
        alts = self.any_of or self.ordered
        base = self.model_dump(exclude={"any_of", "ordered"}, exclude_none=True)
        if not alts:
            return [ResourcesBase.model_validate(base)]
        out = []
        for alt in alts:
            merged = {**base, **alt.model_dump(exclude_none=True)}
            if "infra" in alt.model_fields_set:
                for k in ("cloud", "region", "zone"):
                    merged.pop(k, None)
            elif {"cloud", "region", "zone"} & alt.model_fields_set:
                merged.pop("infra", None)
            out.append(ResourcesBase.model_validate(merged))
        return out


class GitWorkdir(Model):
    url: str = Field(description="Git repository URL.")
    ref: str | None = Field(None, description="Branch, tag or commit.")


class StorageMount(Model):
    """A `file_mounts` entry given as a mapping: a bucket mounted or copied to the node."""

    name: str | None = Field(None, description="Bucket name.")
    source: str | list[str] | None = Field(None, description="Local path(s) or bucket URI.")
    store: str | None = Field(None, description="s3, gcs, azure, r2, ibm, oci, nebius, ...")
    persistent: bool | None = Field(None, description="Keep the bucket after the task.")
    mode: str | None = Field(None, description="MOUNT, COPY or MOUNT_CACHED.")
    mount_options: str | None = Field(None, description="Extra mount options.")
    type: str | None = Field(None, description="File mount type.")
    config: dict[str, Any] | None = Field(None, description="Store-specific settings.")

    @field_validator("mode", "store", mode="before")
    @classmethod
    def _case(cls, v: Any, info: Any) -> Any:
        if not isinstance(v, str):
            return v
        if info.field_name == "mode":
            v = v.upper()
            if v not in ("MOUNT", "COPY", "MOUNT_CACHED"):
                raise ValueError(f"expected MOUNT, COPY or MOUNT_CACHED; got {v!r}")
            return v
        return v.lower()


class ReadinessProbe(Model):
    path: str = Field("/", description="HTTP path polled on each replica.")
    post_data: str | dict[str, Any] | None = Field(None, description="POST body, if any.")
    initial_delay_seconds: int = Field(1200, ge=0, description="Grace period after start.")
    timeout_seconds: int = Field(15, ge=1, description="Probe timeout.")
    headers: dict[str, str] | None = Field(None, description="Extra request headers.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v


class ReplicaPolicy(Model):
    min_replicas: int = Field(1, ge=0, description="Replicas kept at all times.")
    max_replicas: int | None = Field(None, ge=0, description="Upper bound when autoscaling.")
    num_overprovision: int | None = Field(None, ge=0, description="Extra replicas kept warm.")
    target_qps_per_replica: float | dict[str, float] | None = Field(
        None, description="Autoscaling target."
    )
    dynamic_ondemand_fallback: bool | None = Field(None, description="On-demand when spot fails.")
    base_ondemand_fallback_replicas: int | None = Field(None, ge=0, description="On-demand base.")
    spot_placer: str | None = Field(None, description="Spot placement policy.")
    upscale_delay_seconds: float | None = Field(None, description="Delay before scaling up.")
    downscale_delay_seconds: float | None = Field(None, description="Delay before scaling down.")


class ServiceTLS(Model):
    keyfile: str = Field(description="Path of the TLS key.")
    certfile: str = Field(description="Path of the TLS certificate.")


class Service(Model):
    """`service:`: how `skyloom serve up` runs the task as replicas behind a load balancer."""

    readiness_probe: ReadinessProbe | None = Field(None, description="Replica health check.")
    replica_policy: ReplicaPolicy | None = Field(None, description="Replica counts/autoscaling.")
    replicas: int | None = Field(None, ge=0, description="Fixed replica count.")
    ports: int | None = Field(None, description="Replica port the load balancer targets.")
    workers: int | None = Field(None, ge=0, description="Workers for a pool.")
    load_balancing_policy: str | None = Field(None, description="round_robin, least_load, ...")
    tls: ServiceTLS | None = Field(None, description="TLS for the endpoint.")
    pool: bool | None = Field(None, description="A worker pool rather than a service.")

    @model_validator(mode="after")
    def _replicas_xor_policy(self) -> Service:
        if self.replicas is not None and self.replica_policy is not None:
            raise ValueError("give either `replicas` or `replica_policy`, not both")
        return self


class VolumeMount(Model):
    path: str | None = Field(None, description="Mount path.")
    volume_name: str | None = Field(None, description="Volume name.")
    is_ephemeral: bool | None = Field(None, description="Ephemeral volume.")
    sub_path: str | None = Field(None, description="Sub-path inside the volume.")
    volume_config: dict[str, Any] | None = Field(None, description="Resolved volume config.")


EnvValue = str | None


def _stringify_env(v: Any, what: str) -> Any:
    """SkyPilot reads `envs: {N: 4}` as '4'; names must be valid shell identifiers."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        return v
    out: dict[str, str | None] = {}
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise ValueError(
                f"{what} name {k!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
            )
        if isinstance(val, bool):
            val = str(val).lower()
        elif isinstance(val, int | float):
            val = str(val)
        elif val is not None and not isinstance(val, str):
            raise ValueError(f"{what} {k!r}: expected a string, got {type(val).__name__}")
        out[k] = val
    return out


class Task(Model):
    """One task: what to run, where, and with what."""

    name: str | None = Field(None, description="Task name (shown in queues and the UI).")
    workdir: str | GitWorkdir | None = Field(
        None, description="Local directory (or git repo) synced to every node; jobs run in it."
    )
    event_callback: str | None = Field(None, description="Command run on job state changes.")
    num_nodes: int = Field(
        1, ge=1, description="Nodes in the cluster; the run command runs on each."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(), description="What each node needs."
    )
    file_mounts: dict[str, str | StorageMount] = Field(
        default_factory=dict, description="Remote path → local path, bucket URI or storage spec."
    )
    service: Service | None = Field(None, description="Serve this task as replicas (serve up).")
    pool: dict[str, Any] | None = Field(None, description="Worker-pool settings.")
    setup: str | None = Field(None, description="Run once per node when the cluster is launched.")
    run: str | None = Field(None, description="The job: runs on every node in workdir.")
    envs: dict[str, EnvValue] = Field(
        default_factory=dict, description="Environment for setup and run; override with --env."
    )
    secrets: dict[str, EnvValue] | list[str] = Field(
        default_factory=dict,
        description="Like envs but never shown in logs, memo or the UI; override with --secret.",
    )
    managed_secrets: list[str | dict[str, dict[str, str]]] | None = Field(
        None, description="References to secrets managed by the server."
    )
    inputs: dict[str, float] | None = Field(None, description="Experimental: input size.")
    outputs: dict[str, float] | None = Field(None, description="Experimental: output size.")
    file_mounts_mapping: dict[str, Any] | None = Field(None, description="Internal mapping.")
    config: dict[str, Any] | None = Field(None, description="Per-task overrides of config.yaml.")
    volumes: dict[str, Any] | None = Field(None, description="Volumes: mount path → volume name.")
    volume_mounts: list[VolumeMount] | None = Field(None, description="Resolved volume mounts.")
    api_server_access: bool | None = Field(None, description="Allow the job to call the API.")
    metadata: dict[str, Any] | None = Field(None, alias="_metadata", description="Free-form.")

    @field_validator("envs", mode="before")
    @classmethod
    def _envs(cls, v: Any) -> Any:
        return _stringify_env(v, "env")

    @field_validator("secrets", mode="before")
    @classmethod
    def _secrets(cls, v: Any) -> Any:
        return v if isinstance(v, list) else _stringify_env(v, "secret")

    @field_validator("inputs", "outputs")
    @classmethod
    def _single(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and len(v) > 1:
            raise ValueError("expected at most one entry")
        return v

    @field_validator("file_mounts")
    @classmethod
    def _absolute_targets(cls, v: dict[str, Any]) -> dict[str, Any]:
        for target in v:
            if not (target.startswith("/") or target.startswith("~")):
                raise ValueError(
                    f"mount target {target!r} must be an absolute path or start with ~"
                )
        return v

    def secret_values(self) -> dict[str, str]:
        if isinstance(self.secrets, list):
            return {}
        return {k: v for k, v in self.secrets.items() if v is not None}

    def env_values(self) -> dict[str, str]:
        return {k: v for k, v in self.envs.items() if v is not None}


class Pipeline(Model):
    """A multi-document YAML: tasks run in order (managed jobs)."""

    name: str | None = Field(None, description="Pipeline name (first document with only `name`).")
    tasks: list[Task] = Field(description="The tasks, in order.")
