"""The Lambda functions' metrics as CloudWatch reads them from their EMF lines: what
each flush reports, by dimension and unit, exactly."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from gateway.metrics import Metrics, RecordedMetrics
from handlers.emf import NAMESPACE, EmfReporter
from tests.cloudwatch import datapoints, only, total


def _flush(reporter: EmfReporter, out: io.StringIO) -> list[str]:
    """The lines one flush writes."""
    start = len(out.getvalue())
    reporter.flush()
    return out.getvalue()[start:].splitlines()


def test_a_flush_reports_what_changed_since_the_last_one() -> None:
    metrics = RecordedMetrics(clock=lambda: 1_000.0)
    out = io.StringIO()
    reporter = EmfReporter(metrics, out, function="sse-gateway-subscribe")
    feeds = [2]
    metrics.watch_feeds(lambda: feeds[0])
    metrics.session_started()
    metrics.session_started()
    metrics.session_ended("idle")
    metrics.delivered([999.5, 998.0, 999.9921875])  # 0.5, 2 and 1/128 s late
    metrics.reset("history_expired")
    metrics.store_request("query")
    metrics.store_request("query")
    metrics.store_error("throttled")
    metrics.published(3, 0.02)

    lines = _flush(reporter, out)
    points = datapoints(lines)
    assert {p.namespace for p in points} == {NAMESPACE}
    function = {"function": "sse-gateway-subscribe"}
    # Counters: one datapoint each, with their label as a dimension.
    assert total(points, "sse_gateway_sessions_total", **function, end="idle") == 1
    assert total(points, "sse_gateway_resets_total", **function, reason="history_expired") == 1
    assert total(points, "sse_gateway_store_requests_total", **function, operation="query") == 2
    assert total(points, "sse_gateway_store_errors_total", **function, kind="throttled") == 1
    assert total(points, "sse_gateway_events_published_total", **function) == 3
    assert total(points, "sse_gateway_events_delivered_total", **function) == 3
    # Gauges: the value now.
    assert only(points, "sse_gateway_open_sessions", **function).values == (1,)
    assert only(points, "sse_gateway_feeds", **function).values == (2,)
    # Histograms: bucket midpoints with their counts, the exact sum.
    lag = only(points, "sse_gateway_delivery_lag_seconds", **function)
    assert (lag.unit, lag.count, lag.sum) == ("Seconds", 3, 2.5078125)
    assert dict(zip(lag.values, lag.counts, strict=True)) == {0.005: 1, 0.375: 1, 1.75: 1}
    publish = only(points, "sse_gateway_publish_seconds", **function)
    assert (publish.values, publish.counts, publish.sum) == (pytest.approx((0.0175,)), (1,), 0.02)
    assert {p.unit for p in points if "seconds" not in p.name} == {"Count"}
    # Nothing that did not happen, and no channel anywhere.
    assert total(points, "sse_gateway_sessions_total", **function, end="deadline") == 0
    assert {key for p in points for key, _ in p.dimensions} <= {
        "function",
        "end",
        "reason",
        "operation",
        "kind",
    }
    # One document per set of dimensions.
    assert len(lines) == len({p.dimensions for p in points})

    # The next flush: only what changed since.
    metrics.session_ended("deadline")
    metrics.store_request("query")
    feeds[0] = 0
    points = datapoints(_flush(reporter, out))
    assert total(points, "sse_gateway_sessions_total", **function, end="deadline") == 1
    assert total(points, "sse_gateway_sessions_total", **function, end="idle") == 0
    assert total(points, "sse_gateway_store_requests_total", **function, operation="query") == 1
    assert total(points, "sse_gateway_events_delivered_total", **function) == 0
    assert not [p for p in points if p.name == "sse_gateway_delivery_lag_seconds"]
    # A gauge that fell to zero says so once, then stays quiet.
    assert only(points, "sse_gateway_open_sessions", **function).values == (0,)
    assert only(points, "sse_gateway_feeds", **function).values == (0,)
    assert _flush(reporter, out) == []


def test_a_late_delivery_is_counted_past_the_last_bucket() -> None:
    metrics = RecordedMetrics(clock=lambda: 10_000.0)
    out = io.StringIO()
    reporter = EmfReporter(metrics, out, function=None)
    metrics.delivered([0.0])  # 10,000 s late: past the 3,600 s bucket
    (line,) = _flush(reporter, out)
    lag = only(datapoints([line]), "sse_gateway_delivery_lag_seconds")
    assert (lag.values, lag.counts, lag.sum) == ((3600,), (1,), 10_000)
    assert json.loads(line)["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]


async def test_the_reporter_flushes_on_its_own_while_invocations_run() -> None:
    metrics = RecordedMetrics()
    out = io.StringIO()
    reporter = EmfReporter(metrics, out, function="f")
    running = asyncio.create_task(reporter.run(every=0.05))
    try:
        metrics.store_request("put")
        for _ in range(100):
            if out.getvalue():
                break
            await asyncio.sleep(0.02)
    finally:
        running.cancel()
    points = datapoints(out.getvalue().splitlines())
    assert total(points, "sse_gateway_store_requests_total", function="f", operation="put") == 1


async def test_metrics_off_write_nothing() -> None:
    out = io.StringIO()
    reporter = EmfReporter(Metrics(), out, function="f")
    reporter.flush()
    await asyncio.wait_for(reporter.run(every=0.01), 1)  # returns at once
    assert out.getvalue() == ""
