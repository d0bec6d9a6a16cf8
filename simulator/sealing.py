"""End-to-end encryption to one party: X25519 key agreement, HKDF-SHA256, AES-GCM (`cryptography`).

Each party holds a key pair whose private half never leaves its private directory; the server learns
the public halves and relays sealed bytes it cannot open (the data owner's keys for a user).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_RAW = serialization.Encoding.Raw
_NONCE = 12


def new_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(_RAW, serialization.PublicFormat.Raw)
    )


def _key(shared: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"veil-seal:" + context).derive(shared)


def seal(recipient_public: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Ciphertext only the holder of the recipient's private key opens; `context` (who, what) is bound in."""
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    nonce = os.urandom(_NONCE)
    body = AESGCM(_key(shared, context)).encrypt(nonce, plaintext, context)
    return ephemeral.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw) + nonce + body


def open_sealed(private: bytes, blob: bytes, context: bytes) -> bytes:
    """The plaintext; `cryptography.exceptions.InvalidTag` if the blob was altered or is not for us."""
    ephemeral, nonce, body = blob[:32], blob[32 : 32 + _NONCE], blob[32 + _NONCE :]
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(ephemeral)
    )
    return AESGCM(_key(shared, context)).decrypt(nonce, body, context)
