"""SSH node pools: `~/.skyloom/ssh_node_pools.yaml`, in SkyPilot's format.

    my-pool:                      # infra `ssh/my-pool`
      user: ubuntu                # pool-level defaults for every host
      identity_file: ~/.ssh/id_ed25519
      hosts:
        - 10.0.0.1                # an address (or a Host alias of ~/.ssh/config)
        - ip: 10.0.0.2
          user: alice             # per-host overrides
          identity_file: ~/.ssh/alice
          port: 2222              # skyloom's addition; default 22

Hosts are the pool's order; a cluster takes the first free ones that fit.
"""

from __future__ import annotations

import difflib
import getpass
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from skyloom.spec.loader import SpecError

POOLS_FILE = "ssh_node_pools.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostEntry(_Strict):
    ip: str
    user: str | None = None
    identity_file: str | None = None
    password: str | None = None
    use_ssh_config: bool | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class PoolSpec(_Strict):
    hosts: list[HostEntry] = Field(min_length=1)
    user: str | None = None
    identity_file: str | None = None
    password: str | None = None
    use_ssh_config: bool = False

    @field_validator("hosts", mode="before")
    @classmethod
    def _addresses(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"ip": h} if isinstance(h, str) else h for h in v]
        return v


class SSHHost(BaseModel):
    """One host with the pool's defaults applied: everything needed to connect."""

    pool: str
    ip: str
    port: int = 22
    user: str
    identity_file: str | None = None
    password: str | None = None
    use_ssh_config: bool = False

    @property
    def key(self) -> str:
        """Stable name of the host inside its pool (also its node directory name)."""
        return f"{self.ip}_{self.port}"

    @property
    def address(self) -> str:
        return f"{self.user}@{self.ip}:{self.port}"


def resolve(pool: str, spec: PoolSpec) -> list[SSHHost]:
    hosts = []
    for h in spec.hosts:
        key_file = h.identity_file or spec.identity_file
        hosts.append(
            SSHHost(
                pool=pool,
                ip=h.ip,
                port=h.port or 22,
                user=h.user or spec.user or getpass.getuser(),
                identity_file=str(Path(key_file).expanduser()) if key_file else None,
                password=h.password or spec.password,
                use_ssh_config=bool(
                    h.use_ssh_config if h.use_ssh_config is not None else spec.use_ssh_config
                ),
            )
        )
    return hosts


# path → (mtime_ns, size, pools): the worker resolves a node's host on every command and
# the watcher sweeps every second; the file is parsed again only when it changes.
_CACHE: dict[Path, tuple[int, int, dict[str, list[SSHHost]]]] = {}


def load_pools(path: Path) -> dict[str, list[SSHHost]]:
    """Every pool in the file, hosts resolved. A missing file is no pools."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    hit = _CACHE.get(path)
    if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
        return hit[2]
    pools = _parse(path)
    _CACHE[path] = (st.st_mtime_ns, st.st_size, pools)
    return pools


def _parse(path: Path) -> dict[str, list[SSHHost]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), "", f"cannot read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(str(path), "", f"not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(str(path), "", "expected a mapping of pool name → {hosts: [...]}")
    pools: dict[str, list[SSHHost]] = {}
    for name, body in data.items():
        try:
            spec = PoolSpec.model_validate(body)
        except ValidationError as e:
            raise _error(e, str(path), str(name)) from None
        hosts = resolve(str(name), spec)
        seen: set[str] = set()
        for i, h in enumerate(hosts):
            if h.key in seen:
                raise SpecError(str(path), f"{name}.hosts[{i}]", f"{h.ip}:{h.port} is listed twice")
            seen.add(h.key)
        pools[str(name)] = hosts
    return pools


def pool_hosts(path: Path, pool: str) -> list[SSHHost]:
    pools = load_pools(path)
    if pool not in pools:
        close = difflib.get_close_matches(pool, list(pools), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = f" (pools: {', '.join(sorted(pools))})" if pools else " (the file has no pools)"
        raise SpecError(str(path), pool, f"no such SSH node pool{hint}{known}")
    return pools[pool]


def _error(e: ValidationError, source: str, pool: str) -> SpecError:
    er = sorted(e.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden")[0]
    loc = [p for p in er["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    field = pool + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    if er["type"] == "extra_forbidden":
        owner = HostEntry if "hosts" in loc else PoolSpec
        close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else f"expected one of {list(owner.model_fields)}"
        )
        return SpecError(source, field, f"unknown field; {hint}")
    got = er.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {json.dumps(got, default=str)})"
    return SpecError(source, field, f"{er['msg']}{shown}")
