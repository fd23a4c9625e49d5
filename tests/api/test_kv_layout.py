"""`qwenhost serve --kv-layout per-sequence` as a user runs it: requests are capped at a stream's share of the
context with a clear 400, a shared system prompt is still served from cache, and a bad layout is a CLI error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def per_seq_server(small_model_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(["--parallel", "4", "--ctx-size", "2048", "--kv-layout", "per-sequence"], small_model_path)
    yield srv
    srv.stop()


@pytest.fixture()
def per_seq_client(per_seq_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=per_seq_server.base + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_a_request_over_its_streams_share_gets_a_400(per_seq_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        per_seq_client.chat.completions.create(
            model="qwen2.5-coder:0.5b", max_tokens=200,
            messages=[{"role": "user", "content": "Count: " + "one two three " * 120}])
    assert exc.value.code == "context_length_exceeded"
    assert "context limit of 512 tokens" in exc.value.message


def test_a_shared_system_prompt_is_served_from_cache(per_seq_client: openai.OpenAI) -> None:
    system = "You are the support assistant of Example Corp. " + " ".join(
        f"Rule {i}: answer politely and cite manual section {i}." for i in range(12))

    def ask(question: str) -> openai.types.chat.ChatCompletion:
        return per_seq_client.chat.completions.create(
            model="qwen2.5-coder:0.5b", max_tokens=24, temperature=0, extra_body={"ignore_eos": True},
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}])

    first = ask("How do I reset my password?")
    with ThreadPoolExecutor(3) as pool:
        others = list(pool.map(ask, ["Where is my order?", "Can I change my plan?", "Is there an app?"]))
    assert first.usage.completion_tokens == 24
    n_system = first.usage.prompt_tokens - 20  # the question and the chat markup are well under 20 tokens
    for r in others:
        assert r.usage.prompt_tokens_details.cached_tokens >= n_system, r.usage
        assert r.usage.completion_tokens == 24


@pytest.mark.parametrize(("args", "message"), [
    (["--kv-layout", "paged"], "unknown KV layout 'paged'"),
    (["--kv-layout", "per-sequence", "--parallel", "16", "--ctx-size", "2048"], "fewer than 256 tokens"),
])
def test_bad_layouts_are_cli_errors(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "qwenhost", "serve", "--port", "1", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
