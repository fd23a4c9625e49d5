"""Check grammars with llama.cpp's own GBNF parser and sampler (run as a subprocess: a grammar bug
can abort the process from C++, which must not take the test session with it).

Usage: python native_grammar.py GGUF < cases.json; prints one JSON result per case. Each case:
{"gbnf": str, "lazy": bool, "patterns": [str], "text": str | null}. For a text, every token is
checked against the grammar before it is accepted (accepting a rejected token aborts), and at the
end an EOG token must be allowed (the grammar is complete).
"""

from __future__ import annotations

import ctypes
import json
import math
import sys

import llama_cpp as L


def _allowed(smpl, tok: int) -> bool:
    data = (L.llama_token_data * 1)(L.llama_token_data(tok, 0.0, 0.0))
    arr = L.llama_token_data_array(data, 1, -1, False)
    L.llama_sampler_apply(smpl, ctypes.byref(arr))
    return not math.isinf(data[0].logit)


def _tokenize(vocab, text: str) -> list[int]:
    raw = text.encode()
    buf = (L.llama_token * (len(raw) + 8))()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, True)
    return list(buf[:n])


def check(vocab, case: dict) -> dict:
    gbnf, patterns = case["gbnf"].encode(), [p.encode() for p in case.get("patterns", [])]
    if case.get("lazy"):
        arr = (ctypes.c_char_p * max(1, len(patterns)))(*patterns)
        smpl = L.llama_sampler_init_grammar_lazy_patterns(vocab, gbnf, b"root", arr, len(patterns), None, 0)
    else:
        smpl = L.llama_sampler_init_grammar(vocab, gbnf, b"root")
    if not smpl:
        return {"parsed": False}
    result = {"parsed": True}
    if case.get("text") is not None:
        accepted = True
        for tok in _tokenize(vocab, case["text"]):
            if not _allowed(smpl, tok):
                accepted = False
                break
            L.llama_sampler_accept(smpl, tok)
        result["accepted"] = accepted
        result["complete"] = accepted and _allowed(smpl, L.llama_vocab_eos(vocab))
    L.llama_sampler_free(smpl)
    return result


def main() -> None:
    L.llama_backend_init()
    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(sys.argv[1].encode(), params)
    vocab = L.llama_model_get_vocab(model)
    for case in json.load(sys.stdin):
        print(json.dumps(check(vocab, case)), flush=True)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
