"""The layers of chalicelib, read from its imports (ast, no import is executed): the pure core imports no
adapter and no use case, adapters import no use case, nothing imports the handler, only adapters call AWS.

Every module of chalicelib is placed in exactly one layer below, so a new module must be placed before this
test passes. An exception is allowed only when it is listed with its reason; none is silent.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "chalicelib"

#: Models at the edges and shared vocabulary: anyone may import them; they import only each other.
MODELS = frozenset(
    {"config", "errors", "events", "events.aws", "events.gitlab", "events.timestamps", "resources"}
)
#: The pure core: data in, decision out, `now` a parameter.
CORE = frozenset(
    {
        "capacity",
        "capacity.engine",
        "capacity.fallback",
        "capacity.hosts",
        "capacity.model",
        "capacity.routing",
        "forecast",
        "certs",
    }
)
#: Adapters: the only modules that talk to a service (AWS, GitLab, CloudWatch through EMF logs, X-Ray).
#: `hosts` and `pipelines` also hold the executor / small use-case functions of their own state; they import
#: no use case, which is what this test checks.
ADAPTERS = frozenset(
    {
        "aws",
        "dynamo",
        "store",
        "pipelines",
        "fleet",
        "hosts",
        "queue",
        "secrets",
        "parameters",
        "gitlab",
        "metrics",
        "tracing",
        "logs",
    }
)
#: Use cases: read through adapters, decide with the core, apply through adapters.
USE_CASES = frozenset(
    {
        "alarms",
        "drain",
        "eligibility",
        "heal",
        "hook_sync",
        "jobs",
        "lifecycle",
        "ports",
        "reconcile",
        "rotation",
        "sweep",
        "triggers",
        "webhooks",
    }
)
#: Wiring: the composition root. Builds the adapters and use cases of one container from the environment and
#: hands each use case its ports; only the handler calls it (and the toolkit's local app, and test fixtures).
WIRING = frozenset({"runtime"})
PACKAGE_INIT = frozenset({""})
LAYERS = {"model": MODELS, "core": CORE, "adapter": ADAPTERS, "use case": USE_CASES, "wiring": WIRING}

#: Packages the Lambda bundle never holds: dev tools, the simulator, the CDK app, the CLI's libraries, tests.
NOT_IN_LAMBDA = ("toolkit", "sim", "infra", "typer", "rich", "moto", "hypothesis", "pytest", "tests", "app")
#: The AWS SDK: imported by the seam alone.
SDK = ("boto3", "botocore")
SEAM = "aws"

#: Known breaks, each with why it is allowed for now: (importer, imported) -> reason. None left: the use
#: cases take explicit ports (chalicelib.ports) since #20 item 2, and no longer reach the wiring.
EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str  # module name inside chalicelib ("" for the package, "capacity.engine" ...)
    imported: str  # full dotted name as written ("chalicelib.store", "boto3.dynamodb.types")
    line: int


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def chalicelib_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(path: Path, root: Path = PACKAGE) -> Iterator[Import]:
    """Every import of a module, lazy and TYPE_CHECKING-only ones included (a type is a dependency too)."""
    importer = module_name(path, root)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"chalicelib/{importer}: use absolute imports (line {node.lineno})"
            assert node.module is not None
            if node.module == "chalicelib":
                for alias in node.names:
                    yield Import(importer, f"chalicelib.{alias.name}", node.lineno)
            else:
                yield Import(importer, node.module, node.lineno)


def all_imports(root: Path = PACKAGE) -> list[Import]:
    return [found for path in chalicelib_modules(root).values() for found in imports_of(path, root)]


def layer_of(module: str) -> str:
    """The layer of a chalicelib module, or of the nearest placed package above it."""
    candidate = module
    while True:
        for layer, members in LAYERS.items():
            if candidate in members:
                return layer
        if candidate in PACKAGE_INIT:
            return "package"
        if "." not in candidate:
            raise AssertionError(
                f"chalicelib.{module} is in no layer: place it in tests/unit/{Path(__file__).name}"
            )
        candidate = candidate.rsplit(".", 1)[0]


def internal(imported: str) -> str | None:
    """`chalicelib.x.y` -> `x.y`; None for anything outside chalicelib."""
    if imported == "chalicelib":
        return ""
    return imported.removeprefix("chalicelib.") if imported.startswith("chalicelib.") else None


def breaks(forbidden: dict[str, set[str]], root: Path = PACKAGE) -> list[str]:
    """Imports from a layer to a layer it may not import, minus the listed exceptions."""
    found = []
    for imp in all_imports(root):
        target = internal(imp.imported)
        if not target:
            continue
        source_layer, target_layer = layer_of(imp.importer), layer_of(target)
        if target_layer in forbidden.get(source_layer, set()) and (imp.importer, target) not in EXCEPTIONS:
            found.append(
                f"chalicelib/{imp.importer} ({source_layer}) imports {target} ({target_layer}):{imp.line}"
            )
    return found


def sdk_imports(root: Path = PACKAGE) -> list[str]:
    """Imports of boto3 / botocore anywhere but the seam."""
    return [
        f"chalicelib/{imp.importer}: {imp.imported} (line {imp.line})"
        for imp in all_imports(root)
        if imp.imported.split(".")[0] in SDK and imp.importer != SEAM
    ]


def sdk_calls(path: Path) -> Iterator[tuple[int, str]]:
    """`x.call("service", op, ...)` / `x.paginate("service", op, ...)`: a call through the AwsClients seam."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"call", "paginate"}
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, f"{node.args[0].value}.{ast.unparse(node.args[1])}"


def aws_calls_outside_adapters(root: Path = PACKAGE) -> list[str]:
    return [
        f"chalicelib/{name}:{line} calls {what}"
        for name, path in chalicelib_modules(root).items()
        if layer_of(name) != "adapter"
        for line, what in sdk_calls(path)
    ]


def test_every_module_is_placed_in_one_layer() -> None:
    # GIVEN the layer lists; WHEN each module of chalicelib is looked up
    placed = [name for layer in LAYERS.values() for name in layer]
    # THEN no module is in two layers, and every module (or its package) is in one
    assert len(placed) == len(set(placed)), "a module is listed in two layers"
    for name in chalicelib_modules():
        layer_of(name)
    # AND every listed module exists (a rename updates this file)
    known = set(chalicelib_modules())
    assert set(placed) - known == set(), "listed modules that do not exist"


def test_the_core_imports_no_adapter_no_use_case_and_no_sdk() -> None:
    # GIVEN the imports of capacity, forecast and certs
    # THEN none of them reaches an adapter, a use case or the wiring (the SDK: only the seam imports it)
    assert breaks({"core": {"adapter", "use case", "wiring"}}) == []


def test_models_import_only_models() -> None:
    assert breaks({"model": {"core", "adapter", "use case", "wiring"}}) == []


def test_adapters_import_no_use_case_and_no_wiring() -> None:
    assert breaks({"adapter": {"use case", "wiring"}}) == []


def test_no_module_imports_the_wiring() -> None:
    """`runtime` is the wiring that only the handler calls: use cases get their ports instead, so no module
    of chalicelib imports it, lazily or not (it may import them all: it builds them)."""
    assert breaks({layer: {"wiring"} for layer in LAYERS}) == []


def test_no_module_imports_the_handler_or_what_lambda_never_runs() -> None:
    # GIVEN every import in chalicelib, lazy ones included
    # THEN none names app.py, the dev tools, the simulator, the CDK app or a test-only library
    found = [
        f"chalicelib/{imp.importer}: {imp.imported} (line {imp.line})"
        for imp in all_imports()
        if imp.imported.split(".")[0] in NOT_IN_LAMBDA
    ]
    assert found == []


def test_only_the_seam_imports_the_aws_sdk() -> None:
    assert sdk_imports() == []


def test_only_adapters_call_aws() -> None:
    # GIVEN every call through the AwsClients seam in chalicelib; THEN each sits in an adapter module
    assert aws_calls_outside_adapters() == []


def test_every_listed_exception_is_still_needed() -> None:
    """An exception nobody needs any more is removed, so the list stays the list of what is left to do."""
    present = {(imp.importer, internal(imp.imported)) for imp in all_imports()}
    assert [pair for pair in EXCEPTIONS if pair not in present] == []


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("capacity/engine.py", "from chalicelib.store import DynamoStore\n"),
        ("forecast.py", "from chalicelib import reconcile\n"),
        ("certs.py", "import boto3\n"),
        ("store.py", "from chalicelib.reconcile import Reconciler\n"),
        ("gitlab.py", "from chalicelib.runtime import Runtime\n"),
        ("jobs.py", "def f(aws):\n    aws.call('sqs', 'send_message')\n"),
        ("webhooks.py", "import app\n"),
        ("heal.py", "from toolkit.devtools import demo\n"),
        ("triggers.py", "def f():\n    from chalicelib.runtime import current\n"),
    ],
)
def test_the_rules_catch_a_planted_break(source: str, text: str, tmp_path: Path) -> None:
    """The checks above are not vacuous: each planted break is reported by one of them."""
    # GIVEN a package holding one module with one forbidden line
    root = tmp_path / "chalicelib"
    (root / source).parent.mkdir(parents=True, exist_ok=True)
    (root / source).write_text(text, encoding="utf-8")
    # WHEN the checks read that package
    reported = (
        breaks(
            {
                "core": {"adapter", "use case", "wiring"},
                "adapter": {"use case", "wiring"},
                "use case": {"wiring"},
            },
            root,
        )
        + sdk_imports(root)
        + aws_calls_outside_adapters(root)
        + [i.imported for i in all_imports(root) if i.imported.split(".")[0] in NOT_IN_LAMBDA]
    )
    # THEN the break is reported
    assert len(reported) == 1, reported
