"""`myriad ctl ota keygen` (issue 18): development signing keys for OTA manifests.

Runs the real binary offline (no server), then reads the files it wrote with the
`cryptography` package (PEM, PKCS#8, SPKI, X.509 structure, extensions) and with
`openssl` (SM2 signatures and keys, which `cryptography` does not implement):

- Ed25519: the private key is PKCS#8, the public key SPKI, and they are one pair;
- SM2: root CA -> intermediate CA -> code-signing leaf, names chaining, basic
  constraints / key usage / extended key usage as documented, signature algorithm
  SM2-with-SM3 (1.2.156.10197.1.501), each signature verifying under its issuer's
  key with the default distinguishing ID, the leaf key matching the leaf;
- private keys are mode 0600; a second run without --force fails naming the files
  and changes nothing; --force replaces them.
"""

from __future__ import annotations

import datetime
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers import myriad_bin

SM2_WITH_SM3 = "1.2.156.10197.1.501"
SM2_DISTID = "1234567812345678"
VALIDITY = datetime.timedelta(days=730)
SM2_FILES = ["sm2-root.pem", "sm2-intermediate.pem", "sm2-leaf.pem", "sm2-chain.pem", "sm2-leaf.key"]
ROOT_CN = "Myriad development SM2 root CA"
INTERMEDIATE_CN = "Myriad development SM2 intermediate CA"
LEAF_CN = "Myriad development SM2 code signing"


def keygen(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(myriad_bin()), "ctl", "ota", "keygen", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=30,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cn(name: x509.Name) -> str:
    return name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=30)


def sm2_public_pem(cert_path: Path) -> bytes:
    r = openssl("x509", "-in", str(cert_path), "-pubkey", "-noout")
    assert r.returncode == 0, r.stderr
    return r.stdout


def sm2_signed_by(cert: x509.Certificate, issuer_pem: Path, tmp: Path) -> bool:
    """Does `cert`'s signature verify (SM2 with SM3, default ID) under the key of the
    certificate at `issuer_pem`?"""
    (tmp / "issuer.pub").write_bytes(sm2_public_pem(issuer_pem))
    (tmp / "tbs.der").write_bytes(cert.tbs_certificate_bytes)
    (tmp / "sig.der").write_bytes(cert.signature)
    r = openssl("pkeyutl", "-verify", "-rawin", "-digest", "sm3", "-pubin",
                "-inkey", str(tmp / "issuer.pub"), "-in", str(tmp / "tbs.der"),
                "-sigfile", str(tmp / "sig.der"), "-pkeyopt", f"distid:{SM2_DISTID}")
    return r.returncode == 0


def test_ed25519_key_pair(tmp_path):
    out = tmp_path / "keys"
    r = keygen(out, "--algorithm", "ed25519")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(out / "ed25519.key"), str(out / "ed25519.pub")]
    key_pem = (out / "ed25519.key").read_bytes()
    pub_pem = (out / "ed25519.pub").read_bytes()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pub_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    private = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.load_pem_public_key(pub_pem)
    assert isinstance(private, Ed25519PrivateKey)
    assert isinstance(public, Ed25519PublicKey)
    # One pair: the public file is the private key's public half, and verifies its signature.
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert public.public_bytes(*raw) == private.public_key().public_bytes(*raw)
    public.verify(private.sign(b"manifest bytes"), b"manifest bytes")
    assert mode(out / "ed25519.key") == 0o600
    # The default algorithm is Ed25519, and each run makes a new key.
    other = tmp_path / "other"
    assert keygen(other).returncode == 0
    assert sorted(p.name for p in other.iterdir()) == ["ed25519.key", "ed25519.pub"]
    assert (other / "ed25519.key").read_bytes() != key_pem


def test_sm2_development_chain(tmp_path):
    out = tmp_path / "sm2"
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    r = keygen(out, "--algorithm", "sm2")
    after = datetime.datetime.now(datetime.timezone.utc)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(out / name) for name in SM2_FILES]
    assert sorted(p.name for p in out.iterdir()) == sorted(SM2_FILES)

    root, intermediate, leaf = (x509.load_pem_x509_certificate((out / n).read_bytes())
                                for n in ["sm2-root.pem", "sm2-intermediate.pem", "sm2-leaf.pem"])
    chain = x509.load_pem_x509_certificates((out / "sm2-chain.pem").read_bytes())
    assert [c.public_bytes(serialization.Encoding.DER) for c in chain] == [
        leaf.public_bytes(serialization.Encoding.DER),
        intermediate.public_bytes(serialization.Encoding.DER),
    ], "chain file is leaf then intermediate"

    # Names chain root -> intermediate -> leaf.
    assert (cn(root.subject), cn(root.issuer)) == (ROOT_CN, ROOT_CN)
    assert (cn(intermediate.subject), cn(intermediate.issuer)) == (INTERMEDIATE_CN, ROOT_CN)
    assert (cn(leaf.subject), cn(leaf.issuer)) == (LEAF_CN, INTERMEDIATE_CN)
    assert intermediate.issuer == root.subject and leaf.issuer == intermediate.subject

    for cert in (root, intermediate, leaf):
        assert cert.version == x509.Version.v3
        assert cert.signature_algorithm_oid.dotted_string == SM2_WITH_SM3
        assert before <= cert.not_valid_before_utc <= after
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == VALIDITY

    def ext(cert, kind):
        return cert.extensions.get_extension_for_class(kind)

    # CAs: cA, keyCertSign; the intermediate may have no CA under it.
    for cert, path_len in ((root, None), (intermediate, 0)):
        bc = ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_len
        ku = ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert not ku.value.digital_signature
    # The leaf: not a CA, digitalSignature, extended key usage codeSigning only.
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CODE_SIGNING]

    # Every signature verifies under its issuer's key (SM2 with SM3, default ID) and no
    # other; the root is self-signed.
    work = tmp_path / "work"
    work.mkdir()
    assert sm2_signed_by(root, out / "sm2-root.pem", work)
    assert sm2_signed_by(intermediate, out / "sm2-root.pem", work)
    assert sm2_signed_by(leaf, out / "sm2-intermediate.pem", work)
    assert not sm2_signed_by(leaf, out / "sm2-root.pem", work)

    # The leaf's private key: PKCS#8, SM2, the key the leaf certifies, owner-only.
    key_pem = (out / "sm2-leaf.key").read_bytes()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    r = openssl("pkey", "-in", str(out / "sm2-leaf.key"), "-pubout")
    assert r.returncode == 0, r.stderr
    assert r.stdout == sm2_public_pem(out / "sm2-leaf.pem")
    text = openssl("pkey", "-in", str(out / "sm2-leaf.key"), "-noout", "-text").stdout
    assert b"ASN1 OID: SM2" in text
    assert mode(out / "sm2-leaf.key") == 0o600
    # The CA keys are not written.
    assert not list(out.glob("*root*.key")) and not list(out.glob("*intermediate*.key"))


@pytest.mark.parametrize("algorithm,key", [("ed25519", "ed25519.key"), ("sm2", "sm2-leaf.key")])
def test_existing_files_need_force(tmp_path, algorithm, key):
    out = tmp_path / "keys"
    assert keygen(out, "--algorithm", algorithm).returncode == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}

    again = keygen(out, "--algorithm", algorithm)
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith("error: ")
    assert str(out / key) in again.stderr and "already exist" in again.stderr
    assert "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files, "nothing changed"

    # One file left over is enough to refuse, and nothing else is written either.
    for name in files:
        if name != key:
            (out / name).unlink()
    assert keygen(out, "--algorithm", algorithm).returncode == 1
    assert sorted(p.name for p in out.iterdir()) == [key]

    # --force replaces them; a private key loosened by hand is owner-only again.
    (out / key).chmod(0o644)
    forced = keygen(out, "--algorithm", algorithm, "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert (out / key).read_bytes() != files[key]
    assert mode(out / key) == 0o600


def test_bad_arguments(tmp_path):
    r = keygen(tmp_path / "k", "--algorithm", "rsa")
    assert r.returncode == 2
    assert "--algorithm" in r.stderr and "ed25519" in r.stderr and "sm2" in r.stderr
    r = subprocess.run([str(myriad_bin()), "ctl", "ota", "keygen"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--out" in r.stderr
    # --out naming a file, not a directory.
    f = tmp_path / "file"
    f.write_text("x")
    r = keygen(f)
    assert r.returncode == 1 and str(f) in r.stderr
