"""The key and certificate chain that sign the bot's C2PA manifests.

On first use the bot makes its own: a root (a CA, ten years) and a leaf signed by it (ES256, digital
signature, the email-protection use that C2PA's certificate profile accepts), kept owner-only in
`<data>/provenance/`. Validators then report the signer as untrusted (nobody vouches for it) and the
manifest as intact. An owner with a certificate from a C2PA trust list sets FACECHAIN_PROVENANCE_CERT
(the PEM chain, leaf first) and FACECHAIN_PROVENANCE_KEY (its PEM private key) instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from engine.errors import SettingsError

ISSUER = "FaceChain for Discord"


@dataclass(frozen=True)
class SigningFiles:
    chain_pem: bytes  # leaf first, then its issuer
    key_pem: bytes


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def make_chain(folder: Path) -> SigningFiles:
    """A new root and leaf in `folder` (chain.pem, signer.key, root.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, ISSUER)])

    def usage(signs_certificates: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not signs_certificates, content_commitment=False,
                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                             key_cert_sign=signs_certificates, crl_sign=signs_certificates, encipher_only=False,
                             decipher_only=False)

    now = datetime.now(timezone.utc)
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def certificate(subject: str, issuer: x509.Name, key, is_ca: bool) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
                .add_extension(usage(is_ca), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))

    root = certificate(f"{ISSUER} root", name(f"{ISSUER} root"), root_key, True).sign(root_key, hashes.SHA256())
    leaf = (certificate(f"{ISSUER} signer", root.subject, leaf_key, False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = SigningFiles(leaf.public_bytes(pem) + root.public_bytes(pem), leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(folder / "signer.key", files.key_pem)
    (folder / "root.pem").write_bytes(root.public_bytes(pem))
    (folder / "chain.pem").write_bytes(files.chain_pem)
    return files


def signing_files(data_dir: Path, cert: Path | None = None, key: Path | None = None) -> SigningFiles:
    """The owner's chain and key when set, else the bot's own (made on first use)."""
    if cert or key:
        if not (cert and key):
            raise SettingsError("Set both FACECHAIN_PROVENANCE_CERT and FACECHAIN_PROVENANCE_KEY, or neither.")
        try:
            return SigningFiles(Path(cert).read_bytes(), Path(key).read_bytes())
        except OSError as error:
            raise SettingsError(f"Cannot read the provenance certificate or key: {error}") from None
    folder = data_dir / "provenance"
    if not (folder / "chain.pem").is_file():
        # Made whole in a folder of its own, then renamed into place: when the bot and its worker start at once,
        # one set wins and both sign with it (a rename onto a folder that exists fails, and the loser reads it).
        scratch = data_dir / f".provenance-{os.getpid()}-{secrets.token_hex(4)}"
        make_chain(scratch)
        try:
            os.rename(scratch, folder)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    return SigningFiles((folder / "chain.pem").read_bytes(), (folder / "signer.key").read_bytes())
