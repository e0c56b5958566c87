"""Prometheus metrics of one controller, on its own registry (no process-global state).

Names follow Prometheus conventions: counters are exposed with `_total` (prometheus_client
appends it), durations are histograms in seconds, times are Unix timestamps in seconds,
and no label names a proxy (labels are a type, a stream kind, a reason, a Kubernetes kind
or a CA provider: a handful of values each). docs/observability.md lists every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Convergence buckets from 0.1 s to 30 s, as users watch it (rule 22 of docs/xds-protocol.md).
PUSH_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Certificate issuance: milliseconds for the built-in CA, seconds for a remote one
#: (retries included).
ISSUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Reconcile rounds: compile and publish of every proxy class.
ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Label values known before anything happens, whose series start at 0 so that a rate, a
#: sum or a dashboard panel of something that has not happened (no NACK yet) reads 0
#: rather than nothing. prometheus_client creates a labelled child only when first used.
#: The short xDS type names (`cache.resource_types.SHORT_NAMES`; this layer imports none).
XDS_TYPES = ("cds", "eds", "lds", "rds", "sds")
#: The ADS stream kinds (`xds.sotw`, `xds.delta`).
STREAM_KINDS = ("sotw", "delta")
#: Why a response could not be written (`xds.service`).
SEND_ERROR_REASONS = ("stream_closed", "connection", "other")
#: The stream refusal the xDS server makes itself; the authoriser's reasons appear as they occur.
NO_NODE = "no_node"
#: The kinds of objects meshcp reads (`sources.kubernetes.RESOURCES`), whose invalid count
#: starts at 0; other kinds a source reports (a broken file) appear as they occur.
OBJECT_KINDS = (
    "Namespace",
    "Service",
    "Pod",
    "ServiceAccount",
    "EndpointSlice",
    "TrafficTarget",
    "HTTPRouteGroup",
    "TCPRoute",
    "UDPRoute",
    "TrafficSplit",
    "Retry",
    "UpstreamTrafficSetting",
    "Egress",
    "IngressBackend",
    "MeshConfig",
)


def version() -> str:
    """The installed meshcp's version ("unknown" when run from an uninstalled tree)."""
    try:
        return metadata.version("meshcp")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Read(Collector):
    """One metric whose value is read when scraped; no sample while `read` returns None
    (a gauge of "the soonest expiry" has none before the first certificate)."""

    def __init__(
        self, family: Callable[[], CounterMetricFamily | GaugeMetricFamily], read: Callable[[], float | None]
    ) -> None:
        self._family = family
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        value = self._read()
        family = self._family()
        if value is not None:
            family.add_metric([], value)
        return [family]


class Metrics:
    """Everything meshcp exports, created together so every server shares one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(
            "meshcp_build_info", "Always 1; the running meshcp's version.", ["version"], registry=r
        )
        self.build_info.labels(version()).set(1)

        # xDS ---------------------------------------------------------------------------
        self.connected = Gauge(
            "meshcp_xds_connected_proxies", "Open ADS streams, by stream kind.", ["stream"], registry=r
        )
        self.responses = Counter(
            "meshcp_xds_responses", "Discovery responses sent, by resource type.", ["type"], registry=r
        )
        self.resources_sent = Counter(
            "meshcp_xds_resources_sent", "Resources sent in responses, by type.", ["type"], registry=r
        )
        self.acks = Counter("meshcp_xds_acks", "Responses ACKed by proxies, by type.", ["type"], registry=r)
        self.nacks = Counter(
            "meshcp_xds_nacks", "Responses NACKed by proxies, by type.", ["type"], registry=r
        )
        self.stale = Counter(
            "meshcp_xds_stale_requests", "Requests ignored for a stale nonce, by type.", ["type"], registry=r
        )
        self.push_latency = Histogram(
            "meshcp_xds_push_latency_seconds",
            "Convergence of one stream, by type: from when the stream had new content due "
            "(a change it saw, or a request) to the proxy's ACK of the response carrying it.",
            ["type"],
            buckets=PUSH_LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected_streams = Counter(
            "meshcp_xds_rejected_streams", "ADS streams refused, by reason.", ["reason"], registry=r
        )
        self.refused_connections = Counter(
            "meshcp_xds_refused_connections",
            "Connections to the xDS port closed before any stream: not HTTP/2 (protocol_error), "
            "or no stream opened in time (no_stream).",
            ["reason"],
            registry=r,
        )
        for reason in ("protocol_error", "no_stream"):
            self.refused_connections.labels(reason)
        self.aged_out = Counter(
            "meshcp_xds_aged_out_connections",
            "ADS connections told to go away (HTTP/2 GOAWAY, streams ended) at their maximum "
            "age (--max-connection-age), so that proxies spread over the replicas.",
            registry=r,
        )
        self.refused_secrets = Counter(
            "meshcp_xds_refused_secrets",
            "Secret names refused to a proxy because the mesh does not serve them.",
            registry=r,
        )
        self.send_errors = Counter(
            "meshcp_xds_send_errors",
            "Responses that could not be sent, by reason (stream_closed, connection, other).",
            ["reason"],
            registry=r,
        )
        for kind in STREAM_KINDS:
            self.connected.labels(kind)
        for counter in (self.responses, self.resources_sent, self.acks, self.nacks, self.stale):
            for short in XDS_TYPES:
                counter.labels(short)
        self.rejected_streams.labels(NO_NODE)
        for reason in SEND_ERROR_REASONS:
            self.send_errors.labels(reason)

        # Configuration -----------------------------------------------------------------
        self.problems = Gauge(
            "meshcp_invalid_objects",
            "Objects reported invalid or conflicting and skipped, by kind (see /debug/problems).",
            ["kind"],
            registry=r,
        )
        for kind in OBJECT_KINDS:
            self.problems.labels(kind)
        self.rounds = Counter(
            "meshcp_reconcile_rounds", "Reconcile rounds completed (one per settled change).", registry=r
        )
        self.compiles = Counter(
            "meshcp_reconcile_compiles",
            "Reconcile rounds by what they recompiled: scope=endpoints (a change that moved "
            "endpoints only: the assignments it touched) or full (the policy rebuilt).",
            ["scope"],
            registry=r,
        )
        for scope in ("endpoints", "full"):
            self.compiles.labels(scope)
        self.round_cpu = Counter(
            "meshcp_reconcile_round_cpu_seconds",
            "CPU time reconcile rounds took (the compile's worker thread and the loop's "
            "publish and reclassify), before any push: the cost of a change to the controller.",
            registry=r,
        )
        self.round_duration = Histogram(
            "meshcp_reconcile_round_duration_seconds",
            "Time one reconcile round took: compile, publish, reclassify.",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.watch_events = Counter(
            "meshcp_kubernetes_watch_events",
            "Kubernetes watch events received, by kind and event type (ADDED, MODIFIED, DELETED).",
            ["kind", "type"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "meshcp_kubernetes_watch_restarts",
            "Kubernetes list-watch loops that started over with a fresh list, by kind and reason "
            "(expired, error, not_served).",
            ["kind", "reason"],
            registry=r,
        )
        self.watches_failing = Gauge(
            "meshcp_kubernetes_watch_failing",
            "1 while the list-watch loop of a kind cannot follow the Kubernetes API (it retries "
            "with back-off), 0 once a watch stream is open again.",
            ["kind"],
            registry=r,
        )
        self.leader = Gauge(
            "meshcp_leader",
            "1 while this replica leads (holds the controllers' Lease, or runs without leader "
            "election), 0 while it follows: only the leader writes to the cluster.",
            registry=r,
        )
        self.leader.set(1)
        self.watch_backoff_seconds = Gauge(
            "meshcp_kubernetes_watch_backoff_seconds",
            "The wait before the list-watch loop of a kind starts over (it doubles with each "
            "failure or 410 Gone in a row, up to its maximum); 0 while it follows the API.",
            ["kind"],
            registry=r,
        )

        # Certificates ------------------------------------------------------------------
        self.certificates_issued = Counter(
            "meshcp_certificates_issued", "Certificates issued, by CA provider.", ["provider"], registry=r
        )
        self.certificate_failures = Counter(
            "meshcp_certificate_issue_failures",
            "Certificate requests that failed (after any retries), by CA provider.",
            ["provider"],
            registry=r,
        )
        self.certificate_retries = Counter(
            "meshcp_certificate_issue_retries",
            "Attempts to obtain a certificate that failed and were retried, by CA provider.",
            ["provider"],
            registry=r,
        )
        self.issue_duration = Histogram(
            "meshcp_certificate_issue_duration_seconds",
            "Time to obtain a certificate from the CA (retries included), by CA provider.",
            ["provider"],
            buckets=ISSUE_BUCKETS,
            registry=r,
        )
        self.certificate_installed = Gauge(
            "meshcp_workload_certificate_installed_timestamp_seconds",
            "Unix time the current workload certificate of an identity (ns/sa) was installed.",
            ["identity"],
            registry=r,
        )
        self._installed: set[str] = set()
        self.proxyless_renewed = Counter(
            "meshcp_proxyless_secret_renewals",
            "Proxyless gRPC pods' Secrets whose certificates and trust bundle were rewritten.",
            registry=r,
        )
        self.proxyless_renewal_failures = Counter(
            "meshcp_proxyless_secret_renewal_failures",
            "Proxyless gRPC pods' Secrets that could not be rewritten when due (retried next pass).",
            registry=r,
        )

    # Wiring of values read at scrape time -----------------------------------------------

    def count_encodes(self, read: Callable[[], int]) -> None:
        """Expose the encoder's count as `meshcp_cache_encodes_total` (the cache stays free
        of Prometheus; its count only grows)."""
        self.registry.register(
            _Read(
                lambda: CounterMetricFamily(
                    "meshcp_cache_encodes", "Resources serialised since start (one per unique content)."
                ),
                lambda: float(read()),
            )
        )

    def read_expiries(self, roots: Callable[[], float | None], workloads: Callable[[], float | None]) -> None:
        """Expose the soonest expiry (Unix seconds) of the trust roots and of the workload
        certificates held; no sample while there is none."""
        self.registry.register(
            _Read(
                lambda: GaugeMetricFamily(
                    "meshcp_ca_root_expiry_timestamp_seconds",
                    "Unix time the soonest-expiring root of the workload trust bundle expires.",
                ),
                roots,
            )
        )
        self.registry.register(
            _Read(
                lambda: GaugeMetricFamily(
                    "meshcp_workload_certificate_expiry_timestamp_seconds",
                    "Unix time the soonest-expiring workload certificate held by the controller expires.",
                ),
                workloads,
            )
        )

    # Callbacks of the layers that may not import this one -------------------------------

    def certificate_issued(self, provider: str, seconds: float) -> None:
        """A certificate came back from `provider` after `seconds` (see `certs.issuer`).
        The provider's failure and retry counts start at 0 with its first answer."""
        self.certificates_issued.labels(provider).inc()
        self.certificate_failures.labels(provider)
        self.certificate_retries.labels(provider)
        self.issue_duration.labels(provider).observe(seconds)

    def certificate_retried(self, provider: str) -> None:
        """An attempt to obtain a certificate from `provider` failed and is retried; its
        issued and failed counts start at 0 if nothing came back yet."""
        self.certificate_retries.labels(provider).inc()
        self.certificates_issued.labels(provider)
        self.certificate_failures.labels(provider)

    def certificate_failed(self, provider: str, seconds: float) -> None:
        """Asking `provider` for a certificate failed for good after `seconds`; its issued
        count starts at 0 if nothing was issued yet."""
        self.certificate_failures.labels(provider).inc()
        self.certificates_issued.labels(provider)
        self.issue_duration.labels(provider).observe(seconds)

    def watch_event(self, kind: str, event_type: str) -> None:
        """A Kubernetes watch event (see `sources.kubernetes_watch.WatchObserver`)."""
        self.watch_events.labels(kind, event_type).inc()

    def watch_restart(self, kind: str, reason: str) -> None:
        """A Kubernetes list-watch loop starts over with a fresh list."""
        self.watch_restarts.labels(kind, reason).inc()

    def watch_failing(self, kind: str, failing: bool) -> None:
        """A Kubernetes list-watch loop cannot follow the API (True) or does again (False)."""
        self.watches_failing.labels(kind).set(1 if failing else 0)

    def watch_backoff(self, kind: str, seconds: float) -> None:
        """A Kubernetes list-watch loop waits `seconds` before starting over (0: it follows)."""
        self.watch_backoff_seconds.labels(kind).set(seconds)

    def read_rotation_laggards(self, count: Callable[[], float | None]) -> None:
        """Expose how many proxies a root rotation phase waits for (0 when none waits)."""
        self.registry.register(
            _Read(
                lambda: GaugeMetricFamily(
                    "meshcp_ca_rotation_lagging_proxies",
                    "Connected proxies a root rotation waits for (not ACKed their secrets yet).",
                ),
                count,
            )
        )

    def round_done(self, seconds: float, cpu_seconds: float = 0.0) -> None:
        """A reconcile round completed in `seconds`, using `cpu_seconds` of CPU."""
        self.rounds.inc()
        self.round_duration.observe(seconds)
        self.round_cpu.inc(cpu_seconds)

    def certificate_installed_at(self, identity: str, when: float, live: Iterable[str]) -> None:
        """Record `identity`'s new certificate; drop the series of identities not in `live`."""
        for gone in self._installed - set(live) - {identity}:
            self.certificate_installed.remove(gone)
            self._installed.discard(gone)
        self.certificate_installed.labels(identity).set(when)
        self._installed.add(identity)

    def exposition(self) -> bytes:
        """The text exposition format served at /metrics."""
        return generate_latest(self.registry)

    def names(self) -> Iterator[tuple[str, str]]:
        """(name, type) of every metric family on the registry, as exposed."""
        for family in self.registry.collect():
            yield family.name, family.type
