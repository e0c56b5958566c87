"""The webhook's aiohttp application: `/mutate-pod-creation`, `/healthz` and `/metrics`.

The API server is the only client, and it must always get an answer it can use: a body that
is not an AdmissionReview gets HTTP 400 with the reason; anything else gets a well-formed
AdmissionReview response carrying the request's uid, in the request's apiVersion, whatever
happens while handling it (an unexpected error refuses the pod with a message rather than
answering 500, and is logged with its traceback). The process never exits because of input.
"""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from meshcp.injector.admission import Injector
from meshcp.injector.metrics import InjectorMetrics
from meshcp.injector.review import MalformedReview, denied_response, parse_review

#: The webhook server's logger.
log = logging.getLogger("meshcp.injector.server")

MUTATE_PATH = "/mutate-pod-creation"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The API server caps requests at 3 MiB; a pod never comes near this.
MAX_BODY = 8 * 1024 * 1024

INJECTOR = web.AppKey("injector", Injector)
METRICS = web.AppKey("metrics", InjectorMetrics)


async def mutate(request: web.Request) -> web.Response:
    started = time.perf_counter()
    metrics = request.app[METRICS]
    body = await request.read()
    try:
        review = parse_review(body)
    except MalformedReview as error:
        metrics.observe("malformed", time.perf_counter() - started)
        return web.Response(status=400, text=f"{error}\n")
    try:
        result, answer = await request.app[INJECTOR].admit(review)
        text = json.dumps(answer)
    except Exception:
        log.exception("unexpected error answering admission request %s", review.uid)
        result = "error"
        text = json.dumps(denied_response(review, "meshcp injector: internal error (see its log)", code=500))
    metrics.observe(result, time.perf_counter() - started)
    return web.Response(text=text, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


def create_app(injector: Injector, metrics: InjectorMetrics) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[INJECTOR] = injector
    app[METRICS] = metrics
    app.router.add_post(MUTATE_PATH, mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
