"""A tiny HTTP upstream that answers every request with its own name."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web


class Upstream:
    """An aiohttp server on 127.0.0.1 (a free port) answering `name` to any method and path.

    `requests` counts what it served, so a test can tell which upstream a proxy chose.
    """

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.requests = 0
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text=self.name, headers={"x-upstream": self.name})

    async def __aenter__(self) -> Upstream:
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, self.host, 0)
            await site.start()
            self.port = int(self._runner.addresses[0][1])
        except BaseException:
            await self._runner.cleanup()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()

    def __repr__(self) -> str:
        return f"Upstream({self.name!r} on {self.host}:{self.port})"
