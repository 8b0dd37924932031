"""Which other origins' pages may call the gateway: Starlette's CORS middleware.

Off unless ``SSE_GATEWAY_CORS_ALLOWED_ORIGINS`` lists origins. It allows the
headers a page sends (``Last-Event-ID`` to resume, ``Authorization``,
``Idempotency-Key``) and exposes ``Idempotent-Replayed``; on Lambda the function
URLs in ``template.yaml`` allow the same (a test compares the two).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gateway.answers import IDEMPOTENCY_KEY_HEADER
from gateway.settings import Settings

REPLAYED_HEADER = "Idempotent-Replayed"


def cors_middleware(settings: Settings) -> list[Middleware]:
    if not settings.cors_allowed_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed_origins,
            # Cookie auth needs credentials, which browsers refuse with a wildcard.
            allow_credentials="*" not in settings.cors_allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "authorization",
                "content-type",
                "last-event-id",
                "cache-control",
                IDEMPOTENCY_KEY_HEADER.lower(),
            ],
            expose_headers=[REPLAYED_HEADER],
            max_age=86400,
        )
    ]
