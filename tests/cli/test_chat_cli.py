"""`qwenhost chat` against a real server: answers, keeps history, Ctrl-C stops only the answer."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

MODEL = "qwen2.5-coder:0.5b"


def chat_proc(url: str, model: str | None = MODEL) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "TERM": "dumb"}
    # A fixed seed, so the answers do not depend on a random draw (an unseeded "OK" once failed a run). Not
    # greedy: without the default repetition penalty the small model can repeat itself until the context ends.
    # SIGINT at its default in the child: a test run started in the background by a shell without job control
    # inherits SIGINT ignored, Python then installs no KeyboardInterrupt handler, and the Ctrl-C test would wait
    # for the whole story (seen in a fresh-clone run started with `(cmd &)`).
    return subprocess.Popen([sys.executable, "-m", "qwenhost", "chat", *(["--model", model] if model else []),
                             "--url", url, "--seed", "7"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_chat_answers_and_keeps_history(server):
    p = chat_proc(server.base + "/v1")
    out, _ = p.communicate("My name is Ada. Reply with just OK.\nWhat is my name? One word.\n", timeout=180)
    assert p.returncode == 0, out
    assert "Ada" in out.split("What is my name")[-1] or out.count("Ada") >= 2, out


def test_ctrl_c_stops_the_answer_not_the_program(server):
    p = chat_proc(server.base + "/v1")
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("Write a very long story about a dragon.\n")
    p.stdin.flush()
    fd, seen = p.stdout.fileno(), b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen) < 300:
        if select.select([fd], [], [], 0.2)[0]:
            seen += os.read(fd, 4096)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    p.stdin.write("Say OK.\n")
    p.stdin.close()
    rest = b""
    while chunk := os.read(fd, 4096):
        rest += chunk
    p.wait(timeout=120)
    out = (seen + rest).decode("utf-8", "replace")
    assert "(stopped)" in out, out
    assert p.returncode == 0
    assert server.metric("qwenhost_running_sequences") == 0


def test_chat_without_server_says_how_to_start_one():
    p = chat_proc("http://127.0.0.1:9/v1")
    out, _ = p.communicate("", timeout=60)
    assert p.returncode == 2 and "qwenhost serve" in out


def test_chat_picks_the_served_model_and_refuses_another(server):
    p = chat_proc(server.base + "/v1", model=None)
    out, _ = p.communicate("", timeout=60)
    assert p.returncode == 0 and f"chatting with {MODEL}" in out, out
    p = chat_proc(server.base + "/v1", model="qwen3:8b")
    out, _ = p.communicate("", timeout=60)
    assert p.returncode == 2 and "does not serve 'qwen3:8b'" in " ".join(out.split()) and MODEL in out, out
