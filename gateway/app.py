"""The Starlette application: thin HTTP glue around the session engine and publisher.

Everything the app talks to is passed in (``create_app(settings, store)``), so
the same app serves under uvicorn, the Lambda streaming runtime and Mangum.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import readiness
from gateway.answers import IDEMPOTENCY_KEY_HEADER, answer_error, error_response
from gateway.auth import Action, Authenticator, Granted, bearer_token
from gateway.cors import REPLAYED_HEADER, cors_middleware
from gateway.errors import (
    GatewayError,
    InvalidInput,
    StoreUnavailable,
    UnsupportedMediaType,
)
from gateway.history import parse_before, parse_limit, parse_rewind
from gateway.hub import ChannelHub
from gateway.metrics import Metrics, RecordedMetrics
from gateway.multiplex import multi_event_stream
from gateway.notify import notifier_for
from gateway.publisher import Publisher
from gateway.quota import Lease, LeasedStream, SubjectQuota
from gateway.request_bounds import host_deadline, read_capped_body
from gateway.session import SessionTiming, event_stream
from gateway.settings import Settings
from gateway.store import EventLog
from gateway.streaming import EventStreamResponse
from gateway.validation import (
    check_channel,
    check_channels,
    check_idempotency_key,
    events_from_body,
    parse_json_body,
)

logger = logging.getLogger(__name__)

CLIENT_HEADERS = {"Cache-Control": "public, max-age=300"}


_STREAM_PATH = re.compile(r"/channels/(?P<channel>[^/]+)/events|/events")
_SLASHED_CHANNEL = re.compile(r"/channels/(?P<channel>.+/.*)/events")


class _Gateway(Starlette):
    """Sends subscriptions past the router and its exception layers straight to
    the stream endpoints (with the same middleware): an idle connection holds its
    whole call stack, and thousands are held (see BENCHMARKS.md, idle memory)."""

    stream_app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stream_app is not None and scope["type"] == "http" and scope["method"] == "GET":
            match = _STREAM_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["app"] = self
                scope["path_params"] = match.groupdict() if match["channel"] else {}
                await self.stream_app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    store: EventLog,
    *,
    subscribe: bool = True,
    publish: bool = True,
    metrics: Metrics | None = None,
    metrics_route: bool = True,
) -> Starlette:
    """The gateway app; a Lambda function mounts only the routes it has permissions for.

    ``metrics`` is what the app reports to, the recorder its store reports to too.
    With ``SSE_GATEWAY_METRICS`` on it must record (``gateway.metrics.metrics_for``),
    and ``GET /metrics`` serves it, unless ``metrics_route`` is off: a Lambda
    function reports CloudWatch EMF lines instead (``handlers.emf``).
    """
    if metrics is None:
        metrics = Metrics()
    if settings.metrics and not isinstance(metrics, RecordedMetrics):
        raise ValueError("SSE_GATEWAY_METRICS is on: pass the RecordedMetrics the store reports to")
    # Other processes' appends wake this one's feeds (and its appends theirs).
    notifier = notifier_for(settings, metrics)
    hub = ChannelHub(
        store,
        poll_min_seconds=settings.poll_min_seconds,
        poll_max_seconds=settings.poll_max_seconds,
        buffer_events=settings.feed_buffer_events,
        buffer_bytes=settings.feed_buffer_bytes,
        max_feeds=settings.max_feeds,
        metrics=metrics,
        notifier=notifier,
        notified_poll_seconds=settings.notified_poll_seconds,
    )
    metrics.watch_feeds(lambda: len(hub.feeds))
    publisher = Publisher(store, settings, hub, metrics, notifier)
    quota = SubjectQuota(
        max_sessions=settings.max_sessions_per_subject, max_feeds=settings.max_feeds_per_subject
    )
    rng = random.Random()
    authenticator = Authenticator(settings) if settings.auth_enabled else None
    if authenticator is None:
        logger.warning(
            "auth is off: anyone can subscribe and publish; set SSE_GATEWAY_AUTH_SECRET "
            "(or SSE_GATEWAY_AUTH_PUBLIC_KEY) to require JWT channel grants"
        )

    def authorize(request: Request, action: Action, *channels: str) -> Granted | None:
        """Checks the request's token (None without auth)."""
        if authenticator is None:
            return None
        token = bearer_token(request.headers, request.query_params, request.cookies)
        return authenticator.authorize(token, action, *channels)

    def admit(request: Request, granted: Granted | None, channels: list[str]) -> Lease:
        """The subject's place for a session on ``channels`` (``gateway.quota``): the
        token's subject, or without auth the client's address."""
        if granted is not None:
            subject = granted.subject
        else:
            subject = f"address {request.client.host if request.client else 'unknown'}"
        return quota.acquire(subject, channels)

    def session_timing(request: Request, granted: Granted | None) -> SessionTiming:
        """A session's length is drawn from [(1 - jitter) x max, max], so clients that
        came together do not all come back together; it never outlives the host's
        deadline nor the token (the reconnect then gets 401 and the client a new token)."""
        now = time.monotonic()
        jitter = 1 - settings.session_jitter * rng.random()
        deadline = now + settings.max_session_seconds * jitter
        if (hard_deadline := host_deadline(request)) is not None:
            deadline = min(deadline, hard_deadline)
        token_bound = False
        if granted is not None:
            token_ends = now + granted.until - time.time()  # on the monotonic clock
            token_bound = token_ends < deadline
            deadline = min(deadline, token_ends)
        return SessionTiming(
            deadline=deadline,
            heartbeat_seconds=settings.heartbeat_seconds,
            retry_ms=settings.retry_ms,
            # Full jitter over the upper half: refused clients come back spread out.
            overload_retry_ms=round(settings.overload_retry_ms * (1 - rng.random() / 2)),
            idle_seconds=settings.idle_session_seconds,
            idle_retry_ms=round(settings.idle_retry_ms * jitter),
            token_bound=token_bound,
        )

    def last_event_id(request: Request) -> str | None:
        value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        return value or None

    async def stream_events(request: Request) -> EventStreamResponse:
        channel = check_channel(request.path_params["channel"])
        rewind = parse_rewind(request.query_params.get("rewind"))
        granted = authorize(request, Action.SUBSCRIBE, channel)
        lease = admit(request, granted, [channel])
        timing = session_timing(request, granted)
        after = last_event_id(request)
        return EventStreamResponse(
            lambda outlet: LeasedStream(
                lease,
                event_stream(
                    channel,
                    after,
                    outlet,
                    rewind=rewind,
                    store=store,
                    hub=hub,
                    timing=timing,
                    metrics=metrics,
                ),
            )
        )

    async def stream_channels(request: Request) -> EventStreamResponse:
        channels = check_channels(
            request.query_params.getlist("channel"), settings.max_channels_per_connection
        )
        rewind = parse_rewind(request.query_params.get("rewind"))
        granted = authorize(request, Action.SUBSCRIBE, *channels)
        lease = admit(request, granted, channels)
        timing = session_timing(request, granted)
        after = last_event_id(request)
        return EventStreamResponse(
            lambda _: LeasedStream(
                lease,
                multi_event_stream(
                    channels,
                    after,
                    rewind=rewind,
                    store=store,
                    hub=hub,
                    timing=timing,
                    metrics=metrics,
                ),
            )
        )

    async def history(request: Request) -> Response:
        channel = check_channel(request.path_params["channel"])
        limit = parse_limit(request.query_params.get("limit"))
        before = parse_before(request.query_params.get("before"))
        authorize(request, Action.SUBSCRIBE, channel)
        deadline = host_deadline(request)
        try:
            async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
                found = await store.history(channel, before, limit)
        except TimeoutError as exc:
            raise StoreUnavailable(f"history of {channel!r}: DynamoDB did not answer") from exc
        return Response(found.body(), media_type="application/json")

    async def publish_events(request: Request) -> Response:
        channel = check_channel(request.path_params["channel"])
        authorize(request, Action.PUBLISH, channel)
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if key is not None:
            check_idempotency_key(key)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
        raw = await read_capped_body(
            request, settings.max_request_bytes, settings.body_timeout_seconds
        )
        body = parse_json_body(raw)
        events = events_from_body(
            body,
            max_event_bytes=settings.max_event_bytes,
            max_batch_events=settings.max_batch_events,
        )
        deadline = host_deadline(request)
        try:
            async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
                appended = await publisher.append(channel, events, idempotency_key=key)
        except (StoreUnavailable, TimeoutError) as exc:
            cause = exc.message if isinstance(exc, StoreUnavailable) else "DynamoDB did not answer"
            raise StoreUnavailable(f"publish on {channel!r}: {cause}") from exc
        headers = {REPLAYED_HEADER: "true"} if appended.replayed else {}
        ids = [event.event_id for event in appended.events]
        return JSONResponse({"ids": ids}, status_code=201, headers=headers)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        state = await readiness.check(store, notifier, settings)
        checks = {"store": state.store, "notifier": state.notifier}
        if state.ready:
            return JSONResponse({"status": "ready", "checks": checks})
        message = "not ready: " + "; ".join(state.problems)
        error = {"code": "not_ready", "message": message}
        return JSONResponse({"error": error, "checks": checks}, status_code=503)

    async def metrics_text(request: Request) -> Response:
        assert isinstance(metrics, RecordedMetrics)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def demo(request: Request) -> Response:
        return HTMLResponse(files("gateway").joinpath("static/demo.html").read_text())

    async def browser_client(request: Request) -> Response:
        script = files("gateway").joinpath("static/sse-gateway.js").read_text()
        return Response(script, media_type="text/javascript", headers=CLIENT_HEADERS)

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return answer_error(
            exc,
            request.method,
            request.url.path,
            too_many_retry_after=max(1, settings.overload_retry_ms // 1000),
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404 and (match := _SLASHED_CHANNEL.fullmatch(request.url.path)):
            # A channel with an encoded "/" (%2F) is decoded into two path segments.
            try:
                check_channel(match["channel"])
            except InvalidInput as invalid:
                return await gateway_error(request, invalid)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {}
        hub.close()
        if notifier is not None:
            await notifier.aclose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if subscribe:
        routes.append(Route("/channels/{channel}/events", stream_events, methods=["GET"]))
        routes.append(Route("/events", stream_channels, methods=["GET"]))
        routes.append(Route("/channels/{channel}/history", history, methods=["GET"]))
        routes.append(Route("/sse-gateway.js", browser_client, methods=["GET"]))
    if publish:
        routes.append(Route("/channels/{channel}/events", publish_events, methods=["POST"]))
    if settings.demo_page:
        routes.append(Route("/", demo, methods=["GET"]))
    if settings.metrics and metrics_route:
        routes.append(Route("/metrics", metrics_text, methods=["GET"]))
    middleware = cors_middleware(settings)

    async def stream_response(scope: Scope, receive: Receive) -> Response | EventStreamResponse:
        request = Request(scope, receive)
        endpoint = stream_channels if scope["path"] == "/events" else stream_events
        try:
            return await endpoint(request)
        except GatewayError as exc:
            return await gateway_error(request, exc)

    async def stream_directly(scope: Scope, receive: Receive, send: Send) -> None:
        # The request (its parsed headers and query) is not kept for the stream's life.
        response = await stream_response(scope, receive)
        await response(scope, receive, send)

    app = _Gateway(
        routes=routes,
        middleware=middleware,
        exception_handlers={GatewayError: gateway_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    if subscribe:
        app.stream_app = stream_directly
        for entry in reversed(middleware):  # the same middleware, without the router
            app.stream_app = entry.cls(app.stream_app, *entry.args, **entry.kwargs)
    app.state.hub = hub
    app.state.publisher = publisher
    app.state.notifier = notifier
    app.state.metrics = metrics
    return app
