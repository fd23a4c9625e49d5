"""``qwenhost models``: list what is on disk and pull models ahead of time."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qwenhost.config import models_dir
from qwenhost.engine.catalog import CATALOG, DEFAULT_MODEL
from qwenhost.engine.gguf_info import read_gguf_info
from qwenhost.engine.sources import ModelSourceError, list_local_models, local_ref, resolve_model

models_app = typer.Typer(help="List, inspect and download models.", no_args_is_help=True)

_err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    # Expected failures (bad reference, network, checksum) get one readable line, not a traceback.
    _err.print(f"[bold red]error:[/bold red] {escape(message)}")
    return typer.Exit(code=2)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


@models_app.command("list")
def list_models() -> None:
    """Show models already downloaded (catalog models, HF cache, loose .gguf files)."""
    out = Console()
    paths = list_local_models()
    if paths:
        # A catalog file name alone is ~40 columns; narrow terminals get the name (which resolves to it).
        wide = out.width >= 120
        cols = ["name", "file", "size", "arch", "params", "quant", "ctx", "template"]
        if not wide:
            cols.remove("file")
        table = Table(title=f"Local models in {models_dir()}", title_justify="left")
        for col in cols:
            table.add_column(
                col,
                justify="right" if col in ("size", "ctx") else "left",
                no_wrap=col != "file",
                overflow="fold",
            )
        for path in paths:
            ref = local_ref(path)
            size = _size(path.stat().st_size)
            try:
                info = read_gguf_info(path)
            except ValueError:
                row = [escape(ref), escape(path.name), size, "[red]unreadable", "", "", "", ""]
            else:
                row = [
                    escape(ref),
                    escape(path.name),
                    size,
                    info.architecture or "?",
                    info.parameters or "?",
                    info.quantization or "?",
                    str(info.context_length or "?"),
                    "yes" if info.has_chat_template else "[yellow]no",
                ]
            if not wide:
                del row[1]
            table.add_row(*row)
        out.print(table)
    else:
        out.print(f"No models downloaded yet in {escape(str(models_dir()))}.")
    local_names = {p.name for p in paths}
    missing = [
        e.display_name + (" (default)" if e.matches(DEFAULT_MODEL) else "")
        for e in CATALOG
        if e.filename not in local_names
    ]
    if missing:
        out.print(f"[dim]Built-in models you can pull: {', '.join(missing)}")


@models_app.command("pull")
def pull(
    ref: str = typer.Argument(
        DEFAULT_MODEL, help="Catalog alias, hf:ORG/REPO/FILE.gguf[@rev], or a .gguf path."
    ),
) -> None:
    """Download and verify a model; prints its local path on stdout."""
    try:
        path = resolve_model(ref, progress=True)
    except ModelSourceError as e:
        raise _fail(str(e)) from None
    print(path)


@models_app.command("show")
def show(ref: str = typer.Argument(DEFAULT_MODEL, help="Any reference `pull` accepts.")) -> None:
    """Print a model's GGUF metadata (downloads it first if needed)."""
    try:
        path = resolve_model(ref, progress=True)
        info = read_gguf_info(path)
    except (ModelSourceError, ValueError) as e:
        raise _fail(str(e)) from None
    out = Console()
    rows = {
        "path": str(path),
        "name": info.name,
        "architecture": info.architecture,
        "parameters": f"{info.parameters} ({info.parameter_count:,} in tensors)"
        if info.parameter_count
        else None,
        "quantization": info.quantization,
        "context length": info.context_length,
        "file size": _size(info.file_size),
        "chat template": "yes" if info.has_chat_template else "no",
        "bos / eos token": f"{info.bos_token_id} / {info.eos_token_id}",
        "generation defaults": info.generation_defaults or None,
    }
    for key, value in rows.items():
        out.print(f"[bold]{key:>20}[/bold]  {escape(str(value if value is not None else '-'))}")
