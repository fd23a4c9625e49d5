"""Server processes for bench/gateway_overhead.py: start one pinned to SERVER_CORE and stop it, measure a run
(the load generator in a child process, the server's and the cores' CPU around it), and the databases behind
qwenhost (a key to use, the ledger to check, a throw-away PostgreSQL schema, Redis's pid)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .loadgen import LOADGEN_CORE, SERVER_CORE

ROOT = Path(__file__).resolve().parent.parent.parent
UPSTREAM_SCRIPT = ROOT / "bench" / "upstream_instant.py"
# The entry point: `load` re-runs it with --loadgen SPEC as the load generator's process.
SCRIPT = ROOT / "bench" / "gateway_overhead.py"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Redis db 13, not 0: the test suite uses db 0, and our counters would land in its key space.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"


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
          logdir: Path, cwd: Path = ROOT) -> Server:
    log = logdir / f"{name.replace('/', '_').replace('+', '_')}.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(["taskset", "-c", str(SERVER_CORE), *cmd], env=env, cwd=cwd, stdout=out,
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
    out = subprocess.run([sys.executable, str(SCRIPT), "--loadgen", json.dumps(spec)], capture_output=True, text=True,
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

def clean_env() -> dict[str, str]:
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
