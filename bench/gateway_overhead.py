"""What qwenhost's gateway (auth, rate limits, budgets, a ledger row per request) adds to a request, and how
many requests a second it serves on one core; LiteLLM's proxy side by side when it is installed.

    .venv/bin/python bench/gateway_overhead.py                      # everything, about 5 minutes
    .venv/bin/python bench/gateway_overhead.py --only sqlite --duration 5 --no-litellm
    .venv/bin/python bench/gateway_overhead.py --only postgresql+redis postgresql+memory --no-litellm
    python3.11 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'   # LiteLLM, apart

To compare two versions of qwenhost on a host whose speed drifts between runs, pair them round by round with
bench/gateway_ab.py instead.

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
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script (`python bench/gateway_overhead.py`), bench/ is on sys.path: its package imports as gateway.
from gateway.loadgen import LOADGEN_CORE, SERVER_CORE, loadgen_main
from gateway.report import report
from gateway.servers import (
    DEFAULT_PG_URL,
    DEFAULT_REDIS_URL,
    UPSTREAM_SCRIPT,
    PgSchema,
    Server,
    clean_env,
    free_port,
    ledger_rows,
    load,
    make_key,
    redis_pid,
    start,
    stop,
)

LITELLM_MASTER_KEY = "sk-bench-master"


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
    env = clean_env()
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
        name = f"qwenhost/{kind}"
        if args.ledger_sync:
            env["QWENHOST_LEDGER_SYNC"] = args.ledger_sync
            name += f" sync={args.ledger_sync}"
        key = make_key(url)
        port = free_port()
        server = start(name, [sys.executable, "-m", "qwenhost", "serve", "--model", "echo",
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
        return {"target": name, "ledger_rows": rows, "requests_ok": sent, "completed": completed,
                "priced": priced, "ledger_ok": rows == sent == completed == priced}
    finally:
        if pg is not None:
            pg.drop()
        shutil.rmtree(home, ignore_errors=True)


def run_upstream(plan: Plan, logdir: Path, results: list[dict[str, Any]]) -> Server:
    """Start the instant upstream, measure it (the floor), and leave it running for LiteLLM."""
    port = free_port()
    server = start("upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)], clean_env(), port,
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
    env = clean_env()
    # No outside network here: use the bundled model-cost map instead of fetching it at start-up.
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False")
    port = free_port()
    server = start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                               "--num_workers", "1"], env, port, LITELLM_MASTER_KEY, "/health/liveliness", logdir)
    try:
        plan.run(server, results, upstream)
    finally:
        stop(server)


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
    ap.add_argument("--ledger-sync", choices=["process", "disk"],
                    help="QWENHOST_LEDGER_SYNC for every qwenhost set-up (default: each database's own default: "
                         "process on SQLite, disk on PostgreSQL)")
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
