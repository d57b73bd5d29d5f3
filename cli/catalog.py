"""`show-gpus` and `catalog refresh`: the clouds' catalog, as the workers have it (a
refreshed copy lives with them), asked through a session like `check`."""

from __future__ import annotations

import difflib
import re
import sys

import click
from skyloom.activities.models import GpuOffer, GpuReport, RefreshCatalogReport, ShowGpusInput
from skyloom.cli import render
from skyloom.cli.main import EXIT_FAILED, BadInput, _echo_json, run_with_client
from skyloom.client.api import SkyloomClient

_NAME = re.compile(r"^(?P<name>[^:]+?)(?::(?P<count>\d+(?:\.\d+)?))?$")


def parse_gpu(text: str | None) -> tuple[str | None, float | None]:
    """`A100:8` → ("A100", 8.0); `A100` → ("A100", None)."""
    if text is None:
        return None, None
    m = _NAME.match(text.strip())
    if m is None:
        raise BadInput(f"NAME[:COUNT] {text!r}: expected a GPU name and a count, e.g. A100:8")
    count = float(m["count"]) if m["count"] else None
    if count is not None and count <= 0:
        raise BadInput(f"NAME[:COUNT] {text!r}: the count must be positive")
    return m["name"].strip(), count


def show_gpus(gpu: str | None, infra: str | None, all_regions: bool, *, as_json: bool) -> None:
    name, count = parse_gpu(gpu)
    inp = ShowGpusInput(name=name, count=count, infra=infra, all_regions=all_regions)

    async def go(sky: SkyloomClient) -> GpuReport:
        async with sky.session() as session:
            return await session.show_gpus(inp)

    report: GpuReport = run_with_client(go)
    if name is not None and not report.rows:
        known = {k.lower(): k for k in report.known}
        if name.lower() not in known:
            close = difflib.get_close_matches(name.upper(), list(known.values()), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise BadInput(f"NAME {name!r}: no such GPU in the catalog{hint}")
        where = f" on {infra}" if infra else ""
        counts = f":{count:g}" if count is not None else ""
        raise BadInput(
            f"NAME[:COUNT] {gpu!r}: no {known[name.lower()]}{counts} offered{where} "
            f"(see `skyloom show-gpus {known[name.lower()]}`)"
        )
    if as_json:
        _echo_json([r.model_dump(mode="json") for r in report.rows])
        return
    if name is None and not all_regions:
        render.gpu_summary(_summary(report.rows))
    else:
        render.gpu_offers([r.model_dump() for r in report.rows])
    enabled = ", ".join(report.enabled) or "none (skyloom check says why)"
    click.echo(f"\nClouds enabled on the worker: {enabled}. Prices: $/hour, cheapest region")
    for cloud, about in sorted(report.about.items()):
        dated = next((a for a in about if a.lower().startswith("read")), None)
        if dated:
            click.echo(f"  {cloud} catalog: {dated}")


def _summary(rows: list[GpuOffer]) -> list[list[str]]:
    """One line per GPU: the counts each cloud offers it in."""
    by_gpu: dict[str, dict[str, set[float]]] = {}
    for r in rows:
        cloud = r.infra.split("/", 1)[0]
        by_gpu.setdefault(r.accelerator, {}).setdefault(cloud, set()).add(r.count)
    out = []
    for gpu in sorted(by_gpu, key=str.lower):
        clouds = by_gpu[gpu]
        counts = sorted({c for cs in clouds.values() for c in cs})
        out.append([gpu, ", ".join(f"{c:g}" for c in counts), ", ".join(sorted(clouds))])
    return out


def refresh(clouds: tuple[str, ...], *, as_json: bool) -> None:
    """Ask a worker (it has the credentials) to rebuild the catalog from the clouds' APIs."""

    async def go(sky: SkyloomClient) -> RefreshCatalogReport:
        async with sky.session() as session:
            return await session.refresh_catalog(list(clouds))

    report: RefreshCatalogReport = run_with_client(go)
    if as_json:
        _echo_json(report.model_dump(mode="json"))
    else:
        click.echo(f"Refreshed by worker {report.worker}:")
        for r in report.results:
            if r.error:
                click.echo(f"  {r.cloud}: failed, the previous catalog stays: {r.error}")
            else:
                click.echo(f"  {r.cloud}: {r.rows} rows in {len(r.regions)} region(s), {r.path}")
    if any(r.error for r in report.results):
        sys.exit(EXIT_FAILED)
