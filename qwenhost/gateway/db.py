"""The gateway's database: SQLite (WAL) under QWENHOST_HOME by default, PostgreSQL via QWENHOST_DATABASE_URL.
The schema is brought up to date with Alembic on open, so an upgraded qwenhost migrates an old database."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from qwenhost.config import home_dir

DATABASE_URL_ENV = "QWENHOST_DATABASE_URL"
LEDGER_SYNC_ENV = "QWENHOST_LEDGER_SYNC"
# What a committed usage row survives: "process" a crash of qwenhost (kill -9); "disk" also a crash of the
# machine or of the database server, at the cost of a disk flush per commit.
LEDGER_SYNC_LEVELS = ("process", "disk")
T = TypeVar("T")
MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseError(Exception):
    """The configured database cannot be used; the message says what to fix."""


def database_url() -> str:
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if url:
        return url
    return f"sqlite:///{home_dir() / 'qwenhost.db'}"


def _normalize(url: str) -> str:
    # "postgresql://" would pick psycopg2, which we do not ship; psycopg 3 is the driver we install.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def ledger_sync(is_sqlite: bool, setting: str | None = None) -> str:
    """The durability of ledger commits: QWENHOST_LEDGER_SYNC, else "process" on SQLite (its usual WAL
    setting) and "disk" on PostgreSQL (its own default)."""
    raw = (os.environ.get(LEDGER_SYNC_ENV, "") if setting is None else setting).strip().lower()
    if not raw:
        return "process" if is_sqlite else "disk"
    if raw not in LEDGER_SYNC_LEVELS:
        raise DatabaseError(f"{LEDGER_SYNC_ENV} must be 'process' (a committed usage row survives a crash of "
                            "qwenhost) or 'disk' (it also survives a crash of the machine or the database server), "
                            f"not {raw!r}")
    return raw


def _sqlite_pragmas(synchronous: str) -> Callable[..., None]:
    def on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        # WAL lets readers run beside the ledger writer. NORMAL keeps every commit across a crash of the
        # process (kill -9), not across power loss; FULL flushes the WAL to disk at every commit.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def _no_autocheckpoint(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


CHECKPOINT_INTERVAL_S = 1.0


class Database:
    def __init__(self, url: str | None = None, *, background_checkpoint: bool = False) -> None:
        self.url = _normalize(url or database_url())
        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise DatabaseError(f"{DATABASE_URL_ENV} is not a database URL: {exc}") from exc
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.ledger_sync = ledger_sync(self.is_sqlite)
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._closed = threading.Event()
        # No pre-ping: it was a round trip on every checkout (several a request); a connection the server
        # dropped fails once instead, is invalidated by SQLAlchemy, and the hot paths retry (retrying()).
        kwargs: dict = {"pool_pre_ping": False}
        if not self.is_sqlite:
            kwargs.update(pool_size=8, max_overflow=8)
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except Exception as exc:
            raise DatabaseError(f"cannot use database {parsed.render_as_string(hide_password=True)}: {exc}") from exc
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas("FULL" if self.ledger_sync == "disk" else "NORMAL"))
            if background_checkpoint:
                # A checkpoint inside a ledger commit made that commit wait for a disk flush (the server's p99
                # latency); the server's connections leave it to a background thread instead. Other processes
                # (the CLI) keep SQLite's automatic checkpoints.
                event.listen(self.engine, "connect", _no_autocheckpoint)
                threading.Thread(target=self._checkpoint_loop, name="qwenhost-wal-checkpoint", daemon=True).start()
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrated = False
        self._lock = threading.Lock()

    def _checkpoint_loop(self) -> None:
        from sqlalchemy import text

        while not self._closed.wait(CHECKPOINT_INTERVAL_S):
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("PRAGMA wal_checkpoint(PASSIVE)"))
            except Exception:  # a locked or closing database: try again next time
                pass

    @property
    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        with self._lock:
            if self._migrated:
                return
            # Its INFO lines are noise at every start; some ("setup plugin ...") come while alembic.command imports.
            logging.getLogger("alembic").setLevel(logging.WARNING)
            from alembic import command
            from alembic.config import Config

            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            try:
                with self.engine.begin() as conn:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            except Exception as exc:
                raise DatabaseError(f"cannot open database {self.display_url}: {exc}") from exc
            self._migrated = True

    def installation_id(self) -> str:
        """A random id made once per database, so stores shared by several databases (Redis) keep them apart."""
        import secrets

        from sqlalchemy.exc import IntegrityError

        from qwenhost.gateway.schema import Meta

        with self.session() as s:
            row = s.get(Meta, "installation_id")
            if row is not None:
                return row.value
            s.add(Meta(key="installation_id", value=secrets.token_hex(8)))
            try:
                s.commit()
            except IntegrityError:  # another process made it first
                s.rollback()
            return s.get(Meta, "installation_id").value  # type: ignore[union-attr]

    def retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` again once if the database dropped the connection under it (a restart, an idle
        timeout): the failed attempt was rolled back, and every write here is idempotent or transactional."""
        try:
            return fn(*args)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return fn(*args)

    def insert(self, table: Any) -> Any:
        """An INSERT in this database's dialect, which has ON CONFLICT (upserts) on SQLite and PostgreSQL."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table)

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self._closed.set()
        self.engine.dispose()
