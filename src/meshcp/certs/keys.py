"""Private key types the mesh supports, and their PEM form.

One place decides which algorithms are allowed so that the CA, the cfssl client and the
tests cannot drift apart; ECDSA P-256 is the default because it is the cheapest to
generate and to handshake with, while RSA remains for peers that require it.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_RSA_EXPONENT = 65537


class KeySpec(enum.Enum):
    """A key algorithm and size."""

    ECDSA_P256 = "ecdsa-p256"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """Read a configuration value; `ecdsa` alone means P-256."""
        normalised = text.strip().lower()
        if normalised == "ecdsa":
            return cls.ECDSA_P256
        for spec in cls:
            if spec.value == normalised:
                return spec
        allowed = ", ".join(["ecdsa", *(spec.value for spec in cls)])
        raise ValueError(f"unknown key type {text!r}; expected one of: {allowed}")

    @property
    def rsa_bits(self) -> int | None:
        """The RSA modulus size, or None for ECDSA."""
        if self is KeySpec.ECDSA_P256:
            return None
        return int(self.value.removeprefix("rsa-"))


def generate_private_key(spec: KeySpec) -> PrivateKey:
    """A fresh key; RSA generation can take a second, so call this off the event loop."""
    bits = spec.rsa_bits
    if bits is None:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=_RSA_EXPONENT, key_size=bits)


def key_spec_of(key: PrivateKey | PublicKey) -> KeySpec:
    """The spec a key was made with; raises ValueError for keys the mesh does not use."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeySpec.ECDSA_P256
        raise ValueError(f"unsupported elliptic curve {key.curve.name}")
    for spec in KeySpec:
        if spec.rsa_bits == key.key_size:
            return spec
    raise ValueError(f"unsupported RSA key size {key.key_size}")


def private_key_pem(key: PrivateKey) -> str:
    """Unencrypted PKCS#8 PEM: the one format Envoy, cfssl and Vault all read."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def load_private_key(pem: str | bytes) -> PrivateKey:
    """Parse an unencrypted PEM key, accepting only the algorithms the mesh supports."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    key_spec_of(key)
    return key


def same_public_key(a: PublicKey, b: object) -> bool:
    """Whether two public keys are the same key, compared by their encoded form."""
    if not isinstance(b, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return False
    encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(encoding, fmt) == b.public_bytes(encoding, fmt)


def describe_public_key(key: object) -> str:
    """A key's spec name, or its algorithm's class name if the mesh does not use it."""
    if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        try:
            return key_spec_of(key).value
        except ValueError:
            pass
    return type(key).__name__
