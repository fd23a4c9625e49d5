"""What qwenhost's gateway (auth, rate limits, budgets, a ledger row per request) adds to a request, and how
many requests a second it serves on one core; LiteLLM's proxy side by side when it is installed.

    .venv/bin/python bench/gateway_overhead.py                      # everything, about 5 minutes
    .venv/bin/python bench/gateway_overhead.py --only sqlite --duration 5 --no-litellm
    .venv/bin/python bench/gateway_overhead.py --only postgresql+redis postgresql+memory --no-litellm
    python3.11 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'   # LiteLLM, apart

One server at a time, pinned to core 0 (`taskset -c 0`); the load generator is a separate process pinned to
core 1 (the machine has two). PostgreSQL and Redis are shared services, not pinned: their CPU per request is
reported apart (db CPU ms/req).

* upstream: bench/upstream_instant.py, a raw-asyncio OpenAI-compatible server that answers at once. Its
  latency is the floor (the HTTP exchange and the client): "added" = a target's latency minus the upstream's,
  with the same clients, load and mode.
* qwenhost: `python -m qwenhost serve --model echo --log-level warning` (the echo backend answers at once,
  in-process) with a key that has rpm/tpm/budget limits and a price for the model, so every request is
  authenticated, admitted (budget, then rates), priced, and written to the usage ledger (the response waits
  for the commit). On a fresh SQLite file (limits in memory: its default), a fresh PostgreSQL schema (limits
  counted in the database: its default without Redis), optionally PostgreSQL with Redis counters or with
  QWENHOST_LIMITS=memory. After each, the ledger must hold exactly one completed, priced row per successful
  request.
* litellm: `litellm --config CFG --num_workers 1` (its own venv, default /tmp/litellm-venv) in front of the
  instant upstream, with a master key and no database.

Runs: closed loop at each --concurrency (N keep-alive HTTP/1.1 connections, each sending its next request when
the previous response has fully arrived, an SSE stream through `data: [DONE]`): 1 client gives the latency
of one request alone, 16 saturate the core (req/s), and their latency is then mostly the queue (16 / req/s).
Then paced: --paced-clients clients sending at Poisson times, in all --paced-load x the target's saturated
req/s, which measures the latency a server gives at that load (the upstream is measured at the same rate for
the floor). Each run has --warmup seconds unmeasured first. The request is a chat completion whose last user
message is PROMPT (the echo backend and the upstream send it back, one SSE chunk per word).

The load generator is raw asyncio + llhttp (httptools) on uvloop: httpx costs more CPU per request than the
servers under test. Its CPU (loadgen CPU %) and the server core's business (core 0 busy %, which also shows
other processes on a shared machine) are reported per run; the upstream rows show the load generator's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_SCRIPT = ROOT / "bench" / "upstream_instant.py"
SERVER_CORE, LOADGEN_CORE = 0, 1
PROMPT = "Benchmark the gateway and say these eighteen words back to me one at a time please thank you"
LITELLM_MASTER_KEY = "sk-bench-master"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Redis db 13, not 0: the test suite uses db 0, and our counters would land in its key space.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
# The issue's measurements of LiteLLM's proxy on this machine kind (one core, instant upstream, master key),
# used when LiteLLM is not measured here.
ISSUE_LITELLM = {"added_p50_ms": {False: (9.0, 10.0), True: (14.0, 16.0)},
                 "rps": {False: (110.0, 130.0), True: (65.0, 70.0)}, "cpu_ms_per_request": 9.0}
TARGET_ADDED_P50_MS, TARGET_ADDED_P99_MS, TARGET_RPS_RATIO = 1.0, 5.0, 5.0


# --------------------------------------------------------------------------------------------------- load generator

class _Conn(asyncio.Protocol):
    """One keep-alive connection; llhttp frames the responses (Content-Length or chunked)."""

    def __init__(self, keep_first_body: bool) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, int, bytes]] | None = None
        self.size = 0
        self.tail = b""
        self.first_body: bytearray | None = bytearray() if keep_first_body else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        # Only the end matters (is `data: [DONE]` there?); keeping the whole body would cost the client CPU.
        self.tail = (self.tail + body)[-48:]
        if self.first_body is not None:
            self.first_body += body

    def on_message_complete(self) -> None:
        result = (self.parser.get_status_code(), self.size, self.tail)
        self.size, self.tail = 0, b""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))


def _check_first(body: bytes, stream: bool) -> str | None:
    """Whether a full response says what the echo says: PROMPT back (None) or what is wrong."""
    try:
        if stream:
            events = [ln[6:] for ln in body.decode().split("\n") if ln.startswith("data: ")]
            if events[-1] != "[DONE]":
                return "the stream does not end with data: [DONE]"
            text = "".join((json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                           for e in events[:-1])
        else:
            text = json.loads(body)["choices"][0]["message"]["content"]
    except Exception as exc:
        return f"unreadable response ({exc!r}): {body[:300]!r}"
    return None if text == PROMPT else f"the reply is {text!r}, not the prompt"


async def _loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": spec["model"], "messages": [{"role": "user", "content": PROMPT}],
                       **({"stream": True} if spec["stream"] else {})}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{spec['port']}\r\n"
            f"Authorization: Bearer {spec['key']}\r\nContent-Type: application/json\r\n"
            f"Accept: {'text/event-stream' if spec['stream'] else 'application/json'}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    request = head + body
    conns: list[_Conn] = []
    for i in range(spec["concurrency"]):
        _, proto = await loop.create_connection(lambda i=i: _Conn(keep_first_body=i == 0), "127.0.0.1",
                                                spec["port"])
        conns.append(proto)
    t_start = time.perf_counter()
    measure_from = t_start + spec["warmup"]
    stop_at = measure_from + spec["duration"]
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "in_window": 0}
    problems: list[str] = []

    rate = spec.get("rate")

    async def worker(conn: _Conn, seed: int) -> None:
        assert conn.transport is not None
        rng = random.Random(seed)
        # Paced: each client sends at Poisson times (rate/N per client). A request due while its connection is
        # still busy waits, and that wait counts in its latency (no coordinated omission); a request sent late
        # because the event loop's timer is coarse (uvloop: 1 ms) is timed from when it was actually sent.
        due = t_start + rng.expovariate(rate / len(conns)) if rate else 0.0
        free_since = t_start
        while True:
            if rate:
                if due >= stop_at:
                    return
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                t0 = due if free_since > due else time.perf_counter()
            else:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
            conn.waiter = loop.create_future()
            conn.transport.write(request)
            try:
                status, size, tail = await conn.waiter
            except ConnectionError as exc:
                counts["errors"] += 1
                problems.append(str(exc))
                return
            t1 = free_since = time.perf_counter()
            started = due if rate else t0
            if rate:
                due += rng.expovariate(rate / len(conns))
            ok = status == 200 and size > 0 and (not spec["stream"] or b"data: [DONE]" in tail)
            if conn.first_body is not None:
                why = _check_first(bytes(conn.first_body), spec["stream"]) if ok else f"HTTP {status}"
                if why is not None:
                    problems.append(why + ": " + bytes(conn.first_body[:300]).decode(errors="replace"))
                conn.first_body = None
            if not ok:
                counts["errors"] += 1
                if len(problems) < 5:
                    problems.append(f"HTTP {status}: {tail!r}")
                continue
            counts["ok"] += 1
            if started >= measure_from:
                latencies.append(t1 - t0)
            if measure_from <= t1 < stop_at:
                counts["in_window"] += 1

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - t_start
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    latencies.sort()

    def q(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else None

    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"ok": counts["ok"], "errors": counts["errors"], "samples": len(latencies),
            "rps": counts["in_window"] / spec["duration"], "p50_ms": q(0.50), "p90_ms": q(0.90),
            "p99_ms": q(0.99), "max_ms": latencies[-1] * 1000 if latencies else None,
            "mean_ms": sum(latencies) / len(latencies) * 1000 if latencies else None,
            "loadgen_cpu_pct": 100 * cpu / wall, "wall_s": wall, "problems": problems[:5]}


def loadgen_main(spec_json: str) -> None:
    """The child process: pinned to its own core, so it never competes with the server for CPU."""
    os.sched_setaffinity(0, {LOADGEN_CORE})
    spec = json.loads(spec_json)
    try:
        import uvloop

        result = uvloop.run(_loadgen(spec))
    except ImportError:
        result = asyncio.run(_loadgen(spec))
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_busy() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per core since boot, softirq included: loopback TCP work is charged there,
    not to the processes, so the processes' CPU alone understates how busy a core is."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals[:8]]
            idle = v[3] + v[4]
            out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        out.append(cur)
        todo += children.get(cur, [])
    return out


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    key: str
    model: str = "echo"
    log: Path | None = None
    # The PostgreSQL backends / Redis serving it: not pinned (shared services), so their CPU is counted apart.
    extra_pids: Callable[[], list[int]] | None = None

    def cpu_s(self) -> tuple[float, dict[int, float]]:
        """CPU seconds so far: the server's process tree (pinned to core 0), and per database/Redis process."""
        return (sum(_proc_cpu_s(p) for p in _descendants(self.proc.pid)),
                {p: _proc_cpu_s(p) for p in (self.extra_pids() if self.extra_pids else [])})


def start(name: str, cmd: list[str], env: dict[str, str], port: int, key: str, ready_path: str,
          logdir: Path) -> Server:
    log = logdir / f"{name.replace('/', '_').replace('+', '_')}.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(["taskset", "-c", str(SERVER_CORE), *cmd], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(Server(name, proc, port, key))
            raise RuntimeError(f"{name} did not answer {ready_path} within 180 s; its log:\n"
                               f"{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return Server(name, proc, port, key, log=log)


def stop(server: Server) -> None:
    """SIGINT first: uvicorn then runs the app's shutdown, which commits any ledger rows still queued."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if server.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, sig)  # the group we created with start_new_session
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(wait)


def load(server: Server, stream: bool, concurrency: int, duration: float, warmup: float,
         rate: float | None = None) -> dict[str, Any]:
    """One run: `concurrency` connections, closed loop (rate None) or paced at `rate` requests/s in all."""
    spec = {"port": server.port, "key": server.key, "model": server.model, "stream": stream,
            "concurrency": concurrency, "duration": duration, "warmup": warmup, "rate": rate}
    cpu0, extra0 = server.cpu_s()
    cores0 = _core_busy()
    out = subprocess.run([sys.executable, __file__, "--loadgen", json.dumps(spec)], capture_output=True, text=True,
                         cwd=ROOT, timeout=duration + warmup + 120)
    cores1 = _core_busy()
    cpu1, extra1 = server.cpu_s()
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    done = res["ok"] + res["errors"]
    # A connection opened during the run started from 0 s of CPU.
    extra = sum(v - extra0.get(p, 0.0) for p, v in extra1.items())
    res.update(target=server.name, stream=stream, concurrency=concurrency, rate=rate,
               server_cpu_ms_per_req=1000 * (cpu1 - cpu0) / done if done else None,
               server_cpu_pct=100 * (cpu1 - cpu0) / res["wall_s"],
               **{f"{name}_core_busy_pct": 100 * (cores1[c][0] - cores0[c][0]) / max(1, cores1[c][1] - cores0[c][1])
                  for name, c in (("server", SERVER_CORE), ("loadgen", LOADGEN_CORE))},
               extra_cpu_ms_per_req=1000 * extra / done if done and server.extra_pids else None)
    return res


# --------------------------------------------------------------------------------------------------- databases

def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWENHOST_", "LITELLM_", "DATABASE_URL"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_key(url: str) -> str:
    """A project and a key with limits far above the load, so the limit and budget code runs but never stops us."""
    sys.path.insert(0, str(ROOT))
    from qwenhost.gateway.db import Database
    from qwenhost.gateway.service import Gateway

    g = Gateway(Database(url))
    try:
        p = g.projects.create("bench")
        k = g.keys.create(p.id, name="bench", rpm=10**9, tpm=2 * 10**9, budget_nusd=10**18)
        g.prices.set("echo", input_usd="1", output_usd="2")
        return k.key
    finally:
        g.close()


def ledger_rows(url: str) -> tuple[int, int, int]:
    """(rows, rows with status completed, rows with a cost): the ledger after a target's runs."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    try:
        with eng.connect() as c:
            row = c.execute(text("SELECT count(*), sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), "
                                 "sum(CASE WHEN cost_nusd > 0 THEN 1 ELSE 0 END) FROM usage")).one()
        return int(row[0]), int(row[1] or 0), int(row[2] or 0)
    finally:
        eng.dispose()


class PgSchema:
    """A schema of its own for one run (search_path in the URL), dropped afterwards."""

    def __init__(self, base_url: str) -> None:
        from sqlalchemy import create_engine, text

        self.base_url = base_url
        self.schema = "bench_gw_" + secrets.token_hex(4)
        self.app_name = self.schema  # how we find the server's connections in pg_stat_activity
        sep = "&" if "?" in base_url else "?"
        self.url = f"{base_url}{sep}options=-csearch_path%3D{self.schema}&application_name={self.app_name}"
        eng = create_engine(base_url)
        with eng.begin() as c:
            c.execute(text(f"CREATE SCHEMA {self.schema}"))
        eng.dispose()

    def backend_pids(self) -> list[int]:
        from sqlalchemy import create_engine, text

        eng = create_engine(self.base_url)
        try:
            with eng.connect() as c:
                return [int(r[0]) for r in c.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"), {"a": self.app_name})]
        finally:
            eng.dispose()

    def drop(self) -> None:
        from sqlalchemy import create_engine, text

        eng = create_engine(self.base_url)
        with eng.begin() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
        eng.dispose()


def redis_pid(url: str) -> list[int]:
    import redis

    r = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return [int(cast(dict, r.info("server"))["process_id"])]
    finally:
        r.close()


# --------------------------------------------------------------------------------------------------- the runs

@dataclass
class Plan:
    duration: float
    warmup: float
    concurrency: list[int]
    modes: list[bool]  # stream or not
    paced_clients: int
    paced_loads: list[float]  # fractions of the target's own saturated req/s; none: no paced runs

    def run(self, server: Server, results: list[dict[str, Any]], upstream: Server | None) -> list[dict[str, Any]]:
        """Closed-loop runs at each concurrency, then (given the upstream to measure the floor on) a paced run."""
        mine = []
        for stream in self.modes:
            for c in self.concurrency:
                mine.append(self._one(server, results, stream, c, None, self.duration))
            if upstream is None:
                continue
            # Closed-loop clients queue on a saturated server, so their latency is mostly the queue (c / rps).
            # Paced clients at a fraction of saturation measure the latency a server at that load gives.
            saturated = max(r["rps"] for r in mine if r["stream"] == stream and r["rate"] is None)
            for fraction in self.paced_loads:
                rate = fraction * saturated
                mine.append(self._one(server, results, stream, self.paced_clients, rate, self.duration))
                # The floor at the same rate, briefly: far below its capacity, the upstream's latency barely moves.
                self._one(upstream, results, stream, self.paced_clients, rate, min(self.duration, 4.0))
        return mine

    def _one(self, server: Server, results: list[dict[str, Any]], stream: bool, c: int, rate: float | None,
             duration: float) -> dict[str, Any]:
        res = load(server, stream, c, duration, self.warmup, rate)
        results.append(res)
        how = f"c={c:<3}" + (f" @{rate:.0f}/s" if rate else "")
        print(f"  {server.name:<20} {'stream' if stream else 'json':<6} {how:<12} {res['rps']:8.1f} rps  "
              f"p50 {_ms(res['p50_ms'])}  p99 {_ms(res['p99_ms'])}  server cpu {res['server_cpu_pct']:.0f}% "
              f"({_ms(res['server_cpu_ms_per_req'])}/req)  loadgen cpu {res['loadgen_cpu_pct']:.0f}%  "
              f"cores busy {res['server_core_busy_pct']:.0f}%/{res['loadgen_core_busy_pct']:.0f}%"
              + (f"  errors {res['errors']}" if res["errors"] else "")
              + (f"\n    problems: {res['problems']}" if res["problems"] else ""), flush=True)
        return res


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def run_qwenhost(kind: str, plan: Plan, args: argparse.Namespace, logdir: Path, results: list[dict[str, Any]],
                 upstream: Server) -> dict[str, Any]:
    env = _clean_env()
    home = Path(tempfile.mkdtemp(prefix="qwenhost-bench-"))
    env["QWENHOST_HOME"] = str(home)
    pg: PgSchema | None = None
    try:
        if kind == "sqlite":
            url = f"sqlite:///{home / 'qwenhost.db'}"
        else:
            pg = PgSchema(args.pg_url)
            url = pg.url
            env["QWENHOST_DATABASE_URL"] = url
        if kind == "postgresql+redis":
            env["QWENHOST_REDIS_URL"] = args.redis_url
        if kind == "postgresql+memory":
            env["QWENHOST_LIMITS"] = "memory"  # one process: counters and month-to-date spend kept in memory
        key = make_key(url)
        port = free_port()
        server = start(f"qwenhost/{kind}", [sys.executable, "-m", "qwenhost", "serve", "--model", "echo",
                                            "--port", str(port), "--log-level", "warning"],
                       env, port, key, "/health", logdir)
        probes = 0
        try:
            if pg is not None:
                # The pool opens its connections on the first requests; a few probes make them exist to measure.
                probes = load(server, False, 8, 0.5, 0.0)["ok"]
                redis = redis_pid(args.redis_url) if kind == "postgresql+redis" else []
                server.extra_pids = lambda: pg.backend_pids() + redis
            mine = plan.run(server, results, upstream)
        finally:
            stop(server)
        sent = probes + sum(r["ok"] for r in mine)
        rows, completed, priced = ledger_rows(url)
        return {"target": f"qwenhost/{kind}", "ledger_rows": rows, "requests_ok": sent, "completed": completed,
                "priced": priced, "ledger_ok": rows == sent == completed == priced}
    finally:
        if pg is not None:
            pg.drop()
        shutil.rmtree(home, ignore_errors=True)


def run_upstream(plan: Plan, logdir: Path, results: list[dict[str, Any]]) -> Server:
    """Start the instant upstream, measure it (the floor), and leave it running for LiteLLM."""
    port = free_port()
    server = start("upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)], _clean_env(), port,
                   "none", "/v1/models", logdir)
    plan.run(server, results, None)
    return server


def run_litellm(exe: Path, upstream: Server, plan: Plan, logdir: Path, results: list[dict[str, Any]]) -> None:
    cfg = logdir / "litellm.yaml"
    # No database: with only a master key LiteLLM checks the key in memory and keeps no spend log.
    cfg.write_text(f"""model_list:
  - model_name: echo
    litellm_params:
      model: openai/echo
      api_base: http://127.0.0.1:{upstream.port}/v1
      api_key: sk-upstream
general_settings:
  master_key: {LITELLM_MASTER_KEY}
litellm_settings:
  telemetry: false
""")
    env = _clean_env()
    # No outside network here: use the bundled model-cost map instead of fetching it at start-up.
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False")
    port = free_port()
    server = start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                               "--num_workers", "1"], env, port, LITELLM_MASTER_KEY, "/health/liveliness", logdir)
    try:
        plan.run(server, results, upstream)
    finally:
        stop(server)


# --------------------------------------------------------------------------------------------------- the report

Key = tuple[bool, int, float | None]  # stream, clients, paced rate (None: closed loop)


def _key(r: dict[str, Any]) -> Key:
    return r["stream"], r["concurrency"], r["rate"]


def _added(r: dict[str, Any], floor: dict[Key, dict[str, Any]]) -> tuple[float, float] | None:
    base = floor.get(_key(r))
    if r["target"] == "upstream" or base is None or not r["samples"]:
        return None
    return r["p50_ms"] - base["p50_ms"], r["p99_ms"] - base["p99_ms"]


def _row(r: dict[str, Any], floor: dict[Key, dict[str, Any]]) -> str:
    added = _added(r, floor)
    extra = r.get("extra_cpu_ms_per_req")
    load = "closed" if r["rate"] is None else f"paced {r['rate']:.0f}/s"
    return (f"| {r['target']} | {'yes' if r['stream'] else 'no'} | {r['concurrency']} | {load} | {r['samples']} | "
            f"{r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            + (f"{added[0]:+.2f} | {added[1]:+.2f} | " if added else " |  | ")
            + f"{r['server_cpu_ms_per_req']:.2f} | {'' if extra is None else f'{extra:.2f}'} | "
            f"{r['server_cpu_pct']:.0f} | {r['server_core_busy_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} | "
            f"{r['errors']} |")


def report(results: list[dict[str, Any]], ledgers: list[dict[str, Any]]) -> str:
    floor = {_key(r): r for r in results if r["target"] == "upstream"}
    lines = ["| target | stream | clients | load | requests | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | "
             "server CPU ms/req | db CPU ms/req | server CPU % | core 0 busy % | loadgen CPU % | errors |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_row(r, floor) for r in results if r["samples"]]
    lines.append("")
    for led in ledgers:
        lines.append(f"* ledger {led['target']}: {led['ledger_rows']} rows for {led['requests_ok']} successful "
                     f"requests ({led['completed']} completed, {led['priced']} priced): "
                     + ("exact" if led["ledger_ok"] else "**MISMATCH**"))
    targets = list(dict.fromkeys(r["target"] for r in results if r["target"].startswith("qwenhost/")))
    lite = [r for r in results if r["target"] == "litellm"]
    lines.append("")
    lines.append("Against the targets (added = the target's latency minus the instant upstream's, same clients and "
                 "load; 16 clients judged on the paced run, as closed-loop clients on a saturated server measure "
                 "its queue):")
    for stream in (False, True):
        mode = "streamed" if stream else "non-streamed"
        if lite:
            lite_rps = max(r["rps"] for r in lite if r["stream"] == stream)
            lite_note = f"LiteLLM measured here: {lite_rps:.0f} req/s"
        else:
            lo, hi = ISSUE_LITELLM["rps"][stream]
            lite_rps, lite_note = hi, f"LiteLLM per the issue: {lo:.0f}-{hi:.0f} req/s (ratio taken to {hi:.0f})"
        for t in [*targets, *(["litellm"] if lite else [])]:
            mine = [r for r in results if r["target"] == t and r["stream"] == stream and r["samples"]]
            if not mine:
                continue
            best = max(mine, key=lambda r: r["rps"])
            line = f"* {t}, {mode}: saturates at {best['rps']:.0f} req/s"
            if t != "litellm":
                ratio = best["rps"] / lite_rps
                line += (f"; {lite_note}; ratio {ratio:.1f}x "
                         f"({'meets' if ratio >= TARGET_RPS_RATIO else 'misses'} the {TARGET_RPS_RATIO:.0f}x target)")
            lines.append(line)
            for r in mine:
                added = _added(r, floor)
                if added is None:
                    continue
                verdict = "meets" if added[0] < TARGET_ADDED_P50_MS and added[1] < TARGET_ADDED_P99_MS else "misses"
                if r["rate"] is None and r["concurrency"] > 1:
                    # Saturated: each client waits for the others' requests, so p50 ~ clients / rps.
                    how, note = "closed loop (saturated)", f" (the queue: {r['concurrency']} / rps = " \
                                                          f"{1000 * r['concurrency'] / r['rps']:.2f} ms)"
                else:
                    how = "closed loop" if r["rate"] is None else f"paced at {r['rate']:.0f} req/s"
                    note = "" if t == "litellm" else (f" ({verdict} < {TARGET_ADDED_P50_MS:.0f} / "
                                                      f"< {TARGET_ADDED_P99_MS:.0f} ms)")
                who = f"{r['concurrency']} client" + ("s" if r["concurrency"] > 1 else "")
                lines.append(f"  * {who}, {how}: added p50 {added[0]:+.2f} ms, p99 "
                             f"{added[1]:+.2f} ms{note}")
    if not lite:
        (a, b), (c, d) = ISSUE_LITELLM["added_p50_ms"][False], ISSUE_LITELLM["added_p50_ms"][True]
        (e, f), (g, h) = ISSUE_LITELLM["rps"][False], ISSUE_LITELLM["rps"][True]
        lines.append(f"* LiteLLM was not measured here; the ratios use the issue's figures ({a:.0f}-{b:.0f} ms added "
                     f"p50 non-streamed, {c:.0f}-{d:.0f} ms streamed; {e:.0f}-{f:.0f} / {g:.0f}-{h:.0f} req/s; "
                     f"~{ISSUE_LITELLM['cpu_ms_per_request']:.0f} ms of CPU per request).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per run (after --warmup)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring, per run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                    help="closed-loop clients per run (1 for latency; 16 saturates one core)")
    ap.add_argument("--paced-clients", type=int, default=16, help="clients of the paced run")
    ap.add_argument("--paced-load", type=float, nargs="*", default=[0.5],
                    help="paced runs' rates, as fractions of the target's saturated req/s (none: no paced run)")
    ap.add_argument("--only", nargs="+", choices=["sqlite", "postgresql", "postgresql+redis", "postgresql+memory"],
                    default=["sqlite", "postgresql"],
                    help="qwenhost set-ups to run (postgresql: limits counted in the database, its default without "
                         "Redis; +redis: in Redis; +memory: QWENHOST_LIMITS=memory, one process)")
    ap.add_argument("--redis", action="store_true", help="also PostgreSQL with Redis counters")
    ap.add_argument("--mode", choices=["both", "json", "stream"], default="both")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL to create a throw-away schema in")
    ap.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    ap.add_argument("--litellm", type=Path, default=Path("/tmp/litellm-venv/bin/litellm"),
                    help="LiteLLM's CLI, from a venv of its own (pip install 'litellm[proxy]')")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--json", type=Path, help="also write every run's numbers here")
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        loadgen_main(args.loadgen)
        return
    if not {SERVER_CORE, LOADGEN_CORE} <= os.sched_getaffinity(0):
        sys.exit("needs two cores (server on core 0, load generator on core 1)")
    os.sched_setaffinity(0, {LOADGEN_CORE})  # this process only waits, but keep it off the server's core
    kinds = list(dict.fromkeys(args.only + (["postgresql+redis"] if args.redis else [])))
    modes = {"both": [False, True], "json": [False], "stream": [True]}[args.mode]
    plan = Plan(args.duration, args.warmup, sorted(set(args.concurrency)), modes, args.paced_clients,
                [f for f in args.paced_load if f > 0])
    logdir = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    print(f"server core {SERVER_CORE}, load generator core {LOADGEN_CORE}; logs in {logdir}", flush=True)
    results: list[dict[str, Any]] = []
    ledgers: list[dict[str, Any]] = []
    upstream = run_upstream(plan, logdir, results)
    try:
        for kind in kinds:
            ledgers.append(run_qwenhost(kind, plan, args, logdir, results, upstream))
        litellm = not args.no_litellm and args.litellm.exists()
        if litellm:
            try:
                run_litellm(args.litellm, upstream, plan, logdir, results)
            except Exception as exc:  # LiteLLM is the reference, not the subject: report and go on
                print(f"LiteLLM could not be measured: {exc}", flush=True)
                litellm = False
        elif not args.no_litellm:
            print(f"no LiteLLM at {args.litellm}; using the issue's figures", flush=True)
    finally:
        stop(upstream)
    print()
    print(report(results, ledgers))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ledgers": ledgers}, indent=1))


if __name__ == "__main__":
    main()
