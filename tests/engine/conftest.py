"""Shared fixtures for the model-source tests: an isolated qwenhost home and a tiny GGUF maker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def qh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "qwenhost-home"
    monkeypatch.setenv("QWENHOST_HOME", str(home))
    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "QWENHOST_PIP_INDEX_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


def write_gguf(
    path: Path,
    *,
    arch: str = "qwen2",
    name: str | None = "Tiny Qwen Test",
    context_length: int | None = 4096,
    chat_template: str | None = CHAT_TEMPLATE,
    size_label: str | None = None,
    file_type: int | None = 15,
    n_vocab: int = 300,
    sampling: dict[str, float] | None = None,
) -> Path:
    """A structurally valid GGUF (metadata + two small tensors); not a runnable model."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    if name:
        w.add_name(name)
    if size_label:
        w.add_size_label(size_label)
    if context_length:
        w.add_context_length(context_length)
    if file_type is not None:
        w.add_file_type(file_type)
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    # Longer than gguf_info.MAX_ARRAY_ITEMS so the skip path is exercised.
    w.add_token_list([f"tok{i}" for i in range(n_vocab)])
    for key, value in (sampling or {}).items():
        getattr(w, f"add_sampling_{key}")(value)
    w.add_tensor("token_embd.weight", np.zeros((n_vocab, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones((8,), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def make_gguf() -> Callable[..., Path]:
    return write_gguf


@pytest.fixture
def chat_template() -> str:
    return CHAT_TEMPLATE
