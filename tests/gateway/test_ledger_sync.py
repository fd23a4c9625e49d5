"""QWENHOST_LEDGER_SYNC: what a committed usage row survives. "process" (a crash of qwenhost) is SQLite's
default, "disk" (also a crash of the machine or the database server) PostgreSQL's; either can be chosen on
either database, and anything else is refused with a message that says what to set."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from qwenhost.cli.main import app
from qwenhost.gateway.db import Database, DatabaseError, ledger_sync
from qwenhost.gateway.ledger import UsageEntry, UsageLedger
from tests.gateway.test_exactly_once import ledger as ledger_rows


@pytest.mark.parametrize("is_sqlite, setting, expected", [
    (True, "", "process"), (False, "", "disk"), (True, "disk", "disk"), (False, " Process ", "process"),
])
def test_defaults_and_choices(is_sqlite: bool, setting: str, expected: str) -> None:
    assert ledger_sync(is_sqlite, setting) == expected


def test_a_bad_value_says_what_to_set() -> None:
    with pytest.raises(DatabaseError, match="QWENHOST_LEDGER_SYNC must be 'process' .* or 'disk' .*not 'fsync'"):
        ledger_sync(True, "fsync")


def test_the_cli_refuses_a_bad_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    monkeypatch.setenv("QWENHOST_LEDGER_SYNC", "always")
    result = CliRunner().invoke(app, ["projects", "list"])
    assert result.exit_code == 2 and "QWENHOST_LEDGER_SYNC must be" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("setting, pragma", [(None, 1), ("process", 1), ("disk", 2)])  # NORMAL = 1, FULL = 2
def test_sqlite_synchronous_follows_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                setting: str | None, pragma: int) -> None:
    if setting is None:
        monkeypatch.delenv("QWENHOST_LEDGER_SYNC", raising=False)
    else:
        monkeypatch.setenv("QWENHOST_LEDGER_SYNC", setting)
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    db.migrate()
    try:
        with db.engine.connect() as c:
            assert c.execute(text("PRAGMA synchronous")).scalar() == pragma
        led = UsageLedger(db)
        led.record_sync(UsageEntry("r1", dt.datetime(2026, 11, 24), 1, None, "m", "echo", 1, 0, 1, 3, 1, "completed"))
        assert led._sqlite is not None and led._sqlite._conn is not None
        raw = led._sqlite._conn.driver_connection  # the writer's own connection has it too
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == pragma
        led.close()
        assert list(ledger_rows(db.url)) == ["r1"]
    finally:
        db.close()


@pytest.mark.parametrize("setting, expected", [(None, "on"), ("disk", "on"), ("process", "off")])
def test_postgresql_ledger_connections_follow_the_setting(monkeypatch: pytest.MonkeyPatch, setting: str | None,
                                                          expected: str) -> None:
    from tests.gateway.conftest import _pg_schema_url

    if setting is None:
        monkeypatch.delenv("QWENHOST_LEDGER_SYNC", raising=False)
    else:
        monkeypatch.setenv("QWENHOST_LEDGER_SYNC", setting)
    for url in _pg_schema_url():
        db = Database(url)
        db.migrate()
        led = UsageLedger(db)
        try:
            assert led._pg is not None and led._pg_async is not None
            assert led._pg.fetch("SHOW synchronous_commit", {}) == [(expected,)]

            assert asyncio.run(led._pg_async.fetch("SHOW synchronous_commit", {})) == [(expected,)]
        finally:
            led.close()
            db.close()
