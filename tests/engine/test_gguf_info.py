from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from qwenhost.engine.gguf_info import read_gguf_info


def test_reads_metadata_written_by_gguf_writer(
    tmp_path: Path, make_gguf: Callable[..., Path], chat_template: str
) -> None:
    path = make_gguf(tmp_path / "tiny.gguf", size_label="1.5B", sampling={"temp": 0.7, "top_k": 20})
    info = read_gguf_info(path)
    assert info.name == "Tiny Qwen Test"
    assert info.architecture == "qwen2"
    assert info.context_length == 4096
    assert info.quantization == "Q4_K_M"
    assert info.size_label == "1.5B" and info.parameters == "1.5B"
    assert info.parameter_count == 300 * 8 + 8
    assert info.has_chat_template and info.chat_template == chat_template
    assert (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert info.generation_defaults["top_k"] == 20
    assert info.generation_defaults["temp"] == pytest.approx(0.7)
    assert info.file_size == path.stat().st_size
    assert info.tensor_count == 2 and info.version == 3
    # The vocabulary (300 strings) is skipped, the chat template kept out of the metadata dump.
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert not any(k.startswith("tokenizer.chat_template") for k in info.metadata)


def test_agrees_with_gguf_reader(tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    from gguf import GGUFReader

    path = make_gguf(tmp_path / "tiny.gguf", n_vocab=10)  # short enough that tokens are decoded too
    info = read_gguf_info(path)
    reader = GGUFReader(path)
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key.startswith("tokenizer.chat_template"):
            continue
        expected = fld.contents()
        got = info.metadata[key]
        assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, key
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)


def test_fallbacks_without_optional_keys(tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    path = make_gguf(
        tmp_path / "bare.gguf",
        arch="llama",
        name=None,
        context_length=None,
        chat_template=None,
        file_type=None,
    )
    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.name is None and info.context_length is None and info.quantization is None
    assert not info.has_chat_template and info.chat_template is None
    assert info.size_label is None
    assert info.parameters == "2.4K"  # derived from tensor shapes
    assert info.generation_defaults == {}


def test_file_type_names(tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    assert read_gguf_info(make_gguf(tmp_path / "a.gguf", file_type=0)).quantization == "F32"
    assert read_gguf_info(make_gguf(tmp_path / "b.gguf", file_type=7)).quantization == "Q8_0"
    assert read_gguf_info(make_gguf(tmp_path / "c.gguf", file_type=999)).quantization == "type 999"


@pytest.mark.parametrize("content", [b"", b"GG", b"not a gguf at all", b"GGUF\x03\x00\x00\x00\x01"])
def test_rejects_non_gguf_and_truncated(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_gguf_info(path)


def test_truncated_real_header(tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    path = make_gguf(tmp_path / "t.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:200])
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_gguf_info(path)


def test_large_vocab_is_fast(tmp_path: Path, make_gguf: Callable[..., Path]) -> None:
    # Qwen's vocabulary is ~152k entries; GGUFReader needs seconds for it, we should not.
    path = make_gguf(tmp_path / "big.gguf", n_vocab=150_000)
    start = time.perf_counter()
    info = read_gguf_info(path)
    assert time.perf_counter() - start < 2.0
    assert info.parameter_count == 150_000 * 8 + 8
