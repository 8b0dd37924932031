"""What the gateway reports about itself: one recorder per process, passed in.

The store, the publisher, the sessions and the feeds report to the ``Metrics``
they are given; the base class records nothing (``SSE_GATEWAY_METRICS`` off),
so reporting costs nothing then. ``RecordedMetrics`` keeps the numbers in
prometheus-client metrics of a registry of its own (no global registry, so
two apps in one process, as in the tests, never mix): served as Prometheus
text at ``GET /metrics`` in a container, read and sent as CloudWatch EMF lines
by the Lambda functions (``handlers.emf``).

The names are fixed, and every label has a fixed set of values, created at
start so that a rate or an alarm sees a zero rather than no series at all. No
label ever carries a channel name: channels are unbounded, a metric's series
must not be.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.cursor import ResetReason
from gateway.settings import Settings

# Why sessions end: they end themselves with retry: for all of these but
# "disconnect", a client that left first (a streaming Lambda never sees one).
SESSION_ENDS = (
    "deadline",
    "idle",
    "token_expired",
    "store_error",
    "restart",
    "shutdown",
    "limit",
    "disconnect",
)
RESET_REASONS = tuple(reason.value for reason in ResetReason)
STORE_OPERATIONS = ("query", "put", "transact_write")
# throttled: the table needs capacity; unavailable: DynamoDB unreachable, timed
# out or failing (5xx); conflict: a write cancelled by a concurrent transaction
# (the appender tries it again); misconfigured: the table is missing or not
# accessible; unknown: an error code the gateway does not know (logged).
STORE_ERROR_KINDS = ("throttled", "unavailable", "conflict", "misconfigured", "unknown")

# How a feed learnt of the events it took in: another process's notification
# (gateway/notify.py), its own read of the log, or a publish through this process.
FEED_SOURCES = ("notification", "poll", "in_process")
# sent / send_failed: by a writer, after its append was stored; received: from
# another process, for a channel this one follows; fell_back: received, but not
# the next events of the feed's epoch, so the feed reads the log instead.
NOTIFICATION_OUTCOMES = ("sent", "send_failed", "received", "fell_back")

# Seconds. A publish takes milliseconds, and at most the write window (65 s by
# default). A delivery waits for a poll (up to POLL_MAX_SECONDS), for an idle
# client to return (IDLE_RETRY_MS), or is a replay after a reconnect: hours.
PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 65.0)
DELIVERY_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10, 30, 60, 300, 3600)


@dataclass(slots=True)
class StoreStats:
    """Request counters of one ``EventLog``, for benchmarks and tests."""

    queries: int = 0
    writes: int = 0  # write requests, each repeat of a cancelled one included
    conflicts: int = 0  # slots lost to another writer, items followed that moved


class Metrics:
    """The gateway's reports, recording nothing. Every method is cheap and never
    raises for a valid argument; a value outside the fixed label sets is a bug."""

    def session_started(self) -> None:
        """A subscription answered 200: a session is open."""

    def session_ended(self, end: str) -> None:
        """The session ended, for one of ``SESSION_ENDS``."""

    def delivered(self, appended_at: Sequence[float], sessions: int = 1) -> None:
        """Frames of these events, given by their append times
        (``StoredEvent.appended_at``, seconds since the epoch), were written to
        ``sessions`` sessions at once."""

    def reset(self, reason: str) -> None:
        """A session sent a ``reset`` event, for one of ``RESET_REASONS``."""

    def published(self, count: int, seconds: float) -> None:
        """A publish stored ``count`` events; it took ``seconds``."""

    def store_request(self, operation: str) -> None:
        """A DynamoDB call (with its retries) began: one of ``STORE_OPERATIONS``."""

    def store_error(self, kind: str) -> None:
        """That call failed after its retries: one of ``STORE_ERROR_KINDS``."""

    def watch_feeds(self, count: Callable[[], int]) -> None:
        """``count()`` is the number of channel feeds the process runs, read when
        the metrics are."""

    def fed(self, source: str, count: int) -> None:
        """A feed took in ``count`` new events, learnt of by one of ``FEED_SOURCES``."""

    def notification(self, outcome: str) -> None:
        """A notification was one of ``NOTIFICATION_OUTCOMES``."""

    def safety_poll(self) -> None:
        """A feed polled because its notified interval passed without a wake-up."""

    def notifier_connected(self, connected: bool) -> None:
        """The process's notifier subscription connection is up (or down)."""


class RecordedMetrics(Metrics):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # the wall clock, as the writers' append times are
        self.registry = CollectorRegistry()
        registry = self.registry
        self._open_sessions = Gauge(
            "sse_gateway_open_sessions", "SSE sessions open now", registry=registry
        )
        sessions = Counter(
            "sse_gateway_sessions", "SSE sessions ended, by why", ["end"], registry=registry
        )
        self._published = Counter(
            "sse_gateway_events_published", "events stored by publishes", registry=registry
        )
        self._delivered = Counter(
            "sse_gateway_events_delivered",
            "events written to subscribers, once per session that got them",
            registry=registry,
        )
        resets = Counter(
            "sse_gateway_resets", "reset events sent, by reason", ["reason"], registry=registry
        )
        requests = Counter(
            "sse_gateway_store_requests",
            "DynamoDB calls, each with its retries, by operation",
            ["operation"],
            registry=registry,
        )
        errors = Counter(
            "sse_gateway_store_errors",
            "DynamoDB calls that failed after their retries, by kind",
            ["kind"],
            registry=registry,
        )
        self._publish_seconds = Histogram(
            "sse_gateway_publish_seconds",
            "time to store a publish",
            buckets=PUBLISH_BUCKETS,
            registry=registry,
        )
        self._delivery_lag = Histogram(
            "sse_gateway_delivery_lag_seconds",
            "from an event's append (the writer's clock) to its frame's write "
            "(once for all the sessions a feed writes it to together)",
            buckets=DELIVERY_LAG_BUCKETS,
            registry=registry,
        )
        self._feeds = Gauge("sse_gateway_feeds", "channel feeds running now", registry=registry)
        fed = Counter(
            "sse_gateway_feed_events",
            "new events feeds took in, by how they learnt of them",
            ["source"],
            registry=registry,
        )
        notifications = Counter(
            "sse_gateway_notifications",
            "pub/sub notifications, by outcome",
            ["outcome"],
            registry=registry,
        )
        self._safety_polls = Counter(
            "sse_gateway_safety_polls",
            "feed polls made because a notified interval passed without a wake-up",
            registry=registry,
        )
        self._notifier_connected = Gauge(
            "sse_gateway_notifier_connected",
            "1 while the notifier's subscription connection is up",
            registry=registry,
        )
        # Every label value up front: zeros rather than missing series.
        self._ends = {end: sessions.labels(end) for end in SESSION_ENDS}
        self._resets = {reason: resets.labels(reason) for reason in RESET_REASONS}
        self._requests = {op: requests.labels(op) for op in STORE_OPERATIONS}
        self._errors = {kind: errors.labels(kind) for kind in STORE_ERROR_KINDS}
        self._fed = {source: fed.labels(source) for source in FEED_SOURCES}
        self._notifications = {o: notifications.labels(o) for o in NOTIFICATION_OUTCOMES}

    def session_started(self) -> None:
        self._open_sessions.inc()

    def session_ended(self, end: str) -> None:
        self._ends[end].inc()
        self._open_sessions.dec()

    def delivered(self, appended_at: Sequence[float], sessions: int = 1) -> None:
        if not appended_at or not sessions:
            return
        self._delivered.inc(len(appended_at) * sessions)
        now = self._clock()
        # One lag per event per write, not per session: a feed writes a frame to
        # all of its attached sessions at once (gateway.fanout).
        for at in appended_at:
            # Writers' clocks differ a little: a lag below zero is none.
            self._delivery_lag.observe(max(0.0, now - at))

    def reset(self, reason: str) -> None:
        self._resets[reason].inc()

    def published(self, count: int, seconds: float) -> None:
        self._published.inc(count)
        self._publish_seconds.observe(seconds)

    def store_request(self, operation: str) -> None:
        self._requests[operation].inc()

    def store_error(self, kind: str) -> None:
        self._errors[kind].inc()

    def watch_feeds(self, count: Callable[[], int]) -> None:
        self._feeds.set_function(lambda: float(count()))

    def fed(self, source: str, count: int) -> None:
        self._fed[source].inc(count)

    def notification(self, outcome: str) -> None:
        self._notifications[outcome].inc()

    def safety_poll(self) -> None:
        self._safety_polls.inc()

    def notifier_connected(self, connected: bool) -> None:
        self._notifier_connected.set(1 if connected else 0)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def metrics_for(settings: Settings) -> Metrics:
    """The recorder a process passes to its store and its app."""
    return RecordedMetrics() if settings.metrics else Metrics()
