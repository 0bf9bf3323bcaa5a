"""Encryption at rest of secrets the server must be able to read back (LLM keys, session keys)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    """Fernet with a key derived from the server secret."""

    def __init__(self, server_secret: str) -> None:
        digest = hashlib.sha256(b"threadline-secretbox-v1:" + server_secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("stored secret cannot be decrypted with this server secret") from exc
