"""ssh_node_pools.yaml: SkyPilot's format in, hosts with defaults applied out; bad input
names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from skyloom.spec.loader import SpecError
from skyloom.spec.node_pools import load_pools, pool_hosts


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ssh_node_pools.yaml"
    p.write_text(text)
    return p


def test_hosts_as_addresses_and_mappings_get_pool_defaults(tmp_path: Path):
    p = write(
        tmp_path,
        """
lab:
  user: ubuntu
  identity_file: ~/.ssh/lab
  hosts:
    - 10.0.0.1
    - {ip: 10.0.0.2, user: alice, port: 2222, identity_file: /keys/a}
other:
  hosts: [h1]
""",
    )
    pools = load_pools(p)
    a, b = pools["lab"]
    assert (a.ip, a.port, a.user) == ("10.0.0.1", 22, "ubuntu")
    assert a.identity_file == str(Path("~/.ssh/lab").expanduser())
    assert (b.ip, b.port, b.user, b.identity_file) == ("10.0.0.2", 2222, "alice", "/keys/a")
    assert a.key == "10.0.0.1_22" and b.address == "alice@10.0.0.2:2222"
    assert pools["other"][0].user  # the local user when none is given


@pytest.mark.parametrize(
    ("text", "field", "expect"),
    [
        ("lab:\n  hostz: [a]\n", "lab.hostz", "did you mean 'hosts'"),
        ("lab:\n  hosts: [{ip: a, prot: 2}]\n", "lab.hosts[0].prot", "did you mean 'port'"),
        ("lab:\n  hosts: [{ip: a, port: 70000}]\n", "lab.hosts[0].port", "less than or equal"),
        ("lab:\n  hosts: []\n", "lab.hosts", "at least 1"),
        ("lab:\n  hosts: [a, a]\n", "lab.hosts[1]", "listed twice"),
        ("- a\n- b\n", "", "expected a mapping"),
        ("lab: [\n", "", "not valid YAML"),
    ],
)
def test_bad_pools_name_file_and_field(tmp_path: Path, text: str, field: str, expect: str):
    p = write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_pools(p)
    assert e.value.source == str(p)
    assert e.value.field == field
    assert expect in e.value.message


def test_unknown_pool_suggests_the_closest(tmp_path: Path):
    p = write(tmp_path, "lab:\n  hosts: [a]\n")
    with pytest.raises(SpecError, match="did you mean 'lab'"):
        pool_hosts(p, "lob")
    with pytest.raises(SpecError, match="has no pools"):
        pool_hosts(tmp_path / "missing.yaml", "lab")
