"""The demo plays the operator's cloud too: it makes the command-signing key pair a
real hub is given only the public half of."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def demo_command_keys(public: Path) -> Path:
    """An Ed25519 key pair for signed commands, made once: the public key where the
    hub's config expects it, the private key next to it (``.key``, mode 0600) for
    ``lockerctl cloud``. Returns the private key's path."""
    private = public.with_suffix(".key")
    if not public.exists():
        key = Ed25519PrivateKey.generate()
        public.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        private.chmod(0o600)
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return private
