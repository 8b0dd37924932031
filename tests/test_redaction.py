import logging

import pytest

from gateway.redaction import RedactTokens, redact_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/channels/c/events?token=abc.def.ghi", "/channels/c/events?token=[redacted]"),
        ("/c?last_event_id=1&token=x&y=2", "/c?last_event_id=1&token=[redacted]&y=2"),
        ("/c?mytoken=keep", "/c?mytoken=keep"),
        ("/c?token=", "/c?token=[redacted]"),
        ("/c", "/c"),
    ],
)
def test_redact_target_table(target: str, expected: str) -> None:
    assert redact_target(target) == expected


def test_redact_tokens_filter_rewrites_access_log_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/channels/c/events?token=s3cret", "1.1", 200),
        None,
    )
    assert RedactTokens().filter(record)
    assert "s3cret" not in record.getMessage()
    assert "token=[redacted]" in record.getMessage()
