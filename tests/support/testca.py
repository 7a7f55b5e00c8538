"""A certificate authority of the test's own, and server certificates it signs (the test
directory's and the test OIDC provider's), with openssl."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A CA of the test's own: (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes",
                    "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)
    return cert, key


def issue(folder: Path, ca: tuple[Path, Path], name: str, addresses: list[str]) -> tuple[Path, Path]:
    """A server certificate for ``addresses`` (IPs or DNS names) signed by ``ca``."""
    cert, key, csr = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    san = ",".join(("IP:" if _is_ip(a) else "DNS:") + a for a in addresses)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-sha256", "-nodes", "-subj",
                    f"/CN={addresses[0]}", "-keyout", str(key), "-out", str(csr)],
                   check=True, capture_output=True)
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey",
                    str(ca[1]), "-CAcreateserial", "-days", "2", "-sha256", "-extfile",
                    str(extensions), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def spki_hash(cert: Path) -> str:
    """base64 SHA-256 of the certificate's public key: what Chromium's
    --ignore-certificate-errors-spki-list takes to trust just this one certificate."""
    key = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=key,
                         check=True, capture_output=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der,
                            check=True, capture_output=True).stdout
    return subprocess.run(["openssl", "enc", "-base64"], input=digest, check=True,
                          capture_output=True).stdout.decode().strip()
