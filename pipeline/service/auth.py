"""Sessions, API tokens, CSRF tokens and the sign-in guard of the web service (the accounts
themselves: ``pipeline.core.accounts``).

- Sessions: an itsdangerous-signed cookie (HttpOnly, SameSite=Lax) holding the username,
  a fingerprint of the password hash (a password change or reset ends every session and
  token) and the session's CSRF token. API clients use ``Authorization: Bearer <token>``
  from ``POST /api/token``; a bearer request needs no CSRF token (no ambient credential).
- Sign-in guard (``LoginGuard``): after ``service.login_backoff_after`` failures per account or
  per address each next try must wait (2, 4 … 60 s) and is refused unchecked until then; after
  ``service.login_lockout_after`` failures the account is locked (``locked_at``) until an admin
  unlocks it; at most ``service.password_checks`` password checks run at once. Logging out stamps
  ``sessions_after``: every session of the account signed before it ends (server-side).
- The signing key: ``service.secret_file``, created (random, mode 600) on first use.
"""
from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.core.accounts import ROLES, User, authenticate, fingerprint, get_user
from pipeline.core.errors import ConfigError, InputError
from pipeline.core.values import is_missing

SESSION_COOKIE = "patrol_session"
LOGIN_CSRF_COOKIE = "patrol_login_csrf"


class LoginRefused(InputError):
    """A sign-in refused before its password was checked (throttled, locked, busy): HTTP 429."""


class LoginGuard:
    """Throttling and lockout of sign-ins (see the module docstring); one per service process."""

    def __init__(self, backoff_after: int = 3, lockout_after: int = 10, checks: int = 2, max_wait_s: float = 60):
        self.backoff_after, self.lockout_after, self.max_wait_s = backoff_after, lockout_after, max_wait_s
        self._checks = threading.BoundedSemaphore(checks)
        self._fails: dict[str, tuple[int, float]] = {}          # key -> (failures, next try allowed at)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, svc) -> "LoginGuard":
        return cls(svc.login_backoff_after, svc.login_lockout_after, svc.password_checks)

    def _wait(self, key: str) -> float:
        n, at = self._fails.get(key, (0, 0.0))
        return max(0.0, at - time.monotonic()) if n >= self.backoff_after else 0.0

    def _failed(self, key: str) -> None:
        n = self._fails.get(key, (0, 0.0))[0] + 1
        delay = min(2.0 ** (n - self.backoff_after + 1), self.max_wait_s) if n >= self.backoff_after else 0.0
        self._fails[key] = (n, time.monotonic() + delay)
        if len(self._fails) > 100_000:                           # bounded memory under a flood
            self._fails.pop(next(iter(self._fails)))

    def authenticate(self, store, username: str, password: str, address: str = "") -> User | None:
        """The account, None for a wrong name or password; LoginRefused when throttled, locked or busy."""
        keys = [f"user:{username}", f"addr:{address}"]
        with self._lock:
            wait = max(self._wait(k) for k in keys)
        if wait:
            raise LoginRefused(f"too many failed sign-ins; wait {wait:.0f} s and try again")
        if not self._checks.acquire(timeout=2.0):
            raise LoginRefused("the service is busy checking sign-ins; try again in a moment")
        try:
            user = authenticate(store, username, password)
        finally:
            self._checks.release()
        row = store.get_user(username) if username else None       # the account, read once
        known = User.from_row(row) if row else None
        if user is not None and known is not None and known.locked:
            raise LoginRefused(f"account {username} is locked after {self.lockout_after} failed sign-ins; "
                               f"ask an admin to unlock it (patrol users unlock {username})")
        with self._lock:
            for k in keys:
                if user is None:
                    self._failed(k)
                else:
                    self._fails.pop(k, None)
        if known is not None and not known.disabled:
            prev = 0 if is_missing(row.get("failed_logins")) else int(row["failed_logins"])
            fails = 0 if user is not None else prev + 1
            change = {"username": username, "failed_logins": fails}
            if fails >= self.lockout_after and not known.locked:
                change["locked_at"] = datetime.now()
            if user is None or prev:
                store.save_user(change)
        return user


# ---------------------------------------------------------------- signing
def load_secret(path: Path) -> bytes:
    """The signing key in ``path``; created (32 random bytes, hex, mode 600) when missing."""
    path = Path(path).expanduser()
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        key = path.read_text().strip()
    except FileExistsError:
        key = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"service.secret_file {path}: cannot read or create it ({e.strerror}); "
                          f"point it at a writable file") from None
    if len(key) < 32:
        raise ConfigError(f"service.secret_file {path} holds a key shorter than 32 characters; "
                          f"delete it to have a new one made")
    return key.encode()


class Signer:
    """Signed, timestamped session cookies and bearer tokens (itsdangerous)."""

    def __init__(self, secret: bytes, session_s: float, token_s: float):
        from itsdangerous import URLSafeTimedSerializer
        self._session = URLSafeTimedSerializer(secret, salt="patrol-session")
        self._token = URLSafeTimedSerializer(secret, salt="patrol-api-token")
        self._login = URLSafeTimedSerializer(secret, salt="patrol-login-csrf")
        self.session_s, self.token_s = session_s, token_s

    def session(self, user: User) -> tuple[str, str]:
        """(cookie value, CSRF token) of a new session."""
        csrf = secrets.token_urlsafe(24)
        return self._session.dumps({"u": user.username, "f": fingerprint(user.password_hash), "c": csrf}), csrf

    def read_session(self, value: str) -> dict | None:
        """The session's claims with its signing time (``t``, naive local time), or None."""
        from itsdangerous import BadSignature
        if not value or len(value) > 4096:
            return None
        try:
            claims, signed = self._session.loads(value, max_age=self.session_s, return_timestamp=True)
        except (BadSignature, ValueError, TypeError):
            return None
        return {**claims, "t": signed.astimezone().replace(tzinfo=None)} if isinstance(claims, dict) else None

    def token(self, user: User) -> str:
        return self._token.dumps({"u": user.username, "f": fingerprint(user.password_hash)})

    def read_token(self, value: str) -> dict | None:
        return self._load(self._token, value, self.token_s)

    def login_csrf(self) -> str:
        return self._login.dumps(secrets.token_urlsafe(16))

    def check_login_csrf(self, cookie: str | None, form: str | None) -> bool:
        return bool(cookie and form and hmac.compare_digest(cookie, form)
                    and self._load(self._login, form, 3600) is not None)

    @staticmethod
    def _load(ser, value: str, max_age: float) -> Any:
        from itsdangerous import BadSignature
        if not value or len(value) > 4096:
            return None
        try:
            return ser.loads(value, max_age=max_age)
        except (BadSignature, ValueError, TypeError):
            return None


def user_for(store, claims: dict | None) -> User | None:
    """The account a session/token names, if it is active and its password unchanged."""
    if not isinstance(claims, dict) or not isinstance(claims.get("u"), str):
        return None
    user = get_user(store, claims["u"])
    if user is None or user.disabled or user.role not in ROLES:
        return None
    if not hmac.compare_digest(fingerprint(user.password_hash), str(claims.get("f", ""))):
        return None
    if "t" in claims and user.sessions_after is not None and claims["t"] < user.sessions_after:
        return None                      # signed out (server-side) after this session began
    return user
