"""template.yaml against the code: the table the store uses, the routes each
function serves, least privilege, and settings that exist."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import ENV_PREFIX, Settings
from infra.table import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA, TTL_ATTRIBUTE

ROOT = Path(__file__).parent.parent


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsics (!Ref, !GetAtt, ...)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node)
    else:
        value = loader.construct_mapping(node)  # type: ignore[arg-type]
    return {suffix: value}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / "template.yaml").read_text(), _TemplateLoader)
    return loaded


def _function(template: dict[str, Any], name: str) -> dict[str, Any]:
    resource = template["Resources"][name]
    assert resource["Type"] == "AWS::Serverless::Function"
    properties: dict[str, Any] = resource["Properties"]
    return properties


def _actions(function: dict[str, Any]) -> set[str]:
    return {
        action
        for policy in function["Policies"]
        for statement in policy["Statement"]
        for action in statement["Action"]
    }


def test_template_table_matches_the_code(template: dict[str, Any]) -> None:
    table = template["Resources"]["EventsTable"]["Properties"]
    assert table["KeySchema"] == KEY_SCHEMA
    assert table["AttributeDefinitions"] == ATTRIBUTE_DEFINITIONS
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_template_subscribe_function_streams_publicly_with_read_only_access(
    template: dict[str, Any],
) -> None:
    function = _function(template, "SubscribeFunction")
    url = function["FunctionUrlConfig"]
    assert (url["InvokeMode"], url["AuthType"]) == ("RESPONSE_STREAM", "NONE")
    assert url["Cors"]["AllowOrigins"] == {"Ref": "AllowedOrigins"}
    assert _actions(function) == {"dynamodb:Query", "dynamodb:GetItem"}
    wrapper = function["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"]
    local_wrapper = ROOT / wrapper.removeprefix("/var/task/")
    assert local_wrapper.is_file() and os.access(local_wrapper, os.X_OK)
    assert "-m handlers.stream" in local_wrapper.read_text()


def test_template_publish_function_is_buffered_signed_and_write_only(
    template: dict[str, Any],
) -> None:
    function = _function(template, "PublishFunction")
    url = function["FunctionUrlConfig"]
    assert url["InvokeMode"] == "BUFFERED"
    assert url["AuthType"] == {"Ref": "PublishAuthType"}
    assert template["Parameters"]["PublishAuthType"]["Default"] == "AWS_IAM"
    assert _actions(function) == {"dynamodb:PutItem", "dynamodb:Query"}


def test_template_session_deadline_follows_the_timeout(template: dict[str, Any]) -> None:
    function = _function(template, "SubscribeFunction")
    parameters = template["Parameters"]
    assert function["Timeout"] == {"Ref": "SubscribeTimeout"}
    assert parameters["MaxSessionSeconds"]["MaxValue"] <= parameters["SubscribeTimeout"]["MaxValue"]
    assert function["Environment"]["Variables"]["SSE_GATEWAY_MAX_SESSION_SECONDS"] == {
        "Ref": "MaxSessionSeconds"
    }


def test_template_handlers_and_settings_exist(template: dict[str, Any]) -> None:
    names = [template["Globals"]["Function"]["Environment"]["Variables"]]
    for resource in ("SubscribeFunction", "PublishFunction"):
        function = _function(template, resource)
        module, attribute = function["Handler"].rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute))
        names.append(function.get("Environment", {}).get("Variables", {}))
    variables = {name for group in names for name in group if name.startswith(ENV_PREFIX)}
    fields = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    assert variables and variables <= fields, variables - fields


def test_template_configures_cors_in_one_place(template: dict[str, Any]) -> None:
    groups = [template["Globals"]["Function"]["Environment"]["Variables"]]
    for resource in ("SubscribeFunction", "PublishFunction"):
        function = _function(template, resource)
        assert "Cors" in function["FunctionUrlConfig"]
        groups.append(function.get("Environment", {}).get("Variables", {}))
    # The app's own CORS middleware stays off behind the function URLs.
    assert all(f"{ENV_PREFIX}CORS_ALLOWED_ORIGINS" not in group for group in groups)
