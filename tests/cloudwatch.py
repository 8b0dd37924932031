"""CloudWatch's reading of Embedded Metric Format log lines, for the tests.

Written from the EMF specification, independently of ``handlers.emf`` and of
Powertools: a document is a JSON object whose ``_aws`` member holds a
millisecond ``Timestamp`` and ``CloudWatchMetrics`` directives; each directive
names a ``Namespace``, dimension sets whose keys are string members of the
document, and metrics whose ``Name`` is a member holding a number, an array of
up to 100 numbers, or a distribution (``Values`` with ``Counts``, ``Sum``,
``Count``, ``Min``, ``Max``), with a CloudWatch unit. A line that is not such a
document is an ordinary log line. Anything malformed fails the test, as
CloudWatch would drop it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

UNITS = {
    *("Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes"),
    *("Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits"),
    *("Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second"),
    *("Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second"),
    *("Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"),
}
MAX_VALUES = 100
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Datapoint:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]
    unit: str
    values: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float

    @property
    def count(self) -> float:
        return sum(self.counts)


def datapoints(lines: Iterable[str]) -> list[Datapoint]:
    """The metric datapoints CloudWatch extracts from these log lines."""
    points = []
    for line in lines:
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict) and "_aws" in document:
            points += _extract(document)
    return points


def _extract(document: dict[str, Any]) -> list[Datapoint]:
    aws = document["_aws"]
    stamp = aws["Timestamp"]
    assert isinstance(stamp, int) and abs(stamp - time.time() * 1000) < DAY_MS, stamp
    points = []
    for directive in aws["CloudWatchMetrics"]:
        namespace = directive["Namespace"]
        assert isinstance(namespace, str) and 0 < len(namespace) <= 256
        sets = directive["Dimensions"]
        assert sets and all(len(keys) <= 30 for keys in sets)
        assert len(directive["Metrics"]) <= MAX_VALUES
        for metric in directive["Metrics"]:
            name, unit = metric["Name"], metric.get("Unit", "None")
            assert unit in UNITS, unit
            assert metric.get("StorageResolution", 60) in (1, 60)
            values, counts, total = _values(document[name])
            for keys in sets:
                for key in keys:
                    assert isinstance(document[key], str) and document[key], key
                dimensions = tuple(sorted((key, document[key]) for key in keys))
                points.append(Datapoint(namespace, name, dimensions, unit, values, counts, total))
    return points


def _values(member: Any) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    if isinstance(member, int | float) and not isinstance(member, bool):
        return (member,), (1,), member
    if isinstance(member, list):
        assert 0 < len(member) <= MAX_VALUES and all(isinstance(v, int | float) for v in member)
        return tuple(member), (1,) * len(member), sum(member)
    values, counts = member["Values"], member["Counts"]
    assert 0 < len(values) == len(counts) <= MAX_VALUES
    assert all(count > 0 for count in counts)
    assert member["Count"] == sum(counts)
    assert member["Min"] <= min(values) <= max(values) <= member["Max"]
    return tuple(values), tuple(counts), member["Sum"]


def total(points: Iterable[Datapoint], name: str, **dimensions: str) -> float:
    """What CloudWatch's Sum statistic makes of ``name`` with exactly these dimensions."""
    wanted = tuple(sorted(dimensions.items()))
    return sum(p.sum for p in points if p.name == name and p.dimensions == wanted)


def only(points: Iterable[Datapoint], name: str, **dimensions: str) -> Datapoint:
    """The one datapoint of ``name`` with exactly these dimensions."""
    wanted = tuple(sorted(dimensions.items()))
    (point,) = [p for p in points if p.name == name and p.dimensions == wanted]
    return point
