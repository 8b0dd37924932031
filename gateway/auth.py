"""JWT channel grants: who may subscribe to or publish on which channels.

A token's ``sse`` claim grants ``{"subscribe": [patterns], "publish": [patterns]}``.
A pattern is a channel name whose last ``:``-separated segment may be ``*``,
which stands for exactly one non-empty segment: ``orders:*`` covers
``orders:42`` but neither ``orders-secret``, ``orders:`` nor ``orders:42:x``.
Tokens are checked by PyJWT with the one configured algorithm, so ``none`` and
algorithm confusion (an HS256 token signed with an RS256 public key) fail. With
an audience or issuer configured, PyJWT also requires the matching ``aud`` /
``iss``, so a token minted for another service is refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from gateway.errors import Forbidden, SettingsError, Unauthorized
from gateway.settings import Settings

TOKEN_COOKIE = "sse_token"
TOKEN_QUERY_PARAMETER = "token"
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
# An HTTP auth scheme (Bearer, Basic, Token): short, and never a token itself.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")


class Action(StrEnum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"


def _valid_pattern(pattern: Any) -> bool:
    if not isinstance(pattern, str) or not 1 <= len(pattern) <= 128:
        return False
    *head, last = pattern.split(":")
    return all(_SEGMENT.fullmatch(s) for s in head) and (
        last == "*" or _SEGMENT.fullmatch(last) is not None
    )


def pattern_matches(pattern: str, channel: str) -> bool:
    if not pattern.endswith(":*") and pattern != "*":
        return pattern == channel
    prefix = pattern[:-1]  # "orders:" (or "" for a bare "*")
    rest = channel[len(prefix) :]
    return channel.startswith(prefix) and _SEGMENT.fullmatch(rest) is not None


@dataclass(frozen=True, slots=True)
class Grants:
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    expires_at: float | None = None  # the token's ``exp``
    subject: str | None = None  # the token's ``sub``

    @classmethod
    def from_claim(
        cls, claim: Any, expires_at: float | None = None, subject: str | None = None
    ) -> Grants:
        if not isinstance(claim, Mapping) or not set(claim) <= {"subscribe", "publish"}:
            raise Unauthorized(
                'the token\'s "sse" claim must be {"subscribe": [...], "publish": [...]}'
            )
        lists = {}
        for action in Action:
            patterns = claim.get(action.value, [])
            if not isinstance(patterns, list) or not all(_valid_pattern(p) for p in patterns):
                raise Unauthorized(
                    f'the token\'s "sse.{action.value}" must be a list of channel patterns'
                )
            lists[action.value] = tuple(patterns)
        return cls(lists["subscribe"], lists["publish"], expires_at, subject)

    def allows(self, action: Action, channel: str) -> bool:
        patterns = self.subscribe if action is Action.SUBSCRIBE else self.publish
        return any(pattern_matches(p, channel) for p in patterns)


@dataclass(frozen=True, slots=True)
class Granted:
    """What an authorized request may rely on: until when (``time.time()``, leeway
    included) the token grants it, and who holds the token (its ``sub``, else a
    digest of the token itself), whose share of the process it uses."""

    until: float
    subject: str


def bearer_token(
    headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str]
) -> str | None:
    """The token from ``Authorization: Bearer``, else ``?token=``, else the cookie.

    An ``Authorization`` header of another scheme (``Token``, ``JWT``) and no
    other token is refused naming the expected scheme, and the scheme only: what
    follows it, or a header that is no ``<scheme> <credentials>``, may be a token.
    """
    header = headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    token = query.get(TOKEN_QUERY_PARAMETER) or cookies.get(TOKEN_COOKIE) or None
    if token is None and header.strip() and scheme.lower() != "bearer":
        named = f"{scheme!r} " if _SCHEME.fullmatch(scheme) and credentials else ""
        raise Unauthorized(
            f"the Authorization header's scheme {named}is not accepted: send "
            f"Authorization: Bearer <jwt> (or ?token=<jwt>, or the {TOKEN_COOKIE} cookie)"
        )
    return token


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        if settings.auth_secret is not None:
            self._key: str = settings.auth_secret.get_secret_value()
        elif settings.auth_secret_arn is not None:
            # Never an empty HS256 key, which anyone could sign with.
            raise SettingsError(
                "the secret at SSE_GATEWAY_AUTH_SECRET_ARN was not fetched: use load_settings"
            )
        else:
            self._key = settings.auth_public_key or ""
        self._algorithm = settings.auth_algorithm
        self._leeway = settings.auth_leeway_seconds
        self._audience = settings.auth_audience
        self._issuer = settings.auth_issuer

    def grants(self, token: str | None) -> Grants:
        if token is None:
            raise Unauthorized(
                "a token is required: send Authorization: Bearer <jwt>, ?token=<jwt> "
                f"or the {TOKEN_COOKIE} cookie"
            )
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                leeway=self._leeway,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sse"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired: get a new one") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("the token is not valid yet (nbf)") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized(f"the token is for another audience: {exc}") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized(f"the token is from another issuer: {exc}") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the token is invalid: {exc}") from exc
        sub = claims.get("sub")
        subject = sub if isinstance(sub, str) and sub else None
        return Grants.from_claim(claims["sse"], float(claims["exp"]), subject)

    def authorize(self, token: str | None, action: Action, *channels: str) -> Granted:
        """Raises unless the token grants ``action`` on every channel."""
        grants = self.grants(token)
        for channel in channels:
            if not grants.allows(action, channel):
                raise Forbidden(f"the token does not grant {action.value} on channel {channel!r}")
        assert grants.expires_at is not None and token is not None  # PyJWT requires "exp"
        subject = grants.subject or "token " + hashlib.sha256(token.encode()).hexdigest()[:16]
        return Granted(grants.expires_at + self._leeway, subject)
