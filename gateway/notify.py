"""Cross-process wake-ups over Redis or Valkey pub/sub; the DynamoDB log stays the only truth.

A notification can make a delivery sooner, never wrong: what it carries reaches
sessions only through the feed's own check (``ChannelFeed.notice``: the next
seqs of its epoch, as an in-process hand-over), and anything else wakes a read
of the log. Pub/sub is at-most-once (what is published while a subscriber's
connection is down is gone), so nothing depends on a notification arriving:
while a channel's subscription stands, its feed still polls every
``NOTIFIED_POLL_SECONDS``; when the connection falls, every feed goes back to
adaptive polling at once; when it is back, every channel is subscribed again,
and each feed reads the log once when its subscription is confirmed.

- One subscribing connection per process, shared by all of its feeds (a RESP2
  connection that subscribes can do nothing else), owned by one task that
  subscribes and unsubscribes as feeds start and stop; and one connection for
  publishing, on which a writer's notifications leave in the order of its
  acknowledged appends, pipelined when several wait.
- A notification carries the stored events of one append, as far as they fit
  (``gateway/notification.py``). A process ignores its own: its publishes
  reach its feeds in-process.
- Plain ``PUBLISH``/``SUBSCRIBE`` through a non-cluster client, which every
  target takes: standalone Redis and Valkey, a cluster (it forwards every
  ``PUBLISH`` to every node, so a connection to any node hears it), ElastiCache
  Serverless, MemoryDB and Upstash (docs/notify.md).
- A publish never fails because of the notifier: a failed or slow send (at most
  ``SEND_TIMEOUT_SECONDS``) is counted and logged, never with the URL's
  credentials, and publishes skip the notifier for a moment after one.

redis-py is the optional extra ``sse-gateway[notify]``, imported only here and
only when a notifier is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from gateway.errors import SettingsError
from gateway.items import StoredEvent
from gateway.metrics import Metrics
from gateway.notification import decode, encode, pubsub_channel
from gateway.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 1.0  # the longest a publish waits for its notification to leave
_SEND_PAUSE_SECONDS = 1.0  # after a failed send, publishes skip the notifier this long
_READ_SLICE_SECONDS = 0.1  # how soon the listener subscribes a feed that started
# Of silence on the subscribing connection: within the safety poll, so a link
# that died without a FIN costs no more than a lost notification (and no
# shorter: each PING is a billed command on some services).
_PING_AFTER_SECONDS = 30.0
_PONG_WITHIN_SECONDS = 5.0  # else the connection is dead (a peer gone without a FIN)
_CONNECT_TIMEOUT_SECONDS = 5.0
_RECONNECT_SECONDS = (0.1, 5.0)  # first and longest pause between attempts


class Follower(Protocol):
    """What the notifier needs of a feed (``gateway.hub.ChannelFeed``)."""

    @property
    def channel(self) -> str: ...

    def notice(self, events: Sequence[StoredEvent]) -> None: ...

    def set_notified(self, notified: bool) -> None: ...


def redacted(url: str) -> str:
    """``url`` as logs may show it: scheme, host and port, no credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"


class Notifier:
    """One process's notifier: ``published`` after each acknowledged append, ``follow``
    and ``unfollow`` as feeds start and stop. Its tasks start on first use."""

    def __init__(self, url: str, table: str, metrics: Metrics | None = None) -> None:
        if importlib.util.find_spec("redis") is None:
            raise SettingsError(
                "SSE_GATEWAY_NOTIFY_URL is set, but redis-py is not installed: "
                "pip install 'sse-gateway[notify]', or unset it to poll only"
            )
        self._url = url
        self._table = table
        self._metrics = metrics if metrics is not None else Metrics()
        self.origin = uuid.uuid4().hex
        self.connected = False
        self._followers: dict[str, Follower] = {}  # by pub/sub channel
        self._changed = False  # followers changed since the listener last subscribed
        self._requested: set[str] = set()  # asked for on the current connection
        self._confirmed: set[str] = set()  # ... and confirmed on it
        self._listener: asyncio.Task[None] | None = None
        self._outbox: list[tuple[str, bytes, asyncio.Future[BaseException | None]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._publisher: Redis | None = None
        self._send_paused_until = -1.0
        self._control = pubsub_channel(table, "")  # no channel is empty: confirms the link

    # The writer's side.

    async def published(self, channel: str, events: Sequence[StoredEvent]) -> None:
        """Tell other processes that ``events`` were stored on ``channel``. Never
        raises; waits at most ``SEND_TIMEOUT_SECONDS``."""
        if not events:
            return
        if time.monotonic() < self._send_paused_until:
            self._metrics.notification("send_failed")
            return
        sent: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._outbox.append(
            (pubsub_channel(self._table, channel), encode(self.origin, events), sent)
        )
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="sse-notify-send")
        error: BaseException | None
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                error = await asyncio.shield(sent)
        except TimeoutError:
            error = TimeoutError(f"no answer within {SEND_TIMEOUT_SECONDS:g} s")
        if error is None:
            self._metrics.notification("sent")
            return
        self._metrics.notification("send_failed")
        if time.monotonic() >= self._send_paused_until:  # at most once a pause, not per publish
            logger.warning(
                "notifier: a notification to %s failed (%s: %s); the events are stored, "
                "other processes read them at their next poll",
                redacted(self._url),
                type(error).__name__,
                error,
            )
        self._send_paused_until = time.monotonic() + _SEND_PAUSE_SECONDS

    async def _send(self) -> None:
        """Send what waits, in order, as one pipeline per round trip."""
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                error: BaseException | None = None
                try:
                    async with self._publishing().pipeline(transaction=False) as pipe:
                        for name, body, _ in batch:
                            pipe.publish(name, body)
                        await pipe.execute()
                except Exception as exc:  # any failure is the notifier's, never the publish's
                    error = exc
                for _, _, sent in batch:
                    if not sent.done():
                        sent.set_result(error)
        finally:
            self._sender = None

    async def ping(self) -> None:
        """A ``PING`` on the publishing connection (for readiness); raises when the
        Redis does not answer."""
        await self._publishing().ping()

    def _publishing(self) -> Redis:
        if self._publisher is None:
            # One retry on a fresh connection: one that died while idle (as a
            # frozen Lambda environment's does) fails once.
            self._publisher = self._client(retries=1, health_check_interval=30)
        return self._publisher

    # The subscriber's side.

    def follow(self, feed: Follower) -> None:
        name = pubsub_channel(self._table, feed.channel)
        self._followers[name] = feed
        self._changed = True
        if name in self._confirmed:  # subscribed for the feed it replaces
            feed.set_notified(True)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="sse-notify-listen")

    def unfollow(self, feed: Follower) -> None:
        name = pubsub_channel(self._table, feed.channel)
        if self._followers.get(name) is feed:
            del self._followers[name]
            self._changed = True

    async def _listen(self) -> None:
        """Keep the subscribing connection up, reconnecting with backoff."""
        pause = _RECONNECT_SECONDS[0]
        while True:
            client = self._client(retries=0)
            pubsub = client.pubsub()
            try:
                await self._session(pubsub)
            except Exception as exc:
                if self.connected or pause == _RECONNECT_SECONDS[0]:
                    logger.warning(
                        "notifier: no connection to %s (%s: %s); feeds poll as without it",
                        redacted(self._url),
                        type(exc).__name__,
                        exc,
                    )
                if self.connected:
                    pause = _RECONNECT_SECONDS[0]
            finally:
                self._disconnected()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(pause * random.uniform(0.5, 1))
            pause = min(pause * 2, _RECONNECT_SECONDS[1])

    async def _session(self, pubsub: PubSub) -> None:
        """One connection's life: subscribe every followed channel, then read."""
        self._requested.clear()
        self._confirmed.clear()
        self._changed = True
        await pubsub.subscribe(self._control)
        heard, pinged = time.monotonic(), 0.0
        while True:
            if self._changed:
                await self._subscribe(pubsub)
            message = await pubsub.get_message(timeout=_READ_SLICE_SECONDS)
            now = time.monotonic()
            if message is not None:
                heard, pinged = now, 0.0
                self._receive(message)
            elif pinged and now - pinged > _PONG_WITHIN_SECONDS:
                raise ConnectionError(f"no answer to a PING within {_PONG_WITHIN_SECONDS:g} s")
            elif not pinged and now - heard > _PING_AFTER_SECONDS:
                await pubsub.ping()
                pinged = now

    async def _subscribe(self, pubsub: PubSub) -> None:
        self._changed = False
        new = [name for name in self._followers if name not in self._requested]
        gone = [name for name in self._requested if name not in self._followers]
        if new:  # one command for any number: 10,000 channels are some 300 KB
            self._requested.update(new)
            await pubsub.subscribe(*new)
        if gone:
            self._requested.difference_update(gone)
            self._confirmed.difference_update(gone)
            await pubsub.unsubscribe(*gone)

    def _receive(self, message: dict[str, Any]) -> None:
        kind, name = message["type"], message["channel"]
        name = name.decode() if isinstance(name, bytes) else name
        if kind == "subscribe":
            if name == self._control:
                self._set_connected()
            elif name in self._requested:
                self._confirmed.add(name)
                if (follower := self._followers.get(name)) is not None:
                    follower.set_notified(True)
        elif kind == "message" and (follower := self._followers.get(name)) is not None:
            try:
                origin, events = decode(message["data"])
            except ValueError:
                origin, events = "", []  # whatever it was, the log says what happened
            if origin != self.origin:
                self._metrics.notification("received")
                follower.notice(events)

    def _set_connected(self) -> None:
        logger.info("notifier: subscribed at %s", redacted(self._url))
        self.connected = True
        self._metrics.notifier_connected(True)

    def _disconnected(self) -> None:
        self._requested.clear()
        self._confirmed.clear()
        for follower in list(self._followers.values()):
            follower.set_notified(False)
        self.connected = False  # last: once it reads False, every feed polls
        self._metrics.notifier_connected(False)

    def _client(self, *, retries: int, **options: Any) -> Redis:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return Redis.from_url(
            self._url,
            retry=Retry(NoBackoff(), retries),
            socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=_CONNECT_TIMEOUT_SECONDS,
            **options,
        )

    async def aclose(self) -> None:
        for task in (self._listener, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = None
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None


def notifier_for(settings: Settings, metrics: Metrics | None = None) -> Notifier | None:
    """The process's notifier when ``SSE_GATEWAY_NOTIFY_URL`` is set."""
    if settings.notify_url is None:
        return None
    return Notifier(settings.notify_url.get_secret_value(), settings.table_name, metrics)
