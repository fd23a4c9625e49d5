"""API keys: created once and shown once, stored as a salted SHA-256 of the secret, found by a visible prefix.

Keys are 32 random bytes of secret, so a fast salted hash is as safe as a slow one against guessing (there is
nothing to brute-force) and keeps authentication well under a millisecond; see docs/gateway.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import ApiKey, Project, utcnow

KEY_PREFIX = "qh-"
PREFIX_LEN = len(KEY_PREFIX) + 8
CACHE_TTL_S = 5.0  # how long another process may keep honouring a key revoked elsewhere


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key of a project (or nobody, when auth is off)."""

    project_id: int
    project_name: str
    key_id: int | None
    key_prefix: str
    is_admin: bool = False
    rpm: int | None = None
    tpm: int | None = None
    budget_nusd: int | None = None
    project_rpm: int | None = None
    project_tpm: int | None = None
    project_budget_nusd: int | None = None
    expires_at: dt.datetime | None = None

    @property
    def actor(self) -> str:
        return f"key:{self.key_prefix}" if self.key_id is not None else "anonymous"


class AuthError(Exception):
    def __init__(self, message: str, code: str = "invalid_api_key") -> None:
        super().__init__(message)
        self.message, self.code = message, code


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256((salt + secret).encode()).hexdigest()


@dataclass
class CreatedKey:
    key: str  # the full secret: shown once, never stored
    row: ApiKey


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, Principal | AuthError]] = {}
        self._lock = threading.Lock()

    def create(self, project_id: int, *, name: str = "", is_admin: bool = False, rpm: int | None = None,
               tpm: int | None = None, budget_nusd: int | None = None,
               expires_at: dt.datetime | None = None) -> CreatedKey:
        with self.db.session() as s:
            if s.get(Project, project_id) is None:
                raise ValueError(f"project {project_id} does not exist")
            for _ in range(5):
                prefix = KEY_PREFIX + secrets.token_hex(4)
                if s.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
                    break
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_hex(16)
            row = ApiKey(project_id=project_id, name=name, prefix=prefix, salt=salt,
                         secret_hash=_hash(salt, secret), is_admin=is_admin, rpm=rpm, tpm=tpm,
                         monthly_budget_nusd=budget_nusd, expires_at=expires_at, created_at=utcnow())
            s.add(row)
            s.commit()
            return CreatedKey(key=prefix + "_" + secret, row=row)

    def any_exist(self) -> bool:
        with self.db.session() as s:
            return s.scalar(select(ApiKey.id).limit(1)) is not None

    def list(self, project_id: int | None = None) -> list[tuple[ApiKey, str]]:
        with self.db.session() as s:
            q = select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.id)
            if project_id is not None:
                q = q.where(ApiKey.project_id == project_id)
            return [(k, pname) for k, pname in s.execute(q).all()]

    def revoke(self, prefix: str, project_id: int | None = None) -> ApiKey:
        """Revoke by the visible prefix (or the whole key). ``project_id`` limits it to one project's keys."""
        prefix = prefix.strip()[:PREFIX_LEN]
        with self.db.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            if row is None or (project_id is not None and row.project_id != project_id):
                raise KeyError(f"no key {prefix!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                s.commit()
        with self._lock:
            self._cache.clear()
        return row

    def authenticate(self, presented: str) -> Principal:
        """The principal for a presented key, or AuthError saying why not (cached briefly, hashed)."""
        cache_key = hashlib.sha256(presented.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit is not None and now - hit[0] < CACHE_TTL_S:
            result = hit[1]
        else:
            result = self.db.retrying(self._lookup, presented)
            with self._lock:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[cache_key] = (now, result)
        if isinstance(result, AuthError):
            raise result
        if result.expires_at is not None and result.expires_at <= utcnow():
            raise AuthError(f"the API key {result.key_prefix}… expired on {result.expires_at:%Y-%m-%d %H:%M} UTC; "
                            "create a new one", code="expired_api_key")
        return result

    def _lookup(self, presented: str) -> Principal | AuthError:
        invalid = AuthError("Incorrect API key provided. Create one with `qwenhost keys create --project P`.")
        if not presented.startswith(KEY_PREFIX) or len(presented) < PREFIX_LEN + 2 or presented[PREFIX_LEN] != "_":
            return invalid
        prefix, secret = presented[:PREFIX_LEN], presented[PREFIX_LEN + 1:]
        with self.db.session() as s:
            found = s.execute(select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id)
                              .where(ApiKey.prefix == prefix)).first()
        if found is None:
            return invalid
        key, project = found
        if not hmac.compare_digest(_hash(key.salt, secret), key.secret_hash):
            return invalid
        if key.revoked_at is not None:
            return AuthError(f"the API key {prefix}… was revoked on {key.revoked_at:%Y-%m-%d %H:%M} UTC",
                             code="revoked_api_key")
        return Principal(project_id=project.id, project_name=project.name, key_id=key.id, key_prefix=prefix,
                         is_admin=key.is_admin, rpm=key.rpm, tpm=key.tpm, budget_nusd=key.monthly_budget_nusd,
                         project_rpm=project.rpm, project_tpm=project.tpm,
                         project_budget_nusd=project.monthly_budget_nusd,
                         expires_at=key.expires_at)
