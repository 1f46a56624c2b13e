"""CDK entry point: `cdk synth` / `cdk deploy` run `python app.py` here (see cdk.json); so can you, offline.

Reads every input from context (infra/cdk.json, cdk.context.json, `-c key=value`), so synth needs no AWS
account, no lookups and no network besides packaging the Lambda's wheels (skip that with
`-c chalice_package=<dir>`, see infra/README.md). Run by the CLI, the CLI hands the context over; run as
`python app.py`, this module reads the same files and arguments itself. Imports CDK and infra's stack only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent
if str(ROOT) not in sys.path:  # `python app.py` from infra/: chalicelib and infra import from the repo root
    sys.path.insert(0, str(ROOT))
# Node 20 still runs jsii correctly; its end-of-life banner would drown synth output.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "18,20,22,24")

import aws_cdk as cdk  # noqa: E402

from infra.settings import load_settings  # noqa: E402
from infra.stacks.images import ImagesStack, images_settings  # noqa: E402
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
    images = app.node.try_get_context("images")
    if images:  # the machine images' pipelines: their own stack, deployed (and run) before the AMIs are known
        ImagesStack(
            app,
            f"{settings.prefix}-images",
            images_settings(images, settings.prefix),
            cdk.Environment(account=settings.account, region=settings.region),
        )
    return app, stack


_CONTEXT_KEYS = (
    "stage", "prefix", "account", "region", "config", "vpc_id", "subnets", "amis", "root_volumes",
    "chalice_package", "cache_expiration_days", "log_retention_days", "launch_hook_timeout",
    "terminate_hook_timeout", "on_demand_percentage", "on_demand_base", "machine_security_groups",
    "functions_vpc",
)  # fmt: skip


#: Context keys naming a file. The CLI runs app.py from infra/, so a relative `-c` value is relative to the
#: working directory there; run directly from elsewhere, it still is (cdk.json's own values stay infra/'s).
_PATH_KEYS = ("config", "chalice_package")


def cli_context(argv: Sequence[str], cwd: Path, infra: Path = INFRA) -> tuple[dict[str, Any], str]:
    """The context and output directory `cdk synth` would give app.py: cdk.context.json, then cdk.json's
    `context`, then `-c key=value` (a string, as the CLI passes it); `-o` as the CLI's, default `cdk.out`."""
    parser = argparse.ArgumentParser(prog="python app.py", description="synthesize without the CDK CLI")
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "-o", "--output", default="cdk.out", help="cloud assembly directory (default cdk.out)"
    )
    args = parser.parse_args(argv)
    context: dict[str, Any] = {}
    if (infra / "cdk.context.json").is_file():
        context.update(json.loads((infra / "cdk.context.json").read_text(encoding="utf-8")))
    context.update(json.loads((infra / "cdk.json").read_text(encoding="utf-8")).get("context", {}))
    for assignment in args.context:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            parser.error(f"-c {assignment!r}: write -c key=value")
        context[key] = str((cwd / value).resolve()) if key in _PATH_KEYS else value
    return context, str((cwd / args.output).resolve())


def main(argv: Sequence[str]) -> None:
    if "CDK_OUTDIR" in os.environ:  # the CDK CLI runs us: it passes context and output directory itself
        build()[0].synth()
        return
    context, outdir = cli_context(argv, Path.cwd())
    build(context, outdir)[0].synth()
    print(f"cloud assembly in {outdir}")


if __name__ == "__main__":
    main(sys.argv[1:])
