"""Function URL events kept as JSON files under tests/events/."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).parent / "events"


def load_event(name: str, **headers: str) -> dict[str, Any]:
    """A copy of ``tests/events/<name>.json``, with extra request ``headers``."""
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    event = copy.deepcopy(event)
    event["headers"].update({k.replace("_", "-").lower(): v for k, v in headers.items()})
    return event
