"""SigV4 for the lean Query path: the Authorization header botocore's ``SigV4Auth``
writes for the same POST, headers, credentials and second.

Signed, as botocore signs: every header but botocore's unsigned few, and the
host (no userinfo, no default port); an empty query string; the body's SHA-256.
``tests/test_sigv4.py`` proves the header equal to ``SigV4Auth``'s for every
kind of endpoint (moto checks no signature, so that test is the proof).

Per call this is two SHA-256 and one HMAC, in C: the signing key (four HMACs
of the secret) is derived once a day and secret, and held as an HMAC already
keyed, copied for each signature; the date string is formatted once a second.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

from botocore.auth import SIGNED_HEADERS_BLACKLIST

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
    """SigV4 of POSTs to one URL, for one service in one region."""

    def __init__(self, region: str, url: str, service: str) -> None:
        self._host = host_of(url)
        self._path = urlsplit(url).path or "/"
        self._scope_tail = f"/{region}/{service}/aws4_request"
        self._key: tuple[str, str, hmac.HMAC] | None = None  # (date, secret, keyed HMAC)
        self._second: tuple[int, str] = (-1, "")  # (epoch second, its X-Amz-Date)

    def _keyed(self, date: str, secret: str) -> hmac.HMAC:
        if self._key is None or self._key[:2] != (date, secret):
            key = f"AWS4{secret}".encode()
            for part in (date, *self._scope_tail[1:].split("/")):
                key = hmac.digest(key, part.encode(), "sha256")
            self._key = (date, secret, hmac.new(key, digestmod=hashlib.sha256))
        return self._key[2].copy()

    def _amz_date(self, now: float) -> str:
        second = int(now)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second)))
        return self._second[1]

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
        amz_date = self._amz_date(now)
        sent = {**headers, "X-Amz-Date": amz_date}
        if token:
            sent["X-Amz-Security-Token"] = token
        signed = {n.lower(): v for n, v in sent.items() if n.lower() not in _UNSIGNED}
        signed["host"] = self._host
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = (
            f"POST\n{self._path}\n\n"
            + "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names)
            + f"\n{signed_names}\n{hashlib.sha256(body).hexdigest()}"
        )
        scope = amz_date[:8] + self._scope_tail
        to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
            f"{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        keyed = self._keyed(amz_date[:8], secret_key)
        keyed.update(to_sign.encode())
        signature = keyed.hexdigest()
        sent["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )
        return sent
