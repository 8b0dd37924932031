import logging
import os
import signal
import subprocess
import time
import uuid

import httpx
import jwt
import pytest

from gateway.redaction import RedactTokens, redact_target
from tests.servers import free_port, sse_gateway_command

SECRET = "a-test-secret-that-is-long-enough-0123456789"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/channels/c/events?token=abc.def.ghi", "/channels/c/events?token=[redacted]"),
        ("/c?last_event_id=1&token=x&y=2", "/c?last_event_id=1&token=[redacted]&y=2"),
        ("/c?mytoken=keep", "/c?mytoken=keep"),
        ("/c?token=", "/c?token=[redacted]"),
        # Every spelling Starlette decodes to the name ``token``.
        ("/c?to%6Ben=abc", "/c?to%6Ben=[redacted]"),
        ("/c?x=1&%74%6F%6B%65%6E=abc&y=2", "/c?x=1&%74%6F%6B%65%6E=[redacted]&y=2"),
        ("/c?tok%65n=a&token=b", "/c?tok%65n=[redacted]&token=[redacted]"),
        ("/a?b?token=abc", "/a?b?token=[redacted]"),
        ("/c?to+ken=keep&tokens=keep", "/c?to+ken=keep&tokens=keep"),
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


def test_an_encoded_token_parameter_authenticates_but_never_reaches_the_access_log(
    dynamodb_endpoint: str,
) -> None:
    """The attacker's spelling, against a real ``sse-gateway dev`` with auth on: the
    token in ``?to%6Ben=`` lets the publish in, and the log shows none of it."""
    port = free_port()
    env = {
        **os.environ,
        "SSE_GATEWAY_AUTH_SECRET": SECRET,
        "SSE_GATEWAY_TABLE_NAME": f"events-{uuid.uuid4().hex[:12]}",
    }
    command = ["dev", "--dynamodb-endpoint", dynamodb_endpoint, "--port", str(port)]
    process = subprocess.Popen(
        sse_gateway_command(*command),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    token = jwt.encode(
        {"sub": "u", "exp": int(time.time()) + 600, "sse": {"publish": ["c"]}},
        SECRET,
        algorithm="HS256",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        published = httpx.post(f"{url}/channels/c/events?to%6Ben={token}", json={"data": 1})
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert published.status_code == 201  # the app read it as the token
    assert "POST /channels/c/events?to%6Ben=[redacted]" in output
    assert token not in output
    assert token.split(".")[2] not in output  # not even the signature
