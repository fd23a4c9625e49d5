"""``hf:ORG/REPO/[sub/dir/]FILE.gguf[@revision]`` references: downloaded with huggingface_hub into our
models dir (progress bar, resume within a run, HF_ENDPOINT / HF_HUB_OFFLINE honoured at call time)."""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import progress as rp
from rich.console import Console

from qwenhost.engine.sources import ModelSourceError, check_gguf_file, hf_cache_dir, transfer_progress

_HF_RE = re.compile(r"^hf:(?://)?(?P<repo>[^/@\s]+/[^/@\s]+)/(?P<file>[^@\s]+)(?:@(?P<rev>\S+))?$", re.I)


@dataclass(frozen=True)
class HFRef:
    repo_id: str
    filename: str
    revision: str | None


def parse_hf_ref(ref: str) -> HFRef:
    m = _HF_RE.match(ref.strip())
    if m is None or not m.group("file").lower().endswith(".gguf"):
        raise ModelSourceError(
            f"Bad Hugging Face reference {ref!r}: expected hf:ORG/REPO/FILE.gguf, "
            "hf:ORG/REPO/sub/dir/FILE.gguf or either with @revision."
        )
    return HFRef(m.group("repo"), m.group("file"), m.group("rev"))


def fetch_hf_model(ref: str, *, progress: bool = True) -> Path:
    """Download (or find in cache) an ``hf:`` reference into ``hf_cache_dir()``."""
    spec = parse_hf_ref(ref)
    import httpx
    import huggingface_hub
    from huggingface_hub import constants as hf_constants

    # Read at call time: huggingface_hub snapshots these at import, which may predate our caller's env.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    offline = _env_true("HF_HUB_OFFLINE") or bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))
    console = Console(stderr=True, quiet=not progress)
    kwargs: dict[str, Any] = {
        "repo_id": spec.repo_id,
        "filename": spec.filename,
        "revision": spec.revision,
        "cache_dir": str(hf_cache_dir()),
        "local_files_only": offline,
        "endpoint": endpoint,
    }
    with transfer_progress(console) as bar:
        if "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters:
            kwargs["tqdm_class"] = _tqdm_bridge(bar if progress else None)
        try:
            path = Path(huggingface_hub.hf_hub_download(**kwargs))
        # huggingface_hub's own errors are OSError/ValueError; a connection lost mid-body surfaces as httpx's.
        except (OSError, ValueError, httpx.HTTPError) as e:
            raise ModelSourceError(
                _hf_error_message(e, spec, offline, endpoint or "https://huggingface.co")
            ) from e
    check_gguf_file(path)
    return path


def _hf_error_message(e: Exception, spec: HFRef, offline: bool, endpoint: str) -> str:
    from huggingface_hub import errors as hf

    where = f"{spec.repo_id}/{spec.filename}" + (f"@{spec.revision}" if spec.revision else "")
    if isinstance(e, hf.LocalEntryNotFoundError):
        status = getattr(getattr(e.__cause__, "response", None), "status_code", None)
        if offline:
            return f"{where} is not in the local cache and HF_HUB_OFFLINE is set; unset it to download."
        if status is not None:
            return f"The hub at {endpoint} answered HTTP {status} for {where}."
        return (
            f"Could not reach the Hugging Face hub at {endpoint} to fetch {where}, and it is not cached. "
            "Check your connection, HF_ENDPOINT or proxy settings."
        )
    if isinstance(e, hf.GatedRepoError):
        return f"{spec.repo_id} is gated: accept its license on the hub and set HF_TOKEN."
    if isinstance(e, hf.RepositoryNotFoundError):
        return (
            f"Repository {spec.repo_id} not found on the hub at {endpoint} (if it is private, set HF_TOKEN)."
        )
    if isinstance(e, hf.RevisionNotFoundError):
        return f"Revision {spec.revision!r} not found in {spec.repo_id}."
    if isinstance(e, hf.EntryNotFoundError):
        rev = f" at revision {spec.revision}" if spec.revision else ""
        return f"File {spec.filename} not found in {spec.repo_id}{rev}."
    if isinstance(e, hf.HfHubHTTPError):
        return f"Hugging Face hub error while fetching {where}: {e}"
    return f"Downloading {where} from {endpoint} failed: {e}"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _tqdm_bridge(bar: rp.Progress | None) -> type:
    """A tqdm subclass for huggingface_hub that reports into a rich bar (or stays silent)."""
    from tqdm.std import tqdm  # a huggingface_hub dependency

    class _Bridge(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True  # tqdm draws nothing; rich does.
            super().__init__(*args, **kwargs)
            desc = str(kwargs.get("desc") or "Downloading")
            self._task = bar.add_task(desc, total=self.total, completed=self.n) if bar else None

        def update(self, n: float | None = 1) -> bool | None:
            self.n += n or 0
            if bar is not None and self._task is not None:
                bar.update(self._task, completed=self.n, total=self.total)
            return None

    return _Bridge
