"""Secrets never sit in workflow history in the clear.

A payload codec on every client and worker encrypts (AES-256-GCM) each payload that
carries a non-empty `secrets` mapping (job specs and phase inputs with secrets) or log
bytes (`log_data`: a job's output may print anything, and logs reach a remote CLI
through a session workflow's history). All other payloads stay plain JSON, so the web UI
still shows clusters and jobs in full.

The key is $SKYLOOM_SECRETS_KEY (urlsafe base64 of 32 bytes), which every worker and
client of a shared engine must have; without it, a key file in the state dir, created on
first use with mode 0600 (the embedded engine's CLI and worker share that dir).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/skyloom-aesgcm"
KEY_ENV = "SKYLOOM_SECRETS_KEY"
_CARRIES_SECRETS = re.compile(rb'"secrets":\{"|"log_data":"[^"]')


class SecretsKeyError(RuntimeError):
    pass


def load_key(state_dir: Path) -> bytes:
    text = os.environ.get(KEY_ENV)
    if text:
        try:
            key = base64.urlsafe_b64decode(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise SecretsKeyError(f"{KEY_ENV} must be urlsafe base64 of 32 bytes")
        return key
    path = state_dir / "secrets.key"
    try:
        return base64.urlsafe_b64decode(path.read_bytes())
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return base64.urlsafe_b64decode(path.read_bytes())
    with os.fdopen(fd, "wb") as f:
        f.write(base64.urlsafe_b64encode(key))
    return key


class SecretsCodec(PayloadCodec):
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encrypt(p) if _CARRIES_SECRETS.search(p.data) else p for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decrypt(p) if p.metadata.get("encoding") == ENCODING else p for p in payloads]

    def _encrypt(self, p: Payload) -> Payload:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, p.SerializeToString(), None)
        return Payload(metadata={"encoding": ENCODING}, data=nonce + sealed)

    def _decrypt(self, p: Payload) -> Payload:
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(p.data[:12], p.data[12:], None)
        except InvalidTag:
            raise SecretsKeyError(
                f"cannot decrypt a payload with secrets: this process's key ({KEY_ENV} or "
                "secrets.key in the state dir) is not the one that encrypted it"
            ) from None
        out = Payload()
        out.ParseFromString(plain)
        return out
