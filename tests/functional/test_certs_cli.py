"""`runner-scaler certs`: offline (--local DIR, no AWS) and against Secrets Manager (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from moto import mock_aws
from typer.testing import CliRunner

from chalicelib import certs
from chalicelib.certs import BaseCerts
from chalicelib.secrets import AwsSecrets
from tests.functional.certs_fixtures import aws_clients
from toolkit.cli.certs import certs_app

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(certs_app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def secrets(aws_credentials: None) -> Iterator[AwsSecrets]:
    with mock_aws():
        yield AwsSecrets(aws_clients())


def test_regenerate_locally_creates_then_keeps_then_rotates_on_force(tmp_path: Path) -> None:
    # GIVEN an empty directory; WHEN regenerate-base-certs runs three times, the last with --force
    directory = str(tmp_path / "certs")
    outputs = [
        cli("regenerate-base-certs", "--local", directory),
        cli("regenerate-base-certs", "--local", directory, "--regenerate-before", "720h"),
        cli("regenerate-base-certs", "--local", directory, "--force"),
    ]
    # THEN created, fresh, rotated; the rotated material still trusts the first CA
    assert [code for code, _ in outputs] == [0, 0, 0]
    assert ["created" in outputs[0][1], "fresh" in outputs[1][1], "rotated" in outputs[2][1]] == [True] * 3
    base = certs.load_dir(Path(directory))
    assert len(base.retired) == 1
    # AND docker-machine's layout is there, keys private
    modes = {p.name: p.stat().st_mode & 0o777 for p in Path(directory).iterdir()}
    assert modes["ca-key.pem"] == modes["key.pem"] == modes[certs.STATE_FILE] == 0o600
    assert modes["ca.pem"] == modes["cert.pem"] == 0o644


def test_inspect_prints_fingerprints_and_the_regeneration_window_without_keys(tmp_path: Path) -> None:
    # GIVEN local base certs
    cli("regenerate-base-certs", "--local", str(tmp_path))
    base = certs.load_dir(tmp_path)
    # WHEN inspected as a table and as JSON
    code, table = cli("inspect", "--local", str(tmp_path))
    code_json, text = cli("inspect", "--local", str(tmp_path), "--json", "--regenerate-before", "1h")
    # THEN fingerprints and the window are shown, never a key
    assert code == code_json == 0
    report = json.loads(text)
    assert report["certificates"][0]["sha256"] == certs.fingerprint(base.ca)
    assert report["needs_regeneration"] is False
    assert "regeneration window opens" in table
    assert "PRIVATE KEY" not in table + text


def test_issue_server_writes_a_certificate_dockerd_can_use(tmp_path: Path) -> None:
    # GIVEN local base certs; WHEN a server certificate is issued for an IP and a DNS name
    cli("regenerate-base-certs", "--local", str(tmp_path / "base"))
    code, output = cli(
        "issue-server", "--local", str(tmp_path / "base"), "--host", "10.1.2.3", "--host", "m1.internal",
        "--out", str(tmp_path / "m1"),
    )  # fmt: skip
    # THEN server.pem / server-key.pem / ca.pem exist, match, and verify for both names
    assert code == 0, output
    chain = (tmp_path / "m1" / "server.pem").read_text()
    assert certs.key_matches(chain, (tmp_path / "m1" / "server-key.pem").read_text())
    assert (tmp_path / "m1" / "server-key.pem").stat().st_mode & 0o777 == 0o600
    base = certs.load_dir(tmp_path / "base")
    for host in ("10.1.2.3", "m1.internal"):
        certs.verify_server(
            chain, (tmp_path / "m1" / "ca.pem").read_text(), host, base.ca.not_valid_before_utc
        )


def test_bad_input_is_one_clear_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    # WHEN a duration is not Go's, or the directory holds no certs, or a host is no host
    cli("regenerate-base-certs", "--local", str(tmp_path / "ok"))
    bad_duration = cli("regenerate-base-certs", "--local", str(tmp_path), "--regenerate-before", "30 days")
    empty = cli("inspect", "--local", str(tmp_path / "nothing"))
    bad_host = cli(
        "issue-server", "--local", str(tmp_path / "ok"), "--host", "not a host", "--out", str(tmp_path)
    )
    # THEN each exits non-zero and says what to do
    assert bad_duration[0] == 2 and "720h" in bad_duration[1]
    assert empty[0] == 1 and "regenerate-base-certs" in empty[1]
    assert bad_host[0] == 1 and "neither an IP address nor a DNS name" in bad_host[1]


def test_existing_docker_machine_certs_are_imported_and_rotated(tmp_path: Path) -> None:
    # GIVEN a docker-machine certs dir (ca.pem, ca-key.pem, cert.pem, key.pem only), RSA as it makes them
    old = certs.generate_base_certs(
        datetime.now(UTC), certs.CertPolicy(key_algorithm=certs.KeyAlgorithm.RSA_2048)
    )
    for name, (content, mode) in certs.docker_machine_files(old).items():
        certs.write_private(tmp_path / name, content, mode)
    # WHEN regenerated with --force
    code, output = cli("regenerate-base-certs", "--local", str(tmp_path), "--force")
    # THEN the key type is kept and the imported CA stays trusted through the overlap
    assert code == 0, output
    rotated = certs.load_dir(tmp_path)
    assert rotated.policy.key_algorithm is certs.KeyAlgorithm.RSA_2048
    assert rotated.retired[0].ca_pem == old.ca_pem


def test_regenerate_against_secrets_manager_creates_exports_and_inspects(
    secrets: AwsSecrets, tmp_path: Path
) -> None:
    # GIVEN no secret; WHEN regenerate-base-certs runs against Secrets Manager, then export and inspect
    created = cli("regenerate-base-certs", "--prefix", "cli")
    again = cli("regenerate-base-certs", "--secret", "cli/docker-base-certs")
    exported = cli("export", "--prefix", "cli", "--dir", str(tmp_path))
    inspected = cli("inspect", "--prefix", "cli", "--json")
    # THEN the secret holds base certs, the export matches them, and inspect reads the same CA
    assert [c for c, _ in (created, again, exported, inspected)] == [0, 0, 0, 0], created[1] + exported[1]
    assert "created" in created[1] and "fresh" in again[1]
    stored = BaseCerts.from_json(secrets.get_value("cli/docker-base-certs").value)
    assert (tmp_path / "ca.pem").read_text() == stored.ca_pem
    assert certs.key_matches((tmp_path / "cert.pem").read_text(), (tmp_path / "key.pem").read_text())
    assert json.loads(inspected[1])["certificates"][0]["sha256"] == certs.fingerprint(stored.ca)
