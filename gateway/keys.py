"""The keys that verify tokens, checked when the process starts rather than at the
first token: an HS256 secret long enough, a public key that parses as PEM and
fits its algorithm, and the HS256 secret kept in AWS (a Secrets Manager secret
or an SSM SecureString parameter, named by its ARN), read once when an
execution environment starts.

The value never appears in an error, a log line or a traceback: each failure
names the variable, the ARN and AWS's error code, and what to grant or fix.
The ARN says which service holds the secret and in which region, so the
function's role needs exactly one action on exactly that resource (the
template grants it). botocore finds the credentials, and an endpoint such as
moto's through ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` / ``AWS_ENDPOINT_URL_SSM``.
"""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.errors import SettingsError

# The IAM action that reads a secret, by the service its ARN names.
READ_ACTIONS = {"secretsmanager": "secretsmanager:GetSecretValue", "ssm": "ssm:GetParameter"}


def fetch_secret(arn: str, variable: str) -> str:
    """The secret's text; ``SettingsError`` naming ``variable`` if it cannot be read."""
    _, _, service, region, *_ = arn.split(":")
    # Typed per service by stubs this package does not depend on.
    client: Any = botocore.session.get_session().create_client(
        service, region_name=region, config=Config(retries={"mode": "standard"})
    )
    try:
        if service == "ssm":
            value = client.get_parameter(Name=arn, WithDecryption=True)["Parameter"]["Value"]
        else:
            value = client.get_secret_value(SecretId=arn).get("SecretString")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise SettingsError(
            f"{variable}: {arn} could not be read ({code}): check that it exists and that "
            f"the function's role may {READ_ACTIONS[service]} on it"
        ) from None
    except BotoCoreError as exc:
        raise SettingsError(f"{variable}: {arn} could not be read: {exc}") from None
    finally:
        client.close()
    if not value:
        raise SettingsError(
            f"{variable}: {arn} holds no text (a SecretString) to use as the secret"
        )
    return str(value)


def check_secret_length(secret: str, variable: str) -> None:
    # RFC 7518 asks HS256 keys for at least 256 bits.
    if len(secret) < 32:
        raise ValueError(f"{variable} must be at least 32 characters")


def check_public_key(pem: str, algorithm: str, variable: str) -> None:
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{variable} is not a PEM public key (-----BEGIN PUBLIC KEY-----...): {exc}"
        ) from None
    wanted = rsa.RSAPublicKey if algorithm == "RS256" else ec.EllipticCurvePublicKey
    if not isinstance(key, wanted):
        raise ValueError(f"{variable} holds no {wanted.__name__} for {algorithm}")
