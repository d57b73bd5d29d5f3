"""Where skyloom keeps its state and which Temporal it talks to.

Stdlib only: the CLI imports this on every command, so it must cost nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def home() -> Path:
    """State dir: ~/.skyloom (like SkyPilot's ~/.sky), or $SKYLOOM_HOME."""
    return Path(os.environ.get("SKYLOOM_HOME") or Path.home() / ".skyloom")


@dataclass
class EngineTarget:
    """A Temporal frontend to connect to, and the web UI that shows it."""

    address: str
    namespace: str = "default"
    ui_url: str | None = None
    embedded: bool = False
    tls: bool = False
    api_key: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def workflow_url(self, workflow_id: str) -> str | None:
        if not self.ui_url:
            return None
        return f"{self.ui_url.rstrip('/')}/namespaces/{self.namespace}/workflows/{workflow_id}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def external_target() -> EngineTarget | None:
    """The engine named by the environment, or None for the embedded default.

    TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS (1/true),
    TEMPORAL_TLS_CLIENT_CERT_PATH / TEMPORAL_TLS_CLIENT_KEY_PATH, SKYLOOM_UI_URL.
    """
    address = os.environ.get("TEMPORAL_ADDRESS")
    if not address:
        return None
    api_key = os.environ.get("TEMPORAL_API_KEY") or None
    cert = os.environ.get("TEMPORAL_TLS_CLIENT_CERT_PATH") or None
    tls = os.environ.get("TEMPORAL_TLS", "").lower() in ("1", "true", "yes") or bool(
        api_key or cert
    )
    return EngineTarget(
        address=address,
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
        ui_url=os.environ.get("SKYLOOM_UI_URL") or None,
        tls=tls,
        api_key=api_key,
        tls_cert=cert,
        tls_key=os.environ.get("TEMPORAL_TLS_CLIENT_KEY_PATH") or None,
    )


def user() -> str:
    import getpass

    try:
        return os.environ.get("SKYLOOM_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
