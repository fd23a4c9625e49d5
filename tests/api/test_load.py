"""Concurrency: 8 streams at once, disconnect frees the slot, a full queue answers 429."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import openai

from tests.conftest import ServerProcess

MODEL = "qwen2.5-coder:0.5b"
TOPICS = ["the sea", "mountains", "a cat", "coffee", "the moon", "a train", "autumn", "a library"]


def test_eight_concurrent_streams_finish_coherently(client, server):
    def run(topic: str) -> tuple[str, str]:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Write two sentences about {topic}."}],
            max_tokens=48, temperature=0, stream=True)
        text, finish = [], None
        for chunk in stream:
            for c in chunk.choices:
                text.append(c.delta.content or "")
                finish = c.finish_reason or finish
        return "".join(text), finish

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, TOPICS))
    for topic, (text, finish) in zip(TOPICS, results, strict=True):
        assert finish in ("stop", "length")
        words = text.split()
        assert len(words) >= 5, text
        # coherent: mostly real words, and on topic
        assert sum(w.strip(".,!?;:'\"").isalpha() for w in words) / len(words) > 0.7, text
        assert topic.split()[-1].lower() in text.lower(), (topic, text)


def test_disconnect_frees_the_slot(server, client):
    with httpx.stream("POST", server.base + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 2000, "stream": True, "ignore_eos": True}) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got == 5:
                assert server.metric("qwenhost_running_sequences") >= 1
                break  # leaving the stream closes the connection mid-answer
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.metric("qwenhost_running_sequences") > 0:
        time.sleep(0.1)
    assert server.metric("qwenhost_running_sequences") == 0
    generated = server.metric("qwenhost_completion_tokens_total")
    time.sleep(1)
    assert server.metric("qwenhost_completion_tokens_total") == generated  # nothing decodes for it any more


def test_full_queue_answers_429(small_model_path):
    srv = ServerProcess(["--parallel", "1", "--max-queue", "1", "--ctx-size", "4096"], small_model_path)
    try:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0, timeout=600)

        def long_request(_: int) -> int:
            try:
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Go on."}],
                                               max_tokens=256, extra_body={"ignore_eos": True})
                return 200
            except openai.RateLimitError as exc:
                assert exc.response.headers.get("retry-after")
                return 429

        with cf.ThreadPoolExecutor(4) as pool:
            first = pool.submit(long_request, 0)
            # Once the first runs, the queue (1) holds one more; of three sent together, two are refused.
            deadline = time.monotonic() + 30
            while srv.metric("qwenhost_running_sequences") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            rest = list(pool.map(long_request, range(3)))
            codes = [first.result(), *rest]
        assert codes.count(429) == 2 and codes.count(200) == 2, codes
    finally:
        srv.stop()
