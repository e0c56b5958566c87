"""Making a Kubernetes API client, and reading the API's errors.

One place decides where credentials come from, so `serve --source kubernetes`, the CA in a
Secret, cert-manager and the injector all find the cluster the same way kubectl would.

kubernetes_asyncio is imported when a client is made, not with this module: importing it
costs ~0.4 s (every API model class), which every `meshcp` command and the controller's
cold start would otherwise pay even when they never talk to a cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.client.rest import ApiException

#: Makes an API client; whoever calls it closes the client when done.
ApiClientFactory = Callable[[], Awaitable["ApiClient"]]


async def load_configuration(context: str | None = None, config_file: str | None = None) -> Configuration:
    """Credentials as kubectl finds them: an explicit `config_file` first; else in-cluster
    (the pod's service account) when running in a pod; else `$KUBECONFIG` as it is now, or
    `~/.kube/config`; `context` or the current context. Raises `config.ConfigException` or
    `OSError` when there are none."""
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import Configuration

    configuration = Configuration()
    if config_file is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            pass
        else:
            return configuration
    path = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
    await config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
    return configuration


async def default_api_client(context: str | None = None, config_file: str | None = None) -> ApiClient:
    """An API client configured by `load_configuration`."""
    from kubernetes_asyncio.client import ApiClient

    return ApiClient(await load_configuration(context, config_file))


def describe_api_error(error: ApiException) -> str:
    """`403 Forbidden: secrets is forbidden: ...` from the API's Status, when it sent one."""
    message = ""
    body = error.body
    if isinstance(body, str | bytes):
        try:
            status = json.loads(body)
            message = status.get("message", "") if isinstance(status, dict) else ""
        except ValueError:
            message = ""
    return f"{error.status} {error.reason}" + (f": {message}" if message else "")


async def all_pages(
    call: Callable[[dict[str, Any]], Awaitable[Any]], page_size: int, request_timeout: float
) -> list[Any]:
    """Every item of a list call (a kubernetes-asyncio `list_*` method bound to its
    selectors), a page (`limit`/`continue`) per request, each bounded by `request_timeout`."""
    items: list[Any] = []
    token: str | None = None
    while True:
        page = await call({"limit": page_size, "_continue": token, "_request_timeout": request_timeout})
        items += page.items or []
        token = page.metadata._continue if page.metadata is not None else None
        if not token:
            return items


class KubeAccessError(Exception):
    """No credentials for the cluster (no kubeconfig, an unknown context); one line."""


async def checked_api_client(context: str | None = None, config_file: str | None = None) -> ApiClient:
    """`default_api_client`, its configuration errors as one-line `KubeAccessError`s (a
    missing file is said before the library logs its own warning about it)."""
    if config_file is not None and not await asyncio.to_thread(os.path.isfile, config_file):
        raise KubeAccessError(f"--kubeconfig {config_file}: no such file")
    from kubernetes_asyncio import config

    try:
        return await default_api_client(context, config_file)
    except (config.ConfigException, OSError) as error:
        where = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise KubeAccessError(f"no Kubernetes access ({where}): {error}") from None
