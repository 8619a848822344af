"""User accounts, used alike by the CLI (`patrol users …`) and the web service.

- Roles: ``patrol`` (uploads flights, sees its own), ``officer`` (reviews and moves the
  cases of the towns/villages listed on the account), ``admin`` (everything).
- Passwords: argon2id (argon2-cffi), re-hashed on login when the parameters change; the same
  work is done for an unknown name as for a wrong password.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.core.errors import InputError
from pipeline.core.values import is_missing

ROLES = ("patrol", "officer", "admin")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{2,40}$")
MIN_PASSWORD = 8

ROLES = ("patrol", "officer", "admin")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{2,40}$")
MIN_PASSWORD = 8


def _hasher():
    from argon2 import PasswordHasher
    return PasswordHasher()


def hash_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise InputError(f"password too short; use at least {MIN_PASSWORD} characters")
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError
    try:
        return _hasher().verify(password_hash, password or "")
    except (VerificationError, InvalidHashError):
        return False


def fingerprint(password_hash: str) -> str:
    """Short digest of the stored hash: tokens carry it, so a new password voids them."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass
class User:
    username: str
    role: str
    towns: list[str] = field(default_factory=list)
    display_name: str = ""
    disabled: bool = False
    password_hash: str = ""
    locked: bool = False
    sessions_after: Any = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "User":
        def s(v):
            return v if isinstance(v, str) else ""
        towns = row.get("towns")
        return cls(username=row["username"], role=s(row.get("role")),
                   towns=[str(t) for t in towns] if isinstance(towns, list) else [],
                   display_name=s(row.get("display_name")),
                   disabled=bool(row.get("disabled") == 1 or row.get("disabled") is True),
                   password_hash=s(row.get("password_hash")), locked=not is_missing(row.get("locked_at")),
                   sessions_after=None if is_missing(row.get("sessions_after")) else row["sessions_after"])

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def sees(self, town: Any, village: Any) -> bool:
        """May this account read and change a case in this town / village?"""
        if self.is_admin:
            return True
        if self.role != "officer":
            return False
        places = {t for t in self.towns if t}
        return (isinstance(town, str) and town in places) or (isinstance(village, str) and village in places)

    def public(self) -> dict[str, Any]:
        return {"username": self.username, "role": self.role, "towns": self.towns,
                "display_name": self.display_name, "disabled": self.disabled, "locked": self.locked}


# ---------------------------------------------------------------- account management (CLI, admin page)
def _check_username(username: str) -> None:
    if not USERNAME_RE.match(username or ""):
        raise InputError(f"user name '{username}' is not allowed; use 2-40 letters, digits, '_', '.' or '-'")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InputError(f"role '{role}' is unknown; use one of {', '.join(ROLES)}")


def add_user(store, username: str, password: str, role: str, towns: list[str] | None = None,
             display_name: str = "") -> User:
    _check_username(username)
    _check_role(role)
    if store.get_user(username) is not None:
        raise InputError(f"user {username} exists already; use `patrol users passwd {username}`")
    row = {"username": username, "password_hash": hash_password(password), "role": role,
           "towns": [t.strip() for t in (towns or []) if t.strip()], "display_name": display_name or "",
           "disabled": 0}
    store.save_user(row)
    return User.from_row(row)


def get_user(store, username: str) -> User | None:
    row = store.get_user(username) if username else None
    return User.from_row(row) if row else None


def set_password(store, username: str, password: str) -> None:
    if get_user(store, username) is None:
        raise InputError(f"user {username} does not exist; see `patrol users list`")
    store.save_user({"username": username, "password_hash": hash_password(password)})


def set_disabled(store, username: str, disabled: bool = True) -> None:
    if get_user(store, username) is None:
        raise InputError(f"user {username} does not exist; see `patrol users list`")
    store.save_user({"username": username, "disabled": 1 if disabled else 0})


def unlock(store, username: str) -> None:
    """Lift a sign-in lockout (admin)."""
    if get_user(store, username) is None:
        raise InputError(f"user {username} does not exist; see `patrol users list`")
    store.save_user({"username": username, "locked_at": None, "failed_logins": 0})


def end_sessions(store, username: str) -> None:
    """Server-side logout: every session of the account signed until now ends."""
    store.save_user({"username": username, "sessions_after": datetime.now().replace(microsecond=0)})


def list_users(store) -> list[User]:
    return [User.from_row(r) for r in store.users().to_dict("records")]



def authenticate(store, username: str, password: str) -> User | None:
    """The active account with this password, or None (same work done for unknown names)."""
    user = get_user(store, username or "")
    if user is None or user.disabled:
        verify_password(_dummy_hash(), password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        store.save_user({"username": user.username, "password_hash": _hasher().hash(password)})
        user = get_user(store, user.username)
    return user


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(_hasher().hash(secrets.token_hex(8)))
    return _DUMMY[0]
