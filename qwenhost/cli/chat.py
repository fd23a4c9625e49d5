"""`qwenhost chat`: a terminal chat against a qwenhost (or any OpenAI-compatible) server.

Streams the answer, shows reasoning dimmed, keeps the history; Ctrl-C stops the current answer (the
stream is closed, so the server cancels the sequence) and Ctrl-C or Ctrl-D at the prompt quits.
"""

from __future__ import annotations

import json
import os

import httpx
import typer
from rich.console import Console

from qwenhost.engine.catalog import DEFAULT_MODEL

console = Console(highlight=False)


def stream_chat(client: httpx.Client, url: str, model: str, history: list[dict], extra: dict) -> dict:
    """Send the history, print the streamed reply, return the assistant message to append."""
    content, reasoning = [], []
    in_reasoning = False
    body = {"model": model, "messages": history, "stream": True, **extra}
    with client.stream("POST", f"{url}/chat/completions", json=body, timeout=None) as resp:
        if resp.status_code != 200:
            resp.read()
            try:
                msg = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = resp.text
            raise RuntimeError(f"server answered {resp.status_code}: {msg}")
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if "error" in obj:
                raise RuntimeError(obj["error"]["message"])
            if not obj.get("choices"):
                continue
            delta = obj["choices"][0].get("delta", {})
            if delta.get("reasoning_content"):
                in_reasoning = True
                reasoning.append(delta["reasoning_content"])
                console.print(delta["reasoning_content"], end="", style="dim italic")
            if delta.get("content"):
                if in_reasoning:
                    console.print()
                    in_reasoning = False
                content.append(delta["content"])
                console.print(delta["content"], end="")
            for tc in delta.get("tool_calls") or []:
                name = tc.get("function", {}).get("name")
                if name:
                    console.print(f"\n[tool call] {name}(", end="", style="cyan")
                console.print(tc.get("function", {}).get("arguments", ""), end="", style="cyan")
    console.print()
    msg: dict = {"role": "assistant", "content": "".join(content)}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    return msg


def _model_ids(listed: httpx.Response) -> list[str]:
    """The model ids of a GET /models answer, in its order (qwenhost lists the served model first)."""
    try:
        return [str(m["id"]) for m in listed.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError):
        return []


def chat(
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="Model name the server knows (default: the one it serves)"),
    url: str = typer.Option("http://127.0.0.1:8642/v1", help="Base URL of an OpenAI-compatible server"),
    system: str = typer.Option("", help="System prompt"),
    think: bool = typer.Option(None, "--think/--no-think", help="Ask Qwen3-style models to (not) reason"),
    temperature: float | None = typer.Option(None, min=0.0, max=2.0,
                                             help="Sampling temperature (0 = always the likeliest token; "
                                                  "default: the model's recommended sampling)"),
    seed: int | None = typer.Option(None, help="Sampling seed, for answers that repeat"),
) -> None:
    url = url.rstrip("/")
    headers = {}
    if os.environ.get("QWENHOST_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['QWENHOST_API_KEY']}"

    def new_client() -> httpx.Client:  # at start, and again after an interrupted answer (below)
        return httpx.Client(headers=headers)

    client = new_client()
    try:
        listed = client.get(f"{url}/models", timeout=5)
        listed.raise_for_status()
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/red] no server answers at {url} ({exc}); start one with `qwenhost serve`")
        raise typer.Exit(2) from exc
    served = _model_ids(listed)
    if model is None:
        model = served[0] if served else DEFAULT_MODEL
    elif served and model not in served:
        console.print(f"[red]error:[/red] {url} does not serve {model!r}; it serves {', '.join(served)}")
        raise typer.Exit(2)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    extra: dict = {} if think is None else {"enable_thinking": think}
    if temperature is not None:
        extra["temperature"] = temperature
    if seed is not None:
        extra["seed"] = seed
    console.print(f"chatting with {model} at {url} — Ctrl-C stops an answer, Ctrl-D quits, /reset clears history")
    while True:
        try:
            text = console.input("[bold green]>>> [/bold green]")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not text.strip():
            continue
        if text.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        try:
            history.append(stream_chat(client, url, model, history, extra))
        except KeyboardInterrupt:
            console.print("\n[yellow](stopped)[/yellow]")
            history.pop()
            # An interrupt inside httpx can leave its connection pool half-updated, and the next request (no
            # timeout: answers are long) then waits forever; a loaded CI run once hung so. Start a fresh client.
            client.close()
            client = new_client()
        except (RuntimeError, httpx.HTTPError) as exc:
            console.print(f"\n[red]error:[/red] {exc}")
            history.pop()
