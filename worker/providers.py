"""Builds the real providers the worker injects into its activities."""

from __future__ import annotations

from pathlib import Path

from skyloom.activities.cluster import Providers
from skyloom.activities.providers.local import LocalProvider
from skyloom.activities.providers.ssh import SSHProvider


def build_providers(home: Path) -> Providers:
    return Providers({"local": LocalProvider(home / "local"), "ssh": SSHProvider(home)})
