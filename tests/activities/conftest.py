"""Fixtures of the activity tests: real sshd hosts, moto's EC2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from skyloom.activities.providers.aws import AWSAPI

from tests.fakes import moto_ec2
from tests.sshd import SSHHosts


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[SSHHosts]:
    hs = SSHHosts(tmp_path / "sshd")
    try:
        yield hs
    finally:
        hs.close()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_ec2.serve() as url:
        yield url


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> AWSAPI:
    """AWSAPI on a fresh moto account whose VPC hands out loopback addresses."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    moto_ec2.fresh_account(moto_url)
    return AWSAPI([moto_ec2.REGION], vpc_name=moto_ec2.VPC_NAME, use_internal_ips=True)
