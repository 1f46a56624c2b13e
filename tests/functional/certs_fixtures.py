"""Builders for the base-certs tests: a rotation Lambda moto knows, stage snapshots, a real TLS handshake.

Helpers only (no fixtures), so test modules stay independent of each other's fixture names.
"""

from __future__ import annotations

import io
import socket
import ssl
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import boto3
from moto.core.config import DefaultConfig

from chalicelib.aws import AwsClients
from chalicelib.secrets import AwsSecrets, Secrets

#: moto's Lambda stub: RotateSecret finds the function and "invokes" it without Docker (no step runs).
STUB_LAMBDA: DefaultConfig = {"lambda": {"use_docker": False}}
#: One boto3 session for every test client: service models load once, not per client (seconds per test).
#: Clients are still created inside each test's mock_aws, so moto intercepts them.
SESSION = boto3.session.Session()


def aws_clients() -> AwsClients:
    return AwsClients(SESSION, region="us-east-1", sleep=lambda _s: None)


class MotoSecrets(AwsSecrets):
    """AwsSecrets for moto, whose RotateSecret forgets the configured rotation function unless the call
    names it again (then marks the empty version AWSCURRENT). AWS keeps the stored configuration, so the
    production adapter does not re-state it; this one does, and only that differs."""

    def rotate(self, secret_id: str, *, token: str | None = None, lambda_arn: str | None = None) -> str:
        configured = self.describe(secret_id).rotation_lambda_arn
        return super().rotate(secret_id, token=token, lambda_arn=lambda_arn or configured)


def container() -> MotoSecrets:
    """A separate Lambda container: its own clients (built now, in this thread: sessions are not
    thread-safe while they build clients)."""
    aws = aws_clients()
    aws.client("secretsmanager")
    return MotoSecrets(aws)


def create_rotation_function(aws: AwsClients, name: str = "rotate_base_certs") -> str:
    """A Lambda function moto can find, so RotateSecret behaves as in AWS up to invoking it."""
    role = aws.call(
        "iam", "create_role", RoleName=f"{name}-role", AssumeRolePolicyDocument='{"Version": "2012-10-17"}'
    )["Role"]["Arn"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", "def handler(event, context):\n    return event\n")
    created = aws.call(
        "lambda",
        "create_function",
        FunctionName=name,
        Runtime="python3.11",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": archive.getvalue()},
    )
    return str(created["FunctionArn"])


def start_rotation(aws: AwsClients, secret: str, function_arn: str) -> str:
    """What Secrets Manager does before calling createSecret: an empty AWSPENDING version, rotation on."""
    started = aws.call(
        "secretsmanager",
        "rotate_secret",
        SecretId=secret,
        RotationLambdaARN=function_arn,
        RotationRules={"AutomaticallyAfterDays": 30},
    )
    return str(started["VersionId"])


def stages(secrets: Secrets, secret: str) -> dict[str, tuple[str, ...]]:
    """Version id -> staging labels, for versions that carry any."""
    return {v: s for v, s in secrets.describe(secret).versions.items() if s}


def versions_with_value(aws: AwsClients, secret: str) -> set[str]:
    """Every version id that holds a value (moto lists versions without labels too)."""
    listed = aws.call("secretsmanager", "list_secret_version_ids", SecretId=secret, IncludeDeprecated=True)
    return {v["VersionId"] for v in listed["Versions"]}


@dataclass(frozen=True)
class Party:
    """One end of a mutual-TLS connection: its certificate chain, key, and the CAs it trusts."""

    chain_pem: str
    key_pem: str
    trust_pem: str

    def files(self, directory: Path, name: str) -> tuple[Path, Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = (directory / f"{name}-chain.pem", directory / f"{name}-key.pem", directory / f"{name}-ca.pem")
        for path, text in zip(paths, (self.chain_pem, self.key_pem, self.trust_pem), strict=True):
            path.write_text(text, encoding="utf-8")
        return paths


def _context(purpose: ssl.Purpose, party: Party, directory: Path, name: str) -> ssl.SSLContext:
    chain, key, trust = party.files(directory, name)
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(str(chain), str(key))
    context.load_verify_locations(cafile=str(trust))
    return context


def tls_handshake(server: Party, client: Party, directory: Path, host: str = "127.0.0.1") -> str:
    """A real mutual-TLS handshake on localhost (both sides verify); returns the client's view of the
    server's subject. Raises ssl.SSLError when either side rejects the other."""
    server_context = _context(ssl.Purpose.CLIENT_AUTH, server, directory, "server")
    client_context = _context(ssl.Purpose.SERVER_AUTH, client, directory, "client")
    client_context.check_hostname = True
    errors: list[BaseException] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(5)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                raw, _ = listener.accept()
                raw.settimeout(5)
                with server_context.wrap_socket(raw, server_side=True) as tls:
                    peer = tls.getpeercert()
                    assert peer, "server saw no client certificate"
                    tls.sendall(b"ok")
            except (OSError, AssertionError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                assert tls.recv(2) == b"ok"
                peer = tls.getpeercert()
                assert peer is not None
                # ssl.SSLSocket.getpeercert: "subject" is a tuple of RDNs, each a tuple of (name, value) pairs
                rdns = cast("tuple[tuple[tuple[str, str], ...], ...]", peer["subject"])
                subject = dict(item for rdn in rdns for item in rdn)
        finally:
            thread.join(5)
    if errors:
        raise errors[0]
    return str(subject.get("commonName", ""))
