"""The `qwenhost` command: serve, chat, models, bench, and the gateway admin (projects, keys, prices, usage, audit)."""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from qwenhost.engine.catalog import DEFAULT_MODEL, find_entry

if TYPE_CHECKING:
    from qwenhost.gateway.service import Gateway

app = typer.Typer(help="qwenhost: the Qwen platform you run yourself.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
err = Console(stderr=True)


def _register_subcommands() -> None:
    from qwenhost.cli.admin import keys_app, projects_app
    from qwenhost.cli.admin_prices import prices_app
    from qwenhost.cli.admin_usage import audit_list, usage
    from qwenhost.cli.bench import bench
    from qwenhost.cli.chat import chat
    from qwenhost.cli.models import models_app

    app.add_typer(models_app, name="models", help="List and download models.")
    app.command(help="Chat with a model in the terminal (streams; Ctrl-C stops the answer).")(chat)
    app.add_typer(projects_app, name="projects", help="Create and list projects (own keys, limits, budgets).")
    app.add_typer(keys_app, name="keys", help="Create, list and revoke API keys.")
    app.add_typer(prices_app, name="prices", help="Model prices per million tokens, and local hardware costs.")
    app.command("usage", help="Requests, tokens and cost from the ledger (table or --csv).")(usage)
    app.command("audit", help="Recent admin actions and failed authentications.")(audit_list)
    app.command("bench", help="Throughput and latency side by side with llama-server (same model, machine, "
                              "threads); ratios and targets.")(bench)


def model_aliases(ref: str, path_stem: str) -> list[str]:
    """Names a served model answers to: what the user typed, the catalog names, the file's stem."""
    names = {ref, path_stem}
    entry = find_entry(ref)
    if entry is not None:
        names |= {entry.name, *entry.aliases}
    return sorted(n for n in names if n)


DEFAULT_ITL_TARGET = "2.6x"  # qwenhost.engine.scheduler.DEFAULT_ITL_RATIO (not imported: it loads llama.cpp)


def parse_itl_target(value: str) -> tuple[float | None, float | None]:
    """'2.6x' -> (None, 2.6): a multiple of a decode-only step; '1.0' -> (1.0, None): seconds."""
    v = value.strip().lower()
    try:
        if v.endswith("x"):
            ratio = float(v[:-1])
            if ratio < 1.2:
                raise ValueError
            return None, ratio
        seconds = float(v)
        if seconds < 0.05:
            raise ValueError
        return seconds, None
    except ValueError:
        raise ValueError(f"--itl-target must be a multiple like 2.6x (at least 1.2x) or seconds like 1.0 "
                         f"(at least 0.05); got {value!r}") from None


@app.command()
def serve(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                              help="Catalog alias, GGUF path, hf:ORG/REPO/FILE.gguf, or 'echo' (no model: "
                                   "replies at once, for testing what sits in front of a model)"),
    host: str = typer.Option("127.0.0.1", help="Address to bind"),
    port: int = typer.Option(8642, min=1, max=65535, help="Port to listen on"),
    parallel: int = typer.Option(8, min=1, max=128, help="Most sequences decoded together"),
    ctx_size: int = typer.Option(32768, min=256, help="KV cache tokens for all sequences together"),
    threads: int = typer.Option(0, min=0, help="Compute threads (0 = physical cores)"),
    prefill_chunk: int = typer.Option(512, min=16, help="Most prompt tokens computed per step"),
    itl_target: str = typer.Option(DEFAULT_ITL_TARGET, help="How long a step may take while streams decode: a "
                                   "multiple of a decode-only step (2.6x) or seconds (1.0); bounds how long a long "
                                   "prompt pauses them"),
    max_queue: int = typer.Option(64, min=1, help="Waiting requests before answering 429"),
    kv_layout: str = typer.Option("unified", help="KV cache layout: 'unified' (one pool; shared prefixes are "
                                                  "referenced; a request may use the whole context) or "
                                                  "'per-sequence' (ctx-size / parallel tokens per sequence; "
                                                  "faster batched decode on CPUs, requests capped at that share)"),
    chat_template: Path | None = typer.Option(None, help="Jinja chat template file to use instead of the GGUF's",
                                              exists=True, dir_okay=False, readable=True),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API."""
    from qwenhost.api.app import create_app
    from qwenhost.api.state import ServerState
    from qwenhost.engine.engine import Engine, EngineConfig, check_kv_layout
    from qwenhost.engine.runner import extra_buffers_enabled
    from qwenhost.engine.scheduler import DEFAULT_ITL_RATIO
    from qwenhost.engine.sources import ModelSourceError, resolve_model
    from qwenhost.gateway.db import DatabaseError
    from qwenhost.gateway.service import Gateway
    from qwenhost.router.echo import ECHO_MODEL, EchoBackend
    from qwenhost.router.local import LocalBackend

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        itl_s, itl_ratio = parse_itl_target(itl_target)
        check_kv_layout(kv_layout, ctx_size, parallel)
        extra_buffers_enabled()  # a bad QWENHOST_CPU_EXTRA_BUFFERS is refused before anything starts
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    problem = listen_problem(host, port)
    if problem:  # before the gateway and the model: a busy port should not cost a model load to find out
        err.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(2)
    try:
        gateway = Gateway.from_env(serving=True)
    except (DatabaseError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    auth_note = gateway.configure_auth(host)
    err.print(("[bold yellow]warning:[/bold yellow] " if not gateway.auth_required else "") + auth_note)
    err.print(f"  gateway database: {gateway.db.display_url}")
    state = ServerState(model_id=model, gateway=gateway)
    app_ = create_app(state)
    if model == ECHO_MODEL:
        state.set_backend(EchoBackend(ctx_size))
        err.print(f"qwenhost serving the echo backend on http://{host}:{port}/v1")
        _run(app_, gateway, host, port, log_level)
        return
    try:
        path = resolve_model(model)
    except ModelSourceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    template_text = chat_template.read_text(encoding="utf-8") if chat_template else None

    def load() -> None:
        try:
            engine = Engine(EngineConfig(model_path=path, ctx_size=ctx_size, parallel=parallel, threads=threads,
                                         prefill_chunk=prefill_chunk, max_queue=max_queue,
                                         itl_target_s=itl_s, itl_target_ratio=itl_ratio or DEFAULT_ITL_RATIO,
                                         kv_layout=kv_layout),
                            registry=state.registry)
            backend = LocalBackend(engine, model_id=model, aliases=model_aliases(model, path.stem),
                                   chat_template=template_text)
            state.set_backend(backend)
            err.print(f"[green]ready:[/green] {engine.model_name} from {path}\n  memory: {engine.memory_summary()}")
        except Exception as exc:  # the server keeps answering 503 with the reason
            state.load_error = str(exc)
            err.print(f"[red]error:[/red] could not load {path}: {exc}")

    threading.Thread(target=load, name="qwenhost-load", daemon=True).start()
    err.print(f"qwenhost serving {model} on http://{host}:{port}/v1 (OpenAI-compatible; docs at /docs)")
    _run(app_, gateway, host, port, log_level)


def listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (a busy port, an address not on this machine), or None."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # the family uvicorn binds with
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot listen on {host!r}: {exc.strerror or exc}; give --host an address of this machine"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use (another qwenhost?); stop it or pick another --port"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _run(app_: object, gateway: Gateway, host: str, port: int, log_level: str) -> None:
    import uvicorn

    try:
        uvicorn.run(app_, host=host, port=port, log_level=log_level)  # type: ignore[arg-type]
    finally:
        # A forced exit (a second Ctrl-C) skips the app's shutdown: ledger rows still queued are written here.
        gateway.ledger.close()


_register_subcommands()


def main() -> None:
    app()
