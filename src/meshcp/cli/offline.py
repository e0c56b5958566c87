"""One-shot work on a directory of manifests: `meshcp compile` and `meshcp bootstrap`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcp.cache.dump import dump
from meshcp.cache.encoding import Encoder
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.issuer import Issuer
from meshcp.certs.provider import CertificateProvider
from meshcp.certs.storage import write_file
from meshcp.compile import naming
from meshcp.identity import Identity, ProxyIdentity
from meshcp.kube.client import ApiClientFactory
from meshcp.model.core import Pod
from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshState
from meshcp.policy.analysis import analyze
from meshcp.policy.membership import is_meshed, proxy_uuid
from meshcp.runtime.proxyless import proxyless_key
from meshcp.runtime.reconcile import Reconciler
from meshcp.runtime.store import Store
from meshcp.sidecar.bootstrap import XdsTls, as_dict, bootstrap
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY, ProxylessFiles, grpc_bootstrap
from meshcp.sources.events import Event, Upsert
from meshcp.sources.files import FileSource
from meshcp.sources.kubernetes import KubernetesSource


class OfflineError(Exception):
    """What the user asked for cannot be done with these manifests."""


@dataclass(frozen=True)
class Loaded:
    """A state read once, and where each of its objects came from (`file:line`, relative
    to `root`, for manifests; nothing for objects of the API server)."""

    state: MeshState
    locations: Mapping[ObjectRef, str]
    root: Path | None = None


async def load(directory: Path) -> MeshState:
    """Everything in `directory`, read once (no watching)."""
    return (await load_located(directory)).state


async def load_located(directory: Path) -> Loaded:
    """Everything in `directory`, read once, with each object's location. The reader
    failing (a directory that does not exist, a file) ends the wait with its error instead
    of waiting for ever for a state it will never send."""
    store = Store(window=0, max_wait=0)
    store.expect("files")
    locations: dict[ObjectRef, str] = {}

    def emit(event: Event) -> None:
        if isinstance(event, Upsert) and event.location:
            locations[event.obj.ref] = event.location
        store.apply(event)

    state = await _read_once(store, FileSource(directory, emit).run(), str(directory))
    return Loaded(state, locations, directory)


async def load_cluster(factory: ApiClientFactory, seconds: float) -> Loaded:
    """The cluster's mesh objects, listed once; `OfflineError` if the API server does not
    list everything within `seconds` (the source itself retries for ever)."""
    store = Store(window=0, max_wait=0)
    store.expect("kubernetes")
    source = KubernetesSource(store.apply, api_client_factory=factory)
    with HeldBack("meshcp.sources") as last:
        try:
            async with asyncio.timeout(seconds):
                state = await _read_once(store, source.run(), "the cluster")
        except TimeoutError:
            said = f": {last.message}" if last.message else " (is the cluster reachable?)"
            raise OfflineError(
                f"the Kubernetes API did not list the mesh's objects within {seconds:g}s (--timeout){said}"
            ) from None
    return Loaded(state, {})


class HeldBack(logging.Handler):
    """Log lines of a part that a one-shot command reports itself, held back while it runs
    (the last is kept, for a one-line error): the Kubernetes source's retries (a line per
    kind and attempt), the reconciler's skipped objects (`analyze` lists them). At
    `--log-level debug` they are shown as they come."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.WARNING)
        self._logger = logging.getLogger(logger)
        self._propagate = self._logger.propagate
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage().split("; retrying")[0]

    def __enter__(self) -> HeldBack:
        if not self._logger.isEnabledFor(logging.DEBUG):
            self._logger.addHandler(self)
            self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


async def _read_once(store: Store, reading: Coroutine[Any, Any, None], what: str) -> MeshState:
    reader = asyncio.create_task(reading)
    first = asyncio.create_task(_first(store))
    try:
        await asyncio.wait({reader, first}, return_when=asyncio.FIRST_COMPLETED)
        if first.done():
            return first.result()
        error = reader.exception()
        if error is not None:
            raise error
        raise OfflineError(f"{what}: the manifests could not be read")
    finally:
        for task in (reader, first):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _first(store: Store) -> MeshState:
    async for state in store.states():
        return state
    raise OfflineError("the manifests could not be read")  # pragma: no cover


def find_pod(state: MeshState, namespace: str, name: str) -> Pod:
    found = state.get(ObjectRef("Pod", namespace, name))
    if not isinstance(found, Pod):
        raise OfflineError(f"there is no pod {namespace}/{name} in the manifests")
    if not is_meshed(found, state.meshed_namespaces):
        raise OfflineError(
            f"pod {namespace}/{name} is not in the mesh (namespace not labelled, or injection disabled)"
        )
    return found


@dataclass(frozen=True)
class Compiled:
    class_key: str
    identity: Identity
    config: dict[str, Any]


def compile_pod(
    state: MeshState, namespace: str, name: str, problems: Sequence[str] | None = None
) -> Compiled:
    """The configuration the proxy of one pod would receive (secrets by name only: no
    certificate is issued, so no CA is needed), with the mesh's problems: `problems`, or
    (None) `policy.analysis`'s findings without locations."""
    pod = find_pod(state, namespace, name)
    reconciler = Reconciler(Encoder())
    with HeldBack("meshcp.runtime.reconcile"):  # the problems are the command's to print
        classes = {c.key: c for c in reconciler.apply(state)}
    key = reconciler.policy.pod_classes[(namespace, name)]
    proxy_class = classes[key]
    config: dict[str, Any] = dump(proxy_class.all_resources())
    # The same two names for every proxy: what each holds is what differs.
    config["secrets"] = [
        {"name": naming.SERVICE_CERT, "holds": f"the certificate and key of {proxy_class.identity}"},
        {"name": naming.ROOT_CERT, "holds": "the mesh's trust bundle"},
    ]
    # A proxyless gRPC pod: what its gRPC library receives (its node says it is proxyless),
    # beside what a sidecar of the same class would.
    proxyless = pod.meta.annotations.get(PROXYLESS_KEY) == PROXYLESS_GRPC
    config["flavour"] = "proxyless-grpc" if proxyless else "sidecar"
    grpc_class = classes.get(proxyless_key(key)) if proxyless else None
    if grpc_class is not None:
        config["proxyless"] = {"class": grpc_class.key, **dump(grpc_class.all_resources())}
    config["problems"] = [f.line() for f in analyze(state)] if problems is None else list(problems)
    return Compiled(key, proxy_class.identity, config)


async def write_bootstrap(
    state: MeshState,
    namespace: str,
    name: str,
    *,
    provider: CertificateProvider,
    xds_host: str,
    xds_port: int,
    out: Path,
    trust_domain: str = "cluster.local",
    server_name: str = "localhost",
    delta: bool = False,
    insecure: bool = False,
) -> ProxyIdentity:
    """Write `bootstrap.json` and (with mTLS) the proxy's xDS client certificate, key and
    trust bundle into `out`; returns the proxy's identity (its name is the node id)."""
    pod = find_pod(state, namespace, name)
    proxy = ProxyIdentity(proxy_uuid(pod), Identity(namespace, pod.service_account), trust_domain)
    files: dict[str, tuple[str, int]] = {}
    tls = None
    if not insecure:
        files.update(await _xds_client_files(Issuer(provider), proxy, await provider.trust_bundle()))
        absolute = await asyncio.to_thread(os.path.abspath, out)  # getcwd: file system I/O
        tls = XdsTls(
            os.path.join(absolute, "xds-cert.pem"),
            os.path.join(absolute, "xds-key.pem"),
            os.path.join(absolute, "xds-ca.pem"),
            server_name,
        )
    config = bootstrap(
        proxy.name,
        f"{namespace}/{pod.service_account}",
        xds_host,
        xds_port,
        tls=tls,
        namespace=namespace,
        pod=name,
        service_account=pod.service_account,
        delta=delta,
    )
    files["bootstrap.json"] = (json.dumps(as_dict(config), indent=2) + "\n", 0o644)
    await asyncio.to_thread(_write_files, out, files)
    return proxy


async def write_proxyless_bootstrap(
    state: MeshState,
    namespace: str,
    name: str,
    *,
    provider: CertificateProvider,
    xds_host: str,
    xds_port: int,
    out: Path,
    trust_domain: str = "cluster.local",
    insecure: bool = False,
    watch_interval: float = 60.0,
) -> ProxyIdentity:
    """Write a proxyless gRPC application's `bootstrap.json` (gRPC's xDS bootstrap, for
    `GRPC_XDS_BOOTSTRAP`) and the files it points at: the workload certificate, key and
    trust bundle its `file_watcher` certificate provider reads, and (with mTLS) the xDS
    client certificate, key and bundle. Every run issues new certificates and replaces
    the files whole: gRPC's file watcher re-reads them every `watch_interval` seconds
    (rotation: run it again before the workload certificate expires, e.g. `--refresh`)."""
    pod = find_pod(state, namespace, name)
    if pod.meta.annotations.get(PROXYLESS_KEY) != PROXYLESS_GRPC:
        raise OfflineError(
            f"pod {namespace}/{name} is not a proxyless gRPC pod: "
            f"annotate it `{PROXYLESS_KEY}: {PROXYLESS_GRPC}` (metadata.annotations)"
        )
    identity = Identity(namespace, pod.service_account)
    proxy = ProxyIdentity(proxy_uuid(pod), identity, trust_domain)
    issuer = Issuer(provider)
    workload = await issuer.issue(workload_request(identity, trust_domain))
    bundle = await provider.trust_bundle()
    absolute = Path(await asyncio.to_thread(os.path.abspath, out))  # getcwd: file system I/O
    files: dict[str, tuple[str, int]] = {
        "cert.pem": (workload.chain_pem, 0o644),
        "key.pem": (workload.private_key_pem, 0o600),
        "ca.pem": (bundle, 0o644),
    }
    paths = ProxylessFiles(str(absolute / "cert.pem"), str(absolute / "key.pem"), str(absolute / "ca.pem"))
    if not insecure:
        files.update(await _xds_client_files(issuer, proxy, bundle))
        paths = ProxylessFiles(
            paths.certificate,
            paths.private_key,
            paths.ca_bundle,
            str(absolute / "xds-cert.pem"),
            str(absolute / "xds-key.pem"),
            str(absolute / "xds-ca.pem"),
        )
    config = grpc_bootstrap(
        proxy.name,
        f"{namespace}/{pod.service_account}",
        f"{xds_host}:{xds_port}",
        paths,
        namespace=namespace,
        pod=name,
        service_account=pod.service_account,
        refresh_interval=f"{watch_interval:g}s",
    )
    # The key before its certificate, the bootstrap last: a watcher that reads between
    # two files sees a pair that does not match for at most one refresh and keeps the old.
    ordered = ["key.pem", "cert.pem", "ca.pem", "xds-key.pem", "xds-cert.pem", "xds-ca.pem"]
    files = {name: files[name] for name in ordered if name in files}
    files["bootstrap.json"] = (json.dumps(config, indent=2) + "\n", 0o644)
    await asyncio.to_thread(_write_files, out, files)
    return proxy


async def _xds_client_files(issuer: Issuer, proxy: ProxyIdentity, bundle: str) -> dict[str, tuple[str, int]]:
    """The proxy's xDS client certificate, key and the bundle it checks the controller
    with, by file name and mode: the same for an Envoy and a proxyless gRPC pod."""
    issued = await issuer.issue(xds_client_request(proxy))
    return {
        "xds-cert.pem": (issued.chain_pem, 0o644),
        "xds-key.pem": (issued.private_key_pem, 0o600),
        "xds-ca.pem": (bundle, 0o644),
    }


def _write_files(directory: Path, files: dict[str, tuple[str, int]]) -> None:
    """Each file whole, with its mode from the first byte and never through a symlink
    (`certs.storage.write_file`), so a key is never world-readable, not even for a moment."""
    if directory.exists() and not directory.is_dir():
        raise OfflineError(f"--out {directory}: exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    for name, (text, mode) in files.items():
        write_file(directory / name, text.encode(), mode)
