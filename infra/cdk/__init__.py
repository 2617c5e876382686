"""The platform on AWS as CDK stacks: data, warehouse, catalog, compute, monitoring (docs/infrastructure.md).

``python -m infra.app --env dev --outdir cdk.out`` synthesizes CloudFormation templates without an AWS account
or network; ``cdk deploy --app "python -m infra.app --env prod"`` deploys them. Names and key schemas come
from :mod:`infra.resources`, the same definitions the local stack is created from.
"""

from infra.cdk.app import build_app
from infra.cdk.config import ENVIRONMENTS, EnvConfig

__all__ = ["ENVIRONMENTS", "EnvConfig", "build_app"]
