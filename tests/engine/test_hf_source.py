"""``hf:`` references against a local server that speaks the Hub's resolve protocol.

The server mirrors what huggingface.co does for an LFS file: ``/{repo}/resolve/{rev}/{file}``
answers 302 to a CDN on another host, carrying ``X-Repo-Commit``, ``X-Linked-Etag`` and
``X-Linked-Size``; errors carry ``X-Error-Code``; the CDN honours ``Range``. The CDN is
reached as ``localhost`` while the endpoint is ``127.0.0.1`` so huggingface_hub treats it as
a foreign host, exactly like the real CDN.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub.constants
import pytest

from qwenhost.engine.hf_source import parse_hf_ref
from qwenhost.engine.sources import (
    ModelSourceError,
    list_local_models,
    local_ref,
    resolve_model,
)

REPO = "test-org/Tiny-GGUF"
MAIN = "a" * 40
V1 = "b" * 40


@dataclass
class FakeHub:
    port: int = 0
    # revision name or commit -> (commit, {path: content})
    revisions: dict[str, tuple[str, dict[str, bytes]]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    truncate_once: set[str] = field(default_factory=set)  # blob shas whose first GET is cut short

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, revision: str, commit: str, files: dict[str, bytes]) -> None:
        self.revisions[revision] = self.revisions[commit] = (commit, files)
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _route(self, head: bool) -> None:
            hub.log.append((self.command, self.path, self.headers.get("Range")))
            parts = self.path.split("?")[0].split("/")
            if len(parts) >= 3 and parts[1] == "cdn":
                return self._blob(parts[2], head)
            # /{org}/{repo}/resolve/{revision}/{file...}
            if len(parts) < 6 or parts[3] != "resolve":
                return self._error(404, None)
            repo, revision, filename = (
                f"{parts[1]}/{parts[2]}",
                unquote(parts[4]),
                unquote("/".join(parts[5:])),
            )
            if repo != REPO:
                return self._error(401, "RepoNotFound")  # the Hub answers 401 for unknown repos
            if revision not in hub.revisions:
                return self._error(404, "RevisionNotFound")
            commit, files = hub.revisions[revision]
            if filename not in files:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit})
            data = files[filename]
            sha = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{hub.port}/cdn/{sha}")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"pointer-{sha[:8]}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _blob(self, sha: str, head: bool) -> None:
            data = hub.blobs.get(sha)
            if data is None:
                return self._error(404, None)
            start, status = 0, 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start, status = int(rng[len("bytes=") : -1]), 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{sha}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            if sha in hub.truncate_once and status == 200:
                hub.truncate_once.discard(sha)
                # Promise the whole body, deliver half, hang up: a dropped connection mid-download.
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _error(self, status: int, code: str | None, extra: dict[str, str] | None = None) -> None:
            body = b'{"error": "not found"}'
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


@pytest.fixture
def hub(qh_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def model_bytes(tmp_path: Path, make_gguf: Callable[..., Path]) -> bytes:
    return make_gguf(tmp_path / "src.gguf", n_vocab=20_000).read_bytes()


def test_download_into_models_dir(hub: FakeHub, model_bytes: bytes, qh_home: Path) -> None:
    hub.add("main", MAIN, {"tiny-q4_k_m.gguf": model_bytes})
    path = resolve_model(f"hf:{REPO}/tiny-q4_k_m.gguf", progress=True)  # exercises the tqdm->rich bridge
    assert path.read_bytes() == model_bytes
    assert (qh_home / "models" / "hf") in path.parents
    assert path in list_local_models()
    assert local_ref(path) == f"hf:{REPO}/tiny-q4_k_m.gguf"
    # Second call: metadata check only, no body transfer.
    n_gets = sum(1 for m, p, _ in hub.log if m == "GET" and p.startswith("/cdn/"))
    assert resolve_model(f"hf:{REPO}/tiny-q4_k_m.gguf", progress=True) == path
    assert sum(1 for m, p, _ in hub.log if m == "GET" and p.startswith("/cdn/")) == n_gets


def test_subdirectory_and_revision(hub: FakeHub, model_bytes: bytes) -> None:
    hub.add("main", MAIN, {"README.md": b"hi"})
    hub.add("v1", V1, {"quant/q4/tiny.gguf": model_bytes})
    path = resolve_model(f"hf:{REPO}/quant/q4/tiny.gguf@v1", progress=False)
    assert path.read_bytes() == model_bytes
    assert V1 in path.parts and path.parts[-3:] == ("quant", "q4", "tiny.gguf")
    assert ("HEAD", f"/{REPO}/resolve/v1/quant/q4/tiny.gguf", None) in hub.log


def test_resumes_after_dropped_connection(hub: FakeHub) -> None:
    # huggingface_hub writes in 10 MB chunks, so a resumable cut must land past the first one.
    data = b"GGUF" + os.urandom(30 << 20)
    hub.add("main", MAIN, {"big.gguf": data})
    hub.truncate_once.add(hashlib.sha256(data).hexdigest())
    path = resolve_model(f"hf:{REPO}/big.gguf", progress=False)
    assert path.read_bytes() == data
    ranges = [r for m, p, r in hub.log if m == "GET" and p.startswith("/cdn/") and r]
    assert len(ranges) == 1
    start = int(ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(data) // 2  # continued from what it had, not from zero


def test_missing_file_repo_and_revision(hub: FakeHub, model_bytes: bytes) -> None:
    hub.add("main", MAIN, {"tiny.gguf": model_bytes})
    with pytest.raises(ModelSourceError, match=r"File nope\.gguf not found in test-org/Tiny-GGUF"):
        resolve_model(f"hf:{REPO}/nope.gguf", progress=False)
    with pytest.raises(ModelSourceError, match=r"Repository test-org/absent not found"):
        resolve_model("hf:test-org/absent/tiny.gguf", progress=False)
    with pytest.raises(ModelSourceError, match=r"Revision 'v9' not found"):
        resolve_model(f"hf:{REPO}/tiny.gguf@v9", progress=False)


def test_offline_uses_cache_and_explains_miss(
    hub: FakeHub, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add("main", MAIN, {"tiny.gguf": model_bytes})
    path = resolve_model(f"hf:{REPO}/tiny.gguf", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_requests = len(hub.log)
    assert resolve_model(f"hf:{REPO}/tiny.gguf", progress=False) == path
    assert len(hub.log) == n_requests  # offline really means no request
    with pytest.raises(ModelSourceError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        resolve_model(f"hf:{REPO}/other.gguf", progress=False)


def test_non_gguf_download_is_rejected(hub: FakeHub) -> None:
    hub.add("main", MAIN, {"fake.gguf": b"<html>login page</html>"})
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        resolve_model(f"hf:{REPO}/fake.gguf", progress=False)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("hf:Qwen/Repo-GGUF/model.gguf", ("Qwen/Repo-GGUF", "model.gguf", None)),
        ("hf:Qwen/Repo/a/b/model.GGUF@refs/pr/1", ("Qwen/Repo", "a/b/model.GGUF", "refs/pr/1")),
        ("hf://Qwen/Repo/model.gguf@abc123", ("Qwen/Repo", "model.gguf", "abc123")),
    ],
)
def test_parse_hf_ref(ref: str, expected: tuple[str, str, str | None]) -> None:
    spec = parse_hf_ref(ref)
    assert (spec.repo_id, spec.filename, spec.revision) == expected


@pytest.mark.parametrize("ref", ["hf:Qwen/model.gguf", "hf:Qwen/Repo/model.bin", "hf:Qwen"])
def test_bad_hf_refs(qh_home: Path, ref: str) -> None:
    with pytest.raises(ModelSourceError, match="expected hf:ORG/REPO/FILE.gguf"):
        resolve_model(ref, progress=False)


def test_env_is_read_at_call_time(hub: FakeHub, model_bytes: bytes) -> None:
    # huggingface_hub snapshots HF_ENDPOINT at import (at collection, above); the fixture set it later.
    assert huggingface_hub.constants.ENDPOINT != hub.endpoint
    hub.add("main", MAIN, {"tiny.gguf": model_bytes})
    assert resolve_model(f"hf:{REPO}/tiny.gguf", progress=False).is_file()
    assert any(p.startswith(f"/{REPO}/resolve/main/") for _, p, _ in hub.log)
