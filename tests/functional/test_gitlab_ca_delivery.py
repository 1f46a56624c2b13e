"""A self-hosted GitLab's CA reaches every machine: with `gitlab.ca_bundle_secret` set, the launch lifecycle
writes the bundle into the machine's own secret, next to (never mixed with) the fleet's Docker TLS bundle."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib import certs
from chalicelib.rotation import ensure_base_certs_for
from chalicelib.runtime import Runtime, install
from tests.functional.conftest import Stack
from tests.functional.test_lifecycle import (
    RecordingFleet,
    invoke,
    launched_instance,
    lifecycle_event,
    machine_secret,
)

CA_SECRET = "test/gitlab-ca"


@pytest.fixture
def gitlab_ca(gitlab_stack: Stack) -> str:
    """A two-CA PEM bundle (as a self-hosted GitLab's CA chain would be), stored in its own secret."""
    now = gitlab_stack.clock[0]
    bundle = "".join(
        certs.generate_base_certs(now - timedelta(days=days)).ca_pem for days in (0, 400)
    )  # only the public CA certificates: their keys are thrown away here
    gitlab_stack.aws.call("secretsmanager", "create_secret", Name=CA_SECRET, SecretString=bundle)
    return bundle


@pytest.fixture
def world(gitlab_stack: Stack, gitlab_ca: str) -> Iterator[tuple[Stack, Client]]:
    settings = gitlab_stack.config.gitlab.model_copy(update={"ca_bundle_secret": CA_SECRET})
    # docker_tcp_tls on: the machines also get the fleet's Docker TLS bundle, which must stay separate
    pools = tuple(p.model_copy(update={"docker_tcp_tls": True}) for p in gitlab_stack.config.pools)
    rt = Runtime(
        dict(gitlab_stack.runtime.environ),
        aws=gitlab_stack.aws,
        config=gitlab_stack.config.model_copy(update={"gitlab": settings, "pools": pools}),
        gitlab=gitlab_stack.runtime.gitlab,
        clock=gitlab_stack.runtime.clock,
    )
    rt.__dict__["fleet"] = RecordingFleet(gitlab_stack.aws)
    install(rt)
    gitlab_stack.runtime = rt
    gitlab_stack.config = rt.config
    ensure_base_certs_for(rt.cert_ports)
    with Client(app) as client:
        yield gitlab_stack, client


def test_launch_puts_the_gitlab_ca_bundle_in_the_machine_secret(world: Any, gitlab_ca: str) -> None:
    stack, client = world
    instance = launched_instance(stack)
    # WHEN the launch lifecycle hook fires for a new machine
    out = invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # THEN its secret carries the GitLab CA bundle, whole (both CAs), as the boot scripts read it
    assert out["result"] == "CONTINUE"
    secret = machine_secret(stack, instance)
    assert secret["gitlab_ca_bundle"] == gitlab_ca
    assert [c.subject for c in certs.load_certs(secret["gitlab_ca_bundle"])] == [
        c.subject for c in certs.load_certs(gitlab_ca)
    ]
    # AND the Docker TLS trust bundle stays the fleet's own: GitLab's CA does not sign Docker clients
    fleet_cas = {c.subject for c in certs.load_certs(secret["ca_bundle"])}
    assert fleet_cas.isdisjoint(c.subject for c in certs.load_certs(gitlab_ca))


def test_without_a_ca_bundle_secret_machines_get_an_empty_field(gitlab_stack: Stack) -> None:
    # GIVEN no ca_bundle_secret (GitLab signed by a public CA)
    gitlab_stack.runtime.__dict__["fleet"] = RecordingFleet(gitlab_stack.aws)
    ensure_base_certs_for(gitlab_stack.runtime.cert_ports)
    instance = launched_instance(gitlab_stack)
    with Client(app) as client:
        invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # THEN the field is empty, which the boot scripts read as "no --tls-ca-file"
    assert machine_secret(gitlab_stack, instance)["gitlab_ca_bundle"] == ""
