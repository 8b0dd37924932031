"""Print template.yaml as CloudFormation, translated by the SAM translator offline.

cfn-lint checks a SAM template against SAM's own schemas; linting the translated
template as well checks the resources CloudFormation will actually create, in
both deployment modes (they are CloudFormation conditions of one template).
Run with the SAM tools' interpreter: ``.venv-sam/bin/python .ci/sam_translate.py``.
"""

import json
import sys
from pathlib import Path

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The template names no AWS managed policy, so none need looking up in IAM."""

    def load(self) -> dict[str, str]:
        return {}


template = yaml_parse(Path("template.yaml").read_text())
# What `sam validate` does too: a code location the translator accepts.
template["Globals"]["Function"]["CodeUri"] = "s3://bucket/key"
json.dump(transform(template, {}, NoManagedPolicies()), sys.stdout, indent=1)
