"""Console sessions: what the web console's cookie holds instead of an API key.

A session token is a Fernet token (AES-CBC + HMAC-SHA256, with a key derived from the server secret and used
for nothing else) sealing the *digest* of the API key it was opened with: opaque to whoever reads it, not
forgeable, and it never holds the key itself. Nothing is stored on the server, so every worker and replica
reads it alike. A session is only as alive as its key: each request looks the digest up through the same
`KeyCache` header keys use, so revoking the key ends the session within the cache's freshness (< 1 s). A
token older than `SESSION_SECONDS` is refused; signing out deletes the cookie.

Each session has a CSRF token derived from it (an HMAC of the session token), which the console's pages carry
and send back as the `X-CSRF-Token` header (or a `csrf_token` form field): a request authenticated by the
cookie that changes anything must carry it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from cryptography.fernet import Fernet, InvalidToken

SESSION_COOKIE = "threadline_session"
CSRF_HEADER = "X-CSRF-Token"
# How long a console session lasts (seconds), whatever happens to its key meanwhile.
SESSION_SECONDS = 12 * 3600
# Methods that change nothing: the only ones a cookie may authenticate without a CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ConsoleSessions:
    def __init__(self, server_secret: str, *, max_age: int = SESSION_SECONDS) -> None:
        seal = hashlib.sha256(b"threadline-console-session-v1:" + server_secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(seal))
        self._csrf_key = hashlib.sha256(b"threadline-console-csrf-v1:" + server_secret.encode()).digest()
        self.max_age = max_age

    def issue(self, digest: str) -> str:
        """A new session token for the key with this digest (a nonce makes each one different)."""
        payload = json.dumps({"d": digest, "n": secrets.token_hex(8)}, separators=(",", ":"))
        return self._fernet.encrypt(payload.encode()).decode()

    def digest_of(self, token: str) -> str | None:
        """The key digest a valid, unexpired token seals, or None."""
        if not token or len(token) > 1024:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(token.encode(), ttl=self.max_age))
        except (InvalidToken, ValueError):
            return None
        digest = payload.get("d") if isinstance(payload, dict) else None
        return digest if isinstance(digest, str) else None

    def csrf_token(self, token: str) -> str:
        return hmac.new(self._csrf_key, token.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token(token), presented or "")

    def seconds_left(self, token: str) -> int:
        """Until the token expires (for the cookie's Max-Age)."""
        try:
            issued = self._fernet.extract_timestamp(token.encode())
        except InvalidToken:
            return 0
        return max(0, int(issued + self.max_age - time.time()))
