"""The Lambda functions' metrics: CloudWatch Embedded Metric Format lines on stdout.

A function's process records into ``RecordedMetrics`` as a container does, and
all the invocations it serves at once (Managed Instances) record into the same
one, so the numbers are aggregated in the process. ``EmfReporter.flush`` writes
what changed since the last flush as EMF documents, JSON lines that CloudWatch
Logs turns into metrics; the Powertools for AWS Lambda provider builds them. A
function flushes at the end of every invocation, before asking for the next
(an environment is frozen between invocations and may never thaw), and the
subscribe function every 60 s as well, since its sessions last up to 15
minutes and CloudWatch keeps datapoints by the minute.

- Counters go out as what they grew by since the last flush, so CloudWatch's
  Sum over any period, across environments, is the count in that period.
- Gauges go out as their value, when it is not zero or just became zero: an
  environment's sample, to read with Maximum or Average.
- Histograms go out as CloudWatch's distribution of ``Values`` and ``Counts``
  (a bucket's midpoint, with how many fell in it; the last, unbounded bucket at
  its lower bound) with their exact ``Sum`` and ``Count``, and ``Min`` and
  ``Max`` as the bounds of the outermost buckets used: the form CloudWatch's
  EMF libraries and the OpenTelemetry EMF exporter write.

Each label value (``end="idle"``) is a dimension, beside ``function`` (the
function's name), so each document holds the metrics of one set of labels.

Powertools rather than aws-embedded-metrics: its provider keeps its state per
instance and, given a namespace and a service, reads nothing from the
environment, where aws-embedded-metrics configures itself from ``AWS_EMF_*``
variables into a module-wide object. It adds 4.4 MB to each Lambda package
(its dependencies are there already, through botocore and pydantic).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, TextIO

from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from gateway.metrics import Metrics, RecordedMetrics

NAMESPACE = "sse-gateway"
FLUSH_SECONDS = 60.0
logger = logging.getLogger("sse_gateway.metrics")

Labels = tuple[tuple[str, str], ...]


class EmfReporter:
    """Writes ``metrics`` to ``out`` as EMF lines; does nothing for metrics that do
    not record (``SSE_GATEWAY_METRICS`` off)."""

    def __init__(self, metrics: Metrics, out: TextIO, *, function: str | None) -> None:
        self._metrics = metrics if isinstance(metrics, RecordedMetrics) else None
        self._out = out
        self._dimensions = {"function": function} if function else {}
        self._reported: dict[tuple[str, Labels], float] = {}  # as of the last flush

    def flush(self) -> None:
        """Write what changed since the last flush. Never raises: metrics must not
        fail an invocation."""
        if self._metrics is None:
            return
        try:
            documents: dict[Labels, dict[str, tuple[str, Any]]] = defaultdict(dict)
            for family in self._metrics.registry.collect():
                for labels, name, unit, value in self._changes(family):
                    documents[labels][name] = (unit, value)
            for labels, values in documents.items():
                self._out.write(self._document(labels, values) + "\n")
            self._out.flush()
        except Exception:
            logger.exception("metrics could not be reported")

    async def run(self, every: float = FLUSH_SECONDS) -> None:
        """Flush every ``every`` seconds, until cancelled."""
        if self._metrics is None:
            return
        while True:
            await asyncio.sleep(every)
            self.flush()

    def _changes(self, family: Metric) -> Iterable[tuple[Labels, str, str, Any]]:
        if family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total") and (grown := self._grown(sample)):
                    yield _key(sample.labels), sample.name, "Count", grown
        elif family.type == "gauge":
            for sample in family.samples:
                key = (sample.name, _key(sample.labels))
                before, self._reported[key] = self._reported.get(key, 0.0), sample.value
                if sample.value or before:
                    yield key[1], sample.name, "Count", sample.value
        elif family.type == "histogram":
            series: dict[Labels, list[Sample]] = defaultdict(list)
            for sample in family.samples:
                others = {name: value for name, value in sample.labels.items() if name != "le"}
                series[_key(others)].append(sample)
            for labels, samples in series.items():
                if distribution := self._distribution(samples):
                    yield labels, family.name, "Seconds", distribution

    def _grown(self, sample: Sample) -> float:
        """How much a cumulative sample grew since the last flush."""
        key = (sample.name, _key(sample.labels))
        grown = sample.value - self._reported.get(key, 0.0)
        self._reported[key] = sample.value
        return grown

    def _distribution(self, samples: list[Sample]) -> dict[str, Any] | None:
        """One histogram's observations since the last flush, as CloudWatch takes them."""
        buckets, observed, summed = [], 0.0, 0.0
        for sample in samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), self._grown(sample)))
            elif sample.name.endswith("_count"):
                observed = self._grown(sample)
            elif sample.name.endswith("_sum"):
                summed = self._grown(sample)
        if not observed:
            return None
        values, counts, bounds = [], [], []
        lower = below = 0.0
        for upper, up_to in sorted(buckets):  # cumulative counts, +Inf last
            if up_to > below:
                values.append(lower if math.isinf(upper) else (lower + upper) / 2)
                counts.append(up_to - below)
                bounds += [lower, lower if math.isinf(upper) else upper]
            lower, below = upper, up_to
        return {
            "Values": values,
            "Counts": counts,
            "Sum": summed,
            "Count": observed,
            "Min": min(bounds),
            "Max": max(bounds),
        }

    def _document(self, labels: Labels, values: dict[str, tuple[str, Any]]) -> str:
        provider = AmazonCloudWatchEMFProvider(
            namespace=NAMESPACE,
            service="",  # no service dimension, whatever POWERTOOLS_SERVICE_NAME says
            dimension_set={**self._dimensions, **dict(labels)},
            metric_set={},
            metadata_set={},
        )
        for name, (unit, value) in values.items():
            if isinstance(value, dict):
                # add_metric takes numbers only; the serializer passes a value as it is.
                provider.metric_set[name] = {"Unit": unit, "StorageResolution": 60, "Value": value}
            else:
                provider.add_metric(name=name, unit=unit, value=value)
        return json.dumps(provider.serialize_metric_set(), separators=(",", ":"))


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))
