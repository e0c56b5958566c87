"""What each `meshcp` command does, given its parsed arguments."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from functools import partial
from pathlib import Path

from meshcp.certs.setup import CaSettings, close_provider, open_provider
from meshcp.cli import offline
from meshcp.cli.analyze import analysis_findings
from meshcp.cli.options import UsageError, ca_settings, pod_of
from meshcp.cli.output import dumps
from meshcp.injector.settings import InjectorSettings
from meshcp.kube.client import default_api_client
from meshcp.lab import commands as lab
from meshcp.lab.layout import LabPaths
from meshcp.model.state import MeshState
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.gc_freeze import GcFreeze
from meshcp.runtime.settings import Address, Settings


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The GC freeze is process-wide, so this entry point owns it (`runtime.gc_freeze`).
    freeze = GcFreeze()
    runtime = await ControllerRuntime.open(settings, after_round=freeze.after_round)
    thaws = asyncio.create_task(freeze.run(), name="gc-thaw")
    try:
        await runtime.run(stop)
    finally:
        thaws.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await thaws


async def compile_pod(args: argparse.Namespace) -> int:
    """The pod's configuration, and exit status 1 when the mesh has errors (`analyze`)."""
    namespace, name = pod_of(args)
    loaded = await offline.load_located(args.source)
    findings = analysis_findings(loaded)
    compiled = offline.compile_pod(loaded.state, namespace, name, [finding.line() for finding in findings])
    document: dict[str, object] = {
        "pod": f"{namespace}/{name}",
        "class": compiled.class_key,
        "identity": str(compiled.identity),
    }
    document.update(compiled.config)
    print(dumps(document, args.output), end="")
    errors = sum(1 for finding in findings if finding.severity == "error")
    if errors:
        print(f"meshcp: error: the mesh has {errors} error(s); `meshcp analyze` lists them", file=sys.stderr)
        return 1
    return 0


async def bootstrap(args: argparse.Namespace) -> None:
    namespace, name = pod_of(args)
    try:
        xds = Address.parse(args.xds_address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.refresh and not args.proxyless:
        raise UsageError("--refresh is for --proxyless bootstraps (Envoy renews its certificates over SDS)")
    if args.refresh < 0 or args.watch_interval <= 0:
        raise UsageError("--refresh and --watch-interval: must be positive numbers of seconds")
    if args.out.exists() and not args.out.is_dir():  # before a CA is made for nothing
        raise offline.OfflineError(f"--out {args.out}: exists and is not a directory")
    ca = ca_settings(args)
    state = await offline.load(args.source)
    if args.proxyless:
        await _proxyless_bootstrap(args, state, ca, xds.host, xds.port)
        return
    provider = await open_provider(ca, partial(default_api_client, args.context, args.kubeconfig))
    try:
        proxy = await offline.write_bootstrap(
            state,
            namespace,
            name,
            provider=provider,
            xds_host=xds.host,
            xds_port=xds.port,
            out=args.out,
            trust_domain=ca.trust_domain,
            server_name=args.xds_server_name,
            delta=args.delta,
            insecure=args.insecure_xds,
        )
    finally:
        await close_provider(provider)
    print(f"wrote {args.out}/bootstrap.json for node {proxy.name}")


async def _proxyless_bootstrap(
    args: argparse.Namespace, state: MeshState, ca: CaSettings, host: str, port: int
) -> None:
    """Write the proxyless bootstrap once, or with `--refresh` again every interval until
    stopped: new certificates and the CA's current trust bundle each time, which gRPC's
    file watcher picks up. The CA is opened afresh for every run, so that each follows the
    root rotation phase a running controller has moved it to."""
    namespace, name = pod_of(args)
    while True:
        provider = await open_provider(ca, partial(default_api_client, args.context, args.kubeconfig))
        try:
            proxy = await offline.write_proxyless_bootstrap(
                state,
                namespace,
                name,
                provider=provider,
                xds_host=host,
                xds_port=port,
                out=args.out,
                trust_domain=ca.trust_domain,
                insecure=args.insecure_xds,
                watch_interval=args.watch_interval,
            )
        finally:
            await close_provider(provider)
        print(f"wrote {args.out}/bootstrap.json (proxyless gRPC) for node {proxy.name}", flush=True)
        if not args.refresh:
            return
        await asyncio.sleep(args.refresh)


async def inject(args: argparse.Namespace) -> None:
    try:
        listen, xds = Address.parse(args.address), Address.parse(args.xds_address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = InjectorSettings(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        host=listen.host,
        port=listen.port,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        xds_host=xds.host,
        xds_port=xds.port,
        xds_server_name=args.xds_server_name,
        xds_trust_bundle=args.xds_trust_bundle,
        delta_xds=args.delta_xds,
        mesh_config_name=args.mesh_config,
        mesh_name=args.mesh_name,
        ca=ca_settings(args),
        webhook_config=args.webhook_config,
        webhook_ca=args.webhook_ca,
    )
    if args.init_image:
        settings.init_image = args.init_image
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Imported here: the injector's Kubernetes client would cost every other command ~0.4 s.
    from meshcp.injector.server import run_injector

    await run_injector(settings, stop)


def lab_command(args: argparse.Namespace) -> int:
    paths = LabPaths.default()
    action = args.lab_command
    if action == "up":
        lab.up(args.directory, paths)
    elif action == "apply":
        lab.apply(args.directory, paths)
    elif action == "status":
        lab.status(paths, args.output)
    elif action == "exec":
        command = exec_command(args)
        lab.exec_in(lab_pod(args), command, paths, args.container)
    elif action == "logs":
        lab.logs(lab_pod(args), paths, args.container)
    elif action == "down":
        lab.down(paths)
    elif action == "_supervise":
        return lab.run_supervisor(args.directory, args.envoy, paths)
    return 0


def lab_pod(args: argparse.Namespace) -> str:
    """The lab's `NAMESPACE/POD` for `POD -n NS` (or `NS/POD`, or a part's name: `controller`)."""
    if args.namespace is None or "/" in args.pod:
        return str(args.pod)
    return f"{args.namespace}/{args.pod}"


def exec_command(args: argparse.Namespace) -> list[str]:
    """`lab exec`'s command. Options written after POD (`-n NS`, `-c NAME`) arrive with the
    command (argparse hands everything after POD to it): they are taken back here, up to the
    first word that is not one of them, or `--`."""
    rest = list(args.argv)
    while len(rest) >= 2 and rest[0] in ("-n", "--namespace", "-c", "--container"):
        flag, value = rest.pop(0), rest.pop(0)
        setattr(args, "namespace" if flag in ("-n", "--namespace") else "container", value)
    return rest[1:] if rest[:1] == ["--"] else rest
