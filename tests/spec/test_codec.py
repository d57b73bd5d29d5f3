"""The secrets codec: only payloads with secrets are sealed, and only our key opens them."""

from __future__ import annotations

import base64

import pytest
from skyloom.client.codec import ENCODING, KEY_ENV, SecretsCodec, SecretsKeyError, load_key
from temporalio.api.common.v1 import Payload


def payload(data: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


async def test_payloads_with_secrets_are_sealed_and_round_trip(tmp_path):
    codec = SecretsCodec(load_key(tmp_path))
    secret = payload(b'{"run":"x","secrets":{"TOKEN":"hunter2"}}')
    plain = payload(b'{"run":"x","secrets":{}}')
    sealed, untouched = await codec.encode([secret, plain])
    assert sealed.metadata["encoding"] == ENCODING and b"hunter2" not in sealed.data
    assert untouched == plain
    assert await codec.decode([sealed, untouched]) == [secret, plain]


async def test_another_key_cannot_open_them(tmp_path, monkeypatch):
    sealed = (await SecretsCodec(load_key(tmp_path)).encode([payload(b'{"secrets":{"A":"b"}}')]))[0]
    monkeypatch.setenv(KEY_ENV, base64.urlsafe_b64encode(b"k" * 32).decode())
    with pytest.raises(SecretsKeyError, match="not the one"):
        await SecretsCodec(load_key(tmp_path)).decode([sealed])


def test_key_file_is_private_and_stable(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert load_key(tmp_path) == load_key(tmp_path)
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600


def test_bad_key_env_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(SecretsKeyError, match="32 bytes"):
        load_key(tmp_path)
