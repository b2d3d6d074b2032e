"""The local stack's private PKI and OAuth keys, made at ``make up`` (kept while valid for a month more).

``.run/tls/``: ``ca.pem`` and ``ca.key`` (a private CA the brokers and the identity provider use), ``broker.pem``
(the brokers' key and certificate chain, SANs ``localhost`` and ``127.0.0.1``), ``client.crt``/``client.key``
(Ferry's client certificate, CN ``ferry``: the mTLS principal ``User:ferry``), ``idp.pem`` (the identity provider's
HTTPS key and certificate).

``.run/oauth/``: ``issuer.key`` (RS256, signs the access tokens the identity provider issues) and ``jwks.json`` (its
public half, which the brokers' OAUTHBEARER listeners validate against), ``client-rs256.key``/``client-es384.key``
(the keys Ferry signs JWT-bearer and client-assertion grants with) and their public halves, which the identity
provider trusts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANIZATION = "Ferry Dev"
ISSUER_KID = "ferry-dev-issuer"
VALID_DAYS = 365
RENEW_WITHIN = dt.timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def issue(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name | None = None,
    *,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
    valid_from: dt.datetime | None = None,
    valid_days: int = VALID_DAYS,
) -> x509.Certificate:
    """A certificate for ``key`` signed by ``ca_key`` (self-signed when ``ca_name`` is None)."""
    start = valid_from or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name or _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    usages = [
        u
        for u, wanted in ((ExtendedKeyUsageOID.SERVER_AUTH, server), (ExtendedKeyUsageOID.CLIENT_AUTH, client))
        if wanted
    ]
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server:
        names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600 if private else 0o644)


def _still_valid(path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_WITHIN


def ensure_pki(run_dir: Path) -> bool:
    """Make the stack's certificates and keys unless they exist and stay valid for a month; True when made anew
    (the brokers must then be restarted to load them)."""
    tls, oauth = run_dir / "tls", run_dir / "oauth"
    wanted = [tls / f for f in ("ca.pem", "ca.key", "broker.pem", "client.crt", "client.key", "idp.pem")]
    wanted += [oauth / f for f in ("issuer.key", "jwks.json", "client-rs256.key", "client-es384.key")]
    if all(p.exists() for p in wanted) and all(_still_valid(p) for p in (tls / "ca.pem", tls / "broker.pem")):
        return False
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("Ferry Dev CA", ca_key, ca_key, ca=True)
    broker_key, client_key, idp_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    broker = issue("localhost", broker_key, ca_key, ca.subject, server=True, client=True)
    client = issue("ferry", client_key, ca_key, ca.subject, client=True)
    idp = issue("localhost", idp_key, ca_key, ca.subject, server=True)
    _write(tls / "ca.pem", pem_cert(ca), private=False)
    _write(tls / "ca.key", pem_key(ca_key), private=True)
    # Kafka's PEM key store: the PKCS#8 key, then the chain.
    _write(tls / "broker.pem", pem_key(broker_key) + pem_cert(broker) + pem_cert(ca), private=True)
    _write(tls / "client.crt", pem_cert(client) + pem_cert(ca), private=False)
    _write(tls / "client.key", pem_key(client_key), private=True)
    _write(tls / "idp.pem", pem_key(idp_key) + pem_cert(idp) + pem_cert(ca), private=True)

    issuer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.public_key()))
    jwk.update(kid=ISSUER_KID, use="sig", alg="RS256")
    _write(oauth / "issuer.key", pem_key(issuer), private=True)
    _write(oauth / "jwks.json", json.dumps({"keys": [jwk]}).encode(), private=False)
    rs256 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es384 = ec.generate_private_key(ec.SECP384R1())
    _write(oauth / "client-rs256.key", pem_key(rs256), private=True)
    _write(oauth / "client-rs256.pub", pem_public(rs256), private=False)
    _write(oauth / "client-es384.key", pem_key(es384), private=True)
    _write(oauth / "client-es384.pub", pem_public(es384), private=False)
    return True
