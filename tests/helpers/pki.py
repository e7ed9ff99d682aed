"""Test certificates made with the `openssl` CLI: a CA, server certs for 127.0.0.1, signing keys."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class CertKey:
    cert: Path
    key: Path


def make_ca(directory: Path, name: str = "ctr-remote test CA") -> CertKey:
    """A self-signed CA (also usable as a self-signed JWT signing cert)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertKey(directory / "ca.crt", directory / "ca.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-keyout", str(ca.key), "-out", str(ca.cert), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    return ca


def issue_server_cert(
    ca: CertKey, directory: Path, name: str = "server", usage: str = "serverAuth"
) -> CertKey:
    """A certificate for 127.0.0.1 and localhost signed by `ca`; `usage="clientAuth"` for a client."""
    directory.mkdir(parents=True, exist_ok=True)
    out = CertKey(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        f"extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(out.key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(out.cert),
    )  # fmt: skip
    return out


def cert_der(cert: Path) -> bytes:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True, timeout=60
    ).stdout


def sign_rs256(key: Path, data: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256 (JWT `RS256`)."""
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key)],
        input=data,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
