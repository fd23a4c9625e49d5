"""Exactly-once billing against real servers on each database: kill -9 under concurrent load, then a restart;
a client that leaves mid-stream; requests refused before generation. The Meter on its own: test_meter.py.

The echo backend answers at once, so what is tested is the gateway: every response that reached its client is
in the ledger once, with the tokens the client received, whatever happens to the server afterwards."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from typing import NamedTuple

import httpx
import openai
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import UsageRecord
from qwenhost.gateway.service import Gateway
from tests.conftest import ServerProcess

THREADS = 16
STALL_S = 1.0
MIN_COMPLETED_BEFORE_KILL = 60
MIN_LOAD_S, MAX_LOAD_S = 1.0, 30.0


class Done(NamedTuple):
    """A request that completed from its client's point of view."""

    rid: str
    kind: str
    words: int  # words sent: the echo's prompt tokens, and its completion tokens
    received: int  # words the client received


class Keys(NamedTuple):
    project_id: int
    key_id: int
    key: str


def make_key(db_url: str, project: str, **limits: int) -> Keys:
    gw = Gateway(Database(db_url))
    try:
        created = gw.keys.create(gw.projects.ensure(project).id, name="test", **limits)
        return Keys(created.row.project_id, created.row.id, created.key)
    finally:
        gw.close()


def ledger(db_url: str) -> dict[str, UsageRecord]:
    """The usage table, read directly; fails if any request id is there twice."""
    engine = create_engine(db_url)
    try:
        with Session(engine) as s:
            # One statement each: SQLite reads outside a transaction, so two would see different moments.
            total, distinct = s.execute(select(func.count(), func.count(func.distinct(UsageRecord.request_id)))
                                        ).one()
            rows = list(s.scalars(select(UsageRecord)))
    finally:
        engine.dispose()
    assert total == distinct and len(rows) == len({r.request_id for r in rows}), "a request id is there twice"
    return {r.request_id: r for r in rows}


def words(n: int, rng: random.Random) -> str:
    return " ".join(f"w{rng.randrange(10**6)}" for _ in range(n))


# -- one request of each kind: (response id, text received, finish reason), if the response arrived whole -----

Reply = tuple[str, str, str | None]


def chat_json(client: openai.OpenAI, http: httpx.Client, text: str) -> Reply:
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}])
    return r.id, r.choices[0].message.content or "", r.choices[0].finish_reason


def chat_sse(client: openai.OpenAI, http: httpx.Client, text: str, usage: bool = False) -> Reply:
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    rid, parts, finish, usage_seen = "", [], None, None
    # The SDK stops at data: [DONE]; a connection cut before it raises out of this loop.
    for chunk in client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}],
                                                stream=True, **extra):
        rid, usage_seen = chunk.id, chunk.usage or usage_seen
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert not usage or (usage_seen is not None and usage_seen.completion_tokens == len(text.split()))
    return rid, "".join(parts), finish


def chat_sse_raw(client: openai.OpenAI, http: httpx.Client, text: str) -> Reply:
    """Without the SDK, to see the end of the stream literally: the finish chunk, then data: [DONE]."""
    rid, parts, finish, last = "", [], None, ""
    with http.stream("POST", "/v1/chat/completions", json={
            "model": "echo", "stream": True, "messages": [{"role": "user", "content": text}]}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: "):
                last = line[6:]
                if last != "[DONE]":
                    obj = json.loads(last)
                    rid = obj["id"]
                    parts += [ch["delta"].get("content") or "" for ch in obj["choices"]]
                    finish = next((ch["finish_reason"] for ch in obj["choices"] if ch["finish_reason"]), finish)
    assert last == "[DONE]", last
    return rid, "".join(parts), finish


def completion(client: openai.OpenAI, http: httpx.Client, text: str, stream: bool = False) -> Reply:
    n = len(text.split())  # the default max_tokens (16) would cut the echo short
    if not stream:
        r = client.completions.create(model="echo", prompt=text, max_tokens=n)
        return r.id, r.choices[0].text, r.choices[0].finish_reason
    rid, parts, finish = "", [], None
    for chunk in client.completions.create(model="echo", prompt=text, max_tokens=n, stream=True):
        rid = chunk.id
        for ch in chunk.choices:
            parts.append(ch.text)
            finish = ch.finish_reason or finish
    return rid, "".join(parts), finish


KINDS: dict[str, Callable[[openai.OpenAI, httpx.Client, str], Reply]] = {
    "chat_json": chat_json, "chat_sse": chat_sse, "chat_sse_usage": partial(chat_sse, usage=True),
    "chat_sse_raw": chat_sse_raw, "completion_json": completion, "completion_sse": partial(completion, stream=True)}


def send(kind: str, client: openai.OpenAI, http: httpx.Client, text: str) -> Done:
    rid, got, finish = KINDS[kind](client, http, text)
    assert finish == "stop" and got == text, (kind, finish, len(got))
    return Done(rid, kind, len(text.split()), len(got.split()))


# Clients drop idle connections before the server's 5 s keep-alive timeout does: a thread picks one of six
# request kinds at random, so one of its two clients can sit idle that long, and a request sent on a connection
# the server is closing at that moment fails with "Server disconnected" (HTTP's keep-alive race, not a bug).
KEEPALIVE = httpx.Limits(keepalive_expiry=2.0)


def clients(base: str, key: str) -> tuple[openai.OpenAI, httpx.Client]:
    sdk_http = httpx.Client(limits=KEEPALIVE, timeout=30)
    return (openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30, http_client=sdk_http),
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=KEEPALIVE))


class Load:
    """THREADS clients, each sending requests back to back until told to stop."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.completed: list[Done] = []
        self.cut_off: list[str] = []  # requests the kill interrupted
        self.early_errors: list[str] = []  # requests that failed while the server was up: a bug
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(THREADS)]

    def _run(self, i: int) -> None:
        rng = random.Random(i)
        client, http = clients(self.base, self.key)
        with client, http:
            while not self.stop.is_set():
                kind, text = rng.choice(list(KINDS)), words(rng.randint(50, 800), rng)
                try:
                    done = send(kind, client, http, text)
                except Exception as exc:
                    with self.lock:
                        (self.cut_off if self.stop.is_set() else self.early_errors).append(f"{kind}: {exc!r}")
                    continue
                with self.lock:
                    self.completed.append(done)


@contextmanager
def ledger_stalled(db_url: str) -> Iterator[None]:
    """Hold the usage table's write lock, as a slow disk or a busy database would: the server's commits wait."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(str(url.database), isolation_level=None)) as conn:  # closing rolls back
            conn.execute("BEGIN IMMEDIATE")
            yield
        return
    engine = create_engine(db_url)
    try:
        with engine.connect() as c, c.begin() as tx:
            c.execute(text("LOCK TABLE usage IN EXCLUSIVE MODE"))
            yield
            tx.rollback()
    finally:
        engine.dispose()


def check_rows(rows: dict[str, UsageRecord], done: list[Done], keys: Keys) -> None:
    for d in done:
        row = rows.get(d.rid)
        assert row is not None, f"{d.kind} {d.rid} reached its client but is not in the ledger"
        assert (row.status, row.completion_tokens, row.prompt_tokens) == ("completed", d.received, d.words), d
        assert (row.key_id, row.project_id) == (keys.key_id, keys.project_id)


def test_kill_9_under_load_loses_and_duplicates_nothing(db_url: str) -> None:
    kill_9_under_load(db_url, {})


def test_kill_9_on_postgresql_without_waiting_for_the_flush() -> None:
    """QWENHOST_LEDGER_SYNC=process: commits return before PostgreSQL flushes its WAL, and a crash of qwenhost
    still loses nothing (the server flushes what it acknowledged)."""
    from tests.gateway.conftest import _pg_schema_url

    for url in _pg_schema_url():
        kill_9_under_load(url, {"QWENHOST_LEDGER_SYNC": "process"})


def kill_9_under_load(db_url: str, extra_env: dict[str, str]) -> None:
    keys = make_key(db_url, "load")
    env = {"QWENHOST_DATABASE_URL": db_url, **extra_env}
    srv = ServerProcess([], None, model="echo", env=env)
    load = Load(srv.base, keys.key)
    try:
        for t in load.threads:
            t.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < MAX_LOAD_S and not load.early_errors:
            if len(load.completed) >= MIN_COMPLETED_BEFORE_KILL and time.monotonic() - t0 >= MIN_LOAD_S:
                break
            time.sleep(0.05)
        # Kill in the window that matters: rows being committed while their responses wait for the commit.
        with ledger_stalled(db_url):
            time.sleep(STALL_S)  # a response whose row is not committed must not end meanwhile
            load.stop.set()  # no new requests; the kill cuts off those under way
            os.kill(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait(timeout=10)
        for t in load.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in load.threads), "a client hung after the server died"
    finally:
        load.stop.set()
        srv.stop()
    assert not load.early_errors, load.early_errors[:5]
    before = list(load.completed)
    print(f"kill -9 {time.monotonic() - t0:.1f}s in: {len(before)} completed, {len(load.cut_off)} cut off")

    srv = ServerProcess([], None, model="echo", env=env)  # a restart on the same database
    try:
        client, http = clients(srv.base, keys.key)
        with client, http:
            after = [send(kind, client, http, words(50, random.Random(j))) for j, kind in enumerate(KINDS)]
    finally:
        srv.stop()

    rows = ledger(db_url)
    check_rows(rows, before + after, keys)
    assert len({d.rid for d in before + after}) == len(before) + len(after)
    # Other rows can only be requests cut off after their commit, before their last bytes: one at most each.
    extra = set(rows) - {d.rid for d in before + after}
    assert len(extra) <= len(load.cut_off), (len(extra), len(load.cut_off))
    for rid in extra:  # a row is committed at the finish, so these are billed in full
        assert (rows[rid].status, rows[rid].completion_tokens) == ("completed", rows[rid].prompt_tokens), rid
    # Meaningful only under load: many answers before the kill, and requests it cut off mid-way.
    assert len(before) >= MIN_COMPLETED_BEFORE_KILL, f"only {len(before)} requests completed before the kill"
    assert {d.kind for d in before} == set(KINDS)
    # Clients still reading a response committed before the stall may finish it; the others wait on commits.
    assert len(load.cut_off) >= THREADS // 2, load.cut_off


# -- a client that leaves mid-stream --------------------------------------------------------------------

LONG_WORDS = 60_000  # ~12 MB of events: the server cannot have sent them all when the client leaves


def leave_mid_stream(port: int, path: str, body: dict, key: str) -> tuple[str, int]:
    """Send a streamed request on a raw socket, read the first event, stop reading while the server fills the
    buffers, then reset the connection. Returns the response id and the words received."""
    payload = json.dumps(body).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        buf = b""
        while not re.search(rb"data: \{.*?\}\n\n", buf):
            chunk = sock.recv(4096)
            assert chunk, buf
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    events = [json.loads(m) for m in re.findall(rb"data: (\{.*?\})\n\n", buf)]
    received = sum(len(((c.get("delta") or {}).get("content") or c.get("text") or "").split())
                   for e in events for c in e["choices"])
    return events[0]["id"], received


def wait_for_row(db_url: str, rid: str, timeout: float = 10.0) -> UsageRecord | None:
    deadline = time.monotonic() + timeout
    while (row := ledger(db_url).get(rid)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return row


def test_client_leaving_mid_stream_is_billed_for_what_was_generated(db_url: str) -> None:
    keys = make_key(db_url, "leavers")
    srv = ServerProcess(["--ctx-size", str(3 * LONG_WORDS)], None, model="echo",
                        env={"QWENHOST_DATABASE_URL": db_url})
    text = " ".join(f"w{i}" for i in range(LONG_WORDS))
    try:
        for path, body in [
            ("/v1/chat/completions", {"model": "echo", "stream": True,
                                      "messages": [{"role": "user", "content": text}]}),
            ("/v1/completions", {"model": "echo", "stream": True, "prompt": text, "max_tokens": LONG_WORDS}),
        ]:
            rid, received = leave_mid_stream(srv.port, path, body, keys.key)
            # Billed while the server runs on, not when it stops (or never).
            row = wait_for_row(db_url, rid)
            assert row is not None, f"{path}: {rid} left mid-stream and was not billed"
            assert row.status == "disconnected", (path, row.status, row.completion_tokens)
            assert received <= row.completion_tokens < LONG_WORDS, (path, received, row.completion_tokens)
            assert row.completion_tokens >= 1
            assert (row.prompt_tokens, row.key_id, row.project_id) == (LONG_WORDS, keys.key_id, keys.project_id)
        httpx.get(srv.base + "/health", timeout=5).raise_for_status()
    finally:
        srv.stop()
    assert len(ledger(db_url)) == 2


# -- requests refused before generation ------------------------------------------------------------------

def test_requests_refused_before_generation_write_no_row(db_url: str) -> None:
    ok = make_key(db_url, "refusals")
    one_rpm = make_key(db_url, "refusals", rpm=1)
    broke = make_key(db_url, "refusals", budget_nusd=0)
    srv = ServerProcess([], None, model="echo", env={"QWENHOST_DATABASE_URL": db_url})
    chat = {"model": "echo", "messages": [{"role": "user", "content": "three little words"}]}
    text = {"model": "echo", "prompt": "a b"}

    def post(key: str | None, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
        return httpx.post(srv.base + path, json=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}"} if key else {})

    try:
        billed = [post(ok.key, chat), post(one_rpm.key, {**chat, "stream": True})]
        assert [r.status_code for r in billed] == [200, 200], [r.text for r in billed]
        refused = {
            "no key": (post(None, chat), 401),
            "wrong key": (post(ok.key[:-4] + "AAAA", {**chat, "stream": True}), 401),
            "bad body": (post(ok.key, {"model": "echo", "messages": []}), 400),
            "too long": (post(ok.key, {**chat, "max_tokens": 10**6, "stream": True}), 400),
            "bad prompt": (post(ok.key, {**text, "max_tokens": 0}, "/v1/completions"), 400),
            "no model": (post(ok.key, {**chat, "model": "nope"}), 404),
            "rpm": (post(one_rpm.key, chat), 429),
            "rpm stream": (post(one_rpm.key, {**chat, "stream": True}), 429),
            "budget": (post(broke.key, chat), 429),
            "budget stream": (post(broke.key, {**text, "stream": True}, "/v1/completions"), 429),
        }
        for what, (r, status) in refused.items():
            assert r.status_code == status, (what, r.status_code, r.text)
    finally:
        srv.stop()
    rows = ledger(db_url)
    assert set(rows) == {billed[0].json()["id"], json.loads(billed[1].text.split("data: ", 2)[1])["id"]}
    assert all((r.status, r.completion_tokens) == ("completed", 3) for r in rows.values())
