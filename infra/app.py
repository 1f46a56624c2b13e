"""CDK entry point: `cdk synth` / `cdk deploy` run `python app.py` here (see cdk.json).

Reads every input from context (infra/cdk.json, cdk.context.json, `-c key=value`), so synth needs no AWS
account, no lookups and no network besides packaging the Lambda's wheels (skip that with
`-c chalice_package=<dir>`, see infra/README.md). Imports CDK and infra's stack only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python app.py` from infra/: chalicelib and infra import from the repo root
    sys.path.insert(0, str(ROOT))
# Node 20 still runs jsii correctly; its end-of-life banner would drown synth output.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "18,20,22,24")

import aws_cdk as cdk  # noqa: E402

from infra.settings import load_settings  # noqa: E402
from infra.stacks.scaler import ScalerStack  # noqa: E402


def build(
    context: dict[str, Any] | None = None, outdir: str | None = None, *, validate: bool = True
) -> tuple[cdk.App, ScalerStack]:
    """The app with its one stack. Tests pass the context and an output directory, and lint the template
    with the pinned cfn-lint rather than CDK's built-in validator (which adds about 40 s per synth)."""
    app = cdk.App(context=context, outdir=outdir, builtin_cloud_formation_validation=validate)
    values = {key: app.node.try_get_context(key) for key in _CONTEXT_KEYS}
    settings = load_settings({k: v for k, v in values.items() if v is not None})
    stack = ScalerStack(app, f"{settings.prefix}-scaler", settings)
    return app, stack


_CONTEXT_KEYS = (
    "stage", "prefix", "account", "region", "config", "vpc_id", "subnets", "amis", "root_volumes",
    "chalice_package", "cache_expiration_days", "log_retention_days", "launch_hook_timeout",
    "terminate_hook_timeout", "on_demand_percentage", "on_demand_base", "machine_security_groups",
)  # fmt: skip


if __name__ == "__main__":
    build()[0].synth()
