"""Two qwenhost source trees side by side, paired round by round: what a change does to the gateway's added
latency and CPU, on a shared VM whose speed drifts by 2x between runs of bench/gateway_overhead.py.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/gateway_ab.py --a /tmp/before --b . --only postgresql --rounds 12
    .venv/bin/python bench/gateway_ab.py --a /tmp/before --b . --only sqlite postgresql --stream --clients 1 16

Both servers (`python -m qwenhost serve --model echo`, each run from its tree with a database of its own and the
same kind of key as bench/gateway_overhead.py) and the instant upstream stay up, pinned to core 0; each round
loads the upstream, A and B in turn (the order alternates) for --window seconds with N closed-loop clients on
core 1. A round's added latency is a target's p50 minus the upstream's in the same round, so drift between
rounds cancels; the report gives medians over rounds and the median of B - A. The ledgers are checked after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.loadgen import LOADGEN_CORE, SERVER_CORE
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
    start,
    stop,
)


def start_tree(label: str, tree: Path, kind: str, args: argparse.Namespace, logdir: Path,
               cleanup: list) -> tuple[Server, str]:  # type: ignore[type-arg]
    env = clean_env()
    home = Path(tempfile.mkdtemp(prefix=f"qwenhost-ab-{label}-"))
    env["QWENHOST_HOME"] = str(home)
    if kind == "sqlite":
        url = f"sqlite:///{home / 'qwenhost.db'}"
    else:
        pg = PgSchema(args.pg_url)
        cleanup.append(pg.drop)
        url = env["QWENHOST_DATABASE_URL"] = pg.url
    if kind == "postgresql+redis":
        env["QWENHOST_REDIS_URL"] = args.redis_url
    port = free_port()
    server = start(f"{label}/{kind}", [sys.executable, "-m", "qwenhost", "serve", "--model", "echo", "--port",
                                       str(port), "--log-level", "warning"], env, port, make_key(url), "/health",
                   logdir, cwd=tree)
    return server, url


def one_kind(kind: str, args: argparse.Namespace, upstream: Server, logdir: Path) -> None:
    cleanup: list = []  # type: ignore[type-arg]
    servers: dict[str, tuple[Server, str]] = {}
    try:
        for label, tree in (("A", args.a), ("B", args.b)):
            servers[label] = start_tree(label, tree.resolve(), kind, args, logdir, cleanup)
        sent = {label: load(srv, False, 8, 1.0, 0.0)["ok"] for label, (srv, _) in servers.items()}  # warm pools
        for stream in [False, True] if args.stream else [False]:
            for clients in args.clients:
                rows: dict[str, list[dict[str, Any]]] = {"upstream": [], "A": [], "B": []}
                for r in range(args.rounds):
                    order = ["upstream", "A", "B"] if r % 2 == 0 else ["upstream", "B", "A"]
                    for name in order:
                        srv = upstream if name == "upstream" else servers[name][0]
                        res = load(srv, stream, clients, args.window, 0.3)
                        rows[name].append(res)
                        if name != "upstream":
                            sent[name] += res["ok"]
                report(kind, stream, clients, rows)
        for label, (srv, url) in servers.items():
            stop(srv)
            n, completed, priced = ledger_rows(url)
            ok = n == sent[label] == completed == priced
            print(f"  ledger {label}: {n} rows for {sent[label]} successful requests: {'exact' if ok else 'WRONG'}")
    finally:
        for srv, _ in servers.values():
            stop(srv)
        for drop in cleanup:
            drop()


def report(kind: str, stream: bool, clients: int, rows: dict[str, list[dict[str, Any]]]) -> None:
    floor = [r["p50_ms"] for r in rows["upstream"]]
    added = {n: [r["p50_ms"] - f for r, f in zip(rows[n], floor, strict=True)] for n in ("A", "B")}
    added99 = {n: [r["p99_ms"] - u["p99_ms"] for r, u in zip(rows[n], rows["upstream"], strict=True)]
               for n in ("A", "B")}
    cpu = {n: [r["server_cpu_ms_per_req"] for r in rows[n]] for n in ("A", "B")}
    rps = {n: [r["rps"] for r in rows[n]] for n in ("A", "B")}
    med = statistics.median
    print(f"{kind}, {'streamed' if stream else 'non-streamed'}, {clients} client(s), {len(floor)} rounds "
          f"(upstream p50 {med(floor):.3f} ms):")
    for n in ("A", "B"):
        print(f"  {n}: added p50 {med(added[n]):+.3f} ms  added p99 {med(added99[n]):+.3f} ms  "
              f"{med(rps[n]):.0f} req/s  server CPU {med(cpu[n]):.3f} ms/req")
    diff = [b - a for a, b in zip(added["A"], added["B"], strict=True)]
    cdiff = [b - a for a, b in zip(cpu["A"], cpu["B"], strict=True)]
    better = sum(d < 0 for d in diff)
    print(f"  B - A: added p50 {med(diff):+.3f} ms (B lower in {better} of {len(diff)} rounds), "
          f"server CPU {med(cdiff):+.3f} ms/req", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="source tree A (before), e.g. a git worktree")
    ap.add_argument("--b", type=Path, default=Path("."), help="source tree B (after)")
    ap.add_argument("--only", nargs="+", choices=["sqlite", "postgresql", "postgresql+redis"],
                    default=["postgresql"])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--window", type=float, default=1.5, help="seconds measured per target per round")
    ap.add_argument("--clients", type=int, nargs="+", default=[1])
    ap.add_argument("--stream", action="store_true", help="also streamed requests")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL)
    ap.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = ap.parse_args()
    for tree in (args.a, args.b):
        if not (tree / "qwenhost" / "__init__.py").exists():
            sys.exit(f"{tree} is not a qwenhost source tree (no qwenhost/__init__.py)")
    if not {SERVER_CORE, LOADGEN_CORE} <= os.sched_getaffinity(0):
        sys.exit("needs two cores (servers on core 0, load generator on core 1)")
    os.sched_setaffinity(0, {LOADGEN_CORE})
    logdir = Path(tempfile.mkdtemp(prefix="gateway-ab-"))
    port = free_port()
    upstream = start("upstream", [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)], clean_env(), port,
                     "none", "/v1/models", logdir)
    try:
        for kind in args.only:
            one_kind(kind, args, upstream, logdir)
    finally:
        stop(upstream)


if __name__ == "__main__":
    main()
