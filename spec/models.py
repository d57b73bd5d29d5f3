"""The user's language: SkyPilot's task YAML as pydantic models.

Every model forbids unknown fields and describes each field, so the same classes give
validation, did-you-mean errors and the published JSON Schema. The aim is that skyloom
accepts exactly the task YAMLs SkyPilot 0.14.1 accepts when it loads them before
provisioning (its JSON schema, the checks its Task/Resources/Service constructors make and
the ones its API server repeats), so each rule below says which of SkyPilot's it mirrors.
Checks that need a cloud catalog, cloud credentials, the network or local files are not
here (tests/spec/skypilot_corpus/README.md lists them).

Types are strict like a JSON schema: `"5"` is not an integer and `1` is not a boolean.
Values are normalised on the way in (accelerators in any of their forms become one
mapping, `autostop: 5` becomes an Autostop) so the rest of skyloom sees one shape per
concept.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

# Clouds SkyPilot 0.14.1 names in `cloud:` / `infra:`.
SKYPILOT_CLOUDS = (
    "aws", "azure", "gcp", "ibm", "lambda", "scp", "oci", "kubernetes", "runpod", "vast",
    "vsphere", "cudo", "fluidstack", "paperspace", "primeintellect", "do", "nebius", "ssh",
    "slurm", "hyperbolic", "seeweb", "shadeform", "yotta", "mithril", "verda",
)  # fmt: skip
# ...plus `local`, skyloom's embedded default (SkyPilot has no such cloud). It is written
# `infra: local`; the legacy `cloud:` field takes SkyPilot's names only, as SkyPilot's does.
CLOUDS = (*SKYPILOT_CLOUDS, "local")

# Where a relative file-mount target lands on the node (SkyPilot's remote workdir).
REMOTE_WORKDIR = "~/sky_workdir"

_ENV_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TASK_NAME = re.compile(r"[a-zA-Z0-9]+(?:[._-]{1,2}[a-zA-Z0-9]+)*")
# Minutes (autostop, DWS run duration): digits with an optional m/h/d/w unit.
_MINUTES = re.compile(r"^[0-9]+(m|h|d|w|M|H|D|W)?$")
# Seconds (job-group termination delays): the same with `s` too.
_SECONDS = re.compile(r"^[0-9]+(s|m|h|d|w|S|M|H|D|W)?$")
_SIZE_UNITS = ("kb", "ki", "mb", "mi", "gb", "gi", "tb", "ti", "pb", "pi")
_SIZE_UNIT_SPELLINGS = "|".join(
    [u for u in _SIZE_UNITS]
    + [u.upper() for u in _SIZE_UNITS]
    + [u.capitalize() for u in _SIZE_UNITS]
)
_SIZE = re.compile(rf"^[0-9]+({_SIZE_UNIT_SPELLINGS})?$")
_GPU_MEMORY = re.compile(r"^[0-9]+[GgMmTt][Bb]\+?$")
_RCLONE_SIZE = re.compile(r"^[0-9]+(b|k|m|g|t|p|B|K|M|G|T|P)?$")
_RCLONE_DURATION = re.compile(
    r"^(?:(?:[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:ms|[smhdwMy]))+|([-+]?(?:\d+(?:\.\d+)?|\.\d+)))$"
)
_SUB_PATH = re.compile(r"^[a-zA-Z0-9._-][a-zA-Z0-9./_-]*$")
_QPS_ACCELERATOR = re.compile(r"^[A-Z0-9]+(?::[0-9]+)?$")
_GCP_VPC = re.compile(r"^(?:[-a-z0-9]+/)?[-a-z0-9]+$")

_DOCKER_LOGIN_VARS = frozenset(
    {"SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD", "SKYPILOT_DOCKER_SERVER"}
)
# TPU names that GKE serves; any other TPU name means a GCP TPU.
_GKE_TPUS = frozenset(
    {"tpu-v4-podslice", "tpu-v5-lite-device", "tpu-v5-lite-podslice", "tpu-v5p-slice",
     "tpu-v6e-slice"}
)  # fmt: skip


class FieldError(ValueError):
    """A broken rule that belongs to a field below the one being checked: names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ---- JSON-schema-like scalar types -----------------------------------------------------------


def _integer(v: Any) -> Any:
    """A JSON-schema integer: 3 or 3.0 (never True); returned as an int."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _number(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    return v


Integer = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[int | float, BeforeValidator(_number)]
NonNegInteger = Annotated[int, BeforeValidator(_integer), Field(ge=0)]
NonNegNumber = Annotated[int | float, BeforeValidator(_number), Field(ge=0)]


def _lower_choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    """Case-insensitive choice, answered in lower case."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, one of {', '.join(choices)}")
    if value.lower() not in choices:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(choices)}")
    return value.lower()


def _matching(value: str | None, pattern: re.Pattern[str], expected: str) -> str | None:
    """The value when the pattern is found in it (None passes), else what was expected."""
    if value is not None and not pattern.search(value):
        raise ValueError(f"expected {expected}; got {value!r}")
    return value


class Model(BaseModel):
    """Base for every YAML-facing model: unknown keys are errors, types are strict.

    An explicit null is an error unless the field is in `NULLABLE`, as in SkyPilot's
    schema; where SkyPilot drops nulls before checking (the top of a task, of resources,
    of a service, of a bucket spec) `DROP_NULLS` says so and a null means "not given".
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)
    NULLABLE: ClassVar[frozenset[str]] = frozenset()
    DROP_NULLS: ClassVar[bool] = False
    # Where SkyPilot never looks at leftover keys, even an unknown key set to null passes.
    DROP_UNKNOWN_NULLS: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _explicit_nulls(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        known = {f.alias or n for n, f in cls.model_fields.items()}
        if cls.DROP_NULLS:
            return {
                k: x
                for k, x in v.items()
                if x is not None or (k not in known and not cls.DROP_UNKNOWN_NULLS)
            }
        open_model = cls.model_config.get("extra") == "allow"
        for k, x in v.items():
            if x is None and k not in cls.NULLABLE and (k in known or not open_model):
                raise FieldError(k, "expected a value, got null")
        return v


# ---- sizes and durations ---------------------------------------------------------------------


def parse_size_gb(text: str, *, integral: bool) -> float:
    """'256' → 256, '1TB' → 1024, '0.5' → 0.5 (when not integral): SkyPilot's size rule.

    A bare number is already in GB; a unit (KB/KI … PB/PI, any case) converts. With
    `integral` the number and the converted value must be whole (disk sizes).
    """
    s = text
    try:
        return float(int(s)) if integral else float(s)
    except ValueError:
        pass
    low = s.lower()
    for i, unit in enumerate(_SIZE_UNITS):
        if low.endswith(unit):
            try:
                n = int(low[: -len(unit)]) if integral else float(low[: -len(unit)])
            except ValueError:
                continue
            gb = n * 2 ** (10 * (i // 2 + 1)) / 2**30
            if integral and not float(gb).is_integer():
                break
            return gb
    raise ValueError(
        f"expected a number of GB or a size like 16GB (units KB, MB, GB, TB, PB); got {text!r}"
    )


def parse_minutes(text: str) -> int:
    """'90' → 90, '2h' → 120, '1d' → 1440: SkyPilot's autostop duration (m, h, d, w)."""
    t = str(text)
    if not _MINUTES.search(t):
        raise ValueError(f"expected minutes or a duration like 30m, 2h, 1d, 1w; got {text!r}")
    if t.isdecimal():
        return int(t)
    unit = t[-1].lower()
    return math.ceil(float(t[:-1]) * {"m": 1, "h": 60, "d": 1440, "w": 10080}[unit])


# ---- job recovery, autostop -----------------------------------------------------------------


class JobRecoveryStrategy(StrEnum):
    FAILOVER = "FAILOVER"
    EAGER_NEXT_REGION = "EAGER_NEXT_REGION"


class JobRecovery(Model):
    """How a managed job recovers (SkyPilot's `resources.job_recovery`)."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"strategy"})

    strategy: JobRecoveryStrategy | None = Field(
        None,
        description="FAILOVER or EAGER_NEXT_REGION (any case); default EAGER_NEXT_REGION.",
    )
    max_restarts_on_errors: NonNegInteger = Field(
        0, description="How many times a user-code failure is retried."
    )
    recover_on_exit_codes: list[Annotated[int, BeforeValidator(_integer), Field(ge=0, le=255)]] = (
        Field(
            default_factory=list,
            description="Exit codes (0-255, unique) that always trigger a recovery.",
        )
    )

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, str):
            raise ValueError("expected a strategy name")
        if v.upper() not in JobRecoveryStrategy.__members__:
            raise ValueError(
                f"recovery strategy {v!r} is not one of failover, eager_next_region (or none)"
            )
        return JobRecoveryStrategy(v.upper())

    @field_validator("recover_on_exit_codes", mode="before")
    @classmethod
    def _one_or_many_codes(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return [v]
        if len({json.dumps(x) for x in v}) != len(v):
            raise ValueError("exit codes must be unique")
        return v


class AutostopWaitFor(StrEnum):
    JOBS_AND_SSH = "jobs_and_ssh"
    JOBS = "jobs"
    NONE = "none"


class Autostop(Model):
    """Stop (or tear down) the cluster after it has been idle this long."""

    enabled: bool = Field(True, description="False disables autostop (`autostop: false`).")
    idle_minutes: NonNegInteger = Field(
        5, description="Idle minutes before stopping (a mapping given without it means 0)."
    )
    down: bool = Field(False, description="Tear the cluster down instead of stopping it.")
    wait_for: AutostopWaitFor | None = Field(
        None, description="What counts as activity: jobs_and_ssh, jobs or none (any case)."
    )
    hook: str | None = Field(None, description="Command run before autostop (deprecated).")
    hook_timeout: Annotated[int, BeforeValidator(_integer), Field(ge=1)] | None = Field(
        None, description="Seconds the hook may take."
    )

    @model_serializer(mode="wrap")
    def _as_yaml(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Written back as the YAML says it (`false`, or a mapping without `enabled`) so
        # a dumped task loads again.
        if not self.enabled:
            return False
        out = handler(self)
        out.pop("enabled", None)
        return out

    @field_validator("wait_for", mode="before")
    @classmethod
    def _wait_for(cls, v: Any) -> Any:
        return AutostopWaitFor(_lower_choice(v, tuple(AutostopWaitFor), "wait_for"))

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {"enabled": v}
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, int):
            # SkyPilot round-trips the shorthand through the mapping form, whose
            # idle_minutes has a minimum of 0.
            return {"idle_minutes": v}
        if isinstance(v, str):
            return {"idle_minutes": parse_minutes(v)}
        if isinstance(v, dict):
            if "enabled" in v:
                raise FieldError("enabled", "unknown field (write `autostop: false` to disable)")
            # A mapping without idle_minutes stops as soon as the cluster is idle.
            return {"idle_minutes": 0, **v}
        raise ValueError("expected true/false, minutes, a duration like 2h, or a mapping")


# ---- accelerators ---------------------------------------------------------------------------


def _count(text: str, whole: str) -> int | float:
    try:
        n = float(text)
    except ValueError:
        raise ValueError(
            f"expected NAME or NAME:COUNT with a numeric count; got {whole!r}"
        ) from None
    if not n > 0 and not math.isnan(n):
        raise ValueError(f"accelerator count must be positive; got {whole!r}")
    return int(n) if n.is_integer() else n


def _one_accelerator(text: str) -> tuple[str, int | float]:
    """'A100' → ('A100', 1), 'A100:8' → ('A100', 8); GPU-memory forms kept whole.

    `80GB+`, `80GB:2`, `nvidia:80GB:2` pick GPUs by memory from SkyPilot's catalog; skyloom
    keeps them as one name with its count for the catalog to resolve later.
    """
    parts = text.split(":")
    if len(parts) == 3:
        try:
            n = int(parts[2])
        except ValueError:
            raise ValueError(f"expected MANUFACTURER:MEMORY:COUNT; got {text!r}") from None
        if not _GPU_MEMORY.match(parts[1]):
            raise ValueError(
                f"expected NAME:COUNT or MANUFACTURER:MEMORY:COUNT like nvidia:80GB:2; got {text!r}"
            )
        return f"{parts[0]}:{parts[1]}", n
    if len(parts) == 2 and _GPU_MEMORY.match(parts[0]):
        try:
            return parts[0], int(parts[1])
        except ValueError:
            raise ValueError(f"expected MEMORY:COUNT like 80GB:2; got {text!r}") from None
    if len(parts) == 2 and _GPU_MEMORY.match(parts[1]):
        return text, 1
    if len(parts) == 1:
        return text, 1
    return parts[0], _count(parts[1], text)


def _accelerator_items(v: Any) -> list[str]:
    """The accelerator strings SkyPilot makes of each form ({A100: 8} → 'A100:8')."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        items = []
        for name, n in v.items():
            if n is not None and (isinstance(n, bool) or not isinstance(n, int | float)):
                raise ValueError(f"expected a number (or nothing) as the count of {name!r}")
            items.append(str(name) if n is None else f"{name}:{n}")
        return items
    if isinstance(v, list):
        for item in v:
            if not isinstance(item, str):
                raise ValueError(f"expected strings like 'A100:8' in the list; got {item!r}")
        return list(v)
    raise ValueError(f"expected a string, a mapping or a list; got {type(v).__name__}")


def parse_accelerators(v: Any) -> dict[str, int | float] | None:
    """'A100', 'A100:8', {A100: 8}, ['A100:8', 'H100'] → {name: count}.

    SkyPilot reads a mapping entry `NAME: COUNT` as the string 'NAME:COUNT' and a null
    count as 1; several entries (or a list) are alternatives, one of which is used.
    """
    if v is None:
        return None
    items = _accelerator_items(v)
    if not items:
        raise ValueError("expected at least one accelerator")
    out: dict[str, int | float] = {}
    for item in items:
        name, n = _one_accelerator(item)
        out[name] = n
    return out


class AcceleratorArgs(Model):
    runtime_version: str | None = Field(None, description="TPU runtime version.")
    tpu_name: str | None = Field(None, description="Existing TPU node name.")
    tpu_vm: bool | None = Field(None, description="Use a TPU VM (default true).")
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
    """A disk attached to the instance (`resources.volumes` entry).

    Unknown keys are let through because SkyPilot's schema lets them through here.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    path: str = Field(description="Mount path on the node.")
    name: str | None = Field(None, description="Volume name (required for network volumes).")
    disk_size: Integer | str | None = Field(None, description="Size in GB, or like 100GB.")
    disk_tier: str | None = Field(None, description="Disk tier (unknown tiers mean best).")
    auto_delete: bool | None = Field(None, description="Delete with the instance.")
    storage_type: str | None = Field(None, description="network (default) or instance.")
    attach_mode: str | None = Field(None, description="read_write (default) or read_only.")

    @model_validator(mode="before")
    @classmethod
    def _needs_path(cls, v: Any) -> Any:
        if isinstance(v, dict) and "path" not in v:
            raise ValueError('a volume needs a "path"')
        return v

    @field_validator("disk_size")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, str) and not _SIZE.search(v):
            raise ValueError(f"expected a number of GB or a size like 100GB; got {v!r}")
        return v

    @model_validator(mode="after")
    def _network_volume(self) -> ResourceVolume:
        kind = (self.storage_type or "network").lower()
        if kind not in ("network", "instance"):
            kind = "network"  # SkyPilot warns and treats an unknown type as network.
        if kind == "network":
            if isinstance(self.disk_size, str):
                raise FieldError("disk_size", "a network volume's size is a whole number of GB")
            if self.name is None:
                raise FieldError("name", f"network volume {self.path} needs a name")
        return self


# ---- resources ------------------------------------------------------------------------------


def _infra_pattern() -> re.Pattern[str]:
    clouds = "|".join(c for c in SKYPILOT_CLOUDS if c != "kubernetes")
    rz = "(?:/[^/]+(?:/[^/]+)?)?"
    return re.compile(rf"^(?:(?i:({clouds})){rz}|\*{rz}|(?i:kubernetes|k8s)(?:/.+)?)$")


_INFRA = _infra_pattern()


def parse_infra(infra: str) -> tuple[str | None, str | None, str | None]:
    """'aws/us-east-1/us-east-1a' → ('aws', 'us-east-1', 'us-east-1a'); '*' means any.

    `k8s/<context>` keeps the whole context (it may contain slashes) as the region and
    `ssh/<pool>` the pool; `local` is skyloom's own infra and takes neither.
    """
    text = infra.strip().strip("/")
    parts = [p.strip() for p in text.split("/")]
    if "" in parts:
        raise ValueError(f"infra {infra!r} has an empty part (e.g. a double slash)")
    cloud: str | None = parts[0].lower()
    region: str | None = None
    zone: str | None = None
    if cloud in ("k8s", "kubernetes"):
        cloud = "kubernetes"
        region = "/".join(parts[1:]) or None
    elif cloud == "ssh":
        region = "/".join(parts[1:]) or None
    else:
        region = parts[1] if len(parts) > 1 else None
        zone = parts[2] if len(parts) > 2 else None
    return (
        None if cloud == "*" else cloud,
        None if region == "*" else region,
        None if zone == "*" else zone,
    )


def _check_infra(v: str) -> str:
    head = v.split("/", 1)[0].strip().lower()
    if head == "local":
        if v.strip().lower() != "local":
            raise ValueError("the local infra takes no region or zone: write `infra: local`")
        return v
    if not _INFRA.search(v):
        raise ValueError(
            "expected cloud[/region[/zone]] (clouds: "
            f"{', '.join(SKYPILOT_CLOUDS)}, or * for any), k8s/<context>, ssh/<pool> or "
            f"local; got {v!r}"
        )
    _, region, _ = parse_infra(v)
    if head == "ssh" and region is not None and "/" in region:
        raise ValueError(f"expected ssh/<pool> with one pool name; got {v!r}")
    return v


def _check_ports(v: Any) -> list[str] | None:
    """8080, '8000,9000', '10000-10010' or a list of them → port tokens; empty → None."""
    if v is None:
        return None
    items = v if isinstance(v, list) else [v]
    tokens: list[str] = []
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int | str):
            raise ValueError(f"expected ports like 8080 or '10000-10010'; got {p!r}")
        tokens.extend(t.strip() for t in str(p).split(",") if t.strip())
    for t in tokens:
        ends = [t] if t.isdigit() else t.split("-")
        if (
            len(ends) not in (1, 2)
            or not all(e.isdigit() and e.isascii() for e in ends)
            or not all(1 <= int(e) <= 65535 for e in ends)
            or int(ends[0]) > int(ends[-1])
        ):
            raise ValueError(
                f"port {t!r} is not a port 1-65535 or a range FROM-TO like '10000-10010'"
            )
    return tokens or None


def _check_local_disk(v: str) -> str:
    """'nvme:1000+', 'ssd', '500' (nvme) → the same, checked: mode nvme/ssd, size > 0."""
    parts = v.lower().strip().split(":")

    def size_ok(s: str) -> None:
        try:
            if float(s.rstrip("+")) > 0:
                return
        except ValueError:
            pass
        raise ValueError(f"local_disk {v!r}: the size must be a positive number of GB")

    if len(parts) == 1:
        if parts[0] not in ("nvme", "ssd"):
            size_ok(parts[0])
    elif len(parts) == 2:
        if parts[0] not in ("nvme", "ssd"):
            raise ValueError(f"local_disk mode {parts[0]!r} is not nvme or ssd")
        size_ok(parts[1])
    else:
        raise ValueError(f"expected local_disk as MODE:SIZE[+], MODE or SIZE[+]; got {v!r}")
    return v


def _memory_gb(v: int | float | str) -> float:
    """GB asked for by `memory` ('32', '32+', '32GB', '1TB+'); raises when unreadable."""
    text = str(v)
    text = text[:-1] if text.endswith("+") else text
    text = text[:-1] if text.endswith("x") else text
    return parse_size_gb(text, integral=False)


class DockerLoginConfig(Model):
    username: str = Field(description="Registry user.")
    password: str = Field(description="Registry password.")
    server: str = Field(description="Registry server.")


class ResourcesBase(Model):
    """Fields shared by `resources:` and each entry of `any_of:` / `ordered:`."""

    infra: str | None = Field(
        None,
        description=(
            "Where to run: cloud[/region[/zone]] ('*' for any part), k8s/<context>, "
            "ssh/<pool>, or local (skyloom's embedded infra)."
        ),
    )
    cloud: str | None = Field(None, description="Cloud name (prefer `infra`).")
    region: str | None = Field(None, description="Region (prefer `infra`).")
    zone: str | None = Field(None, description="Zone (prefer `infra`).")
    cpus: Number | str | None = Field(
        None, description="vCPUs per node: 4 for exactly 4, '4+' for at least 4."
    )
    memory: Number | str | None = Field(
        None, description="Memory per node in GB: 32, '32+', '32GB', '1TB+'."
    )
    accelerators: dict[str, int | float] | None = Field(
        None,
        description=(
            "Accelerators per node: 'A100:8', {A100: 8}, or (in `resources:` only) several "
            "choices as a mapping or an ordered list ['A100:8', 'H100:8']."
        ),
    )
    instance_type: str | None = Field(None, description="Cloud instance type.")
    use_spot: bool | None = Field(None, description="Use spot (preemptible) instances.")
    job_recovery: JobRecovery | None = Field(
        None, description="Managed-job recovery: a strategy name, none, or a mapping."
    )
    disk_size: int | None = Field(
        None, description="OS disk size in GB or with a unit (256GB, 1TB); default 256."
    )
    ephemeral_storage: Integer | str | None = Field(
        None, description="Deprecated; ignored (use disk_size)."
    )
    disk_tier: DiskTier | None = Field(None, description="OS disk tier (any case).")
    network_tier: NetworkTier | None = Field(None, description="Network tier (any case).")
    local_disk: str | None = Field(
        None, description="Instance-local disk: MODE:SIZE[+], MODE (nvme/ssd) or SIZE[+]."
    )
    max_hourly_cost: Number | None = Field(None, gt=0, description="Price cap per node-hour.")
    ports: list[str] | None = Field(
        None, description="Ports to open: 8080, '8000,9000', '10000-10010' or a list."
    )
    labels: dict[str, str] | None = Field(None, description="Labels/tags on cloud resources.")
    accelerator_args: AcceleratorArgs | None = Field(None, description="TPU-specific arguments.")
    image_id: str | dict[str | None, str] | None = Field(
        None,
        description="Machine or container image ('docker:IMG'); per region as a mapping.",
    )
    autostop: Autostop | None = Field(
        None, description="Autostop: false, minutes, a duration like 2h, or a mapping."
    )
    volumes: list[ResourceVolume] | None = Field(None, description="Extra disks on each node.")
    priority: Annotated[int, BeforeValidator(_integer), Field(ge=-1000, le=1000)] | None = Field(
        None, description="Job priority, -1000 to 1000."
    )
    priority_class: str | None = Field(None, description="Kubernetes priority class.")
    no_missing_accel_warnings: bool | None = Field(
        None, alias="_no_missing_accel_warnings", description="Internal."
    )
    docker_login_config: DockerLoginConfig | None = Field(
        None, alias="_docker_login_config", description="Internal: registry login."
    )
    is_image_managed: bool | None = Field(None, alias="_is_image_managed", description="Internal.")
    requires_fuse: bool | None = Field(None, alias="_requires_fuse", description="Internal.")
    cluster_config_overrides: dict[str, Any] | None = Field(
        None, alias="_cluster_config_overrides", description="Internal."
    )

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"ports", "image_id"})

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        if "gpus" in v:
            if "accelerators" in v:
                raise FieldError("gpus", "give either `gpus` or `accelerators`, not both")
            v = {("accelerators" if k == "gpus" else k): x for k, x in v.items()}
        if "hooks" in v:
            raise FieldError("hooks", "lifecycle hooks go under the task's `config.hooks`")
        return v

    @field_validator("infra")
    @classmethod
    def _infra_shape(cls, v: str | None) -> str | None:
        return None if v is None else _check_infra(v)

    @field_validator("cloud")
    @classmethod
    def _known_cloud(cls, v: str | None) -> str | None:
        # Mirrors SkyPilot's schema enum: `cloud: local` is refused there, so it is here too;
        # skyloom's own infra is only reachable as `infra: local`.
        if isinstance(v, str) and v.lower() == "local":
            raise ValueError(
                "cloud 'local' is not one of SkyPilot's clouds; skyloom's embedded infra is "
                "written `infra: local`"
            )
        return None if v is None else _lower_choice(v, SKYPILOT_CLOUDS, "cloud")

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: Any) -> Any:
        if v is None:
            return v
        text = v[:-1] if isinstance(v, str) and v.endswith("+") else v
        try:
            n = float(text)
        except ValueError:
            raise ValueError(f"expected a number or '<number>+'; got {v!r}") from None
        if n <= 0:
            raise ValueError(f"cpus must be positive; got {v!r}")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is not None and _memory_gb(v) < 0:
            raise ValueError(f"memory must be positive; got {v!r}")
        return v

    @field_validator("accelerators", mode="before")
    @classmethod
    def _accelerators(cls, v: Any) -> Any:
        if (
            cls is not Resources
            and isinstance(v, list | dict)
            and (isinstance(v, list) or len(v) > 1)
        ):
            raise ValueError("an any_of/ordered entry takes one accelerator: 'A100:8' or {A100: 8}")
        if cls is not Resources and isinstance(v, dict) and None in v.values():
            raise ValueError("expected a number as the accelerator count")
        return parse_accelerators(v)

    @field_validator("job_recovery", mode="before")
    @classmethod
    def _recovery_shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = {"strategy": v}
        if isinstance(v, dict) and v.get("strategy") == "none":
            return None  # `none` turns recovery off.
        return v

    @field_validator("disk_size", mode="before")
    @classmethod
    def _disk(cls, v: Any) -> Any:
        if v is None:
            return v
        if (
            isinstance(v, bool)
            or not isinstance(v, int | str)
            or (isinstance(v, str) and not _SIZE.search(v))
        ):
            raise ValueError(f"expected a whole number of GB or a size like 256GB; got {v!r}")
        gb = parse_size_gb(str(v), integral=True)
        if gb <= 0:
            raise ValueError(f"disk_size must be a positive number of GB; got {v!r}")
        return int(gb)

    @field_validator("ephemeral_storage")
    @classmethod
    def _ephemeral(cls, v: Any) -> Any:
        if isinstance(v, str) and not _SIZE.search(v):
            raise ValueError(f"expected a number of GB or a size like 100GB; got {v!r}")
        return v

    @field_validator("disk_tier", "network_tier", mode="before")
    @classmethod
    def _tier(cls, v: Any, info: ValidationInfo) -> Any:
        choices = tuple(DiskTier) if info.field_name == "disk_tier" else tuple(NetworkTier)
        enum = DiskTier if info.field_name == "disk_tier" else NetworkTier
        return enum(_lower_choice(v, choices, str(info.field_name)))

    @field_validator("local_disk")
    @classmethod
    def _local_disk(cls, v: str | None) -> str | None:
        return None if v is None else _check_local_disk(v)

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> Any:
        return _check_ports(v)

    @field_validator("image_id")
    @classmethod
    def _image(cls, v: Any) -> Any:
        if isinstance(v, dict) and "docker" in v:
            prefixed = [
                k for k, x in v.items() if k != "docker" and x.strip().startswith("docker:")
            ]
            if prefixed:
                raise ValueError(
                    "give the Docker image either as the `docker` key or as docker:-prefixed "
                    f"region values, not both (regions {prefixed})"
                )
        return v

    def placement(self) -> tuple[str | None, str | None, str | None]:
        """(cloud, region, zone) from `infra` or the legacy fields; None means any."""
        if self.infra:
            if self.infra.strip().lower() == "local":
                return "local", None, None
            return parse_infra(self.infra)
        return self.cloud, self.region, self.zone

    def gpus_per_node(self) -> float:
        if not self.accelerators:
            return 0
        return max(self.accelerators.values())

    def _check_candidate(self) -> None:
        """Rules SkyPilot applies to each final candidate (after any_of/ordered merging)."""
        if self.infra is not None and (self.cloud or self.region or self.zone):
            raise FieldError("infra", "give either `infra` or `cloud`/`region`/`zone`, not both")
        if self.infra is None:
            # SkyPilot's server reads cloud/region/zone back as an infra string.
            parts = [self.cloud or "*", self.region or "*", self.zone or "*"]
            while parts and parts[-1] == "*":
                parts.pop()
            if parts:
                try:
                    _check_infra("/".join(parts))
                except ValueError:
                    raise FieldError(
                        "zone" if self.zone else "region",
                        "a region or zone is one name (no '/', not blank)",
                    ) from None
        cloud = self.placement()[0]
        if self.memory is not None and cloud != "slurm" and _memory_gb(self.memory) == 0:
            raise FieldError("memory", "must be positive (0 is only allowed on slurm)")
        for name in self.accelerators or {}:
            if "tpu" not in name.lower():
                continue
            tpu_cloud = cloud or ("kubernetes" if name in _GKE_TPUS else "gcp")
            if tpu_cloud not in ("gcp", "kubernetes"):
                raise FieldError(
                    "accelerators", f"TPU {name!r} needs gcp or kubernetes, not {cloud}"
                )
            tpu_vm = self.accelerator_args is None or self.accelerator_args.tpu_vm is not False
            if (
                tpu_cloud == "gcp"
                and name not in _GKE_TPUS
                and self.instance_type not in (None, "TPU-VM")
                and tpu_vm
            ):
                raise FieldError(
                    "instance_type",
                    f"a TPU VM takes no instance_type (got {self.instance_type!r}); "
                    "leave it out or use TPU-VM",
                )
            break  # SkyPilot checks the first accelerator of each candidate.


class Resources(ResourcesBase):
    """`resources:`: what each node needs; `any_of`/`ordered` list alternatives."""

    DROP_NULLS: ClassVar[bool] = True

    any_of: list[ResourcesBase] | None = Field(
        None, description="Candidates; skyloom picks the cheapest that is available."
    )
    ordered: list[ResourcesBase] | None = Field(None, description="Candidates tried in this order.")

    @model_validator(mode="before")
    @classmethod
    def _accelerator_choices(cls, v: Any) -> Any:
        """Several accelerators are alternatives, which conflict with explicit candidates."""
        if not isinstance(v, dict):
            return v
        if (
            "any_of" in v
            and "ordered" in v
            and v["any_of"] is not None
            and v["ordered"] is not None
        ):
            raise FieldError("ordered", "give either `any_of` or `ordered`, not both")
        acc = v.get("accelerators", v.get("gpus"))
        try:
            choices = set(_accelerator_items(acc)) if acc is not None else set()
        except ValueError:
            return v  # reported on the field
        if len(choices) > 1:
            if v.get("ordered"):
                raise FieldError("accelerators", "several accelerators cannot go with `ordered`")
            if v.get("any_of") and isinstance(acc, list):
                raise FieldError(
                    "accelerators",
                    "an ordered list of accelerators cannot go with `any_of` (use a mapping)",
                )
        return v

    @model_validator(mode="after")
    def _candidates_valid(self) -> Resources:
        alts = "any_of" if self.any_of else "ordered" if self.ordered else None
        for i, cand in enumerate(self.candidates()):
            try:
                cand._check_candidate()
            except FieldError as e:
                # Name the entry when the field came from it, the shared field otherwise.
                entry = getattr(self, alts)[i] if alts else None
                from_entry = entry is not None and e.field in entry.model_fields_set
                raise FieldError(
                    f"{alts}[{i}].{e.field}" if from_entry else e.field, str(e)
                ) from None
        return self

    def candidates(self) -> list[ResourcesBase]:
        """Each alternative with the shared fields filled in (SkyPilot's override rule).

        An entry's fields replace the shared ones; labels are merged.
        """
        alts = self.any_of or self.ordered
        base = self.model_dump(exclude={"any_of", "ordered"}, exclude_unset=True)
        if not alts:
            return [ResourcesBase.model_construct(**self._fields_of(base))]
        out = []
        for alt in alts:
            own = alt.model_dump(exclude_unset=True)
            merged = {**base, **own}
            if base.get("labels") is not None and own.get("labels") is not None:
                merged["labels"] = {**base["labels"], **own["labels"]}
            out.append(ResourcesBase.model_construct(**self._fields_of(merged)))
        return out

    @staticmethod
    def _fields_of(dumped: dict[str, Any]) -> dict[str, Any]:
        """Re-wrap dumped sub-models so a constructed candidate has the same types."""
        out = dict(dumped)
        for name, model in (
            ("job_recovery", JobRecovery),
            ("autostop", Autostop),
            ("accelerator_args", AcceleratorArgs),
            ("docker_login_config", DockerLoginConfig),
        ):
            if isinstance(out.get(name), dict):
                out[name] = model.model_construct(**out[name])
        if isinstance(out.get("volumes"), list):
            out["volumes"] = [ResourceVolume.model_construct(**x) for x in out["volumes"]]
        return out


# ---- workdir, storage, file mounts ----------------------------------------------------------


class GitWorkdir(Model):
    url: str = Field(description="Git repository URL.")
    ref: str | None = Field(None, description="Branch, tag or commit.")


class StoreType(StrEnum):
    S3 = "S3"
    GCS = "GCS"
    AZURE = "AZURE"
    R2 = "R2"
    IBM = "IBM"
    OCI = "OCI"
    NEBIUS = "NEBIUS"
    COREWEAVE = "COREWEAVE"
    VASTDATA = "VASTDATA"
    HF = "HF"
    VOLUME = "VOLUME"


class StorageMode(StrEnum):
    MOUNT = "MOUNT"
    COPY = "COPY"
    MOUNT_CACHED = "MOUNT_CACHED"


class FileMountType(StrEnum):
    MODEL_CHECKPOINT_RO = "MODEL_CHECKPOINT_RO"
    MODEL_CHECKPOINT_RW = "MODEL_CHECKPOINT_RW"
    DATASET_RO = "DATASET_RO"
    DATASET_RW = "DATASET_RW"


def _upper_choice(v: Any, enum: type[StrEnum], what: str) -> Any:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, one of {', '.join(e.lower() for e in enum)}")
    if v.upper() not in enum.__members__:
        raise ValueError(f"{what} {v!r} is not one of {', '.join(e.lower() for e in enum)}")
    return enum(v.upper())


class MountCachedConfig(Model):
    """rclone settings of a MOUNT_CACHED bucket."""

    transfers: Annotated[int, BeforeValidator(_integer), Field(ge=1)] | None = Field(
        None, description="Parallel transfers."
    )
    buffer_size: str | None = Field(None, description="Buffer size, like 16M.")
    vfs_cache_max_size: str | None = Field(None, description="Cache size limit, like 10G.")
    vfs_cache_max_age: str | None = Field(None, description="Cache age limit, like 1h.")
    vfs_read_ahead: str | None = Field(None, description="Read-ahead size.")
    vfs_read_chunk_size: str | None = Field(None, description="Read chunk size.")
    vfs_read_chunk_streams: NonNegInteger | None = Field(None, description="Read streams.")
    vfs_write_back: str | None = Field(None, description="Write-back delay, like 5s.")
    read_only: bool | None = Field(None, description="Mount read-only.")

    @field_validator("buffer_size", "vfs_cache_max_size", "vfs_read_ahead", "vfs_read_chunk_size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        return _matching(v, _RCLONE_SIZE, "a size like 16M or 10G")

    @field_validator("vfs_cache_max_age", "vfs_write_back")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        return _matching(v, _RCLONE_DURATION, "a duration like 5s, 1h or 1h30m")


class MountConfig(Model):
    """Settings of a MOUNT bucket."""

    read_only: bool | None = Field(None, description="Mount read-only.")
    hf_mount_args: list[str] | None = Field(None, description="Extra hf-mount flags.")


class StorageConfig(Model):
    """`config:` of a bucket mount. Other keys pass through, as in SkyPilot's schema."""

    model_config = ConfigDict(extra="allow", strict=True)

    disk_size: Integer | str | None = Field(None, description="Disk size (volume stores).")
    disk_tier: str | None = Field(None, description="Disk tier (volume stores).")
    storage_type: str | None = Field(None, description="Storage type (volume stores).")
    attach_mode: str | None = Field(None, description="Attach mode (volume stores).")
    mount_cached: MountCachedConfig | None = Field(None, description="MOUNT_CACHED settings.")
    mount: MountConfig | None = Field(None, description="MOUNT settings.")

    @field_validator("disk_size")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, str) and not _SIZE.search(v):
            raise ValueError(f"expected a number of GB or a size like 100GB; got {v!r}")
        return v


class StorageMount(Model):
    """A `file_mounts` entry given as a mapping: a bucket mounted or copied to the node."""

    name: str | None = Field(None, description="Bucket name.")
    source: str | Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="Local path(s) or a bucket URI."
    )
    store: StoreType | None = Field(
        None, description="s3, gcs, azure, r2, ibm, oci, nebius, coreweave, vastdata, hf."
    )
    persistent: bool | None = Field(None, description="Keep the bucket after the task.")
    mode: StorageMode | None = Field(None, description="MOUNT (default), COPY or MOUNT_CACHED.")
    type: FileMountType | None = Field(
        None, description="MOUNT_CACHED preset: model_checkpoint_ro/rw, dataset_ro/rw."
    )
    config: StorageConfig | None = Field(None, description="Store and mount settings.")
    is_sky_managed: bool | None = Field(None, alias="_is_sky_managed", description="Internal.")
    bucket_sub_path: str | None = Field(None, alias="_bucket_sub_path", description="Internal.")
    force_delete: bool | None = Field(None, alias="_force_delete", description="Internal.")

    DROP_NULLS: ClassVar[bool] = True

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, v: Any) -> Any:
        return _upper_choice(v, StoreType, "store")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        return _upper_choice(v, StorageMode, "mode")

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        return _upper_choice(v, FileMountType, "type")

    @model_validator(mode="after")
    def _mode_settings(self) -> StorageMount:
        mode = self.mode or StorageMode.MOUNT
        if self.type is not None and mode != StorageMode.MOUNT_CACHED:
            raise FieldError("type", "needs mode: MOUNT_CACHED")
        if self.config is not None:
            if self.config.mount_cached is not None and mode != StorageMode.MOUNT_CACHED:
                raise FieldError("config.mount_cached", "needs mode: MOUNT_CACHED")
            if self.config.mount is not None and mode != StorageMode.MOUNT:
                raise FieldError("config.mount", "needs mode: MOUNT (the default)")
        return self


class VolumeFileMount(BaseModel):
    """A `file_mounts` entry with `store: volume`: a disk, not a bucket.

    SkyPilot turns it into a `resources.volumes` entry without checking its keys, so
    neither does skyloom (beyond what that volume entry needs).
    """

    model_config = ConfigDict(extra="allow")

    store: Literal["volume"] = Field(description="volume (exactly, lower case).")
    name: Any = Field(None, description="Volume name.")
    persistent: Any = Field(False, description="Keep the disk after the task.")
    source: Any = Field(None, description="Copied to <mount path>/data when given.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Volume settings (disk_size, disk_tier, …)."
    )

    def resource_volume(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"path": path}
        if self.name:
            out["name"] = self.name
        out["auto_delete"] = not self.persistent
        out.update(self.config)
        return out


def is_cloud_url(path: str) -> bool:
    """A path with a network location (s3://bucket, https://host/…)."""
    try:
        return bool(urllib.parse.urlsplit(path).netloc)
    except ValueError:
        raise ValueError(f"{path!r} is not a valid path or URL") from None


def remote_mount_path(target: str) -> str:
    """Where a file-mount target lands on a node: relative targets are under the workdir."""
    if target.startswith("/") or target.startswith("~/"):
        return target
    return f"{REMOTE_WORKDIR}/{target}"


# ---- service --------------------------------------------------------------------------------


class ReadinessProbe(Model):
    path: str = Field(description="HTTP path polled on each replica; starts with /.")
    post_data: str | dict[str, Any] | None = Field(
        None, description="POST body: a mapping, or a JSON string."
    )
    initial_delay_seconds: Number | None = Field(
        None, description="Grace period after start (default 1200)."
    )
    timeout_seconds: Number | None = Field(None, description="Probe timeout (default 15).")
    endpoint_probe_interval_seconds: Number | None = Field(
        None, description="Seconds between probes (default 10)."
    )
    consecutive_failure_threshold_timeout: Number | None = Field(
        None, description="Seconds of failures before a replica is replaced."
    )
    headers: dict[str, str] | None = Field(None, description="Extra request headers.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("path")
    @classmethod
    def _slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"the readiness path must start with /; got {v!r}")
        return v

    @field_validator("post_data")
    @classmethod
    def _json(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                body = json.loads(v)
            except json.JSONDecodeError:
                raise ValueError("post_data as a string must be JSON") from None
            # SkyPilot keeps the decoded value, which must again be a mapping or a string.
            if not isinstance(body, dict | str):
                raise ValueError("post_data as a string must be a JSON object")
        return v


class ReplicaPolicy(Model):
    min_replicas: NonNegInteger = Field(description="Replicas kept at all times.")
    max_replicas: NonNegInteger | None = Field(None, description="Upper bound when autoscaling.")
    num_overprovision: NonNegInteger | None = Field(None, description="Extra replicas kept warm.")
    target_qps_per_replica: NonNegNumber | dict[str, NonNegNumber] | None = Field(
        None,
        description=(
            "Autoscaling target: QPS per replica, or per accelerator (e.g. {A100: 5}, needs "
            "load_balancing_policy: instance_aware_least_load)."
        ),
    )
    dynamic_ondemand_fallback: bool | None = Field(None, description="On-demand when spot fails.")
    base_ondemand_fallback_replicas: NonNegInteger | None = Field(
        None, description="On-demand replicas kept alongside spot ones."
    )
    spot_placer: str | None = Field(None, description="Spot placement policy: dynamic_fallback.")
    upscale_delay_seconds: Number | None = Field(None, description="Delay before scaling up.")
    downscale_delay_seconds: Number | None = Field(None, description="Delay before scaling down.")

    @field_validator("target_qps_per_replica")
    @classmethod
    def _qps_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for k in v:
                if not _QPS_ACCELERATOR.search(k):
                    raise ValueError(f"expected accelerator keys like A100 or H100:1; got {k!r}")
        return v

    @field_validator("spot_placer")
    @classmethod
    def _placer(cls, v: str | None) -> str | None:
        return None if v is None else _lower_choice(v, ("dynamic_fallback",), "spot_placer")


class ServicePool(Model):
    """A pool of workers (`pool:` of a task or of a service)."""

    workers: NonNegInteger | None = Field(None, description="Fixed number of workers.")
    min_workers: NonNegInteger | None = Field(None, description="Fewest workers when scaling.")
    max_workers: NonNegInteger | None = Field(None, description="Most workers when scaling.")
    queue_length_threshold: Annotated[int, BeforeValidator(_integer), Field(ge=1)] | None = Field(
        None, description="Queued jobs per worker that trigger a scale-up."
    )
    upscale_delay_seconds: NonNegNumber | None = Field(None, description="Delay before scaling up.")
    downscale_delay_seconds: NonNegNumber | None = Field(
        None, description="Delay before scaling down."
    )


class ServiceLoadBalancer(Model):
    stream_timeout_seconds: Number | None = Field(None, description="Streaming response timeout.")


class ServiceTLS(Model):
    keyfile: str = Field(description="Path of the TLS key.")
    certfile: str = Field(description="Path of the TLS certificate.")


LB_POLICIES = ("round_robin", "least_load", "instance_aware_least_load")


class Service(Model):
    """`service:`: how `skyloom serve up` runs the task as replicas behind a load balancer."""

    readiness_probe: ReadinessProbe | None = Field(
        None, description="Replica health check: a path, or a mapping with `path` (default /)."
    )
    replica_policy: ReplicaPolicy | None = Field(None, description="Replica counts/autoscaling.")
    replicas: Integer | None = Field(None, description="Fixed replica count.")
    workers: Integer | None = Field(None, description="Workers of a pool (like replicas).")
    ports: int | None = Field(None, description="Replica port the load balancer targets (1-65535).")
    load_balancing_policy: str | None = Field(
        None, description="round_robin, least_load or instance_aware_least_load."
    )
    load_balancer: ServiceLoadBalancer | None = Field(None, description="Load balancer settings.")
    tls: ServiceTLS | None = Field(None, description="TLS for the endpoint.")
    pool: ServicePool | None = Field(None, description="Run a pool of workers, not a service.")

    DROP_NULLS: ClassVar[bool] = True
    DROP_UNKNOWN_NULLS: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _present_keys(cls, v: Any) -> Any:
        # SkyPilot looks at these keys before it drops nulls.
        if isinstance(v, dict):
            if "replicas" in v and "replica_policy" in v:
                raise FieldError(
                    "replica_policy", "give either `replicas` or `replica_policy`, not both"
                )
            if "readiness_probe" in v and v["readiness_probe"] is None:
                raise FieldError("readiness_probe", "expected a path or a mapping, got null")
        return v

    @field_validator("ports", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            raise ValueError("expected a whole port number like 8080, not a float")
        if isinstance(v, int) and not isinstance(v, bool) and not 1 <= v <= 65535:
            raise ValueError(f"port must be 1-65535; got {v}")
        return v

    @field_validator("load_balancing_policy")
    @classmethod
    def _policy(cls, v: str | None) -> str | None:
        if v is not None and v not in LB_POLICIES:
            raise ValueError(
                f"unknown load balancing policy {v!r}; one of {', '.join(LB_POLICIES)}"
            )
        return v

    @model_validator(mode="after")
    def _replica_rules(self) -> Service:
        pool = self.pool
        is_pool = pool is not None and bool(pool.model_fields_set)
        if self.replicas is not None and self.replica_policy is not None:
            raise FieldError(
                "replica_policy", "give either `replicas` or `replica_policy`, not both"
            )
        if self.replica_policy is not None and is_pool:
            raise FieldError("replica_policy", "a pool takes workers / min_workers / max_workers")
        if self.replicas is not None and self.workers is not None:
            raise FieldError("workers", "give either `replicas` or `workers`, not both")
        if self.replicas is not None and is_pool:
            raise FieldError("replicas", "a pool takes `workers`, not `replicas`")
        fixed = self.replicas if self.replicas is not None else self.workers
        max_field = (
            "pool.max_workers" if self.replica_policy is None else ("replica_policy.max_replicas")
        )
        if pool is not None:
            workers = pool.workers if pool.workers is not None else self.workers
            if not is_pool:
                # An empty pool loses the service's `workers` when SkyPilot's server reads
                # the spec back, so it needs its own.
                workers = None
            if pool.min_workers is None and pool.max_workers is None and workers is None:
                raise FieldError("pool", "needs `workers`, or both `min_workers` and `max_workers`")
            if pool.queue_length_threshold is not None and pool.max_workers is None:
                raise FieldError("pool.queue_length_threshold", "needs pool.max_workers")
            if pool.min_workers is not None and pool.max_workers is None:
                raise FieldError("pool.min_workers", "needs pool.max_workers")
            if (
                pool.min_workers is not None
                and pool.max_workers is not None
                and pool.min_workers > pool.max_workers
            ):
                raise FieldError("pool.min_workers", "must be <= pool.max_workers")
        policy = self.replica_policy
        if policy is None or fixed is not None:
            lo = fixed
            if lo is None:
                lo = pool.workers if pool is not None and pool.workers is not None else 1
            if pool is not None and pool.max_workers is not None and pool.min_workers is not None:
                lo = pool.min_workers
            hi = pool.max_workers if pool is not None else None
            qps = None
        else:
            lo, hi, qps = policy.min_replicas, policy.max_replicas, policy.target_qps_per_replica
        if is_pool:
            self._pool_limits(hi)
        if hi is not None and hi < lo:
            raise FieldError(max_field, f"{hi} must be >= min_replicas ({lo})")
        if qps is not None and hi is None:
            raise FieldError("replica_policy.max_replicas", "needed with target_qps_per_replica")
        if qps is None and not is_pool and hi is not None and hi != lo:
            raise FieldError(
                max_field,
                "different min and max replicas need target_qps_per_replica "
                "(that is what autoscaling scales on)",
            )
        lb = self.load_balancing_policy
        if isinstance(qps, dict) and lb != "instance_aware_least_load":
            raise FieldError(
                "load_balancing_policy",
                "must be instance_aware_least_load when target_qps_per_replica is per accelerator",
            )
        if lb == "instance_aware_least_load" and not isinstance(qps, dict):
            raise FieldError(
                "replica_policy.target_qps_per_replica",
                "instance_aware_least_load needs a mapping of accelerator to QPS",
            )
        if lo < 0:
            raise FieldError(
                "replicas" if self.replicas is not None else "workers", f"must be >= 0; got {lo}"
            )
        return self

    def _pool_limits(self, max_workers: int | None) -> None:
        probe = self.readiness_probe
        unsupported: dict[str, object] = {
            "load_balancing_policy": self.load_balancing_policy,
            "ports": self.ports,
            "tls": self.tls,
            "readiness_probe.post_data": probe.post_data if probe else None,
            "readiness_probe.headers": probe.headers if probe else None,
        }
        if max_workers is None and self.pool is not None:
            unsupported["pool.upscale_delay_seconds"] = self.pool.upscale_delay_seconds
            unsupported["pool.downscale_delay_seconds"] = self.pool.downscale_delay_seconds
        for name, value in unsupported.items():
            if value is not None:
                raise FieldError(name, "not supported for a pool")


# ---- task-level `config:` overrides ---------------------------------------------------------


class DockerOverrides(Model):
    run_options: str | list[str] | None = Field(None, description="docker run options.")


class NvidiaGpusOverrides(Model):
    disable_ecc: bool | None = Field(None, description="Disable ECC on NVIDIA GPUs.")


class GcpManagedInstanceGroup(Model):
    run_duration: Integer = Field(description="Seconds the instances run.")
    provision_timeout: Integer | None = Field(None, description="Provisioning timeout (s).")


class GcpOverrides(Model):
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"vpc_name", "subnet_names"})
    managed_instance_group: GcpManagedInstanceGroup | None = Field(None, description="MIG.")
    enable_gvnic: bool | None = Field(None, description="Use gVNIC.")
    enable_gpu_direct: bool | None = Field(None, description="Use GPUDirect.")
    placement_policy: str | None = Field(None, description="Placement policy.")
    vpc_name: str | None = Field(None, description="VPC name ([project/]name).")
    subnet_names: str | list[str] | None = Field(None, description="Subnets.")

    @field_validator("vpc_name")
    @classmethod
    def _vpc(cls, v: str | None) -> str | None:
        return _matching(v, _GCP_VPC, "a VPC name like my-vpc or project/my-vpc")


class AzureOverrides(Model):
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"vpc_name"})
    vpc_name: str | None = Field(None, description="VNet name.")
    remote_identity: (
        Annotated[str, Field(min_length=1)]
        | list[
            Annotated[
                dict[str, Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)
            ]
        ]
        | None
    ) = Field(None, description="Identity of the cluster.")


class KueueOverrides(Model):
    local_queue_name: str | None = Field(None, description="Kueue local queue.")
    admission_timeout: Integer | None = Field(None, description="Admission timeout (s).")


class DwsOverrides(Model):
    enabled: bool | None = Field(None, description="Use Dynamic Workload Scheduler.")
    max_run_duration: str | Integer | None = Field(None, description="Minutes or like 2h.")

    @field_validator("max_run_duration")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if isinstance(v, str) and not _MINUTES.search(v):
            raise ValueError(f"expected minutes or a duration like 2h; got {v!r}")
        return v


class EnableDocker(Model):
    mode: Literal["ALL", "BUILD"] = Field(description="ALL or BUILD.")
    cache_volume: str | None = Field(None, description="Cache volume.")


def _no_name_or_namespace(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is not None and ("name" in v or "namespace" in v):
        raise ValueError("custom_metadata cannot set name or namespace")
    return v


class SshOverrides(Model):
    pod_config: dict[str, Any] | None = Field(None, description="Pod spec overrides.")
    provision_timeout: Integer | None = Field(None, description="Provisioning timeout (s).")
    custom_metadata: dict[str, Any] | None = Field(None, description="Extra pod metadata.")

    @field_validator("custom_metadata")
    @classmethod
    def _custom_metadata(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _no_name_or_namespace(v)


class KubernetesOverrides(SshOverrides):
    kueue: KueueOverrides | None = Field(None, description="Kueue settings.")
    quota: dict[str, Any] | None = Field(None, description="Quota settings (queue: str).")
    dws: DwsOverrides | None = Field(None, description="Dynamic Workload Scheduler.")
    remote_identity: str | dict[str, str] | None = Field(None, description="Service account.")
    set_pod_resource_limits: bool | Annotated[Number, Field(ge=1)] | None = Field(
        None, description="Set pod limits (true, or a multiple of the request)."
    )
    enable_docker: bool | Literal["ALL", "BUILD"] | EnableDocker | None = Field(
        None, description="Docker inside the pod."
    )

    @field_validator("quota")
    @classmethod
    def _queue(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and "queue" in v and not isinstance(v["queue"], str):
            raise ValueError("quota.queue must be a string")
        return v


class SlurmQuota(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    queue: Annotated[str, Field(min_length=1)] | None = Field(None, description="Queue.")
    account: Annotated[str, Field(min_length=1)] | None = Field(None, description="Account.")


class SlurmOverrides(Model):
    sbatch_options: dict[str, str | Number | bool | None] | None = Field(
        None, description="Extra sbatch options."
    )
    quota: SlurmQuota | None = Field(None, description="Quota settings.")
    cpu_partition: str | None = Field(None, description="Partition for CPU jobs.")

    @field_validator("sbatch_options")
    @classmethod
    def _one_line(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for k, x in (v or {}).items():
            if isinstance(x, str) and not re.search(r"^[^\n]*$", x):
                raise ValueError(f"sbatch option {k!r} must be one line")
        return v


class VastOverrides(Model):
    datacenter_only: bool | None = Field(None, description="Datacenter hosts only.")
    create_instance_kwargs: dict[str, Any] | None = Field(None, description="Extra arguments.")


class Hook(Model):
    run: Annotated[str, Field(min_length=1, max_length=16384)] = Field(description="Command.")
    events: Annotated[list[Literal["stop", "preemption", "down"]], Field(min_length=1)] | None = (
        Field(None, description="stop, preemption and/or down (default all).")
    )
    timeout: Annotated[int, BeforeValidator(_integer), Field(ge=1)] | None = Field(
        None, description="Seconds the hook may take."
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("events must be unique")
        return v


class TaskConfig(Model):
    """`config:` of a task: the overridable part of SkyPilot's config.yaml, and hooks."""

    docker: DockerOverrides | None = Field(None, description="Docker settings.")
    nvidia_gpus: NvidiaGpusOverrides | None = Field(None, description="NVIDIA GPU settings.")
    active_workspace: str | None = Field(None, description="Workspace to run in.")
    gcp: GcpOverrides | None = Field(None, description="GCP settings.")
    azure: AzureOverrides | None = Field(None, description="Azure settings.")
    kubernetes: KubernetesOverrides | None = Field(None, description="Kubernetes settings.")
    ssh: SshOverrides | None = Field(None, description="SSH node pool settings.")
    slurm: SlurmOverrides | None = Field(None, description="Slurm settings.")
    vast: VastOverrides | None = Field(None, description="Vast settings.")
    hooks: Annotated[list[Hook], Field(max_length=32)] | None = Field(
        None, description="Lifecycle hooks run on stop, preemption or down."
    )


# ---- task -----------------------------------------------------------------------------------


def _mount_kind(v: Any) -> str:
    if isinstance(v, VolumeFileMount | StorageMount):
        return type(v).__name__
    if isinstance(v, dict):
        return "VolumeFileMount" if v.get("store") == "volume" else "StorageMount"
    return "str"


# A path or URI, a bucket spec, or a volume (`store: volume`): errors come from one kind.
FileMountSource = Annotated[
    Annotated[str, Tag("str")]
    | Annotated[StorageMount, Tag("StorageMount")]
    | Annotated[VolumeFileMount, Tag("VolumeFileMount")],
    Discriminator(_mount_kind),
]


class VolumeConfigRef(BaseModel):
    """The resolved volume behind a `volume_mounts` entry (internal; SkyPilot's shape)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Volume name.")
    type: str = Field(description="Volume type.")
    cloud: str = Field(description="Cloud.")
    region: str | None = Field(description="Region.")
    zone: str | None = Field(description="Zone.")
    name_on_cloud: str = Field(description="Name on the cloud.")
    size: str | None = Field(description="Size.")

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, v: str) -> str:
        return _lower_choice(v, SKYPILOT_CLOUDS, "cloud")


class VolumeMount(Model):
    # Required: SkyPilot's server reads the mount back and refuses a missing one.
    path: str = Field(description="Mount path.")
    volume_name: str = Field(description="Volume name.")
    is_ephemeral: bool | None = Field(None, description="Ephemeral volume.")
    sub_path: str | None = Field(None, description="Sub-path inside the volume.")
    volume_config: VolumeConfigRef = Field(description="Resolved volume config.")

    @field_validator("sub_path")
    @classmethod
    def _sub_path(cls, v: str | None) -> str | None:
        return _matching(v, _SUB_PATH, "a relative path of letters, digits, . _ - /")


class ManagedSecretMount(Model):
    mount_path: str | None = Field(None, description="Where the secret is mounted as a file.")


EnvValue = str | None
ManagedSecretEntry = str | Annotated[dict[str, ManagedSecretMount], Field(max_length=1)]


class Task(Model):
    """One task: what to run, where, and with what."""

    name: str | None = Field(
        None,
        description=(
            "Task name: letters/digits separated by at most two of . _ - (shown in queues)."
        ),
    )
    workdir: str | GitWorkdir | None = Field(
        None, description="Local directory (or git repo) synced to every node; jobs run in it."
    )
    event_callback: str | None = Field(None, description="Command run on job state changes.")
    num_nodes: int = Field(1, description="Nodes in the cluster (>= 1); `run` runs on each.")
    resources: Resources = Field(
        default_factory=lambda: Resources(), description="What each node needs."
    )
    file_mounts: dict[str, FileMountSource] = Field(
        default_factory=dict,
        description=(
            "Node path → local path, bucket URI, or a bucket/volume spec. A relative node "
            "path is under the task's workdir (~/sky_workdir)."
        ),
    )
    service: Service | None = Field(None, description="Serve this task as replicas (serve up).")
    pool: ServicePool | None = Field(None, description="Run this task as a pool of workers.")
    setup: str | None = Field(None, description="Run once per node when the cluster is launched.")
    run: str | None = Field(None, description="The job: runs on every node in workdir.")
    envs: dict[str, EnvValue] = Field(
        default_factory=dict,
        description="Environment for setup and run; a name with no value needs --env NAME=….",
    )
    secrets: dict[str, EnvValue] | list[str] = Field(
        default_factory=dict,
        description=(
            "Like envs but never shown; a name with no value (or `secrets:NAME`) is resolved "
            "at launch from --secret or the secret store."
        ),
    )
    managed_secrets: list[ManagedSecretEntry] | None = Field(
        None, description="References to secrets managed by the server."
    )
    inputs: Annotated[dict[str, Number], Field(min_length=1, max_length=1)] | None = Field(
        None, description="Experimental: one input path and its size in GB."
    )
    outputs: Annotated[dict[str, Number], Field(min_length=1, max_length=1)] | None = Field(
        None, description="Experimental: one output path and its size in GB."
    )
    file_mounts_mapping: dict[str, Any] | None = Field(None, description="Internal mapping.")
    config: TaskConfig | None = Field(None, description="Per-task overrides of config.yaml.")
    volumes: dict[str, Any] | None = Field(None, description="Volumes: mount path → volume.")
    volume_mounts: list[VolumeMount] | None = Field(None, description="Resolved volume mounts.")
    api_server_access: bool | None = Field(None, description="Allow the job to call the API.")
    metadata: dict[str, Any] | None = Field(None, alias="_metadata", description="Free-form.")

    # A top-level null means "not given", as in SkyPilot (`resources:` with nothing).
    DROP_NULLS: ClassVar[bool] = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _TASK_NAME.fullmatch(v):
            raise ValueError(
                f"invalid task name {v!r}: letters and digits, separated by at most two of "
                "'.', '_', '-', starting and ending with a letter or digit"
            )
        return v

    @field_validator("num_nodes", mode="before")
    @classmethod
    def _nodes(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v <= 0:
            raise ValueError(f"num_nodes must be a positive integer; got {v}")
        return v

    @field_validator("pool")
    @classmethod
    def _pool_rules(cls, v: ServicePool | None) -> ServicePool | None:
        # SkyPilot reads a task's `pool:` as a service that is only a pool.
        if v is not None:
            try:
                Service(pool=v)
            except ValidationError as e:
                raised = (e.errors()[0].get("ctx") or {}).get("error")
                if isinstance(raised, FieldError):
                    field = raised.field.removeprefix("pool").lstrip(".")
                    raise FieldError(field, str(raised)) from None
                raise
        return v

    @field_validator("envs")
    @classmethod
    def _env_names(cls, v: dict[str, EnvValue]) -> dict[str, EnvValue]:
        for k in v:
            if not _ENV_NAME.match(k):
                raise ValueError(f"{k!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        return v

    @field_validator("secrets")
    @classmethod
    def _secret_refs(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for k, x in v.items():
                if k.startswith("secrets:") and x is not None:
                    raise ValueError(
                        f"{k!r} refers to a managed secret and takes no value; drop the "
                        "secrets: prefix to give the value inline"
                    )
        return v

    @field_validator("file_mounts", mode="before")
    @classmethod
    def _mount_kinds(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for target, src in v.items():
            if not isinstance(src, str | dict):
                raise FieldError(str(target), "expected a path, a bucket URI or a mapping")
            out[target] = src
        return out

    @field_validator("file_mounts")
    @classmethod
    def _mount_paths(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        for target, src in v.items():
            copies = []
            if isinstance(src, str):
                copies.append((target, src))
            elif isinstance(src, VolumeFileMount) and src.source:
                if not isinstance(src.source, str):
                    raise FieldError(target, "a volume's source must be a local path")
                copies.append((f"{target.rstrip('/')}/data", src.source))
            elif isinstance(src, StorageMount):
                if not target:
                    raise ValueError("a bucket mount needs a target path")
                if is_cloud_url(target):
                    raise FieldError(target, "the target cannot be a bucket URL")
            for dst, source in copies:
                for path in (dst, source):
                    if path.endswith("/"):
                        raise FieldError(target, f"mount paths cannot end with a slash ({path})")
                if is_cloud_url(dst):
                    raise FieldError(target, "the target cannot be a bucket URL")
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> Task:
        if self.service is not None and self.pool is not None:
            raise FieldError("pool", "give either `service` or `pool`, not both")
        if self.workdir is not None:
            for target, src in self.file_mounts.items():
                if target == REMOTE_WORKDIR and not isinstance(src, VolumeFileMount):
                    raise FieldError(
                        f"file_mounts.{target}",
                        f"cannot target {REMOTE_WORKDIR} when a workdir is set (the workdir "
                        "is synced there)",
                    )
        self._docker_login()
        vols = [
            src.resource_volume(target)
            for target, src in self.file_mounts.items()
            if isinstance(src, VolumeFileMount)
        ]
        if vols:
            try:
                self.resources.volumes = [ResourceVolume.model_validate(x) for x in vols]
            except ValueError as e:
                raise FieldError("file_mounts", f"a `store: volume` mount: {e}") from None
        return self

    def _docker_login(self) -> None:
        inline = {k for k, x in self.inline_secrets().items()}
        in_envs = _DOCKER_LOGIN_VARS & set(self.envs)
        in_secrets = _DOCKER_LOGIN_VARS & inline
        if in_envs and in_secrets:
            raise FieldError(
                "secrets",
                "the SKYPILOT_DOCKER_* login variables go together in envs or in secrets, "
                "not split between them",
            )
        for where, found in (("envs", in_envs), ("secrets", in_secrets)):
            if found and found != _DOCKER_LOGIN_VARS:
                missing = ", ".join(sorted(_DOCKER_LOGIN_VARS - found))
                raise FieldError(where, f"docker login needs all three variables: add {missing}")

    def inline_secrets(self) -> dict[str, str]:
        """Secrets given with a value (the rest are references resolved at launch)."""
        if isinstance(self.secrets, list):
            return {}
        return {
            k: v for k, v in self.secrets.items() if v is not None and not k.startswith("secrets:")
        }

    def secret_values(self) -> dict[str, str]:
        return self.inline_secrets()

    def secret_refs(self) -> list[str]:
        """Names of secrets to resolve at launch (no inline value)."""
        if isinstance(self.secrets, list):
            return [s.removeprefix("secrets:") for s in self.secrets]
        return [k.removeprefix("secrets:") for k, v in self.secrets.items() if v is None]

    def env_values(self) -> dict[str, str]:
        return {k: v for k, v in self.envs.items() if v is not None}


class Pipeline(Model):
    """A multi-document YAML: tasks run in order (managed jobs), or together (a job group).

    A first document with only `name` (and `execution: serial`) is a header naming the
    pipeline. A first document with `execution: parallel` makes a job group: every task
    is named and they run at the same time.
    """

    DROP_NULLS: ClassVar[bool] = True

    name: Any = Field(None, description="Pipeline name (from the header document).")
    tasks: list[Task] = Field(description="The tasks, in order.")
    execution: Literal["serial", "parallel"] = Field(
        "serial", description="serial (a pipeline) or parallel (a job group)."
    )
    primary_tasks: list[str] | None = Field(
        None, description="Job group: the tasks whose end ends the group."
    )
    termination_delay: str | dict[str, str] | None = Field(
        None, description="Job group: how long other tasks may outlive a primary one."
    )
    inter_connection: bool | None = Field(
        None, description="Job group: whether the tasks' nodes can reach each other."
    )
