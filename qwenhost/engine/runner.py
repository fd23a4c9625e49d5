"""ModelRunner: the single owner of llama.cpp's model, context, KV memory and batch buffer.

Everything here is a thin, typed wrapper over llama-cpp-python's low-level ctypes API. Only the scheduler
thread calls into a runner after loading, so no locking is needed here.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L
import numpy as np

log = logging.getLogger(__name__)

# ggml log levels: 2 = warn, 3 = error. llama.cpp prints model loading chatter at info level; we keep
# warnings and errors so a user sees real problems, and drop the rest unless QWENHOST_LLAMA_LOG=1.
_LOG_KEEP_LEVELS = {2, 3}


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _llama_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    if level in _LOG_KEEP_LEVELS or os.environ.get("QWENHOST_LLAMA_LOG") == "1":
        log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


_backend_ready = False

EXTRA_BUFFERS_ENV = "QWENHOST_CPU_EXTRA_BUFFERS"


def use_extra_buffers(system_info: str, setting: str | None) -> bool:
    """Whether llama.cpp may put weights in its CPU "extra" buffer types (AMX tiles, repacked layouts).

    A build with AMX (Intel Xeon 4th gen and newer) crashes in ggml_backend_amx_mul_mat on the first decode
    of a Q4_K_M model, both qwenhost's models among them (llama.cpp issue 20824, unfixed in the pinned
    llama.cpp). The extra buffer types can only be turned off together, so there the repacked layouts go
    too. QWENHOST_CPU_EXTRA_BUFFERS=1 or 0 overrides the rule either way."""
    if setting is not None and setting.strip():
        if setting.strip() not in ("0", "1"):
            raise ValueError(f"{EXTRA_BUFFERS_ENV} must be 1 (llama.cpp's AMX and repacked weight buffers on), 0 "
                             f"(off) or unset (off where the build has AMX), not {setting!r}")
        return setting.strip() == "1"
    return "AMX_INT8 = 1" not in system_info


def extra_buffers_enabled() -> bool:
    """use_extra_buffers() for this process's llama.cpp build and environment (llama-server built from the
    same sources gets --no-repack from the benchmarks when this is False)."""
    return use_extra_buffers(L.llama_print_system_info().decode(errors="replace"), os.environ.get(EXTRA_BUFFERS_ENV))


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        L.llama_log_set(_llama_log, ctypes.c_void_p())
        L.llama_backend_init()
        _backend_ready = True


def physical_cores() -> int:
    """Physical core count (threads default to it: hyperthreads do not help memory-bound decode)."""
    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    phys = core = None
        if pairs:
            return min(len(pairs), os.cpu_count() or 1)
    except OSError:
        pass
    return os.cpu_count() or 1


class BatchBuffer:
    """A llama_batch backed by numpy arrays, so filling it is vectorised slice writes, not ctypes calls.

    Each token belongs to exactly one sequence; seq_id[i] points into one contiguous int32 array.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq_id.ctypes.data
        self._seq_ptrs = (i32p * (capacity + 1))(*[ctypes.cast(base + 4 * i, i32p) for i in range(capacity)])
        self.batch = L.llama_batch()
        self.batch.token = self.token.ctypes.data_as(i32p)
        self.batch.embd = ctypes.POINTER(ctypes.c_float)()
        self.batch.pos = self.pos.ctypes.data_as(i32p)
        self.batch.n_seq_id = self.n_seq_id.ctypes.data_as(i32p)
        self.batch.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p))
        self.batch.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: list[int], start_pos: int, seq: int, want_last_logits: bool) -> int:
        """Append a run of tokens for one sequence; returns the batch index of the last token."""
        k = len(tokens)
        a, b = self.n, self.n + k
        if b > self.capacity:
            raise ValueError(f"batch overflow: {b} > {self.capacity}")
        self.token[a:b] = tokens
        self.pos[a:b] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.seq_id[a:b] = seq
        self.logits[a:b] = 0
        if want_last_logits:
            self.logits[b - 1] = 1
        self.n = b
        return b - 1


@dataclass(frozen=True)
class RunnerConfig:
    model_path: Path
    n_ctx: int = 32768
    n_seq_max: int = 16
    n_batch: int = 2048
    n_ubatch: int = 512
    n_threads: int = 0  # 0 = physical cores
    # False: attention as llama.cpp's plain matrix products and softmax, which qwenhost's flash-attention kernel
    # (scripts/llama-cpp-patches/) does not touch (the tests' independent reference; slower, more memory)
    flash_attn: bool = True
    kv_unified: bool = True  # one KV pool for all sequences; False: a stream of n_ctx / n_seq_max per sequence


class ModelRunner:
    """Loads a GGUF, owns the llama context; decode(), logits and KV operations for the scheduler."""

    def __init__(self, cfg: RunnerConfig) -> None:
        _init_backend()
        self.cfg = cfg
        mparams = L.llama_model_default_params()
        mparams.use_extra_bufts = extra_buffers_enabled()
        if not mparams.use_extra_bufts:
            log.info("llama.cpp's AMX and repacked weight buffers are off (%s=1 turns them on)", EXTRA_BUFFERS_ENV)
        model = L.llama_model_load_from_file(str(cfg.model_path).encode(), mparams)
        if not model:
            raise RuntimeError(f"llama.cpp could not load the model file {cfg.model_path}")
        self.model = model
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = L.llama_model_n_ctx_train(model)
        threads = cfg.n_threads or physical_cores()
        cp = L.llama_context_default_params()
        cp.n_ctx = cfg.n_ctx
        cp.n_batch = cfg.n_batch
        cp.n_ubatch = cfg.n_ubatch
        cp.n_seq_max = cfg.n_seq_max
        cp.n_outputs_max = max(cfg.n_seq_max, 1)
        cp.n_threads = threads
        cp.n_threads_batch = threads
        # A unified KV pool lets sequences share a prefix's cells via seq_cp (a system prompt is computed
        # once). Per-sequence streams (kv_unified False) cost a copy to share a prefix, but a decode row then
        # attends over its own stream only, not over every cell of the pool (docs/engine.md).
        cp.kv_unified = cfg.kv_unified
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            L.llama_model_free(model)
            raise RuntimeError("llama.cpp could not create a context (try a smaller --ctx-size)")
        self.ctx = ctx
        self.n_threads = threads
        self.n_ctx = L.llama_n_ctx(ctx)
        self.n_ctx_seq = L.llama_n_ctx_seq(ctx)  # cells one sequence may use: n_ctx, or its stream's size
        self.mem = L.llama_get_memory(ctx)
        self.batch = BatchBuffer(cfg.n_batch)
        self.eos = L.llama_vocab_eos(self.vocab)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._eog_all: list[int] | None = None
        self._piece_buf = ctypes.create_string_buffer(256)
        self.model_size_bytes = L.llama_model_size(model)
        self.n_params = L.llama_model_n_params(model)

    # -- metadata --------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = L.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def kv_bytes_per_token(self) -> int:
        """K+V bytes per token of context (f16 cache), from the model's shape."""
        layers = self._arch_int("block_count")
        heads = self._arch_int("attention.head_count") or 1
        heads_kv = self._arch_int("attention.head_count_kv") or heads
        head_dim = self._arch_int("attention.key_length") or self._arch_int("embedding_length") // heads
        return 2 * layers * heads_kv * head_dim * 2

    def _arch_int(self, suffix: str) -> int:
        arch = self.meta("general.architecture") or ""
        v = self.meta(f"{arch}.{suffix}")
        try:
            return int(v) if v is not None else 0
        except ValueError:
            return 0

    # -- tokens ------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
            if n >= 0:
                return list(arr[:n])
            cap = -n

    def piece(self, token: int) -> bytes:
        """Raw bytes of one token, special tokens rendered (a BPE piece may split a UTF-8 char)."""
        p = self._pieces.get(token)
        if p is None:
            buf = self._piece_buf
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            p = buf.raw[:n]
            self._pieces[token] = p
        return p

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        v = self._eog.get(token)
        if v is None:
            v = bool(L.llama_vocab_is_eog(self.vocab, token))
            self._eog[token] = v
        return v

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary (EOS, EOT, <|im_end|>, <|endoftext|>, ...)."""
        if self._eog_all is None:
            self._eog_all = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        return self._eog_all

    def single_token(self, text: str) -> int | None:
        toks = self.tokenize(text, parse_special=True)
        return toks[0] if len(toks) == 1 else None

    # -- decode and logits ---------------------------------------------------------------------------
    def decode(self) -> int:
        self.batch.batch.n_tokens = self.batch.n
        return int(L.llama_decode(self.ctx, self.batch.batch))

    def logits_ptr(self, batch_index: int) -> ctypes.POINTER(ctypes.c_float):
        return L.llama_get_logits_ith(self.ctx, batch_index)

    def logits(self, batch_index: int) -> np.ndarray:
        ptr = L.llama_get_logits_ith(self.ctx, batch_index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # -- KV memory -------------------------------------------------------------------------------------
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(L.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        L.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make `dst` hold the first `n` tokens of `src` (whatever `dst` held is dropped)."""
        self.seq_rm(dst)
        if self.cfg.kv_unified:
            self.seq_cp(src, dst, 0, n)  # shares the cells: bookkeeping only
            return
        # Between streams llama.cpp copies only whole streams (a partial copy aborts the process); the copy
        # itself runs at the start of the next llama_decode. Then the tail past the prefix is dropped.
        self.seq_cp(src, dst, -1, -1)
        self.seq_rm(dst, n, -1)

    def seq_pos_max(self, seq: int) -> int:
        return int(L.llama_memory_seq_pos_max(self.mem, seq))

    def clear(self) -> None:
        L.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None
