"""DynamoDB's Query on a lean request path: the same request on the wire, signed
the same way, retried and failing the same way as through the aioboto3 client,
for a fraction of its CPU.

Without a notifier every followed channel is polled about once a second per
process, so the cost of one Query is the gateway's idle cost. Through the
client a Query runs botocore's whole per-call machinery: some twenty event
hooks, parameter validation, the endpoint rule set, a user agent rebuilt from
its parts, a request model copied into another, and a SigV4 signer that derives
its key anew; then aiobotocore's ``AIOHTTPSession.send`` parses the URL for a
proxy, reads the environment, copies the headers into a multidict, builds a
yarl URL and, after the answer, a dict of its headers and a response object.
Nearly all of it answers the same each time for this one operation on one
endpoint, so here it is done once: the endpoint, its URL, proxy and user agent
when the path is made, the signing key once a day. What remains per call is the
JSON body, the ``before-call`` event, the signature (``gateway/sigv4.py``) and
one ``request`` on aiohttp's session; botocore's response objects are built
only for an answer other than a good 200.

What stays botocore's and aiobotocore's own:
- the connection pool, its timeouts, TLS and proxy: the request goes out on the
  client's own aiohttp ``ClientSession``, the one ``AIOHTTPSession`` holds;
- the mapping of every transport failure to botocore's exceptions, as
  ``AIOHTTPSession.send`` maps them (``_exchange``, in its order);
- the credentials, refreshed as the client's are (the client's own object);
- retries: aiobotocore's standard-mode policy (botocore's conditions, DynamoDB's
  CRC32 check of a 200 included, the exponential backoff with jitter, a retry
  quota), with the client's attempt budget;
- errors: an answer other than 200 is parsed by botocore's JSON parser and
  raised as the client's own ``ClientError`` subclass, so ``store_errors``
  translates it as before.

Differences, on purpose: a 200 that fails the CRC32 check on every attempt
raises botocore's ``ChecksumError`` (an outage to ``store_errors``), where
botocore returns the garbled body as parsed, which the log would read as a
channel without items; and ``BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER`` (an
experimental botocore switch for proxies) is not read.

A 200's body is the JSON document botocore would return parsed: the log's
items hold no binary attribute, the only kind botocore's parser would decode.

aiobotocore exposes neither its HTTP session nor its credentials; they are read
from the client's ``_endpoint.http_session`` (its ``_get_session`` and
``_proxy_config``) and ``_request_signer`` (nothing is patched), and every test
that reads the log goes through them, so a release that moved them fails the
suite at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import time
import zlib
from collections.abc import Callable, Mapping
from importlib.metadata import version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.awsrequest import AioAWSResponse
from aiobotocore.retries.standard import AioRetryPolicy, AioStandardRetryConditions
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import mask_proxy_url
from botocore.parsers import create_parser
from botocore.retries.quota import RetryQuota
from botocore.retries.standard import ExponentialBackoff, RetryContext, RetryQuotaChecker
from multidict import CIMultiDict
from yarl import URL

from gateway.sigv4 import Signer

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

_TARGET = "DynamoDB_20120810.Query"
_CONTENT_TYPE = "application/x-amz-json-1.0"


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
        self.url = parts._replace(path=parts.path or "/").geturl()
        self._target = URL(self.url, encoded=True)  # as aiobotocore passes it to aiohttp
        self._signer = Signer(meta.region_name, self.url, "dynamodb")
        self._clock = clock
        # Private to aiobotocore: its pool and its credentials (module docstring).
        self._http: Any = client._endpoint.http_session  # type: ignore[attr-defined]
        self._credentials: Any = client._request_signer._credentials  # type: ignore[attr-defined]
        # The client's proxy for this endpoint, fixed when the client was made.
        self._proxy: str | None = self._http._proxy_config.proxy_url_for(self.url)
        self._proxy_headers = self._http._proxy_config.proxy_headers_for(self.url)
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
        # The quota reads no more of a good answer than that it is a 2xx.
        self._success = AWSResponse(self.url, 200, HTTPHeaders(), None)
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
            params={"url": self.url, "headers": headers, "body": body, "context": request_context},
            request_signer=None,
            context=request_context,
        )
        attempt = 0
        while True:
            attempt += 1
            http = parsed = caught = None
            try:
                response, content = await self._exchange(await self.signed(headers, body), body)
                if response.status == 200 and _intact(content, response.headers):
                    answer: dict[str, Any] = json.loads(content)
                    self._quota.release_retry_quota(request_context, self._success)  # type: ignore[arg-type]
                    return answer
                # What follows is rare: the objects botocore's retry and parser read.
                # As aiobotocore hands the headers on (botocore wants them lower case).
                lowered = {k.decode().lower(): v.decode() for k, v in response.raw_headers}
                http = AioAWSResponse(self.url, response.status, lowered, response)  # type: ignore[arg-type]
                # A 200 that fails DynamoDB's checksum (standard mode's one retry of a
                # 200) may not be JSON any more: botocore's parser reads it.
                parsed = self._parser.parse(
                    {"status_code": response.status, "headers": lowered, "body": content},
                    self._output_shape,
                )
            except BotoCoreError as exc:  # what transport failures are mapped to
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
                    expected_checksum=str(http.headers.get("x-amz-crc32")),
                    actual_checksum=str(zlib.crc32(content) & 0xFFFFFFFF),
                )
            code = parsed.get("Error", {}).get("Code")
            raise self._exceptions.from_code(code)(parsed, "Query")

    async def signed(self, headers: dict[str, str], body: bytes) -> CIMultiDict[str]:
        """One attempt's headers: signed now, with the client's current credentials,
        and the two aiobotocore adds (the user agent here is ours)."""
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
        # https://github.com/boto/botocore/issues/1255, as aiobotocore sets it.
        signed["Accept-Encoding"] = "identity"
        return CIMultiDict(signed)

    async def _exchange(
        self, headers: CIMultiDict[str], body: bytes
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """One POST on the client's own aiohttp session, with its pool and timeouts;
        an aiohttp failure raised as the botocore error aiobotocore raises for it."""
        url = self.url
        try:
            session = await self._http._get_session(self._proxy)
            response = await session.request(
                "POST",
                self._target,
                headers=headers,
                data=body,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            )
            return response, await response.read()
        # aiobotocore's AIOHTTPSession.send maps them so, in this order.
        except aiohttp.ClientSSLError as e:
            raise SSLError(endpoint_url=url, error=e) from e
        except (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError) as e:
            raise ProxyConnectionError(proxy_url=mask_proxy_url(self._proxy or ""), error=e) from e
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.http_exceptions.BadStatusLine,
        ) as e:
            raise ConnectionClosedError(error=e, endpoint_url=url) from e
        except aiohttp.ServerTimeoutError as e:
            if str(e).lower().startswith("connect"):
                raise ConnectTimeoutError(endpoint_url=url, error=e) from e
            raise ReadTimeoutError(endpoint_url=url, error=e) from e
        except (aiohttp.ClientConnectionError, socket.gaierror) as e:
            raise EndpointConnectionError(endpoint_url=url, error=e) from e
        except TimeoutError as e:
            raise ReadTimeoutError(endpoint_url=url, error=e) from e
        except concurrent.futures.CancelledError:
            raise
        except Exception as e:
            raise HTTPClientError(error=e) from e
