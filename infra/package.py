"""Package the Chalice app for the CDK stack: `sam.json` + `deployment.zip`, in a child process.

`chalice.cdk.Chalice` packages at synth time with `chalice package`, which imports app.py (mutating
os.environ with the stage's variables) and downloads Lambda wheels for requirements.txt from PyPI. A child
process keeps the synth process clean; the result directory can also be made ahead of time and handed to
synth with `-c chalice_package=<dir>` (a CI build step, or a machine without PyPI):

    python -m infra.package --stage dev --prefix runner-scaler-dev --region eu-west-1 --out build/chalice

`--no-dependencies` packages app.py + chalicelib only (an empty requirements.txt), offline and in about a
second: the tests use it, since they check the template, not the vendored wheels. Imports chalice lazily.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from chalicelib.resources import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[1]
#: Functions get the stack's role by override after packaging; Chalice needs some ARN to not make a role.
PLACEHOLDER_ROLE_ARN = "arn:aws:iam::000000000000:role/runner-scaler-replaced-by-infra"
#: What the Lambda bundle holds besides vendored wheels (Chalice adds app.py and chalicelib/ itself).
_APP_FILES = ("app.py", "chalicelib", ".chalice/config.json")


class PackageError(RuntimeError):
    """`chalice package` failed; the message carries its output."""


def package(
    out_dir: Path,
    *,
    stage: str,
    prefix: str,
    region: str,
    project_dir: Path = ROOT,
    with_dependencies: bool = True,
) -> Path:
    """Run the packaging in a child process; returns `out_dir` (holding sam.json and deployment.zip)."""
    command = [
        sys.executable, "-m", "infra.package", "--stage", stage, "--prefix", prefix, "--region", region,
        "--project-dir", str(project_dir), "--out", str(out_dir),
    ]  # fmt: skip
    if not with_dependencies:
        command.append("--no-dependencies")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageError(f"chalice package failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return out_dir


def package_in_process(
    out_dir: Path, *, stage: str, prefix: str, project_dir: Path, with_dependencies: bool
) -> None:
    """`chalice package` through its Python API, with the stack's role placeholder and prefix."""
    from chalice import api

    stage_config = {
        "manage_iam_role": False,
        "iam_role_arn": PLACEHOLDER_ROLE_ARN,
        # app.py reads the prefix at import (queue name of its SQS handler): it must be this deployment's.
        "environment_variables": {ENV_PREFIX: prefix},
    }
    if with_dependencies:
        api.package_app(str(project_dir), str(out_dir), stage, chalice_config=stage_config)
        return
    with tempfile.TemporaryDirectory(prefix="runner-scaler-app-") as staged:
        _stage_app_only(project_dir, Path(staged))
        api.package_app(staged, str(out_dir), stage, chalice_config=stage_config)


def _stage_app_only(project_dir: Path, staged: Path) -> None:
    for name in _APP_FILES:
        source = project_dir / name
        target = staged / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    (staged / "requirements.txt").write_text("", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", required=True)
    parser.add_argument("--prefix", required=True, help="deployment prefix (RUNNER_SCALER_PREFIX)")
    parser.add_argument("--region", required=True, help="only names service principals; nothing is called")
    parser.add_argument("--project-dir", default=str(ROOT))
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-dependencies", action="store_true", help="skip requirements.txt (offline)")
    args = parser.parse_args(argv)
    os.environ["AWS_DEFAULT_REGION"] = args.region
    package_in_process(
        Path(args.out).resolve(),
        stage=args.stage,
        prefix=args.prefix,
        project_dir=Path(args.project_dir).resolve(),
        with_dependencies=not args.no_dependencies,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
