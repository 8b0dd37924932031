"""template.yaml against the code: the table the store uses, the routes each
function serves, least privilege, settings that exist, both deployment modes,
and the secure defaults, whose Rules and Conditions are evaluated here for
given parameters (CloudFormation itself is out of reach of the tests)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import IDEMPOTENCY_KEY_HEADER
from gateway.keys import READ_ACTIONS
from gateway.settings import ENV_PREFIX, Settings, variable_names
from infra.table import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA, TTL_ATTRIBUTE
from tests.iam import OpenLog, iam_actions, record_publish_function, record_subscribe_function, seed
from tests.servers import FaultProxy

ROOT = Path(__file__).parent.parent
DEPLOY_PAGE = ROOT / "docs" / "deploy-aws.md"
FUNCTIONS = ("SubscribeFunction", "ManagedSubscribeFunction", "PublishFunction")


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


def _statements(
    function: dict[str, Any], template: dict[str, Any], **parameters: str
) -> list[dict[str, Any]]:
    """The statements of a function's role, for the given parameter values."""
    values = _parameters(template, **parameters)
    statements = [
        _evaluate(statement, values, template)
        for policy in function["Policies"]
        for statement in policy["Statement"]
    ]
    return [statement for statement in statements if statement != {"Ref": "AWS::NoValue"}]


def _dynamodb_grants(function: dict[str, Any], template: dict[str, Any]) -> set[str]:
    """The DynamoDB actions a function's role grants, each on the events table only."""
    granted = set()
    for statement in _statements(function, template, AuthSecretArn=SECRET_ARNS["ssm"]):
        listed = statement["Action"]
        actions = {
            a
            for a in ([listed] if isinstance(listed, str) else listed)
            if a.startswith("dynamodb:")
        }
        if actions:
            assert statement["Effect"] == "Allow"
            assert statement["Resource"] == {"GetAtt": "EventsTable.Arn"}, statement
            granted |= actions
    return granted


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
    wrapper = function["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"]
    local_wrapper = ROOT / wrapper.removeprefix("/var/task/")
    assert local_wrapper.is_file() and os.access(local_wrapper, os.X_OK)
    assert "-m handlers.stream" in local_wrapper.read_text()


def test_template_publish_function_is_buffered_and_signed(
    template: dict[str, Any],
) -> None:
    function = _function(template, "PublishFunction")
    url = function["FunctionUrlConfig"]
    assert url["InvokeMode"] == "BUFFERED"
    assert url["AuthType"] == {"Ref": "PublishAuthType"}
    assert template["Parameters"]["PublishAuthType"]["Default"] == "AWS_IAM"


def test_template_publish_role_grants_exactly_what_the_publish_function_does(
    template: dict[str, Any],
    fault_proxy: FaultProxy,
    make_settings: Callable[..., Settings],
    open_log: OpenLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    requests = record_publish_function(fault_proxy, settings, open_log, monkeypatch.setenv)
    used = iam_actions(requests, settings.table_name)
    # The paths were driven: an append checks the item it follows in a transaction.
    assert "dynamodb:ConditionCheckItem" in used
    assert _dynamodb_grants(_function(template, "PublishFunction"), template) == used


async def test_template_subscribe_roles_grant_exactly_what_the_subscribe_function_does(
    template: dict[str, Any],
    fault_proxy: FaultProxy,
    make_settings: Callable[..., Settings],
    open_log: OpenLog,
) -> None:
    settings = make_settings()
    await seed(open_log, "orders:42")
    used = iam_actions(await record_subscribe_function(fault_proxy, settings), settings.table_name)
    for name in ("SubscribeFunction", "ManagedSubscribeFunction"):
        assert _dynamodb_grants(_function(template, name), template) == used, name


SECRET_ARNS = {
    "secretsmanager": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sse-AbCdEf",
    "ssm": "arn:aws:ssm:eu-west-1:123456789012:parameter/sse/auth-secret",
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_template_lets_each_function_read_its_secret_and_no_other(
    template: dict[str, Any], name: str
) -> None:
    function = _function(template, name)

    def other_grants(**parameters: str) -> list[dict[str, Any]]:
        statements = _statements(function, template, **parameters)
        return [s for s in statements if s["Resource"] != {"GetAtt": "EventsTable.Arn"}]

    assert other_grants() == []
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for parameter, setting in [
        ("AuthSecretArn", "auth_secret_arn"),
        ("NotifyUrlArn", "notify_url_arn"),
    ]:
        for service, arn in SECRET_ARNS.items():
            grant = {"Effect": "Allow", "Action": READ_ACTIONS[service], "Resource": arn}
            assert other_grants(**{parameter: arn}) == [grant]
            # The value the function reads the secret from, as Settings accepts it.
            passed = _evaluate(
                variables[f"{ENV_PREFIX}{setting.upper()}"],
                _parameters(template, **{parameter: arn}),
                template,
            )
            assert getattr(Settings(**{setting: passed}), setting) == arn
        pattern = template["Parameters"][parameter]["AllowedPattern"]
        assert all(re.fullmatch(pattern, arn) for arn in [*SECRET_ARNS.values(), ""])
        assert not re.fullmatch(pattern, "arn:aws:s3:::bucket/secret")
    both = {"AuthSecretArn": SECRET_ARNS["ssm"], "NotifyUrlArn": SECRET_ARNS["secretsmanager"]}
    assert len(other_grants(**both)) == 2


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


def test_template_turns_idle_release_on_by_default_and_off_when_emptied(
    template: dict[str, Any],
) -> None:
    """On by default: an abandoned connection on an idle channel releases its environment."""
    for name in ("SubscribeFunction", "ManagedSubscribeFunction"):
        variables = _function(template, name)["Environment"]["Variables"]
        expression = variables[f"{ENV_PREFIX}IDLE_SESSION_SECONDS"]
        assert _evaluate(expression, _parameters(template), template) == "30"
        off = _parameters(template, IdleSessionSeconds="")
        assert _evaluate(expression, off, template) == {"Ref": "AWS::NoValue"}


def _evaluate(node: Any, parameters: dict[str, Any], template: dict[str, Any]) -> Any:
    """A CloudFormation condition or rule expression, for the given parameter values."""

    def value(argument: Any) -> Any:
        return _evaluate(argument, parameters, template)

    if isinstance(node, list):
        return [value(item) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) != 1:  # a mapping of properties
        return {key: value(item) for key, item in node.items()}
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
        case "Split":
            separator, text = value(argument)
            return text.split(separator)
        case "Select":
            index, values = value(argument)
            return values[int(index)]
        case "Sub" if isinstance(argument, str):  # parameters only, as the template uses it
            return re.sub(r"\$\{([A-Za-z0-9]+)\}", lambda m: str(parameters[m[1]]), argument)
        case "If":
            condition, when_true, when_false = argument
            return value(when_true if value({"Condition": condition}) else when_false)
    return {function: value(argument)}  # a property, or an intrinsic left as it is


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
    assert _refused(template, AuthSecretArn=SECRET_ARNS["secretsmanager"]) == []
    assert _refused(template, AllowAnonymousSubscribe="true") == []
    assert template["Parameters"]["AuthSecret"]["NoEcho"] is True


def test_template_takes_the_notify_url_or_its_arn_not_both(template: dict[str, Any]) -> None:
    auth = {"AuthSecret": SECRET}
    arn = {"NotifyUrlArn": SECRET_ARNS["secretsmanager"]}
    assert _refused(template, **auth, **arn) == []
    assert _refused(template, **auth, NotifyUrl="rediss://:t@cache:6379") == []
    (refusal,) = _refused(template, **auth, **arn, NotifyUrl="rediss://:t@cache:6379")
    assert "not both" in refusal
    assert template["Parameters"]["NotifyUrl"]["NoEcho"] is True


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
    managed = {"CapacityProvider", "ManagedSubscribeFunction", "ManagedSubscribeLogGroup"}
    standard = {"SubscribeFunction", "SubscribeLogGroup"}
    expected = managed if mode == "managed-instances" else standard
    assert deployed == {"EventsTable", "PublishFunction", "PublishLogGroup", *expected}
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


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_plain_sam_build_copies_no_environment_into_a_function(
    template: dict[str, Any], name: str
) -> None:
    """Without --build-in-source, sam build copies a makefile function's CodeUri to a
    scratch directory first, with no ignore file (.ci/run checks the copy in a real
    build). So CodeUri holds no code and no environment: make runs the project's
    Makefile in the project root, which builds from pyproject.toml and the packages."""
    code_uri = ROOT / template["Globals"]["Function"]["CodeUri"]
    assert code_uri.is_dir() and code_uri != ROOT
    copied = [path.relative_to(code_uri) for path in code_uri.rglob("*")]
    assert copied == [Path("README.md")], copied
    metadata = template["Resources"][name]["Metadata"]
    assert (ROOT / metadata["ContextPath"] / "Makefile").is_file()
    assert (ROOT / metadata["WorkingDirectory"]).resolve() == ROOT.resolve()
    assert "CodeUri" not in template["Resources"][name]["Properties"]


def _short_form(node: Any) -> Any:
    """A translated template's intrinsics as this file's loader reads them (If, not Fn::If)."""
    if isinstance(node, list):
        return [_short_form(item) for item in node]
    if isinstance(node, dict):
        return {key.removeprefix("Fn::"): _short_form(value) for key, value in node.items()}
    return node


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    """template.yaml as CloudFormation, translated offline as .ci/sam_translate.py does:
    the resources SAM adds (function URLs, their permissions, roles) included."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator
    from samtranslator.yaml_helper import yaml_parse

    sam = yaml_parse((ROOT / "template.yaml").read_text())
    sam["Globals"]["Function"]["CodeUri"] = "s3://bucket/key"
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name="us-east-1"))
    cloudformation = translator.translate(sam, {}, get_managed_policy_map=dict)
    result: dict[str, Any] = _short_form(json.loads(json.dumps(cloudformation)))
    return result


def _deployed(template: dict[str, Any], **overrides: str) -> dict[str, dict[str, Any]]:
    """Each resource created for these parameters, its properties evaluated."""
    parameters = _parameters(template, AuthSecret=SECRET, **NETWORK, **overrides)
    return {
        name: _evaluate(resource.get("Properties", {}), parameters, template)
        | {"Type": resource["Type"]}
        for name, resource in template["Resources"].items()
        if "Condition" not in resource
        or _evaluate({"Condition": resource["Condition"]}, parameters, template)
    }


@pytest.mark.parametrize("mode", ["standard", "managed-instances"])
@pytest.mark.parametrize("auth", ["AWS_IAM", "NONE"])
def test_translated_template_lets_anyone_call_exactly_the_public_urls(
    translated: dict[str, Any], mode: str, auth: str
) -> None:
    resources = _deployed(translated, DeploymentMode=mode, PublishAuthType=auth)
    urls = {name: url for name, url in resources.items() if url["Type"] == "AWS::Lambda::Url"}
    public = {
        json.dumps(url["TargetFunctionArn"]) for url in urls.values() if url["AuthType"] == "NONE"
    }
    # Lambda needs both for a public URL (since October 2025 for new ones).
    needed = {
        (action, target, condition)
        for target in public
        for action, condition in [
            ("lambda:InvokeFunctionUrl", ("FunctionUrlAuthType", "NONE")),
            ("lambda:InvokeFunction", ("InvokedViaFunctionUrl", True)),
        ]
    }
    granted = {
        (
            permission["Action"],
            json.dumps(permission["FunctionName"]),
            next((k, v) for k, v in permission.items() if k.endswith(("AuthType", "FunctionUrl"))),
        )
        for permission in resources.values()
        if permission["Type"] == "AWS::Lambda::Permission" and permission["Principal"] == "*"
    }
    assert granted == needed
    publish = json.dumps(urls["PublishFunctionUrl"]["TargetFunctionArn"])
    assert (publish in public) is (auth == "NONE")
    assert len(public) == (2 if auth == "NONE" else 1)  # the subscribe URL is always public


async def test_translated_template_cors_matches_the_containers(
    translated: dict[str, Any], gateway: Callable[..., Any], http: Any
) -> None:
    from starlette.middleware.cors import SAFELISTED_HEADERS

    origin = "https://app.example.com"
    server = gateway(cors_allowed_origins=[origin])
    url = f"{server.url}/channels/orders:42/events"
    preflight = await http.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": IDEMPOTENCY_KEY_HEADER,
        },
    )
    assert preflight.status_code == 200, preflight.text
    published = await http.post(url, json={"data": 1}, headers={"Origin": origin})
    assert published.status_code == 201

    def listed(value: str) -> set[str]:
        return {item.strip().lower() for item in value.split(",")}

    resources = _deployed(translated, AllowedOrigins=origin)
    cors = {name: resources[f"{name}FunctionUrl"]["Cors"] for name in ("Subscribe", "Publish")}
    allowed = {h.lower() for c in cors.values() for h in c["AllowHeaders"]}
    safelisted = {h.lower() for h in SAFELISTED_HEADERS}  # needing no preflight
    assert allowed | safelisted == listed(preflight.headers["access-control-allow-headers"])
    assert IDEMPOTENCY_KEY_HEADER.lower() in {h.lower() for h in cors["Publish"]["AllowHeaders"]}
    methods = {m for c in cors.values() for m in c["AllowMethods"]}
    assert methods == {m.upper() for m in listed(preflight.headers["access-control-allow-methods"])}
    exposed = {h.lower() for h in cors["Publish"].get("ExposeHeaders", [])}
    assert exposed == listed(published.headers["access-control-expose-headers"])
    assert cors["Subscribe"]["AllowOrigins"] == [origin]


@pytest.mark.parametrize(
    ("name", "parameter"),
    [
        ("SubscribeFunction", "SubscribeReservedConcurrency"),
        ("PublishFunction", "PublishReservedConcurrency"),
    ],
)
def test_template_caps_each_standard_function_by_reserved_concurrency(
    template: dict[str, Any], name: str, parameter: str
) -> None:
    spec = template["Parameters"][parameter]
    default = int(spec["Default"])
    assert default > 0
    assert f"`{parameter}` (default {default})" in " ".join(DEPLOY_PAGE.read_text().split())
    expression = _function(template, name)["ReservedConcurrentExecutions"]
    assert _evaluate(expression, _parameters(template), template) == str(default)
    unset = _evaluate(expression, _parameters(template, **{parameter: ""}), template)
    assert unset == {"Ref": "AWS::NoValue"}
    assert re.fullmatch(spec["AllowedPattern"], "") and not re.fullmatch(
        spec["AllowedPattern"], "-1"
    )


@pytest.mark.parametrize("name", FUNCTIONS)
def test_template_gives_each_function_a_log_group_with_a_retention(
    template: dict[str, Any], name: str
) -> None:
    group = _function(template, name)["LoggingConfig"]["LogGroup"]["Ref"]
    resource = template["Resources"][group]
    assert resource["Type"] == "AWS::Logs::LogGroup"
    assert resource.get("Condition") == template["Resources"][name].get("Condition")
    assert resource["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert (
        template["Parameters"]["LogRetentionDays"]["Default"]
        in (template["Parameters"]["LogRetentionDays"]["AllowedValues"])
    )


def test_template_asks_for_the_allowed_origins_and_warns_of_a_wildcard(
    template: dict[str, Any],
) -> None:
    assert "Default" not in template["Parameters"]["AllowedOrigins"]
    warning = template["Outputs"]["CorsWarning"]
    for origins, warned in [("*", True), ("https://app.example.com", False)]:
        parameters = _parameters(template, AllowedOrigins=origins)
        assert _evaluate({"Condition": warning["Condition"]}, parameters, template) is warned
    assert "WARNING" in warning["Value"] and "AllowedOrigins" in warning["Value"]


def test_the_deploy_guide_names_the_templates_parameters_and_outputs(
    template: dict[str, Any],
) -> None:
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("### Deploy to AWS") : readme.index("## Documentation")]
    section = DEPLOY_PAGE.read_text() + tour
    overrides = set(re.findall(r"\b([A-Z][a-z][A-Za-z]+)=", section))
    assert {"AuthSecretArn", "AllowedOrigins", "DeploymentMode"} <= overrides
    assert overrides <= set(template["Parameters"]), overrides - set(template["Parameters"])
    outputs = re.search(r"The outputs are (.*?)\. ", " ".join(section.split()))
    assert outputs is not None
    listed = re.sub(r"\([^)]*\)", "", outputs[1])  # not what an aside names
    assert set(re.findall(r"`([A-Za-z]+)`", listed)) == set(template["Outputs"])


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
            "SubnetIds": ["subnet-0a", "subnet-0b"],
            "SecurityGroupIds": ["sg-0a"],
        }
        # Managed Instances run in the capacity provider's VPC: no VpcConfig of their own.
        managed = _parameters(template, DeploymentMode="managed-instances", **network)
        assert _evaluate(vpc, managed, template) == {"Ref": "AWS::NoValue"}
