"""The peers: llama.cpp tools built from the sdist qwenhost pins, server processes, and the ceiling tools.

llama-server, llama-bench and llama-batched-bench are built from the llama.cpp vendored in the
``llama-cpp-python`` sdist of the version qwenhost depends on, so every number compares the same kernels.
The build lives in ``~/.cache/qwenhost/llama.cpp-<version>/build`` and is reused when present.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import httpx

LLAMA_TOOLS = ("llama-server", "llama-bench", "llama-batched-bench")
_FALLBACK_VERSION = "0.3.36"

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pinned_llama_cpp_python() -> str:
    """The llama-cpp-python version qwenhost's own requirements pin (``==``), else the installed one."""
    try:
        for req in metadata.requires("qwenhost") or []:
            m = re.match(r"\s*llama[-_]cpp[-_]python\s*==\s*([^\s;,]+)", req, re.IGNORECASE)
            if m:
                return m.group(1)
    except metadata.PackageNotFoundError:
        pass
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


def default_cache(version: str) -> Path:
    return Path.home() / ".cache" / "qwenhost" / f"llama.cpp-{version}"


def _run_logged(cmd: list[str], log: Path, say: Log, cwd: Path | None = None) -> None:
    say("+ " + " ".join(cmd) + f"  (log: {log})")
    with log.open("a") as f:
        subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=True)


def llama_sources(version: str, cache: Path, say: Log = _stderr) -> Path:
    """The vendored llama.cpp tree of the sdist, downloaded and extracted into ``cache`` once."""
    src = cache / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").is_file():
        return src
    cache.mkdir(parents=True, exist_ok=True)
    _run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={version}", "-d", str(cache)], cache / "download.log", say)
    with tarfile.open(cache / f"llama_cpp_python-{version}.tar.gz") as tar:
        tar.extractall(cache, filter="data")
    return src


def build_llama_tools(version: str, cache: Path, targets: Sequence[str] = LLAMA_TOOLS,
                      say: Log = _stderr) -> dict[str, Path]:
    """Build the named llama.cpp tools (only those missing); returns each binary's path."""
    binaries = {t: cache / "build" / "bin" / t for t in targets}
    missing = [t for t, p in binaries.items() if not p.is_file()]
    if not missing:
        return binaries
    src = llama_sources(version, cache, say)
    if not (cache / "build" / "CMakeCache.txt").is_file():
        # No network at build time: no curl/OpenSSL, no web UI download, no tests or examples.
        _run_logged(["cmake", "-S", str(src), "-B", str(cache / "build"), "-DCMAKE_BUILD_TYPE=Release",
                     "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                     "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                     "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"],
                    cache / "configure.log", say)
    _run_logged(["cmake", "--build", str(cache / "build"), "--target", *missing, "-j2"], cache / "build.log", say)
    return binaries


def build_llama_server(version: str, cache: Path) -> Path:
    """llama-server alone (what the tool-accuracy benchmark needs)."""
    return build_llama_tools(version, cache, ("llama-server",))["llama-server"]


# ---------------------------------------------------------------- server processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qwenhost_command(model_path: Path, port: int, parallel: int, ctx_size: int, threads: int,
                     kv_layout: str = "unified") -> list[str]:
    return [sys.executable, "-m", "qwenhost", "serve", "--model", str(model_path), "--port", str(port),
            "--parallel", str(parallel), "--ctx-size", str(ctx_size), "--threads", str(threads),
            "--kv-layout", kv_layout, "--log-level", "warning"]


def no_repack_args(extra_buffers: bool) -> list[str]:
    """For llama.cpp tools that take its common arguments (llama-server, llama-batched-bench): --no-repack where
    qwenhost runs without extra buffers (qwenhost.engine.runner.use_extra_buffers), so both load the same
    weight layout and neither crashes on AMX."""
    return [] if extra_buffers else ["--no-repack"]


def llama_server_command(binary: Path, model_path: Path, port: int, parallel: int, ctx_size: int, threads: int,
                         kv_unified: bool = False, extra_buffers: bool = True) -> list[str]:
    cmd = [str(binary), "-m", str(model_path), "-np", str(parallel), "-c", str(ctx_size), "-t", str(threads),
           "--jinja", "--host", "127.0.0.1", "--port", str(port), *no_repack_args(extra_buffers)]
    return cmd + ["--kv-unified"] if kv_unified else cmd


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return kids


def _vm_hwm_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pid: int) -> int:
    """Sum of VmHWM (peak resident set) over a process and its live descendants, in KiB."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _vm_hwm_kib(p)
        todo += _children(p)
    return total


class ServerProcess:
    """A server started for one run: waits for ``/health`` and is stopped by ``stop``/the context manager."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 timeout_s: float = 900) -> None:
        self.cmd, self.port, self.log = cmd, port, log
        self.base = f"http://127.0.0.1:{port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = log.open("w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"server not healthy after {timeout_s:.0f} s; see {self.log}")

    def peak_rss_mib(self) -> float:
        return peak_rss_kib(self.proc.pid) / 1024

    def save_metrics(self, dest: Path) -> bool:
        """Write the server's Prometheus ``/metrics`` text to ``dest``; False where it serves none."""
        try:
            resp = httpx.get(self.base + "/metrics", timeout=10)
        except httpx.HTTPError:
            return False
        if resp.status_code != 200:
            return False
        dest.write_text(resp.text)
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- ceilings

def parse_llama_bench_json(text: str) -> dict[str, float]:
    """``llama-bench -o json`` → {"pp512": tok/s, "tg128": tok/s} (keys named from n_prompt / n_gen)."""
    out: dict[str, float] = {}
    for row in json.loads(text):
        n_prompt, n_gen = int(row.get("n_prompt", 0)), int(row.get("n_gen", 0))
        key = f"pp{n_prompt}" if n_gen == 0 else f"tg{n_gen}" if n_prompt == 0 else f"pp{n_prompt}+tg{n_gen}"
        out[key] = float(row["avg_ts"])
        out[key + "_stddev"] = float(row.get("stddev_ts", 0.0))
    return out


def parse_batched_bench(text: str) -> dict[int, float]:
    """S_TG t/s per batch size (column ``B``) from llama-batched-bench's markdown table."""
    header: list[str] | None = None
    out: dict[int, float] = {}
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "S_TG t/s" in cells and "B" in cells:
            header = cells
            continue
        if header is None or len(cells) != len(header) or not cells[header.index("B")].isdigit():
            continue
        out[int(cells[header.index("B")])] = float(cells[header.index("S_TG t/s")])
    return out


def run_llama_bench(binary: Path, model_path: Path, threads: int, reps: int, log: Path,
                    extra_buffers: bool = True) -> dict[str, float]:
    cmd = [str(binary), "-m", str(model_path), "-t", str(threads), "-p", "512", "-n", "128", "-r", str(reps),
           "-o", "json", *(() if extra_buffers else ("--repack", "0"))]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log.write_text(" ".join(cmd) + "\n" + res.stderr + res.stdout)
    if res.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({res.returncode}); see {log}")
    return parse_llama_bench_json(res.stdout)


def batched_bench_command(binary: Path, model_path: Path, threads: int, ctx_size: int,
                          counts: Sequence[int], extra_buffers: bool = True) -> list[str]:
    return [str(binary), "-m", str(model_path), "-kvu", "-npp", "128", "-ntg", "128",
            "-npl", ",".join(str(c) for c in counts), "-c", str(ctx_size), "-t", str(threads),
            *no_repack_args(extra_buffers)]


def run_batched_bench(binary: Path, model_path: Path, threads: int, ctx_size: int, counts: Sequence[int],
                      log: Path, extra_buffers: bool = True) -> dict[int, float]:
    cmd = batched_bench_command(binary, model_path, threads, ctx_size, counts, extra_buffers)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log.write_text(" ".join(cmd) + "\n" + res.stderr + res.stdout)
    if res.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed ({res.returncode}); see {log}")
    parsed = parse_batched_bench(res.stdout + "\n" + res.stderr)
    if not parsed:
        raise RuntimeError(f"no S_TG rows in llama-batched-bench's output; see {log}")
    return parsed
