"""The commands that ask a running controller or its CA: `version`, `proxy status|config`
and `ca show|rotate|finish-rotation`.

A controller is asked over its debug listener (`serve --debug-address`, `--server` here),
which only answers on loopback by default: `kubectl port-forward` reaches it in a cluster.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from meshcp import __version__
from meshcp.certs.cli_support import ca_finish_rotation, ca_rotate, ca_show
from meshcp.certs.storage import ClosableStore, DirectoryStore, StateStore
from meshcp.cli.options import UsageError, pod_of
from meshcp.cli.output import cell, emit
from meshcp.http.debug_client import ControllerError, ControllerUnreachable, get_json, get_url_json
from meshcp.kube.client import KubeAccessError, checked_api_client
from meshcp.xds.sync_status import sync_state

#: xDS types as `proxy status` shows them, in the order Envoy is sent them.
TYPES = (("cds", "CDS"), ("eds", "EDS"), ("lds", "LDS"), ("rds", "RDS"), ("sds", "SDS"))


async def version(args: argparse.Namespace) -> int:
    server: dict[str, Any] | None
    try:
        server = {"address": args.server, **await get_json(args.server, "/debug/version")}
    except ControllerUnreachable:
        server = None
    data = {"client": {"version": __version__}, "server": server}

    def text() -> str:
        shown = (
            f"server: not reachable at {args.server}" if server is None else f"server: {server['version']}"
        )
        return f"client: {__version__}\n{shown}\n"

    emit(data, args.output, text)
    return 0


def proxy_rows(proxies: Sequence[Mapping[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """One row per connected proxy (of `namespace`, when given), per type its state and versions."""
    rows = []
    for proxy in proxies:
        identity = str(proxy.get("identity") or "")
        pod = proxy.get("pod")
        where = (pod or identity).split("/", 1)[0]
        if namespace and where != namespace:
            continue
        types = proxy.get("types") or {}
        row: dict[str, Any] = {
            "pod": pod,
            "node_id": proxy["node_id"],
            "identity": identity or None,
            "class": proxy.get("class"),
            "stream": proxy.get("stream"),
            "flavour": proxy.get("flavour"),
        }
        for short, _ in TYPES:
            details = types.get(short)
            row[short] = {
                "state": sync_state(details),
                "version_sent": None if details is None else details.get("version_sent") or None,
                "version_acked": None if details is None else details.get("version_acked") or None,
                "version_current": None if details is None else details.get("version_current"),
                "nack": None if details is None else details.get("last_nack"),
            }
        rows.append(row)
    return rows


def _short(version: str | None) -> str:
    return "" if not version else f" ({version[:8]})"


async def proxy(args: argparse.Namespace) -> int:
    if args.proxy_command == "config":
        pod = pod_of(args)  # a usage error before any request
        return await proxy_config(args, await get_json(args.server, "/debug/proxies"), pod)
    rows = proxy_rows(await get_json(args.server, "/debug/proxies"), args.namespace)

    def table() -> list[list[str]]:
        header = ["POD", "IDENTITY", "STREAM", "FLAVOUR", *(label for _, label in TYPES)]
        return [header] + [
            [
                cell(row["pod"] or row["node_id"]),
                cell(row["identity"]),
                cell(row["stream"]),
                cell(row["flavour"]),
                *(
                    row[short]["state"] + _short(row[short]["version_acked"] or row[short]["version_sent"])
                    for short, _ in TYPES
                ),
            ]
            for row in rows
        ]

    emit(rows, args.output, table)
    return 0


#: `--type` → the section of a dump, and how to find resource names in Envoy's config_dump.
_ENVOY_SECTIONS: dict[str, tuple[str, Callable[[Mapping[str, Any]], list[str]]]] = {
    "ClustersConfigDump": (
        "clusters",
        lambda c: [e["cluster"]["name"] for e in c.get("dynamic_active_clusters", [])],
    ),
    "ListenersConfigDump": (
        "listeners",
        lambda c: [e["name"] for e in c.get("dynamic_listeners", []) if "active_state" in e],
    ),
    "RoutesConfigDump": (
        "routes",
        lambda c: [e["route_config"]["name"] for e in c.get("dynamic_route_configs", [])],
    ),
    "SecretsConfigDump": ("secrets", lambda c: [e["name"] for e in c.get("dynamic_active_secrets", [])]),
    "EndpointsConfigDump": (
        "endpoints",
        lambda c: [e["endpoint_config"]["cluster_name"] for e in c.get("dynamic_endpoint_configs", [])],
    ),
}


def envoy_names(config_dump: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per section, the names of the dynamic resources an Envoy holds (its admin config_dump)."""
    found: dict[str, list[str]] = {}
    for config in config_dump.get("configs", []):
        kind = str(config.get("@type", "")).rsplit(".", 1)[-1]
        if kind in _ENVOY_SECTIONS:
            section, names = _ENVOY_SECTIONS[kind]
            found[section] = sorted(names(config))
    return found


def _resource_name(entry: Mapping[str, Any], section: str) -> str:
    return str(entry.get("clusterName" if section == "endpoints" else "name", entry.get("name", "")))


async def proxy_config(
    args: argparse.Namespace, proxies: Sequence[Mapping[str, Any]], pod: tuple[str, str]
) -> int:
    wanted = f"{pod[0]}/{pod[1]}"
    node = next((p for p in proxies if p.get("pod") == wanted), None)
    if node is None:
        raise ControllerError(f"no proxy of pod {wanted} is connected to the controller at {args.server}")
    sent = await get_json(args.server, f"/debug/config/{quote(str(node['node_id']), safe='')}")
    sections = [
        s for s in ("listeners", "clusters", "routes", "endpoints", "secrets") if args.type in ("all", s)
    ]
    data: dict[str, Any] = {"pod": wanted, "node_id": sent["node_id"], "class": sent["class"]}
    data.update({section: sent.get(section, []) for section in sections})
    if args.envoy:
        dump = await get_url_json(args.envoy.rstrip("/") + "/config_dump?include_eds")
        held = envoy_names(dump)
        data["drift"] = {
            section: {
                "only_sent": sorted(
                    {_resource_name(e, section) for e in data[section]} - set(held.get(section, []))
                ),
                "only_in_envoy": sorted(
                    set(held.get(section, [])) - {_resource_name(e, section) for e in data[section]}
                ),
            }
            for section in sections
        }

    def table() -> list[list[str]]:
        rows = [["TYPE", "NAME", "VERSION", *(["IN ENVOY"] if args.envoy else [])]]
        for section in sections:
            drift = data.get("drift", {}).get(section, {})
            for entry in data[section]:
                resource = _resource_name(entry, section)
                extra = ["no" if resource in drift.get("only_sent", []) else "yes"] if args.envoy else []
                rows.append([section, resource, cell(entry.get("version")), *extra])
            for resource in drift.get("only_in_envoy", []):
                rows.append([section, resource, "(not sent)", "yes"])
        return rows

    emit(data, args.output, table)
    return 0


async def _ca_store(args: argparse.Namespace) -> StateStore:
    if not args.ca_secret:
        return DirectoryStore(args.state_dir)
    namespace, _, name = args.ca_secret.partition("/")
    if not namespace or not name or "/" in name:
        raise UsageError(f"--ca-secret {args.ca_secret!r} is not NAMESPACE/NAME")
    client = await checked_api_client(args.context, args.kubeconfig)
    from meshcp.certs.kubernetes_store import SecretStore  # see meshcp.kube.client

    return SecretStore(client, namespace, name)


async def ca(args: argparse.Namespace) -> int:
    try:
        store = await _ca_store(args)
    except KubeAccessError as error:
        raise ControllerError(str(error)) from None
    actions = {"show": ca_show, "rotate": ca_rotate, "finish-rotation": ca_finish_rotation}
    try:
        if args.ca_command == "finish-rotation" and not args.force:
            await _safe_to_finish(args.server)
        report = await actions[args.ca_command](store)
    finally:
        if isinstance(store, ClosableStore):
            await store.aclose()
    report["store"] = store.location
    report["controller"] = await _trust(args.server)
    emit(report, args.output, lambda: ca_text(report, args.server))
    return 0


async def _trust(server: str) -> dict[str, Any] | None:
    """The rotation as the controller at `server` carries it out; None when none answers."""
    try:
        return {"address": server, **await get_json(server, "/debug/trust")}
    except ControllerError:
        return None


async def _safe_to_finish(server: str) -> None:
    """Refuse to drop the old root while a running controller's workload certificates still
    come from it: every proxy would stop trusting every other's certificate at once."""
    trust = await _trust(server)
    if trust is None or trust.get("phase") in (None, "stable"):
        return
    if trust["phase"] == "trusting" or not trust.get("certificates_reissued"):
        lagging = trust.get("lagging_proxies") or []
        waits = (
            f" (it waits for {len(lagging)} proxies, {trust['deadline_seconds']:g}s at most)"
            if lagging
            else ""
        )
        raise ControllerError(
            f"the controller at {server} is in phase {trust['phase']}{waits} and workload certificates "
            "still come from the old root: finishing now breaks mTLS between every proxy "
            "(--force does it anyway)"
        )


def ca_text(report: Mapping[str, Any], server: str) -> str:
    """The CA's report as text: the same facts as json, retired roots and controller too."""
    lines = [f"store: {report['store']}", f"phase: {report['phase']}"]
    roots = [("root", report.get("root")), ("previous root", report.get("previous_root"))]
    roots += [("retired root", root) for root in report.get("retired_roots", [])]
    for label, root in roots:
        if root:
            lines.append(f"{label}:")
            lines.extend(f"  {field}: {value}" for field, value in root.items())
    controller = report.get("controller")
    if controller is None:
        lines.append(f"controller: not reachable at {server} (rotation progress unknown)")
    else:
        lagging = controller.get("lagging_proxies") or []
        lines.append(f"controller: {controller['address']}, phase {controller.get('phase') or '-'}")
        if lagging:
            waited = controller.get("waiting_seconds")
            lines.append(
                f"  waiting {waited:g}s (at most {controller['deadline_seconds']:g}s) for {len(lagging)} "
                "proxies to ACK their secrets:"
                if waited is not None
                else f"  waiting for {len(lagging)} proxies to ACK their secrets:"
            )
            lines.extend(f"    {node}" for node in lagging)
        elif report["phase"] != "stable":
            lines.append("  every connected proxy has ACKed its secrets")
    return "\n".join(lines) + "\n"
