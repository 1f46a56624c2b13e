"""`runner-scaler certs`: the fleet's Docker TLS base certs, handled as docker-machine's commands do, in
Secrets Manager (`--secret`) or offline in a directory (`--local DIR`, no AWS call). May import typer, rich
and chalicelib; key material goes to files (0600), never to the terminal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from chalicelib import certs
from chalicelib.certs import BaseCerts, CertPolicy, KeyAlgorithm
from chalicelib.config import format_duration, parse_duration
from chalicelib.errors import RunnerScalerError
from chalicelib.resources import DEFAULT_PREFIX, ENV_PREFIX, Names
from toolkit.cli.consoles import CliConsole

console = CliConsole()
err = CliConsole(stderr=True)

certs_app = typer.Typer(
    name="certs",
    help=(
        "The fleet's Docker TLS base certs (CA + client certificate) and machine server certificates. "
        "Stored in Secrets Manager, or in a directory with --local (docker-machine's layout: ca.pem, "
        "ca-key.pem, cert.pem, key.pem)."
    ),
    no_args_is_help=True,
)


def _duration(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


SecretOption = Annotated[
    str | None,
    typer.Option("--secret", help="Secrets Manager secret; default: <prefix>/docker-base-certs"),
]
LocalOption = Annotated[
    Path | None,
    typer.Option("--local", help="offline: read/write base certs in this directory, no AWS call"),
]
PrefixOption = Annotated[
    str | None,
    typer.Option("--prefix", help=f"deployment prefix; default: ${ENV_PREFIX} or {DEFAULT_PREFIX}"),
]
EndpointOption = Annotated[str | None, typer.Option(help="AWS endpoint, e.g. a local moto server")]
BeforeOption = Annotated[
    str,
    typer.Option(
        "--regenerate-before", help="Go duration: regenerate when NotAfter is closer than this (720h = 30d)"
    ),
]


def _now() -> datetime:
    return datetime.now(UTC)


def _names(prefix: str | None) -> Names:
    return Names(prefix or os.environ.get(ENV_PREFIX) or DEFAULT_PREFIX)


def _secrets(endpoint_url: str | None) -> Any:
    from chalicelib.aws import AwsClients
    from chalicelib.secrets import AwsSecrets

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return AwsSecrets(AwsClients(region=region, endpoint_url=endpoint_url))


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


def _guarded(action: Callable[[], None]) -> None:
    """Run a command body; our errors become one red line and exit 1 (never a traceback with PEMs)."""
    try:
        action()
    except RunnerScalerError as exc:
        raise _fail(str(exc)) from None


def load_base_certs(
    secret: str | None, local: Path | None, prefix: str | None, endpoint: str | None
) -> BaseCerts:
    """The base certs from `--local DIR` or from the secret's AWSCURRENT version."""
    if local is not None:
        return certs.load_dir(local)
    from chalicelib.rotation import parse_base_certs

    name = secret or _names(prefix).base_certs_secret
    base = parse_base_certs(_secrets(endpoint).get_value(name).value)
    if base is None:
        raise _fail(f"secret {name} holds no base certs yet; run `runner-scaler certs regenerate-base-certs`")
    return base


@certs_app.command("regenerate-base-certs")
def regenerate_base_certs(
    regenerate_before: BeforeOption = "720h",
    secret: SecretOption = None,
    local: LocalOption = None,
    prefix: PrefixOption = None,
    endpoint_url: EndpointOption = None,
    force: Annotated[bool, typer.Option("--force", help="rotate now, even when not due")] = False,
    key_algorithm: Annotated[
        KeyAlgorithm | None, typer.Option(help="key type of new material; default: keep the current one")
    ] = None,
    server_validity: Annotated[
        str | None, typer.Option(help="Go duration bounding machine certificates (and rotation overlap)")
    ] = None,
) -> None:
    """Create the base certs when missing, rotate them when NotAfter is within --regenerate-before.

    Like `docker-machine regenerate-base-certs --regenerate-before`, but race-free: in Secrets Manager one
    rotation at a time, and the previous CA stays trusted until every machine it signed has expired.
    """
    shown = _duration(regenerate_before)
    before = timedelta(days=36500) if force else shown
    overrides: dict[str, Any] = {}
    if key_algorithm is not None:
        overrides["key_algorithm"] = key_algorithm
    if server_validity is not None:
        overrides["server_validity"] = _duration(server_validity)

    def run() -> None:
        if local is not None:
            _regenerate_local(local, before, shown, overrides)
            return
        from chalicelib.rotation import ensure_base_certs, parse_base_certs

        secrets = _secrets(endpoint_url)
        name = secret or _names(prefix).base_certs_secret
        policy = _policy_override(secrets, name, overrides)
        outcome = ensure_base_certs(secrets, _names(prefix), _now(), before, policy, secret_name=name)
        base = parse_base_certs(secrets.get_value(name).value)
        console.print(f"{escape(name)}: [bold]{outcome.action}[/bold]", highlight=False)
        if base is not None:
            console.print(render(base, _now(), shown))

    _guarded(run)


def _policy_override(secrets: Any, name: str, overrides: dict[str, Any]) -> CertPolicy | None:
    """The current policy with the command's overrides, or None (keep the current one) without overrides."""
    if not overrides:
        return None
    from chalicelib.errors import NotFoundError
    from chalicelib.rotation import parse_base_certs

    try:
        base = parse_base_certs(secrets.get_value(name).value)
    except NotFoundError:
        base = None
    current = base.policy if base is not None else CertPolicy()
    return CertPolicy(**{**_policy_fields(current), **overrides})


def _policy_fields(policy: CertPolicy) -> dict[str, Any]:
    return {
        "key_algorithm": policy.key_algorithm,
        "ca_validity": policy.ca_validity,
        "client_validity": policy.client_validity,
        "server_validity": policy.server_validity,
        "organization": policy.organization,
    }


#: Lock file of `--local` regenerations (flock: the OS releases it when the holder dies, nothing goes stale).
LOCK_FILE = ".regenerate-base-certs.lock"


def _regenerate_local(
    directory: Path, before: timedelta, shown: timedelta, overrides: dict[str, Any]
) -> None:
    action, base = regenerate_local(directory, _now(), before, overrides)
    lost = action == "lost-race"
    note = " (another regenerate-base-certs changed it first; nothing written)" if lost else ""
    console.print(f"{escape(str(directory))}: [bold]{action}[/bold]{escape(note)}", highlight=False)
    console.print(render(base, _now(), shown))


def regenerate_local(
    directory: Path, now: datetime, before: timedelta, overrides: dict[str, Any]
) -> tuple[str, BaseCerts]:
    """`--local`: created | fresh | rotated | lost-race, and the material the directory holds afterwards.

    Race-free as the Secrets Manager path is: a run replaces only the material it first read. Runs take an
    exclusive lock on the directory, and one that finds the material changed while it waited (another run
    created or rotated it) writes nothing and reports "lost-race"; so concurrent forced runs rotate once.
    """
    observed = _observe(directory)
    with lock_directory(directory):
        if _observe(directory) != observed:
            return "lost-race", certs.load_dir(directory)
        if observed == (None, None):
            fresh = certs.generate_base_certs(now, CertPolicy(**overrides))
            certs.export_dir(fresh, directory, with_state=True)
            return "created", fresh
        base = certs.load_dir(directory)
        if not certs.needs_regeneration(base, now, before):
            return "fresh", base
        policy = CertPolicy(**{**_policy_fields(base.policy), **overrides})
        rotated = certs.rotate(base, now, policy)
        certs.export_dir(rotated, directory, with_state=True)
        return "rotated", rotated


def _observe(directory: Path) -> tuple[bytes | None, bytes | None]:
    """The bytes a regeneration decides on (our state file, docker-machine's ca.pem); None when missing."""

    def read(path: Path) -> bytes | None:
        return path.read_bytes() if path.is_file() else None

    return read(directory / certs.STATE_FILE), read(directory / "ca.pem")


@contextmanager
def lock_directory(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (waits for the holder); closing the file releases it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for 10 s, then OSError
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@certs_app.command("export")
def export(
    directory: Annotated[
        Path, typer.Option("--dir", help="where to write ca.pem, ca-key.pem, cert.pem, key.pem")
    ],
    secret: SecretOption = None,
    local: LocalOption = None,
    prefix: PrefixOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Write the base certs in docker-machine's layout (keys 0600), plus trust-bundle.pem."""

    def run() -> None:
        base = load_base_certs(secret, local, prefix, endpoint_url).trusted_at(_now())
        for path in certs.export_dir(base, directory):
            console.print(f"wrote {path} ({oct(path.stat().st_mode & 0o777)})", markup=False, highlight=False)

    _guarded(run)


@certs_app.command("inspect")
def inspect(
    secret: SecretOption = None,
    local: LocalOption = None,
    prefix: PrefixOption = None,
    endpoint_url: EndpointOption = None,
    regenerate_before: BeforeOption = "720h",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Subjects, SHA-256 fingerprints, NotAfter and the time left before the regeneration window."""

    def run() -> None:
        base = load_base_certs(secret, local, prefix, endpoint_url)
        now, before = _now(), _duration(regenerate_before)
        if as_json:
            print(json.dumps(summary(base, now, before), indent=2))
            return
        console.print(render(base, now, before))

    _guarded(run)


@certs_app.command("issue-server")
def issue_server(
    hosts: Annotated[
        list[str], typer.Option("--host", help="IP address or DNS name of the machine (repeat)")
    ],
    out: Annotated[Path, typer.Option("--out", help="directory for server.pem, server-key.pem, ca.pem")],
    secret: SecretOption = None,
    local: LocalOption = None,
    prefix: PrefixOption = None,
    endpoint_url: EndpointOption = None,
    validity: Annotated[str | None, typer.Option(help="Go duration; at most the policy's bound")] = None,
) -> None:
    """A machine's Docker server certificate (dockerd --tlscert/--tlskey/--tlscacert), signed by the CA."""

    def run() -> None:
        now = _now()
        base = load_base_certs(secret, local, prefix, endpoint_url).trusted_at(now)
        chain, key = certs.issue_server_cert(base, hosts, now, _duration(validity) if validity else None)
        out.mkdir(parents=True, exist_ok=True)
        for name, content, mode in (
            ("server.pem", chain, 0o644),
            ("server-key.pem", key, 0o600),
            ("ca.pem", base.trust_bundle_pem, 0o644),
        ):
            certs.write_private(out / name, content, mode)
            console.print(f"wrote {out / name} ({oct(mode)})", markup=False, highlight=False)
        console.print(render_infos([certs.cert_info("server", chain)], now, None))

    _guarded(run)


# -- rendering -----------------------------------------------------------------------------------------------


def _left(delta: timedelta) -> str:
    """ "412d 3h", "5h12m", or "passed": how far away a date is, at a glance."""
    if delta <= timedelta(0):
        return "passed"
    if delta >= timedelta(days=1):
        return f"{delta.days}d {delta.seconds // 3600}h"
    return format_duration(timedelta(seconds=int(delta.total_seconds())))


def render_infos(infos: list[certs.CertInfo], now: datetime, window_start: datetime | None) -> Table:
    """One row per certificate; cells are plain Text (a fingerprint's ":cd:" is no emoji, "[" no markup)."""
    table = Table(title="base certs" if window_start else "certificate")
    with_hosts = any(info.hosts for info in infos)
    for column in ("role", "subject", "SHA-256", "NotAfter", "time left", *(["hosts"] if with_hosts else [])):
        table.add_column(column, overflow="fold")
    for info in infos:
        cells = [
            info.role,
            info.subject,
            info.sha256_fingerprint,
            info.not_after.isoformat(timespec="seconds"),
            _left(info.not_after - now),
            *([", ".join(info.hosts)] if with_hosts else []),
        ]
        table.add_row(*(Text(c) for c in cells))
    if window_start is not None:
        opens = window_start.isoformat(timespec="seconds")
        table.caption = f"regeneration window opens {opens} (in {_left(window_start - now)})"
    return table


def render(base: BaseCerts, now: datetime, regenerate_before: timedelta) -> Table:
    """The `inspect` table: CA, client and retired CAs, and when the regeneration window opens."""
    table = render_infos(certs.inspect(base), now, certs.regeneration_due_at(base, regenerate_before))
    if base.retired:
        until = ", ".join(r.trusted_until.isoformat(timespec="seconds") for r in base.retired)
        table.caption = f"{table.caption}; retired CAs trusted until {until}"
    return table


def summary(base: BaseCerts, now: datetime, regenerate_before: timedelta) -> dict[str, Any]:
    """The `inspect --json` document."""
    due = certs.regeneration_due_at(base, regenerate_before)
    return {
        "certificates": [
            {
                "role": i.role,
                "subject": i.subject,
                "issuer": i.issuer,
                "sha256": i.sha256_fingerprint,
                "not_before": i.not_before.isoformat(),
                "not_after": i.not_after.isoformat(),
            }
            for i in certs.inspect(base)
        ],
        "retired_trusted_until": [r.trusted_until.isoformat() for r in base.retired],
        "key_algorithm": base.policy.key_algorithm.value,
        "server_validity": format_duration(base.policy.server_validity),
        "regeneration_due_at": due.isoformat(),
        "needs_regeneration": certs.needs_regeneration(base, now, regenerate_before),
    }
