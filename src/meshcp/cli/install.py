"""`meshcp install`, `uninstall` and `check`: the chart's render on a cluster, without helm."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

from meshcp.cli.options import UsageError
from meshcp.cli.output import dumps, table
from meshcp.install.apply import InstallError, install, uninstall
from meshcp.install.check import Check, check, check_pre
from meshcp.install.client import Api
from meshcp.install.manifests import Manifest, Setting, ValuesError, render
from meshcp.kube.client import KubeAccessError, checked_api_client


def _manifests(args: argparse.Namespace) -> list[Manifest]:
    try:
        return render([Setting.parse(text) for text in args.set or []], args.namespace)
    except ValuesError as error:
        raise UsageError(str(error)) from None


async def _with_api(args: argparse.Namespace, work: Callable[[Api], Awaitable[int]]) -> int:
    try:
        client = await checked_api_client(args.context, args.kubeconfig)
    except KubeAccessError as error:
        raise InstallError(str(error)) from None
    api = Api(client, args.timeout)
    try:
        return await work(api)
    finally:
        await api.close()


def _line(text: str) -> None:
    print(text, flush=True)


async def install_command(args: argparse.Namespace) -> int:
    documents = _manifests(args)
    if args.dry_run:
        print(
            "".join("---\n" + dumps(d, "yaml") for d in documents)
            if args.output == "yaml"
            else dumps(documents, "json"),
            end="",
        )
        return 0

    async def work(api: Api) -> int:
        await install(api, documents, _line, args.timeout)
        return 0

    return await _with_api(args, work)


async def uninstall_command(args: argparse.Namespace) -> int:
    documents = _manifests(args)

    async def work(api: Api) -> int:
        await uninstall(
            api,
            documents,
            _line,
            delete_crds=args.delete_cluster_wide_resources,
            delete_namespace=args.delete_namespace,
        )
        return 0

    return await _with_api(args, work)


def _report(checks: list[Check], output: str) -> None:
    if output == "table":
        rows = [["STATUS", "CHECK", "DETAIL"]] + [[c.status, c.name, c.detail] for c in checks]
        print(table(rows), end="")
    else:
        print(dumps([c.as_dict() for c in checks], output), end="")


async def check_command(args: argparse.Namespace) -> int:
    documents = _manifests(args)

    async def work(api: Api) -> int:
        checks = await (check_pre(api, documents) if args.pre else check(api, documents, args.proxies))
        _report(checks, args.output)
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            print(f"meshcp: error: {len(failed)} of {len(checks)} checks failed", file=sys.stderr)
            return 1
        return 0

    return await _with_api(args, work)
