"""Asking a running controller over its debug listener (`serve --debug-address`): what the
operator's commands (`meshcp proxy`, `meshcp version`, `meshcp ca show`) read.

Every failure is a `ControllerError` whose text is the one line the CLI prints.
"""

from __future__ import annotations

from typing import Any

import aiohttp

#: A debug answer is small and local: a controller that takes longer is not answering.
TIMEOUT = aiohttp.ClientTimeout(total=15)


class ControllerError(Exception):
    """The controller could not be asked, or said no; the text says which and why."""


class ControllerUnreachable(ControllerError):
    """Nothing answers at the address (not running, or another address)."""


async def get_json(address: str, path: str) -> Any:
    """GET `path` from the debug listener at `address` (HOST:PORT), decoded from JSON."""
    url = f"http://{address}{path}"
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url) as reply:
            if reply.status == 404:
                text = (await reply.text()).strip()
                raise ControllerError(f"the controller at {address}: {text or 'not found'} ({path})")
            if reply.status != 200:
                raise ControllerError(f"the controller at {address} answered {path} with HTTP {reply.status}")
            try:
                return await reply.json()
            except (aiohttp.ContentTypeError, ValueError):
                raise ControllerError(
                    f"{address} is not a meshcp debug listener ({path} is not JSON)"
                ) from None
    except (aiohttp.ClientConnectionError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ControllerUnreachable(
            f"no controller answers at {address} (serve --debug-address; meshcp --server): {reason}"
        ) from None


async def get_url_json(url: str) -> Any:
    """GET an absolute URL (an Envoy admin endpoint), decoded from JSON."""
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url) as reply:
            if reply.status != 200:
                raise ControllerError(f"{url} answered HTTP {reply.status}")
            return await reply.json(content_type=None)
    except (aiohttp.ClientConnectionError, TimeoutError) as error:
        raise ControllerError(f"nothing answers at {url}: {error or type(error).__name__}") from None
    except ValueError:
        raise ControllerError(f"{url} did not answer JSON") from None
