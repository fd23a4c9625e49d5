"""Where a served steady state's CPU goes, by thread: compute threads against everything else.

Starts `qwenhost serve` (or llama-server, as `qwenhost bench` runs it), runs N streaming greedy requests
that ignore EOS with prompts of about --prompt-tokens tokens (a different one each), waits until all of
them decode, then reads every thread's CPU time from /proc over --window seconds. On 2 cores, CPU that
the HTTP side, the event loop or the client takes is time llama.cpp's compute threads wait at their
barriers, so the share outside the two busiest threads is what the server's own work costs the decode rate.

    .venv/bin/python bench/thread_cpu.py --streams 8 --window 20 [--peer llama-server]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

from qwenhost.bench.client import ChatClient
from qwenhost.bench.peers import (
    ServerProcess,
    build_llama_server,
    default_cache,
    free_port,
    llama_server_command,
    pinned_llama_cpp_python,
    qwenhost_command,
)
from qwenhost.engine.runner import extra_buffers_enabled
from qwenhost.engine.sources import resolve_model

TICK = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread's (name, user + system CPU seconds)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder:1.5b")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--prompt-tokens", type=int, default=600, help="about this many prompt tokens per stream")
    ap.add_argument("--parallel", type=int, default=16, help="server slots (qwenhost bench uses 16 throughout)")
    ap.add_argument("--peer", default="qwenhost", choices=["qwenhost", "llama-server"])
    args = ap.parse_args()
    model = resolve_model(args.model, progress=False)
    port = free_port()
    if args.peer == "qwenhost":
        cmd = qwenhost_command(model, port, args.parallel, 32768, 2)
    else:
        binary = build_llama_server(pinned_llama_cpp_python(), default_cache(pinned_llama_cpp_python()))
        cmd = llama_server_command(binary, model, port, args.parallel, 32768, 2, extra_buffers=extra_buffers_enabled())
    srv = ServerProcess(cmd, port, Path("/tmp/thread_cpu-server.log"))
    try:
        client = ChatClient(srv.base)
        started = defaultdict(int)
        story = "The river walked past the ancient station while the quiet engine remembered a distant letter. "
        prompts = [[{"role": "user", "content": f"Story {i}. " + story * (args.prompt_tokens // 18)
                     + "Continue this story in many chapters."}] for i in range(args.streams)]
        max_tokens = int(args.window * 8) + 200  # still decoding when the window ends, on any machine of this kind

        errors: list[str] = []

        def one(i: int) -> None:
            rec = client.stream(prompts[i], max_tokens, on_chunk=lambda n: started.__setitem__(i, n))
            if rec.error:
                errors.append(rec.error)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(args.streams)]
        for t in threads:
            t.start()
        while len([n for n in started.values() if n >= 3]) < args.streams:
            if errors:
                raise SystemExit(f"a request failed: {errors[0]}")
            time.sleep(0.2)
        a, t0 = thread_times(srv.proc.pid), time.perf_counter()
        tokens0 = sum(started.values())
        time.sleep(args.window)
        b, wall = thread_times(srv.proc.pid), time.perf_counter() - t0
        tokens = sum(started.values()) - tokens0
        used = sorted(((cpu - a.get(tid, (name, 0.0))[1], tid, name) for tid, (name, cpu) in b.items()), reverse=True)
        total = sum(u for u, _, _ in used)
        rest = total - sum(u for u, _, _ in used[:2])
        print(f"{args.streams} streams, {wall:.1f} s window: {tokens / wall:.2f} tok/s, {total / wall:.2f} cores busy;"
              f" outside the two busiest threads (llama.cpp's compute threads): {100 * rest / total:.1f} %")
        for cpu, tid, name in used[:8]:
            print(f"  {tid:>8} {name:<16} {cpu:7.2f} s  {100 * cpu / total:5.1f} %")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
