from __future__ import annotations

import re

import pytest

from qwenhost.engine.catalog import CATALOG, DEFAULT_MODEL, find_entry, known_names, normalize_dist, read_pins


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.name)
def test_pins_file_matches_catalog(entry) -> None:
    assert entry.pins.is_file()
    pins = read_pins(entry.pins)
    assert [name for name, _ in pins] == list(entry.packages)
    assert {version for _, version in pins} == {entry.version}
    lines = [ln for ln in entry.pins.read_text().splitlines() if ln and not ln.startswith("#")]
    for line in lines:
        # --require-hashes demands a hash on every line.
        assert re.search(r"--hash=sha256:[0-9a-f]{64}$", line), line
    assert entry.filename.endswith(".gguf")
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.member_name(0) == f"{normalize_dist(entry.packages[0])}/data/part01.bin"


def test_aliases() -> None:
    big = find_entry(DEFAULT_MODEL)
    assert big is not None and big.size == 1_117_320_768
    for ref in ("qwen2.5-coder", "default", "QWEN2.5-Coder:1.5B", " qwen2.5-coder-1.5b-instruct-q4_k_m "):
        assert find_entry(ref) is big
    small = find_entry("qwen2.5-coder:0.5b")
    assert small is not None and small.size == 491_400_064 and small is not big
    assert find_entry("qwen2.5-coder:7b") is None
    names = known_names()
    assert len(names) == len(set(names)) and DEFAULT_MODEL in names
