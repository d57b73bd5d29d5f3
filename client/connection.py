"""Connecting to Temporal: the embedded engine by default, or the one the environment names."""

from __future__ import annotations

import dataclasses

from skyloom.client.config import EngineTarget, external_target, home
from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter


class EngineUnreachable(RuntimeError):
    """No Temporal frontend answered at the target address."""


def resolve_target(*, start_embedded: bool = True) -> EngineTarget:
    """TEMPORAL_ADDRESS when set (never starts anything); else the embedded engine,
    started (server and worker) when it is not running."""
    target = external_target()
    if target is not None:
        return target
    from skyloom.worker.engine import EmbeddedEngine, EngineError

    engine = EmbeddedEngine(home())
    try:
        if start_embedded:
            engine.ensure()
        return engine.target()
    except EngineError as e:
        raise EngineUnreachable(f"embedded engine: {e}") from e


def data_converter() -> DataConverter:
    """pydantic JSON, with payloads that carry secrets encrypted (see codec.py)."""
    from skyloom.client.codec import SecretsCodec, load_key

    return dataclasses.replace(
        pydantic_data_converter, payload_codec=SecretsCodec(load_key(home()))
    )


async def connect(target: EngineTarget) -> Client:
    tls: bool | TLSConfig = target.tls
    if target.tls_cert and target.tls_key:
        with open(target.tls_cert, "rb") as c, open(target.tls_key, "rb") as k:
            tls = TLSConfig(client_cert=c.read(), client_private_key=k.read())
    try:
        return await Client.connect(
            target.address,
            namespace=target.namespace,
            data_converter=data_converter(),
            tls=tls,
            api_key=target.api_key,
        )
    except RuntimeError as e:
        hint = (
            "start it with `skyloom engine start`"
            if target.embedded
            else "check TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / TLS settings, or unset "
            "TEMPORAL_ADDRESS to use the embedded engine"
        )
        raise EngineUnreachable(f"cannot reach Temporal at {target.address}: {e}; {hint}") from e
