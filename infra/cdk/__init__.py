"""The platform on AWS as CDK stacks: data, warehouse, catalog, compute, monitoring (docs/infrastructure.md).

``python -m infra.app --env dev --outdir cdk.out`` synthesizes CloudFormation templates without an AWS account
or network; ``cdk deploy --app "python -m infra.app --env prod"`` deploys them. Names and key schemas come
from :mod:`infra.resources`, the same definitions the local stack is created from.
"""

import os

# jsii prints a banner on every start under Node 20; the synth output is the same
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from infra.cdk.app import build_app  # noqa: E402
from infra.cdk.config import ENVIRONMENTS, EnvConfig  # noqa: E402

__all__ = ["ENVIRONMENTS", "EnvConfig", "build_app"]
