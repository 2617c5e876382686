"""Deploying the synthesized CDK templates to a moto server's CloudFormation (shared by the infra tests).

The templates are the files ``python -m infra.app --env ENV`` writes, not a copy. moto's CloudFormation
cannot take them unchanged; the two adaptations are explicit here, and the tests assert that they are the
only ones needed (so a moto upgrade that supports more, or a stack that adds an unsupported type, shows up).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Resource types of the data and compute stacks that moto's CloudFormation does not implement (it would
# warn and skip them silently): stripped before create_stack, so nothing is skipped without the test saying so.
MOTO_UNSUPPORTED = frozenset({"AWS::S3::BucketPolicy"})
# Properties moto's CloudFormation mishandles: AWS::KMS::Key ``Tags`` use CloudFormation's Key/Value while
# moto's tagger expects TagKey/TagValue (KeyError, the key is never created). Stripped; tags are not under test.
MOTO_STRIPPED_PROPERTIES = {"AWS::KMS::Key": ("Tags",)}
# The CDK's CheckBootstrapVersion rule reads this SSM parameter (``cdk bootstrap`` writes it in a real account).
BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"


def synthesize(env: str, outdir: Path) -> dict[str, dict]:
    """``python -m infra.app --env ENV --outdir DIR``; returns {stack name: template}."""
    done = subprocess.run(
        [sys.executable, "-m", "infra.app", "--env", env, "--outdir", str(outdir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.name.removesuffix(".template.json"): json.loads(p.read_text()) for p in outdir.glob("*.template.json")}


def for_moto(template: dict) -> dict:
    """The template minus what moto cannot create (see the constants above); the input is not changed."""
    template = json.loads(json.dumps(template))
    resources = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] in MOTO_UNSUPPORTED:
            continue
        for prop in MOTO_STRIPPED_PROPERTIES.get(resource["Type"], ()):
            resource.get("Properties", {}).pop(prop, None)
        resources[logical_id] = resource
    template["Resources"] = resources
    return template


def deploy(cfn, ssm, stack_name: str, template: dict) -> dict[str, list[str]]:
    """create_stack on moto; returns {resource type: [physical ids]} of what the stack created.

    Four requests to the server (put_parameter, create_stack, describe_stacks, list_stack_resources): the
    IAM-enforcing test counts its bootstrap requests.
    """
    ssm.put_parameter(Name=BOOTSTRAP_PARAMETER, Value="21", Type="String", Overwrite=True)
    cfn.create_stack(StackName=stack_name, TemplateBody=json.dumps(for_moto(template)))
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    created: dict[str, list[str]] = {}
    for summary in cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]:
        assert summary["ResourceStatus"] == "CREATE_COMPLETE", summary
        created.setdefault(summary["ResourceType"], []).append(summary["PhysicalResourceId"])
    return created
