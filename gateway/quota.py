"""Each subject's share of one process: its open sessions, and the channels it alone follows.

The invariant: a subject (a token's ``sub``; the client address when auth is
off) holds at most ``max_sessions`` open sessions, and a session that would make
it follow more than ``max_feeds`` channels that no other subject follows is
refused, before any store call. A channel that another subject already follows
costs nothing (its feed runs anyway), so room is always kept for channels in
use, and a subject that sprays new channels is answered ``429`` once its own
share is used, while every other subject's sessions go on.

Pure bookkeeping, no I/O: the app takes a ``Lease`` when it admits a session
and returns it when the session ends. A channel shared when a session was
admitted may later be followed by its subject alone (the others left); that
session is not ended, only the subject's next one is counted against it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable

from gateway.errors import TooManyRequests


class SubjectQuota:
    def __init__(self, *, max_sessions: int, max_feeds: int) -> None:
        self._max_sessions = max_sessions
        self._max_feeds = max_feeds
        self._sessions: Counter[str] = Counter()
        self._channels: dict[str, Counter[str]] = {}  # subject: its sessions by channel
        self._followers: dict[str, Counter[str]] = {}  # channel: its sessions by subject

    def acquire(self, subject: str, channels: Iterable[str]) -> Lease:
        """Admit a session of ``subject`` on ``channels``, or raise ``TooManyRequests``."""
        wanted = frozenset(channels)
        if self._sessions[subject] >= self._max_sessions:
            raise TooManyRequests(
                f"this subject holds {self._sessions[subject]} open sessions, its share "
                "(SSE_GATEWAY_MAX_SESSIONS_PER_SUBJECT): close one first",
                code="too_many_sessions",
            )
        new = sum(1 for channel in wanted if channel not in self._followers)
        if new and self.alone(subject) + new > self._max_feeds:
            raise TooManyRequests(
                f"this subject alone follows {self.alone(subject)} channels; {new} more would "
                f"pass its share of {self._max_feeds} (SSE_GATEWAY_MAX_FEEDS_PER_SUBJECT)",
                code="too_many_feeds",
            )
        self._sessions[subject] += 1
        held = self._channels.setdefault(subject, Counter())
        for channel in wanted:
            held[channel] += 1
            self._followers.setdefault(channel, Counter())[subject] += 1
        return Lease(self, subject, wanted)

    def alone(self, subject: str) -> int:
        """The channels only ``subject`` follows."""
        held = self._channels.get(subject, ())
        return sum(1 for channel in held if len(self._followers[channel]) == 1)

    def sessions(self, subject: str) -> int:
        return self._sessions[subject]

    def _release(self, subject: str, channels: frozenset[str]) -> None:
        self._sessions[subject] -= 1
        if not self._sessions[subject]:
            del self._sessions[subject]
        held = self._channels[subject]
        for channel in channels:
            _decrement(held, channel)
            followers = self._followers[channel]
            _decrement(followers, subject)
            if not followers:
                del self._followers[channel]
        if not held:
            del self._channels[subject]


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if not counter[key]:
        del counter[key]


class Lease:
    """One admitted session's place in its subject's share; ``release`` it once."""

    __slots__ = ("_channels", "_quota", "_subject")

    def __init__(self, quota: SubjectQuota, subject: str, channels: frozenset[str]) -> None:
        self._quota: SubjectQuota | None = quota
        self._subject = subject
        self._channels = channels

    def release(self) -> None:
        if self._quota is not None:
            quota, self._quota = self._quota, None
            quota._release(self._subject, self._channels)


class LeasedStream:
    """A session's stream that returns its lease when it is closed, even if it never
    started (an async generator's ``finally`` would not run then)."""

    __slots__ = ("_lease", "_stream")

    def __init__(self, lease: Lease, stream: AsyncIterator[bytes]) -> None:
        self._lease = lease
        self._stream = stream

    def __aiter__(self) -> LeasedStream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._stream)

    async def aclose(self) -> None:
        self._lease.release()
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()
