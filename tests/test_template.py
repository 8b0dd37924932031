"""template.yaml against the code: the table the store uses, the routes each
function serves, least privilege, settings that exist, both deployment modes,
and the secure defaults, whose Rules and Conditions are evaluated here for
given parameters (CloudFormation itself is out of reach of the tests)."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import ENV_PREFIX, Settings, variable_names
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
    assert _actions(function) == {"dynamodb:Query"}
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


FUNCTIONS = ("SubscribeFunction", "ManagedSubscribeFunction", "PublishFunction")


def test_template_handlers_and_settings_exist(template: dict[str, Any]) -> None:
    names = [template["Globals"]["Function"]["Environment"]["Variables"]]
    for resource in FUNCTIONS:
        function = _function(template, resource)
        module, attribute = function["Handler"].rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute))
        names.append(function.get("Environment", {}).get("Variables", {}))
    variables = {name for group in names for name in group if name.startswith(ENV_PREFIX)}
    fields = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    assert variables and variables <= fields, variables - fields


def test_template_configures_cors_in_one_place(template: dict[str, Any]) -> None:
    groups = [template["Globals"]["Function"]["Environment"]["Variables"]]
    for resource in FUNCTIONS:
        function = _function(template, resource)
        assert "Cors" in function["FunctionUrlConfig"]
        groups.append(function.get("Environment", {}).get("Variables", {}))
    # The app's own CORS middleware stays off behind the function URLs.
    assert all(f"{ENV_PREFIX}CORS_ALLOWED_ORIGINS" not in group for group in groups)


def _parameter_of(expression: Any, template: dict[str, Any]) -> str | None:
    """The parameter an environment variable's value comes from, if one does."""
    if isinstance(expression, dict) and "Ref" in expression:
        name = expression["Ref"]
        return name if name in template["Parameters"] else None
    if isinstance(expression, dict) and "If" in expression:
        _, *branches = expression["If"]
        found = [_parameter_of(branch, template) for branch in branches]
        return next((name for name in found if name), None)
    return None


def test_template_parameters_hold_only_values_the_settings_accept(
    template: dict[str, Any],
) -> None:
    fields = {variable: name for name, variable in variable_names(Settings).items()}
    groups = [template["Globals"]["Function"]["Environment"]["Variables"]]
    groups += [_function(template, name)["Environment"]["Variables"] for name in FUNCTIONS[:2]]
    passed = {
        variable: parameter
        for group in groups
        for variable, expression in group.items()
        if variable.startswith(ENV_PREFIX) and (parameter := _parameter_of(expression, template))
    }
    assert {"SSE_GATEWAY_IDLE_SESSION_SECONDS", "SSE_GATEWAY_METRICS"} <= passed.keys()
    for variable, parameter in passed.items():
        spec = template["Parameters"][parameter]
        field = Settings.model_fields[fields[variable]]
        values = [spec.get(key) for key in ("Default", "MinValue", "MaxValue")]
        for value in [*values, *spec.get("AllowedValues", [])]:
            if value not in (None, ""):
                # As the function reads it, from a string: refused at start otherwise.
                Settings(**{fields[variable]: str(value)})
        # A bounded setting needs a bounded parameter, or a deployment could pass
        # CloudFormation with a value the function then refuses at every start.
        bounds = {type(constraint).__name__ for constraint in field.metadata}
        if spec["Type"] == "Number":
            assert "MinValue" in spec or not bounds & {"Ge", "Gt"}, parameter
            assert "MaxValue" in spec or not bounds & {"Le", "Lt"}, parameter


def test_template_turns_idle_release_on_only_when_set(template: dict[str, Any]) -> None:
    for name in ("SubscribeFunction", "ManagedSubscribeFunction"):
        variables = _function(template, name)["Environment"]["Variables"]
        expression = variables[f"{ENV_PREFIX}IDLE_SESSION_SECONDS"]
        assert _evaluate(expression, _parameters(template), template) == {"Ref": "AWS::NoValue"}
        on = _parameters(template, IdleSessionSeconds="30")
        assert _evaluate(expression, on, template) == "30"


def _evaluate(node: Any, parameters: dict[str, Any], template: dict[str, Any]) -> Any:
    """A CloudFormation condition or rule expression, for the given parameter values."""

    def value(argument: Any) -> Any:
        return _evaluate(argument, parameters, template)

    if isinstance(node, list):
        return [value(item) for item in node]
    if not isinstance(node, dict) or len(node) != 1:
        return node
    ((function, argument),) = node.items()
    match function:
        case "Ref":  # a pseudo parameter (AWS::NoValue) stays as it is
            return parameters.get(argument, node)
        case "Condition":
            return value(template["Conditions"][argument])
        case "Equals":
            left, right = value(argument)
            return left == right
        case "Not":
            return not value(argument)[0]
        case "And":
            return all(value(argument))
        case "Or":
            return any(value(argument))
        case "Contains":
            values, wanted = value(argument)
            return wanted in values
        case "Join":
            separator, values = value(argument)
            return separator.join(values)
        case "If":
            condition, when_true, when_false = argument
            return value(when_true if value({"Condition": condition}) else when_false)
    return node


def _parameters(template: dict[str, Any], **overrides: str) -> dict[str, Any]:
    """Parameter values as a deployment would pass them: the defaults, then ``overrides``."""
    values = {}
    for name, parameter in template["Parameters"].items():
        raw = str(overrides.get(name, parameter.get("Default", "")))
        values[name] = raw.split(",") if parameter["Type"] == "CommaDelimitedList" else raw
    return values


def _refused(template: dict[str, Any], **overrides: str) -> list[str]:
    """The AssertDescriptions of the template's Rules that refuse these parameters."""
    parameters = _parameters(template, **overrides)
    return [
        assertion["AssertDescription"]
        for rule in template["Rules"].values()
        if _evaluate(rule["RuleCondition"], parameters, template)
        for assertion in rule["Assertions"]
        if not _evaluate(assertion["Assert"], parameters, template)
    ]


SECRET = "s" * 32
NETWORK = {"SubnetIds": "subnet-0a,subnet-0b,subnet-0c", "SecurityGroupIds": "sg-0a"}


def test_template_as_it_is_refuses_to_deploy_without_auth(template: dict[str, Any]) -> None:
    (refusal,) = _refused(template)
    assert "AuthSecret" in refusal and "AllowAnonymousSubscribe=true" in refusal
    assert _refused(template, AuthSecret=SECRET) == []
    assert _refused(template, AuthPublicKey="-----BEGIN PUBLIC KEY-----...") == []
    assert _refused(template, AllowAnonymousSubscribe="true") == []
    assert template["Parameters"]["AuthSecret"]["NoEcho"] is True


def test_template_says_in_its_outputs_who_may_subscribe(template: dict[str, Any]) -> None:
    output = template["Outputs"]["SubscribeAuth"]["Value"]
    anonymous = _evaluate(output, _parameters(template, AllowAnonymousSubscribe="true"), template)
    assert anonymous.startswith("NONE")
    with_secret = _evaluate(output, _parameters(template, AuthSecret=SECRET), template)
    assert with_secret.startswith("JWT")


@pytest.mark.parametrize(
    ("origins", "credentials"),
    [
        ("*", False),
        ("https://app.example.com", True),
        ("https://a.example,https://b.example", True),
    ],
)
def test_template_allows_credentials_on_the_subscribe_url_only_for_listed_origins(
    template: dict[str, Any], origins: str, credentials: bool
) -> None:
    parameters = _parameters(template, AllowedOrigins=origins)
    for name in ("SubscribeFunction", "ManagedSubscribeFunction"):
        cors = _function(template, name)["FunctionUrlConfig"]["Cors"]
        assert _evaluate(cors["AllowCredentials"], parameters, template) is credentials


def test_template_passes_audience_and_issuer_only_when_set(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for parameter, variable in [("AuthAudience", "AUTH_AUDIENCE"), ("AuthIssuer", "AUTH_ISSUER")]:
        expression = variables[f"{ENV_PREFIX}{variable}"]
        unset = _evaluate(expression, _parameters(template), template)
        assert unset == {"Ref": "AWS::NoValue"}
        assert _evaluate(expression, _parameters(template, **{parameter: "x"}), template) == "x"


@pytest.mark.parametrize("mode", ["standard", "managed-instances"])
def test_template_deploys_one_subscribe_function_per_mode(
    template: dict[str, Any], mode: str
) -> None:
    parameters = _parameters(template, DeploymentMode=mode, AuthSecret=SECRET, **NETWORK)
    assert template["Parameters"]["DeploymentMode"]["Default"] == "standard"
    deployed = {
        name
        for name, resource in template["Resources"].items()
        if "Condition" not in resource
        or _evaluate({"Condition": resource["Condition"]}, parameters, template)
    }
    managed = {"CapacityProvider", "ManagedSubscribeFunction"}
    expected = managed if mode == "managed-instances" else {"SubscribeFunction"}
    assert deployed == {"EventsTable", "PublishFunction", *expected}
    url = _evaluate(template["Outputs"]["SubscribeUrl"]["Value"], parameters, template)
    function = "ManagedSubscribeFunction" if mode == "managed-instances" else "SubscribeFunction"
    assert url == {"GetAtt": f"{function}Url.FunctionUrl"}
    assert _refused(template, DeploymentMode=mode, AuthSecret=SECRET, **NETWORK) == []


def test_template_managed_instances_mode(template: dict[str, Any]) -> None:
    provider = template["Resources"]["CapacityProvider"]
    assert provider["Type"] == "AWS::Serverless::CapacityProvider"
    assert provider["Properties"]["InstanceRequirements"]["Architectures"] == ["arm64"]
    assert provider["Properties"]["VpcConfig"] == {
        "SubnetIds": {"Ref": "SubnetIds"},
        "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
    }
    function = _function(template, "ManagedSubscribeFunction")
    assert function["Runtime"] == "python3.13"  # the first Python that Managed Instances run
    assert template["Globals"]["Function"]["Architectures"] == ["arm64"]
    assert function["MemorySize"] == {"Ref": "ManagedMemorySize"}
    assert template["Parameters"]["ManagedMemorySize"]["MinValue"] >= 2048
    assert function["AutoPublishAlias"]
    config = function["CapacityProviderConfig"]
    assert config["Arn"] == {"GetAtt": "CapacityProvider.Arn"}
    assert config["PerExecutionEnvironmentMaxConcurrency"] == {
        "Ref": "PerExecutionEnvironmentMaxConcurrency"
    }
    # Otherwise the same function as in standard mode: no drift between the two.
    standard = _function(template, "SubscribeFunction")
    for shared in ("Handler", "Timeout", "Environment", "Policies", "FunctionUrlConfig"):
        assert function[shared] == standard[shared], shared


@pytest.mark.parametrize("name", FUNCTIONS)
def test_template_functions_are_built_for_their_own_python(
    template: dict[str, Any], name: str
) -> None:
    resource = template["Resources"][name]
    assert resource["Metadata"]["BuildMethod"] == "makefile"
    runtime = resource["Properties"].get("Runtime", template["Globals"]["Function"]["Runtime"])
    plan = subprocess.run(
        ["make", "--dry-run", f"build-{name}", "ARTIFACTS_DIR=/nonexistent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"--python-version {runtime.removeprefix('python')} " in plan


def test_template_passes_the_notify_url_and_a_vpc_only_when_set(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    expression = variables[f"{ENV_PREFIX}NOTIFY_URL"]
    assert _evaluate(expression, _parameters(template), template) == {"Ref": "AWS::NoValue"}
    url = "rediss://gateway:pw@cache.example:6379"
    assert _evaluate(expression, _parameters(template, NotifyUrl=url), template) == url
    assert template["Parameters"]["NotifyUrl"]["NoEcho"] is True
    network = {"VpcSubnetIds": "subnet-0a,subnet-0b", "VpcSecurityGroupIds": "sg-0a"}
    for name in ("SubscribeFunction", "PublishFunction"):
        vpc = _function(template, name)["VpcConfig"]
        assert _evaluate(vpc, _parameters(template), template) == {"Ref": "AWS::NoValue"}
        assert _evaluate(vpc, _parameters(template, **network), template) == {
            "SubnetIds": {"Ref": "VpcSubnetIds"},
            "SecurityGroupIds": {"Ref": "VpcSecurityGroupIds"},
        }
        # Managed Instances run in the capacity provider's VPC: no VpcConfig of their own.
        managed = _parameters(template, DeploymentMode="managed-instances", **network)
        assert _evaluate(vpc, managed, template) == {"Ref": "AWS::NoValue"}
