"""The CDK app: ``python -m infra.app --env dev|staging|prod [--outdir DIR] [--account ID]``.

Writes ``DIR/<stack>.template.json`` (CloudFormation) for the environment's stacks without an AWS account or
network. The CDK CLI runs the same app: ``cdk deploy --app "python -m infra.app --env prod" --all``
(``cdk.json`` names it with ``--env dev``). See docs/infrastructure.md.
"""

from __future__ import annotations

import argparse
import os

from infra.cdk.app import build_app
from infra.cdk.config import ENVIRONMENTS


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=sorted(ENVIRONMENTS), required=True, help="Environment to synthesize.")
    parser.add_argument(
        "--outdir",
        default=os.environ.get("CDK_OUTDIR"),
        help="Cloud assembly directory (default: $CDK_OUTDIR set by the CDK CLI, else cdk.out).",
    )
    parser.add_argument("--account", default=None, help="Override the environment's account id.")
    args = parser.parse_args(argv)
    config = ENVIRONMENTS[args.env]
    if args.account:
        config = config.model_copy(update={"account": args.account})
        config = type(config).model_validate(config.model_dump())
    app, _ = build_app(config, args.outdir)
    assembly = app.synth()
    paths = [os.path.join(assembly.directory, s.template_file) for s in assembly.stacks]
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
