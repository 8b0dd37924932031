"""Publish through the deployed publish URL when its auth is AWS_IAM (the default).

Lambda checks a SigV4 signature (service ``lambda``) before the function runs, and
the signature takes the ``Authorization`` header, so the JWT channel grant goes in
``?token=`` instead. The caller's IAM identity needs ``lambda:InvokeFunctionUrl``
and ``lambda:InvokeFunction`` on the publish function (docs/deploy-aws.md).

    python examples/signed_publish.py "$PUBLISH_URL" orders:42 '{"status": "paid"}' \\
        --token "$JWT" [--idempotency-key order-42-paid]

Credentials come from botocore's usual chain (environment, profile, role); the
region from the URL (``<id>.lambda-url.<region>.on.aws``) or ``--region``. The
same request with awscurl:

    awscurl --service lambda --region "$REGION" -X POST \\
        -H 'Content-Type: application/json' -d '{"data": {"status": "paid"}}' \\
        "${PUBLISH_URL}channels/orders:42/events?token=$JWT"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def signed_publish(
    publish_url: str,
    channel: str,
    data: Any,
    *,
    token: str,
    credentials: Credentials,
    region: str,
    idempotency_key: str | None = None,
) -> urllib.request.Request:
    """A SigV4-signed ``POST <publish_url>channels/<channel>/events?token=<token>``."""
    url = f"{publish_url.rstrip('/')}/channels/{quote(channel, safe=':')}/events"
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key  # signed too
    body = json.dumps({"data": data}).encode()
    request = AWSRequest("POST", f"{url}?{urlencode({'token': token})}", headers, body)
    SigV4Auth(credentials, "lambda", region).add_auth(request)
    return urllib.request.Request(
        request.url, data=body, headers=dict(request.headers.items()), method="POST"
    )


def _region(publish_url: str, given: str | None) -> str:
    found = re.fullmatch(
        r"[^.]+\.lambda-url\.([a-z0-9-]+)\.on\.aws", urlsplit(publish_url).hostname or ""
    )
    region = given or (
        found[1] if found else botocore.session.get_session().get_config_variable("region")
    )
    if not region:
        raise SystemExit("pass --region: the URL does not name one")
    return str(region)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("publish_url", help="the stack's PublishUrl output")
    parser.add_argument("channel")
    parser.add_argument("data", help="the event's data, as JSON")
    parser.add_argument("--token", required=True, help="a JWT whose sse.publish covers the channel")
    parser.add_argument("--idempotency-key")
    parser.add_argument("--region")
    args = parser.parse_args(argv)
    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        raise SystemExit("no AWS credentials found (environment, profile or role)")
    request = signed_publish(
        args.publish_url,
        args.channel,
        json.loads(args.data),
        token=args.token,
        credentials=credentials,
        region=_region(args.publish_url, args.region),
        idempotency_key=args.idempotency_key,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as error:
        print(f"{error.code}: {error.read().decode()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
