"""The multi-channel session of ``/events``: one connection for several channels.

Two rules hold whenever the client leaves, and wherever the stream breaks:

- every id the client can hold is a position at or before the last event frame
  it received, channel by channel: the leading id-only frame carries each
  channel where its client was (a fresh channel at its head), and each frame's
  id moves only its own channel past only its own event (or reset);
- every channel the session subscribed is left, also when the client goes
  while other channels' head queries are still out.

Each channel is walked by the same reader as a single-channel session, so each
keeps every guarantee (exactly once, in order, ``reset`` where a position was
lost); frames of different channels interleave as they come, and no order
between channels is promised. Every event arrives as a plain ``message`` (no
``event:`` field, so one ``onmessage`` sees all) whose data is a JSON envelope
naming its channel, and whose id is the composite cursor of every channel's
position (``gateway.composite``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence

from gateway import composite, wire
from gateway.cursor import Position, Start, invalid_start, rewind_start
from gateway.hub import ChannelHub
from gateway.metrics import Metrics
from gateway.opening import Opened, open_channel
from gateway.reader import Delivery, Reset
from gateway.session import Body, Framing, SessionTiming, report, run_session, tail
from gateway.store import EventLog


def multi_event_stream(
    channels: Sequence[str],
    last_event_id: str | None,
    *,
    rewind: int = 0,
    store: EventLog,
    hub: ChannelHub,
    timing: SessionTiming,
    metrics: Metrics,
) -> AsyncIterator[bytes]:
    """The session of ``/events``: every channel's events as JSON envelopes in plain
    ``message`` frames, whose id is the composite cursor of all the channels; each
    channel the cursor gives no position for starts ``rewind`` events before its head."""
    body = _multiple(channels, last_event_id, rewind, store, hub, timing, metrics)
    return run_session(body, channels, timing, metrics)


async def _multiple(
    channels: Sequence[str],
    last_event_id: str | None,
    rewind: int,
    store: EventLog,
    hub: ChannelHub,
    timing: SessionTiming,
    metrics: Metrics,
) -> Body:
    hub.admit(channels)  # before any store call: a refusal costs nothing
    requested = composite.decode(last_event_id, channels)
    opened: list[Opened] = []  # every channel subscribed so far, whenever the client leaves

    async def open_one(channel: str) -> Opened:
        choose = _chooser(requested, channel, rewind)
        o = await open_channel(channel, choose, None, store, hub, timing.remaining())
        opened.append(o)  # nothing awaited since it subscribed: no leave can be missed
        return o

    try:
        outcomes = await asyncio.gather(*map(open_one, channels), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        following = [o for o in outcomes if isinstance(o, Opened)]  # in the request's order
        positions = {o.channel: o.held for o in following}
        framing = _envelopes(positions)
        for o in following:
            report(metrics, o.deliveries)
        # The leading id counts nothing not yet framed: each channel at the position
        # its client held (its head, if fresh); each frame after it moves its own.
        leading = wire.encode_id(composite.encode(positions))
        yield leading + b"".join(framing(o, o.deliveries) for o in following if o.deliveries)
        async for chunk in tail(following, store, timing, framing, metrics):
            yield chunk
    finally:
        for o in opened:
            hub.leave(o.feed)


def _chooser(
    requested: dict[str, composite.Requested] | None, channel: str, rewind: int
) -> Callable[[Position, int], Start]:
    """Where ``channel`` starts: where the cursor puts it, or where a fresh session
    does (``rewind`` before its head), with a reset when the cursor is not ours or
    cannot tell the channel's entry apart from another's."""
    entry = requested[channel] if requested is not None else composite.Requested(ambiguous=True)
    if entry.ambiguous:
        return lambda head, since: invalid_start(head, since, rewind)
    if entry.entry is None:
        return lambda head, since: rewind_start(head, since, rewind)
    return entry.start


def _envelopes(positions: dict[str, Position]) -> Framing:
    """Frames of a multi-channel session; ``positions`` (every channel's last
    delivered position) moves with each frame, whose id says where all of them are."""
    cursor = composite.Encoder(positions)

    def framing(opened: Opened, deliveries: list[Delivery]) -> bytes:
        channel = opened.channel
        quoted = json.dumps(channel)
        frames = []
        for delivery in deliveries:
            if isinstance(delivery, Reset):
                positions[channel] = delivery.continues_after
                data = json.dumps(
                    {
                        "channel": channel,
                        "reason": delivery.reason.value,
                        "last_event_id": delivery.requested,
                        "continues_after": delivery.continues_after.event_id,
                    },
                    separators=(",", ":"),
                )
                frames.append(wire.encode_event(data, event="reset", id=cursor(positions)))
            else:
                positions[channel] = delivery.position
                data = (
                    f'{{"channel":{quoted},"event":{json.dumps(delivery.event)},'
                    f'"id":"{delivery.event_id}","data":{delivery.data}}}'
                )
                frames.append(wire.encode_event(data, id=cursor(positions)))
        return b"".join(frames)

    return framing
