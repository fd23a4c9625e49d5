"""scripts/setup.sh builds llama-cpp-python with scripts/llama-cpp-patches/: the pins agree, and the venv running
the tests was built with the patches as they are now (docs/engine.md, "qwenhost's patches")."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from qwenhost.bench.peers import pinned_llama_cpp_python

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup.sh"
PATCHES = sorted(p for p in (ROOT / "scripts" / "llama-cpp-patches").glob("*.patch") if not p.name.startswith("."))


def setup_var(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)$", SETUP.read_text(), re.MULTILINE)
    assert m, f"{name}= not found in scripts/setup.sh"
    return m.group(1)


def test_setup_builds_the_version_pyproject_pins() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [d.split("==", 1)[1] for d in deps if d.startswith("llama-cpp-python==")]
    assert pinned == [setup_var("lcp_version")]
    assert pinned_llama_cpp_python() == pinned[0]
    assert re.fullmatch(r"[0-9a-f]{64}", setup_var("lcp_sha256"))


def test_patches_touch_only_the_vendored_llama_cpp() -> None:
    assert PATCHES, "scripts/llama-cpp-patches/ has no patches"
    for p in PATCHES:
        paths = re.findall(r"^(?:---|\+\+\+) (\S+)", p.read_text(), re.MULTILINE)
        assert paths, p.name
        assert all(x.startswith(("a/vendor/llama.cpp/", "b/vendor/llama.cpp/")) for x in paths), (p.name, paths)


def test_the_running_venv_was_built_with_the_current_patches() -> None:
    markers = list(Path(sys.prefix).glob("llama-cpp-python-*.built"))
    if not markers:
        pytest.skip("this Python environment was not made by scripts/setup.sh")
    patches_id = hashlib.sha256(b"".join(p.read_bytes() for p in PATCHES)).hexdigest()[:16]
    expected = f"llama-cpp-python-{setup_var('lcp_version')}-{patches_id}.built"
    assert [m.name for m in markers] == [expected], "the patches changed: run scripts/setup.sh again"
    # built from the patched local tree, not a wheel from an index (which has no direct_url.json)
    direct_url = metadata.distribution("llama-cpp-python").read_text("direct_url.json") or ""
    assert json.loads(direct_url or "{}").get("dir_info") is not None, (
        "llama-cpp-python was reinstalled from an index, without the patches: run scripts/setup.sh again "
        "after deleting .venv/llama-cpp-python-*.built")
