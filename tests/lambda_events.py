"""Function URL events kept as JSON files under tests/events/."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).parent / "events"


def load_event(name: str, **headers: str) -> dict[str, Any]:
    """A copy of ``tests/events/<name>.json``, with extra request ``headers``."""
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    event = copy.deepcopy(event)
    event["headers"].update({k.replace("_", "-").lower(): v for k, v in headers.items()})
    return event


class LambdaContext:
    """The part of the Lambda context object the handlers use: the time left."""

    def __init__(self, timeout_seconds: float) -> None:
        self._deadline = time.monotonic() + timeout_seconds
        self.aws_request_id = "c8a4e2b4-5f4e-4d4c-9f0e-0123456789ab"

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)
