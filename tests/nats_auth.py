"""Test helpers for secured NATS: certificates, NKeys, JWTs and creds files, made here, offline.

* :func:`make_pki` writes a CA, a server certificate for 127.0.0.1/localhost, a client
  certificate, and a second, unrelated CA (with the ``cryptography`` package).
* :func:`nkey` makes an NKey pair of a kind (operator, account, user) with the ``nkeys`` package.
* :func:`jwt` encodes and signs NATS JWT claims (``ed25519-nkey``), as ``nsc`` would.
* :func:`operator_config` is the server config of "operator mode" with a memory resolver
  preloaded with the account JWTs (docs: nats-server "memory resolver"), so no nsc is needed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from skialith_langgraph.server import NatsServer


@contextmanager
def nats_server(tmp_path: Path, config: str, name: str = "nats") -> Iterator[NatsServer]:
    """A nats-server with JetStream on a free port, configured by ``config``; stopped afterwards."""
    server = NatsServer(store_dir=tmp_path / name, port=-1, config=config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # signed nothing here: a client trusting it must refuse the server


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    import ipaddress

    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = (
            x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        names = sans or [x509.DNSName(subject)]
        if not client:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate (127.0.0.1, localhost), a client certificate and another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = _key()
    ca = _cert("skialith test CA", ca_key, None, ca=True)
    server_key, client_key, other_key = _key(), _key(), _key()
    server = _cert("localhost", server_key, ("skialith test CA", ca_key))
    client = _cert("skialith-client", client_key, ("skialith test CA", ca_key), client=True)
    other = _cert("another CA", other_key, None, ca=True)
    pki = Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        other_ca=directory / "other-ca.pem",
    )
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    _write_key(pki.server_key, server_key)
    pki.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(pki.client_key, client_key)
    pki.other_ca.write_bytes(other.public_bytes(pem))
    return pki


def tls_config(pki: Pki, *, verify: bool) -> str:
    """The server's ``tls`` block: its certificate, and with ``verify`` a required client certificate."""
    return (
        "tls {\n"
        f'  cert_file: "{pki.server_cert}"\n'
        f'  key_file: "{pki.server_key}"\n'
        f'  ca_file: "{pki.ca}"\n'
        f"  verify: {'true' if verify else 'false'}\n"
        "  timeout: 2\n"
        "}\n"
    )


# -- NKeys and JWTs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NKey:
    seed: str  # "SO...", "SA...", "SU..."
    public: str  # "O...", "A...", "U..."

    def sign(self, data: bytes) -> bytes:
        kp = nkeys.from_seed(bytearray(self.seed.encode()))
        return bytes(kp.sign(data))


_PREFIX = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}


def nkey(kind: str) -> NKey:
    """A fresh NKey pair of ``kind`` ("operator", "account" or "user")."""
    seed = nkeys.encode_seed(os.urandom(32), _PREFIX[kind]).decode()
    kp = nkeys.from_seed(bytearray(seed.encode()))
    return NKey(seed=seed, public=kp.public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(issuer: NKey, subject: str, name: str, nats: dict[str, Any]) -> str:
    """NATS JWT claims for ``subject``, signed by ``issuer`` (the format ``nsc`` writes, version 2)."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject}
    claims["nats"] = {**nats, "version": 2}
    claims["jti"] = base64.b32encode(
        hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    ).decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True)
class Operator:
    config: str  # the server config of operator mode
    creds: dict[str, Path]  # a creds file per user name


def operator_setup(directory: Path, users: dict[str, dict[str, Any]]) -> Operator:
    """An operator, a system account, one account with JetStream, and a creds file per user.

    Args:
        users: user name -> permissions in the user JWT (``{"pub": {...}, "sub": {...}}``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    op, sys_account, account = nkey("operator"), nkey("account"), nkey("account")
    op_jwt = jwt(op, op.public, "skialith-test", {"type": "operator", "system_account": sys_account.public})
    sys_jwt = jwt(op, sys_account.public, "SYS", {"type": "account", "limits": {"conn": -1}})
    acct_jwt = jwt(op, account.public, "APP", {"type": "account", "limits": UNLIMITED_ACCOUNT})
    creds = {}
    for name, permissions in users.items():
        user = nkey("user")
        user_jwt = jwt(
            account,
            user.public,
            name,
            {"type": "user", "subs": -1, "data": -1, "payload": -1, **permissions},
        )
        path = directory / f"{name}.creds"
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{user_jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed}\n"
            "------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        creds[name] = path
    config = (
        f"operator: {op_jwt}\n"
        f"system_account: {sys_account.public}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {sys_account.public}: {sys_jwt}\n"
        f"  {account.public}: {acct_jwt}\n"
        "}\n"
    )
    return Operator(config=config, creds=creds)
