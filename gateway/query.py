"""DynamoDB's Query on a lean request path: the same request on the wire, signed
the same way, retried and failing the same way as through the aioboto3 client,
for a fraction of its CPU.

Without a notifier every followed channel is polled about once a second per
process, so the cost of one Query is the gateway's idle cost. Through the
client a Query runs botocore's whole per-call machinery: some twenty event
hooks, parameter validation, the endpoint rule set, a user agent rebuilt from
its parts, a request model copied into another, and a SigV4 signer that derives
its key anew. Nearly all of it answers the same each time for this one
operation on one endpoint, so here it is done once: the endpoint, region and
user agent when the path is made, the signing key once a day. What remains per
call is the JSON body, the signature, and the HTTP exchange.

What stays botocore's and aiobotocore's own:
- the connection pool and its timeouts, and the mapping of every transport
  failure to botocore's exceptions: the request goes out through the client's
  own ``AIOHTTPSession``;
- the credentials, refreshed as the client's are (the client's own object);
- retries: aiobotocore's standard-mode policy (botocore's conditions, DynamoDB's
  CRC32 check of a 200 included, the exponential backoff with jitter, a retry
  quota), with the client's attempt budget;
- errors: an answer other than 200 is parsed by botocore's JSON parser and
  raised as the client's own ``ClientError`` subclass, so ``store_errors``
  translates it as before.

One difference, on purpose: a 200 that fails the CRC32 check on every attempt
raises botocore's ``ChecksumError`` (an outage to ``store_errors``), where
botocore returns the garbled body as parsed, which the log would read as a
channel without items.

SigV4 is the one piece written here (about twenty lines, AWS's published
algorithm); ``tests/test_query.py`` proves the Authorization header equal to
botocore's ``SigV4Auth`` for the same request, credentials and time. A 200's
body is the JSON document botocore would return parsed: the log's items hold
no binary attribute, the only kind botocore's parser would decode.

aiobotocore exposes neither its connection pool nor its credentials; they are
read, once, from the client's ``_endpoint`` and ``_request_signer`` (nothing is
patched), and every test that reads the log goes through them, so a release
that moved them fails the suite at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Callable, Mapping
from importlib.metadata import version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiobotocore.retries.standard import AioRetryPolicy, AioStandardRetryConditions
from botocore.auth import SIGNED_HEADERS_BLACKLIST
from botocore.awsrequest import AWSPreparedRequest
from botocore.exceptions import BotoCoreError, ChecksumError, NoCredentialsError
from botocore.parsers import create_parser
from botocore.retries.quota import RetryQuota
from botocore.retries.standard import ExponentialBackoff, RetryContext, RetryQuotaChecker

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

_SERVICE = "dynamodb"
_TARGET = "DynamoDB_20120810.Query"
_CONTENT_TYPE = "application/x-amz-json-1.0"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSIGNED = frozenset(SIGNED_HEADERS_BLACKLIST) | {"authorization"}


def host_of(url: str) -> str:
    """The Host header botocore signs for ``url``: no userinfo, no default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class Signer:
    """SigV4 for one service in one region, as botocore's ``SigV4Auth`` signs: every
    header but the unsigned few, and the host; the key derived once a day."""

    def __init__(self, region: str, url: str, service: str = _SERVICE) -> None:
        self._region = region
        self._service = service
        self._host = host_of(url)
        self._path = urlsplit(url).path or "/"
        self._key: tuple[str, str, bytes] | None = None  # (date, secret, key)

    def _signing_key(self, date: str, secret: str) -> bytes:
        if self._key is None or self._key[:2] != (date, secret):
            key = f"AWS4{secret}".encode()
            for part in (date, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key = (date, secret, key)
        return self._key[2]

    def sign(
        self,
        headers: dict[str, str],
        body: bytes,
        *,
        access_key: str,
        secret_key: str,
        token: str | None,
        now: float,
    ) -> dict[str, str]:
        """``headers`` of a POST of ``body``, with the date, token and signature."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        date = amz_date[:8]
        sent = {**headers, "X-Amz-Date": amz_date}
        if token:
            sent["X-Amz-Security-Token"] = token
        signed = {name.lower(): value for name, value in sent.items()}
        signed = {n: v for n, v in signed.items() if n not in _UNSIGNED} | {"host": self._host}
        names = sorted(signed)
        canonical = "\n".join(
            [
                "POST",
                self._path,
                "",
                "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
                ";".join(names),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{date}/{self._region}/{self._service}/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"
        signature = hmac.new(
            self._signing_key(date, secret_key), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        sent["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return sent


def _intact(content: bytes, headers: Mapping[str, str]) -> bool:
    """Whether ``content`` matches DynamoDB's ``x-amz-crc32`` header, when sent."""
    checksum = headers.get("x-amz-crc32")
    return checksum is None or zlib.crc32(content) & 0xFFFFFFFF == int(checksum)


def attempts_of(retries: dict[str, Any] | None) -> int:
    """The client's attempt budget, first attempt included, as botocore reads its
    retry config (``max_attempts`` counts retries only; the default is 3)."""
    retries = retries or {}
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    if "max_attempts" in retries:
        return int(retries["max_attempts"]) + 1
    return 3


class LeanQuery:
    """``query(params)``: what ``client.query(**params)`` answers, for a fraction of
    its CPU (see the module docstring)."""

    def __init__(self, client: DynamoDBClient, clock: Callable[[], float] = time.time) -> None:
        meta = client.meta
        config: Any = meta.config  # the stubs know AioConfig's options, not its fields
        # As botocore joins the endpoint and the operation's path "/".
        parts = urlsplit(meta.endpoint_url)
        self._url = parts._replace(path=parts.path or "/").geturl()
        self._signer = Signer(meta.region_name, self._url)
        self._clock = clock
        # Private to aiobotocore: its pool and its credentials (module docstring).
        self._http: Any = client._endpoint.http_session  # type: ignore[attr-defined]
        self._credentials: Any = client._request_signer._credentials  # type: ignore[attr-defined]
        self._operation = meta.service_model.operation_model("Query")
        self._output_shape: Any = self._operation.output_shape
        self._exceptions: Any = client.exceptions
        self._events = meta.events
        self._parser = create_parser("json")
        self._retry = AioRetryPolicy(
            retry_checker=AioStandardRetryConditions(max_attempts=attempts_of(config.retries)),
            retry_backoff=ExponentialBackoff(),
        )
        self._quota = RetryQuotaChecker(RetryQuota())
        self._user_agent = (
            f"aiobotocore/{version('aiobotocore')} botocore/{version('botocore')} "
            f"sse-gateway/{version('sse-gateway')} md/lean-query"
        )

    def serialize(self, params: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """The unsigned headers and the body of a Query of ``params``, as botocore's
        JSON serializer writes them (the parameters in the order given)."""
        return {"X-Amz-Target": _TARGET, "Content-Type": _CONTENT_TYPE}, json.dumps(params).encode()

    async def query(self, params: dict[str, Any]) -> dict[str, Any]:
        headers, body = self.serialize(params)
        request_context: dict[str, Any] = {}
        # The client's one extension point per call (the trace header's, say), as
        # botocore emits it: once per call, before the attempts.
        await self._events.emit(
            "before-call.dynamodb.Query",
            model=self._operation,
            params={"url": self._url, "headers": headers, "body": body, "context": request_context},
            request_signer=None,
            context=request_context,
        )
        attempt = 0
        while True:
            attempt += 1
            http = parsed = caught = None
            try:
                http = await self._http.send(await self.signed(headers, body))
                content = await http.content
                if http.status_code == 200 and _intact(content, http.headers):
                    answer: dict[str, Any] = json.loads(content)
                    self._quota.release_retry_quota(request_context, http)  # type: ignore[arg-type]
                    return answer
                else:
                    # A 200 that fails DynamoDB's checksum (standard mode's one retry
                    # of a 200) may not be JSON any more: botocore's parser reads it.
                    parsed = self._parser.parse(
                        {"status_code": http.status_code, "headers": http.headers, "body": content},
                        self._output_shape,
                    )
            except BotoCoreError as exc:  # what the session maps transport failures to
                caught = exc
            context = RetryContext(
                attempt_number=attempt,
                operation_model=self._operation,
                parsed_response=parsed,
                http_response=http,
                caught_exception=caught,
                request_context=request_context,
            )
            if await self._retry.should_retry(context) and self._quota.acquire_retry_quota(context):
                await asyncio.sleep(self._retry.compute_retry_delay(context))
                continue
            if caught is not None:
                raise caught
            assert http is not None and parsed is not None
            if http.status_code == 200:
                # Every attempt failed DynamoDB's checksum. botocore would return the
                # body as parsed, which the log would read as a channel with no items
                # (a reset, a replay); an outage is the truth, and what callers handle.
                raise ChecksumError(
                    checksum_type="crc32",
                    expected_checksum=http.headers.get("x-amz-crc32"),
                    actual_checksum=str(zlib.crc32(content) & 0xFFFFFFFF),
                )
            code = parsed.get("Error", {}).get("Code")
            raise self._exceptions.from_code(code)(parsed, "Query")

    async def signed(self, headers: dict[str, str], body: bytes) -> AWSPreparedRequest:
        """One attempt's request: signed now, with the client's current credentials."""
        if self._credentials is None:
            raise NoCredentialsError()  # as botocore's signer does
        credentials = await self._credentials.get_frozen_credentials()
        signed = self._signer.sign(
            headers,
            body,
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            token=credentials.token,
            now=self._clock(),
        )
        signed["User-Agent"] = self._user_agent
        return AWSPreparedRequest(
            "POST",
            self._url,
            signed,  # type: ignore[arg-type]  # any mapping: the session copies it
            body,
            stream_output=False,
        )
