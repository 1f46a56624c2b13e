"""`scaler.cert_key_algorithm`: validated in config, one spelling with chalicelib.certs, and applied by
`next_policy` to new base certs unless the CLI chose a policy explicitly."""

from __future__ import annotations

from datetime import timedelta
from typing import get_args

import pytest

from chalicelib import certs
from chalicelib.certs import CertPolicy, KeyAlgorithm
from chalicelib.config import CertKeyAlgorithm, config_from_dict
from chalicelib.errors import ConfigError
from chalicelib.rotation import next_policy
from tests.builders import T0

POOL = {"name": "linux", "asg": "asg-linux", "tags": ["linux"], "max_instances": 1}


def scaler(**fields: object) -> dict[str, object]:
    return {"gitlab": {"url": "https://gitlab.example.com"}, "pools": [POOL], "scaler": fields}


def test_config_spells_the_key_algorithms_certs_knows() -> None:
    assert set(get_args(CertKeyAlgorithm)) == {a.value for a in KeyAlgorithm}


def test_unset_by_default_and_validated() -> None:
    assert config_from_dict(scaler(), "t.toml").scaler.cert_key_algorithm is None
    chosen = config_from_dict(scaler(cert_key_algorithm="rsa-3072"), "t.toml")
    assert chosen.scaler.cert_key_algorithm == "rsa-3072"
    with pytest.raises(ConfigError, match="cert_key_algorithm"):
        config_from_dict(scaler(cert_key_algorithm="dsa-1024"), "t.toml")


@pytest.mark.parametrize(
    ("current", "explicit", "configured", "expected"),
    [
        (None, None, None, KeyAlgorithm.ECDSA_P256),  # first material, nothing configured: the default
        (None, None, KeyAlgorithm.RSA_2048, KeyAlgorithm.RSA_2048),  # first material: config
        (KeyAlgorithm.RSA_2048, None, None, KeyAlgorithm.RSA_2048),  # rotation keeps the current type
        (KeyAlgorithm.RSA_2048, None, KeyAlgorithm.ECDSA_P384, KeyAlgorithm.ECDSA_P384),  # config wins
        # an explicit policy (the CLI's --key-algorithm) wins over config
        (
            KeyAlgorithm.ECDSA_P256,
            KeyAlgorithm.RSA_4096,
            KeyAlgorithm.ECDSA_P384,
            KeyAlgorithm.RSA_4096,
        ),  # CLI
    ],
)
def test_next_policy_key_type(
    current: KeyAlgorithm | None,
    explicit: KeyAlgorithm | None,
    configured: KeyAlgorithm | None,
    expected: KeyAlgorithm,
) -> None:
    previous = certs.generate_base_certs(T0, CertPolicy(key_algorithm=current)) if current else None
    policy = CertPolicy(key_algorithm=explicit) if explicit else None
    chosen = next_policy(previous, policy, timedelta(days=400), configured)
    assert chosen.key_algorithm is expected
    assert chosen.ca_validity == chosen.client_validity == timedelta(days=400)
