"""Which MSK listener Ferry's workers can use: the protocol stored with the cluster decides how they connect."""

from __future__ import annotations

import pytest

from models.msk import _protocol_of


@pytest.mark.parametrize(
    ("key", "protocol"),
    [
        ("BootstrapBrokerString", "PLAINTEXT"),
        ("BootstrapBrokerStringTls", "SSL"),
        ("BootstrapBrokerStringPublicTls", "SSL"),
        ("BootstrapBrokerStringSaslScram", "SASL_SSL"),
        ("BootstrapBrokerStringSaslIam", "SASL_SSL"),
        ("BootstrapBrokerStringPublicSaslIam", "SASL_SSL"),
    ],
)
def test_listener_protocols(key: str, protocol: str) -> None:
    assert _protocol_of(key) == protocol
