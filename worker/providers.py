"""Builds the real providers the worker injects into its activities."""

from __future__ import annotations

import os
from pathlib import Path

from skyloom.activities.cluster import Providers
from skyloom.activities.providers.local import LocalProvider
from skyloom.activities.providers.ssh import SSHProvider


def build_providers(home: Path) -> Providers:
    # A node unreachable for this long fails its job (tests shorten it).
    grace = float(os.environ.get("SKYLOOM_UNREACHABLE_GRACE_SECONDS", "60"))
    return Providers(
        {
            "local": LocalProvider(home / "local"),
            "ssh": SSHProvider(home, unreachable_grace=grace),
        }
    )
