"""The multi-channel session of ``/events``: one connection for several channels.

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
from gateway.cursor import Position, ResetReason, Start
from gateway.errors import GatewayError
from gateway.hub import ChannelHub
from gateway.session import (
    Delivery,
    End,
    Framing,
    Opened,
    Reset,
    SessionTiming,
    log_early_end,
    open_channel,
    tail,
)
from gateway.store import EventLog


async def multi_event_stream(
    channels: Sequence[str],
    last_event_id: str | None,
    *,
    store: EventLog,
    hub: ChannelHub,
    timing: SessionTiming,
) -> AsyncIterator[bytes]:
    """The session of ``/events``: every channel's events as JSON envelopes in plain
    ``message`` frames, whose id is the composite cursor of all the channels."""
    end = End.STORE_ERROR
    try:
        requested = composite.decode(last_event_id, channels)
        outcomes = await asyncio.gather(
            *(
                open_channel(
                    c, _chooser(requested, c), None, _fresh(requested, c), store, hub, timing
                )
                for c in channels
            ),
            return_exceptions=True,
        )
        opened = [o for o in outcomes if isinstance(o, Opened)]
        try:
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            positions = {o.channel: o.reader.cursor for o in opened}
            framing = _envelopes(positions)
            yield wire.encode_id(composite.encode(positions)) + b"".join(
                framing(o, o.deliveries) for o in opened if o.deliveries
            )
            async for chunk in tail(opened, store, timing, framing):
                if isinstance(chunk, End):
                    end = chunk
                else:
                    yield chunk
        finally:
            for o in opened:
                hub.leave(o.feed)
    except (GatewayError, TimeoutError) as exc:
        log_early_end(exc, channels)
    yield wire.encode_retry(timing.idle_retry_ms if end is End.IDLE else timing.retry_ms)


def _fresh(requested: dict[str, composite.Requested] | None, channel: str) -> bool:
    return requested is not None and requested[channel] == composite.Requested()


def _chooser(
    requested: dict[str, composite.Requested] | None, channel: str
) -> Callable[[Position, int], Start]:
    if requested is None:  # not a cursor of ours: every channel restarts at its head
        return lambda head, since: Start(head, reset=ResetReason.INVALID_ID)
    return requested[channel].start


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
