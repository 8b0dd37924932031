"""Whether this process can do its work, and if not, what to set.

A configuration problem is never reported as a passing outage: a missing
region or missing credentials stop every start (``check_aws_environment``,
before any DynamoDB client exists, so no botocore traceback), and a container
start also asks the table once (``check_table``): a table that is missing or
not accessible stops it naming ``SSE_GATEWAY_TABLE_NAME``, while a DynamoDB
that does not answer yet only warns (an outage passes; ``GET /readyz`` says so
until it has). ``check`` is that readiness: one ``Query`` of a partition no
channel can use (channel names have no ``#``), and a ``PING`` of the notifier
when one is configured, each bounded by one DynamoDB attempt's timeout.

The answers name variables, never their values: a readiness endpoint is often
reachable by more than the operator, and the log has the details.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from botocore.exceptions import NoCredentialsError

from gateway.errors import SettingsError, StoreMisconfigured, StoreUnavailable
from gateway.settings import ENV_PREFIX, Settings

if TYPE_CHECKING:  # gateway.dynamodb imports this module, and they import it
    import aioboto3

    from gateway.notify import Notifier
    from gateway.store import EventLog

logger = logging.getLogger(__name__)

# Channel names are [A-Za-z0-9_.:-]: this partition is never a channel's.
PROBE_CHANNEL = "sse-gateway#readiness"
NO_REGION = (
    f"no AWS region for DynamoDB: set {ENV_PREFIX}DYNAMODB_REGION (or AWS_DEFAULT_REGION); "
    "for the DynamoDB of sse-gateway dev, paste the exports it prints"
)
NO_CREDENTIALS = (
    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
    "or run with an IAM role; for the DynamoDB of sse-gateway dev, paste the exports it prints"
)
STORE_MISCONFIGURED = (
    f"the DynamoDB table is missing or not accessible: check {ENV_PREFIX}TABLE_NAME, "
    f"{ENV_PREFIX}DYNAMODB_REGION and the role's dynamodb:Query permission on the table"
)
STORE_UNAVAILABLE = (
    f"DynamoDB does not answer: check {ENV_PREFIX}DYNAMODB_ENDPOINT_URL (unset: AWS) "
    "and the network to it, or wait out the throttling"
)
NOTIFIER_DOWN = (
    f"the notifier's Redis does not answer: check {ENV_PREFIX}NOTIFY_URL and the network "
    "to it (feeds meanwhile poll DynamoDB, nothing is lost)"
)


async def check_aws_environment(settings: Settings, session: aioboto3.Session) -> None:
    """Raise ``SettingsError`` when botocore would find no region or no credentials."""
    if settings.dynamodb_region is None and session.region_name is None:
        raise SettingsError(NO_REGION)
    # aiobotocore's get_credentials is a coroutine; the stubs type boto3's.
    credentials = await cast("Awaitable[object]", session.get_credentials())
    if credentials is None:
        raise SettingsError(NO_CREDENTIALS)


async def _probe_store(store: EventLog, within: float) -> str | None:
    """None when the table answers; else what to set (and the cause in the log)."""
    try:
        async with asyncio.timeout(within):
            await store.last_batch(PROBE_CHANNEL)
    except StoreMisconfigured as exc:
        logger.error("readiness: %s", exc.message)
        return STORE_MISCONFIGURED
    except (StoreUnavailable, TimeoutError) as exc:
        cause = getattr(exc, "message", f"no answer within {within:g} s")
        logger.warning("readiness: %s", cause)
        if isinstance(exc.__cause__, NoCredentialsError):  # credentials that went away
            return NO_CREDENTIALS
        return STORE_UNAVAILABLE
    return None


async def check_table(store: EventLog, settings: Settings) -> None:
    """At a container's start: a table that is missing or not accessible is a
    configuration error; a DynamoDB that does not answer (yet) is only logged."""
    problem = await _probe_store(store, settings.dynamodb_timeout_seconds)
    if problem in (STORE_MISCONFIGURED, NO_CREDENTIALS):
        raise SettingsError(problem)
    if problem is not None:
        logger.warning("%s; serving anyway, GET /readyz answers 503 until it does", problem)


@dataclass(frozen=True, slots=True)
class Readiness:
    """Each dependency's state: ``"ok"``, ``"off"`` (not configured) or what to set."""

    store: str
    notifier: str

    @property
    def ready(self) -> bool:
        return self.store == "ok" and self.notifier in ("ok", "off")

    @property
    def problems(self) -> list[str]:
        return [state for state in (self.store, self.notifier) if state not in ("ok", "off")]


async def check(store: EventLog, notifier: Notifier | None, settings: Settings) -> Readiness:
    timeout = settings.dynamodb_timeout_seconds
    store_state, notifier_state = await asyncio.gather(
        _probe_store(store, timeout), _probe_notifier(notifier, timeout)
    )
    return Readiness(store=store_state or "ok", notifier=notifier_state)


async def _probe_notifier(notifier: Notifier | None, within: float) -> str:
    if notifier is None:
        return "off"
    try:
        async with asyncio.timeout(within):
            await notifier.ping()
    except Exception as exc:  # whatever redis-py raises, the notifier is not usable
        logger.warning("readiness: the notifier: %s: %s", type(exc).__name__, exc)
        return NOTIFIER_DOWN
    return "ok"
