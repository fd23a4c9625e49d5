"""The admin CLI (projects, keys, prices, usage, audit) against a real database of each kind, through the same
`qwenhost` app users run; what it changed is checked by reading the database with a separate Gateway."""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from qwenhost.cli.main import app
from qwenhost.gateway.db import Database
from qwenhost.gateway.keys import AuthError
from qwenhost.gateway.ledger import UsageEntry
from qwenhost.gateway.prices import PriceTier
from qwenhost.gateway.schema import utcnow
from qwenhost.gateway.service import Gateway

KEY_RE = re.compile(r"qh-[0-9a-f]{8}_[A-Za-z0-9_-]{43}")
Run = Callable[..., Result]


@pytest.fixture()
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("QWENHOST_DATABASE_URL", db_url)
    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0, columns: int = 200) -> Result:
        result = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
        assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
        assert "Traceback" not in result.output
        return result

    return run


@contextmanager
def fresh(db_url: str) -> Iterator[Gateway]:
    """A new Gateway each time: KeyStore caches answers for seconds, and the CLI changes things behind it."""
    gw = Gateway(Database(db_url))
    try:
        yield gw
    finally:
        gw.close()


def words(text: str) -> str:
    # rich wraps stderr at the console width; compare messages with whitespace collapsed.
    return " ".join(text.split())


def table_rows(text: str) -> list[list[str]]:
    """The body cells of the rich tables in ``text`` (wide layout, '│' between cells)."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.lstrip().startswith("│")]


def create_key(cli: Run, *args: str) -> str:
    result = cli("keys", "create", *args)
    assert KEY_RE.fullmatch(result.stdout.strip()), result.stdout
    assert result.stdout.count("\n") == 1  # the key alone on its line: `$(qwenhost keys create ...)` works
    key = result.stdout.strip()
    assert result.output.count(key) == 1  # printed once, nowhere else
    assert "store it now; it is not shown again" in words(result.stderr)
    return key


def test_key_lifecycle(cli: Run, db_url: str) -> None:
    cli("projects", "create", "acme")
    key = create_key(cli, "--project", "acme", "--name", "ci")
    prefix, secret = key[:11], key[12:]

    with fresh(db_url) as gw:
        p = gw.keys.authenticate(key)
        assert (p.project_name, p.key_prefix, p.is_admin) == ("acme", prefix, False)
        row = gw.keys.list()[0][0]
        stored = (row.salt, row.secret_hash)

    listing = cli("keys", "list").stdout
    assert [r[:4] for r in table_rows(listing)] == [[prefix, "acme", "ci", "no"]]
    for s in (secret, *stored):
        assert s not in listing

    revoked = cli("keys", "revoke", key)  # the whole key works, and is not echoed back
    assert prefix in revoked.stdout and secret not in revoked.output
    with fresh(db_url) as gw, pytest.raises(AuthError) as info:
        gw.keys.authenticate(key)
    assert info.value.code == "revoked_api_key"
    assert table_rows(cli("keys", "list").stdout)[0][6] != "-"  # the revoked column is filled in

    again = cli("keys", "revoke", prefix)
    assert "already revoked" in again.stdout

    with fresh(db_url) as gw:
        events = gw.audit.list()
    assert [e.action for e in reversed(events)] == ["project.create", "key.create", "key.revoke"]
    assert {e.actor for e in events} == {f"cli:{getpass.getuser()}"}
    assert all(secret not in e.detail for e in events)
    assert f"prefix={prefix}" in events[0].detail


def test_key_options_and_project_by_id(cli: Run, db_url: str) -> None:
    cli("projects", "create", "acme")
    key = create_key(cli, "--project", "1", "--rpm", "60", "--tpm", "0", "--budget", "2.50", "--admin",
                     "--expires", "2099-06-01T12:00:00+02:00")
    with fresh(db_url) as gw:
        p = gw.keys.authenticate(key)
    assert p.is_admin and p.rpm == 60 and p.tpm is None  # 0 means no limit
    assert p.budget_nusd == 2_500_000_000
    assert p.expires_at == dt.datetime(2099, 6, 1, 10, 0)  # converted to UTC
    row = table_rows(cli("keys", "list", "--project", "acme").stdout)[0]
    assert row[3:] == ["yes", row[4], "2099-06-01 10:00", "-", "60", "-", "$2.50"]
    create_key(cli, "--project", "acme", "--expires", "2099-06-01T12:30:45")
    assert "2099-06-01 12:30:45" in cli("keys", "list", "--project", "acme").stdout  # seconds where it has them


def test_expiry(cli: Run, db_url: str) -> None:
    cli("projects", "create", "acme")
    past = cli("keys", "create", "--project", "acme", "--expires", "2001-01-01", code=2)
    assert "--expires must be in the future" in words(past.stderr)
    assert past.stdout == ""
    with fresh(db_url) as gw:
        assert not gw.keys.any_exist()
        proj = gw.projects.get("acme")
        old = gw.keys.create(proj.id, expires_at=utcnow() - dt.timedelta(hours=1))
    with fresh(db_url) as gw, pytest.raises(AuthError) as info:
        gw.keys.authenticate(old.key)
    assert info.value.code == "expired_api_key"
    assert "(expired)" in table_rows(cli("keys", "list").stdout)[0][5]
    cli("keys", "revoke", old.key[:11])
    narrow = words(cli("keys", "list", columns=80).stdout)  # one status column instead of three dates
    assert "status" in narrow and "revoked" in narrow and "created" not in narrow


def test_projects_list_and_limits(cli: Run, db_url: str) -> None:
    cli("projects", "create", "acme", "--rpm", "60", "--tpm", "1000", "--budget", "25")
    cli("projects", "create", "other")
    with fresh(db_url) as gw:
        acme = gw.projects.get("acme")
        gw.ledger.record_sync(UsageEntry("r1", utcnow(), acme.id, None, "qwen-max", "cloud", 1000, 0, 100,
                                         1_800_000, 50, "completed"))
    rows = table_rows(cli("projects", "list").stdout)
    assert [r[:2] + r[3:] for r in rows] == [["1", "acme", "60", "1,000", "$25.00", "$0.0018"],
                                             ["2", "other", "-", "-", "-", "$0.00"]]

    def limits() -> tuple[int | None, int | None, int | None]:
        with fresh(db_url) as gw:
            p = gw.projects.get("acme")
            return p.rpm, p.tpm, p.monthly_budget_nusd

    cli("projects", "limits", "acme", "--rpm", "0", "--budget", "2.50")
    assert limits() == (None, 1000, 2_500_000_000)
    cli("projects", "limits", "acme", "--budget", "none")
    assert limits() == (None, 1000, None)
    cli("projects", "limits", "acme", "--clear", "--rpm", "5")
    assert limits() == (5, None, None)
    assert "nothing to change" in words(cli("projects", "limits", "acme", code=2).stderr)
    with fresh(db_url) as gw:
        details = [e.detail for e in gw.audit.list() if e.action == "project.limits"]
    assert details[0] == "name=acme rpm=5 tpm=- budget_usd=-"
    assert details[-1] == "name=acme rpm=- tpm=1000 budget_usd=2.5"


def test_prices_set_list_remove(cli: Run, db_url: str) -> None:
    cli("prices", "set", "qwen-max", "--input", "1.2", "--output", "6", "--up-to", "32768")
    cli("prices", "set", "qwen-max", "--input", "2.4", "--output", "12", "--cached", "0.6")
    assert "warning" not in cli("prices", "set", "qwen-plus", "--input", "0.4", "--output", "1.2").stderr
    cli("prices", "set", "qwen-max", "--input", "1.2", "--output", "6", "--cached", "0.24", "--up-to", "32768")
    odd = cli("prices", "set", "odd", "--input", "1", "--output", "2", "--cached", "3")  # set, with a warning
    assert "cached input price ($3.00) is above the input price ($1.00)" in words(odd.stderr)
    cli("prices", "remove", "odd")
    with fresh(db_url) as gw:
        assert gw.prices.all() == {
            "qwen-max": [PriceTier(32768, 1_200_000, 240_000, 6_000_000),
                         PriceTier(None, 2_400_000, 600_000, 12_000_000)],
            "qwen-plus": [PriceTier(None, 400_000, 400_000, 1_200_000)]}
    assert table_rows(cli("prices", "list").stdout) == [
        ["qwen-max", "32,768 tokens", "$1.20", "$0.24", "$6.00"],
        ["qwen-max", "longer", "$2.40", "$0.60", "$12.00"],
        ["qwen-plus", "any length", "$0.40", "$0.40", "$1.20"]]

    cli("prices", "remove", "qwen-max")
    with fresh(db_url) as gw:
        assert set(gw.prices.all()) == {"qwen-plus"}
        actions = [(e.action, e.detail) for e in reversed(gw.audit.list())]
    assert actions[0] == ("price.set", "model=qwen-max up_to=32768 input_usd=1.2 cached_usd=1.2 output_usd=6")
    assert actions[-1] == ("price.remove", "model=qwen-max tiers=2")
    assert "no prices are set for 'qwen-max'" in words(cli("prices", "remove", "qwen-max", code=2).stderr)


def _seed_usage(db_url: str) -> tuple[str, str]:
    """Four requests over two days, two projects, two keys; returns the two keys' prefixes."""
    with fresh(db_url) as gw:
        gw.prices.set("qwen-max", input_usd="1.2", output_usd="6")
        assert gw.prices.cost("qwen-max", 1000, 0, 100) == 1_800_000  # $0.0012 + $0.0006
        acme, other = gw.projects.create("acme"), gw.projects.create("other")
        k1, k2 = gw.keys.create(acme.id).row, gw.keys.create(acme.id).row
        day1, day2 = dt.datetime(2026, 3, 1, 10), dt.datetime(2026, 3, 2, 9)
        for rid, t, proj, key, model, backend, prompt, cached, comp, lat in [
            ("a", day1, acme.id, k1.id, "qwen-max", "cloud", 1000, 0, 100, 900),
            ("b", day1, acme.id, k2.id, "qwen-max", "cloud", 2000, 500, 200, 900),
            ("c", day2, acme.id, k1.id, "qwen3-8b", "local", 500, 0, 50, 1000),
            ("d", day2, other.id, None, "qwen-max", "cloud", 1000, 0, 100, 900),
        ]:
            gw.ledger.record_sync(UsageEntry(rid, t, proj, key, model, backend, prompt, cached, comp,
                                             gw.prices.cost(model, prompt, cached, comp), lat, "completed"))
        return k1.prefix, k2.prefix


def test_usage_reports(cli: Run, db_url: str) -> None:
    k1, k2 = _seed_usage(db_url)

    by_model = table_rows(cli("usage", "--by", "model").stdout)
    assert sorted(by_model[:-1]) == [["qwen-max", "3", "4,000", "500", "400", "$0.0072"],
                                     ["qwen3-8b", "1", "500", "0", "50", "$0.00"]]
    assert by_model[-1] == ["total", "4", "4,500", "500", "450", "$0.0072"]

    by_key = table_rows(cli("usage", "--project", "acme", "--by", "key").stdout)
    assert sorted(by_key[:-1]) == sorted([[k1, "2", "1,500", "0", "150", "$0.0018"],
                                          [k2, "1", "2,000", "500", "200", "$0.0036"]])
    assert by_key[-1] == ["total", "3", "3,500", "500", "350", "$0.0054"]

    assert table_rows(cli("usage", "--by", "day").stdout) == [
        ["2026-03-01", "2", "3,000", "500", "300", "$0.0054"],
        ["2026-03-02", "2", "1,500", "0", "150", "$0.0018"],
        ["total", "4", "4,500", "500", "450", "$0.0072"]]
    assert table_rows(cli("usage", "--by", "day", "--since", "2026-03-02").stdout)[0][0] == "2026-03-02"
    assert table_rows(cli("usage", "--by", "day", "--until", "2026-03-01").stdout)[:-1] == [
        ["2026-03-01", "2", "3,000", "500", "300", "$0.0054"]]  # --until DATE includes that day
    assert table_rows(cli("usage", "--by", "project").stdout)[:2] == [
        ["acme", "3", "3,500", "500", "350", "$0.0054"], ["other", "1", "1,000", "0", "100", "$0.0018"]]
    assert table_rows(cli("usage").stdout) == [["total", "4", "4,500", "500", "450", "$0.0072"]]
    assert "No usage recorded" in cli("usage", "--since", "2027-01-01").stdout

    out = cli("usage", "--by", "model", "--csv").stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["model", "requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd"]
    assert sorted(rows[1:]) == [["qwen-max", "3", "4000", "500", "400", "0.0072"],
                                ["qwen3-8b", "1", "500", "0", "50", "0"]]
    assert sum(Decimal(r[5]) for r in rows[1:]) == Decimal("0.0072")


def test_local_cost_per_million(cli: Run, db_url: str) -> None:
    cli("prices", "local", "qwen3-8b", "--per-hour", "2", "--compare-to", "qwen-max")
    cli("prices", "local", "qwen3-32b", "--per-hour", "1.5")
    before = table_rows(cli("prices", "list").stdout)
    assert before[0][:3] == ["qwen3-32b", "$1.50/h", "no local usage recorded yet; serve some requests first"]
    assert before[1][4:] == ["qwen-max", "no price set"]

    _seed_usage(db_url)  # qwen3-8b: 550 tokens in 1.0 s of busy time on the local backend
    rows = table_rows(cli("prices", "list").stdout)
    local = [r for r in rows if r[0] == "qwen3-8b"][0]
    # $2/h at 550 tokens/s: 1e6 / 550 / 3600 h * $2 = $1.0101 per million tokens
    assert local == ["qwen3-8b", "$2.00/h", "550.0 tokens/s (550 tokens in 1.0 s busy)", "$1.0101", "qwen-max",
                     "$1.20 / $6.00"]
    with fresh(db_url) as gw:
        details = [e.detail for e in gw.audit.list() if e.action == "price.local"]
    assert details[-1] == "model=qwen3-8b usd_per_hour=2 compare_to=qwen-max"

    assert "Removed the hardware cost of qwen3-32b." in words(cli("prices", "remove", "qwen3-32b", "--local").stdout)
    local_rows = [r[0] for r in table_rows(cli("prices", "list").stdout) if r[1].endswith("/h")]
    assert local_rows == ["qwen3-8b"]  # the other stays
    assert "no hardware cost is recorded for 'qwen3-32b'" in words(
        cli("prices", "remove", "qwen3-32b", "--local", code=2).stderr)
    with fresh(db_url) as gw:
        assert [e.detail for e in gw.audit.list() if e.action == "price.local_remove"] == ["model=qwen3-32b"]
        assert set(gw.prices.all()) == {"qwen-max"}  # --local never touches price tiers


def test_audit_command(cli: Run, db_url: str) -> None:
    cli("projects", "create", "acme")
    cli("prices", "set", "m", "--input", "1", "--output", "2")
    rows = table_rows(cli("audit", "--limit", "1").stdout)
    assert len(rows) == 1 and rows[0][1:4] == [f"cli:{getpass.getuser()}", "price.set", "-"]
    rows = table_rows(cli("audit", "--project", "acme").stdout)
    assert [r[2:4] for r in rows] == [["project.create", "acme"]]
    with fresh(db_url) as gw:
        gw.audit.auth_failure("invalid_api_key", "qh-12345678", "10.1.2.3")
    assert table_rows(cli("audit", "-n", "1").stdout)[0][1:] == [
        "anonymous", "auth.failed", "-", "invalid_api_key key=qh-12345678", "10.1.2.3"]


@pytest.mark.parametrize(("args", "message"), [
    (("keys", "create", "--project", "nope"), "no project 'nope'; create it with `qwenhost projects create nope`"),
    (("keys", "list", "--project", "nope"), "no project 'nope'"),
    (("usage", "--project", "nope"), "no project 'nope'"),
    (("usage", "--since", "2026-13-01"), "--since must be a date like 2026-03-31"),
    (("usage", "--until", "yesterday"), "--until must be a date like 2026-03-31"),
    (("usage", "--since", "2026-03-02", "--until", "2026-03-01"), "must come after --since"),
    (("usage", "--by", "week"), "--by must be one of model, key, day, project (got 'week')"),
    (("prices", "set", "m", "--input", "-1", "--output", "2"), "--input must be a finite, non-negative amount"),
    (("prices", "set", "m", "--input", "1", "--output", "abc"), "--output must be a number of US dollars"),
    (("prices", "set", "m", "--input", "1", "--output", "2", "--cached", "nan"), "--cached must be a finite"),
    (("prices", "set", "m", "--input", "1", "--output", "2", "--up-to", "0"), "--up-to"),
    (("prices", "local", "m", "--per-hour", "-2"), "--per-hour must be a finite, non-negative amount"),
    (("projects", "create", "acme", "--budget", "-5"), "--budget must be a finite, non-negative amount"),
    (("projects", "create", "acme", "--budget", "nan"), "--budget must be a finite, non-negative amount"),
    (("projects", "create", "acme", "--budget", "1e30"), "--budget must be at most 1,000,000,000 US dollars"),
    (("projects", "create", "bad name!"), "is not valid"),
    (("projects", "create", "x", "--rpm", "-1"), "--rpm"),
    (("projects", "limits", "nope", "--rpm", "1"), "no project 'nope'"),
    (("keys", "revoke", "qh-00000000"), "no key 'qh-00000000'"),
    (("keys", "revoke", "hello"), "is not a key prefix"),
    (("keys", "create", "--project", "x", "--expires", "9999-12-31T23:00-05:00"), "--expires must be a date"),
    (("prices", "set", "m" * 201, "--input", "1", "--output", "2"), "at most 200 characters (got 201)"),
    (("prices", "local", "m", "--per-hour", "1", "--compare-to", "c" * 201), "at most 200 characters (got 201)"),
    (("prices", "set", "  ", "--input", "1", "--output", "2"), "the model name must not be empty"),
])
def test_bad_input_exits_2_with_a_message(cli: Run, db_url: str, args: tuple[str, ...], message: str) -> None:
    result = cli(*args, code=2)
    assert message in words(result.stderr), result.stderr
    assert result.stdout == ""
    with fresh(db_url) as gw:
        assert gw.audit.list() == [] and gw.projects.list() == [] and gw.prices.all() == {}


def test_duplicate_project(cli: Run) -> None:
    cli("projects", "create", "acme")
    assert "a project named 'acme' already exists" in words(cli("projects", "create", "acme", code=2).stderr)


def test_unusable_database_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWENHOST_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("QWENHOST_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["projects", "list"])
    assert result.exit_code == 2, result.output
    assert words(result.stderr).startswith("error: cannot open database postgresql+psycopg://nobody@127.0.0.1:1/none")
