"""The figures of the SMI TrafficMetrics API read from Prometheus: per resource, per edge
and per TrafficSplit backend. `meshcp.kpi.traffic_metrics` shapes them into the spec's
JSON; `meshcp.kpi.traffic_queries` says which series each one counts.

A resource exists for the API when Prometheus holds its sidecars' series
(`envoy_server_live` with its identity); otherwise `NoData`, which the API answers 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshcp.kpi import traffic_queries as tq
from meshcp.kpi.prometheus import NoData, Prometheus, Sample, finite
from meshcp.kpi.traffic_metrics import Figures
from meshcp.kpi.traffic_queries import View
from meshcp.model.smi import TrafficSplit
from meshcp.sidecar.bootstrap import LOCAL_SERVICE, SOURCE_NAMESPACE

#: A row's key: the values of its `View.by` labels, in order.
Key = tuple[str, ...]


@dataclass(frozen=True)
class Edges:
    """A resource's edges: the Services it called (`to`: key destination namespace and
    Service) and its callers (`from`: key the caller's labels at the resource's kind)."""

    to: dict[Key, Figures]
    callers: dict[Key, Figures]


def _by(samples: Sequence[Sample], labels: Sequence[str]) -> dict[Key, float | None]:
    return {tuple(s.labels.get(label, "") for label in labels): finite(s.value) for s in samples}


async def read(client: Prometheus, view: View, window: str) -> dict[Key, Figures]:
    """Figures per row of `view` with requests counted in Prometheus (those with none in
    the window count 0)."""
    expressions = [
        tq.success_count(view, window),
        tq.failure_count(view, window),
        *(tq.latency(view, q, window) for q in tq.QUANTILES),
    ]
    success, failure, *quantiles = (
        _by(samples, view.by) for samples in await asyncio.gather(*(client.query(e) for e in expressions))
    )
    return {
        key: Figures(
            success=success[key] or 0.0,
            failure=failure.get(key) or 0.0,
            latency={q: values.get(key) for q, values in zip(tq.QUANTILES, quantiles, strict=True)},
        )
        for key in sorted(success)
    }


async def members(client: Prometheus, kind: str, namespace: str, name: str = "") -> list[Key]:
    """The resources of `kind` (one, or all of `namespace`; every namespace for `ns`) that
    Prometheus holds sidecars of; NoData when there is none."""
    promql = tq.members(kind, namespace, name)
    found = sorted(_by(await client.query(promql), tq.rows_of(kind)))
    if not found:
        raise NoData(promql)
    return found


async def resources(
    client: Prometheus, kind: str, namespace: str, name: str, window: str
) -> dict[Key, Figures]:
    """What each resource (one, or every one of `namespace`) received in the window, at its
    sidecars: every member, those without requests at zero. NoData when none exists."""
    keys, received = await asyncio.gather(
        members(client, kind, namespace, name), read(client, tq.inbound(kind, namespace, name), window)
    )
    return {key: received.get(key, Figures()) for key in keys}


async def edges(client: Prometheus, kind: str, namespace: str, name: str, window: str) -> Edges:
    """The Services the resource called and its callers, in the window, both counted at the
    clients. A namespace's callers are those of every Service in it; a pod's or deploy's,
    those of the Services its sidecars serve (`local_service`). NoData when the resource
    has no sidecar in Prometheus."""
    await members(client, kind, namespace, name)
    to, served = await asyncio.gather(
        read(client, tq.outbound(kind, namespace, name), window),
        client.query(tq.served(kind, namespace, name)),
    )
    target = name if kind == "ns" else namespace
    services = {s.labels.get(LOCAL_SERVICE, "") for s in served if s.labels.get(SOURCE_NAMESPACE) == target}
    callers = (
        await read(client, tq.callers(kind, target, services), window) if kind == "ns" or services else {}
    )
    return Edges(_active(to), _active(callers))


def _active(found: dict[Key, Figures]) -> dict[Key, Figures]:
    """Edges with a request in the window: every proxy has a cluster per Service it may
    call, so a series alone is an edge that could carry traffic, not one that did."""
    return {key: figures for key, figures in found.items() if figures.success or figures.failure}


async def backends(client: Prometheus, splits: Iterable[TrafficSplit], window: str) -> list[Figures]:
    """Each backend's figures (every split's in turn, backends in order): requests sent to
    its Service by every caller, counted at the callers; zero without any. One set of
    queries per namespace, whatever the number of splits and backends."""
    chosen = list(splits)
    namespaces = sorted({split.meta.namespace for split in chosen})
    answers = await asyncio.gather(*(read(client, tq.services(ns), window) for ns in namespaces))
    found = {key: figures for answer in answers for key, figures in answer.items()}
    return [
        found.get((split.meta.namespace, backend.service), Figures())
        for split in chosen
        for backend in split.backends
    ]
