"""The local-engine backend: OpenAI chat/completion requests in, Qwen protocol through the engine, deltas out.

Prompt rendering, grammars and output parsing are the pure functions of qwenhost.qwen; this module wires
them to the engine and turns everything a request can get wrong into a RequestError (a 4xx).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from qwenhost.engine.engine import Engine
from qwenhost.engine.sampling import GrammarSpec, SamplingParams
from qwenhost.engine.scheduler import QueueFullError
from qwenhost.engine.sequence import GenerationRequest
from qwenhost.qwen import grammar as qgrammar
from qwenhost.qwen.parser import ContentDelta, ReasoningDelta, StreamParser, ToolCallArgs, ToolCallStart
from qwenhost.qwen.template import TemplateRenderError, detect_tool_format, render_chat
from qwenhost.router.openai_types import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
)


class RequestError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 err_type: str = "invalid_request_error", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.err_type, self.retry_after = err_type, retry_after


@dataclass
class Delta:
    reasoning: str | None = None
    content: str | None = None
    tool_call: dict[str, Any] | None = None  # OpenAI delta.tool_calls[i]


@dataclass
class Finish:
    reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass
class Prepared:
    gen: GenerationRequest
    parser: StreamParser | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    prompt_text: str = ""
    completion_tokens: int = 0  # generated so far: what a client that leaves mid-stream is billed for


def _messages_as_dicts(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    out = []
    for m in req.messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text() or ""}
        if m.name:
            d["name"] = m.name
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.reasoning_content:
            d["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            calls = []
            for i, tc in enumerate(m.tool_calls):
                args = tc.function.arguments
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError as exc:
                        raise RequestError(
                            400, f"messages: tool call arguments are not valid JSON ({exc.msg})",
                            param=f"messages.tool_calls[{i}].function.arguments",
                        ) from exc
                calls.append({"id": tc.id, "type": "function",
                              "function": {"name": tc.function.name, "arguments": args}})
            d["tool_calls"] = calls
        out.append(d)
    return out


class LocalBackend:
    kind = "local"  # the ledger's backend column

    def __init__(self, engine: Engine, model_id: str, aliases: list[str] | None = None,
                 chat_template: str | None = None) -> None:
        self.engine = engine
        self.model_id = model_id
        self.aliases = set(aliases or []) | {model_id}
        template = chat_template or engine.chat_template
        if not template:
            raise ValueError("the model file has no chat template (tokenizer.chat_template); "
                             "pass one with --chat-template FILE")
        self.template = template
        self.tool_format = detect_tool_format(template)

    def load(self) -> dict[str, int]:
        """How busy the engine is, for /health."""
        return {"running": len(self.engine.scheduler.running), "waiting": len(self.engine.scheduler.waiting)}

    def fingerprint_source(self) -> str:
        return f"local:{self.engine.runner.n_ctx}"

    def serves(self, model: str) -> bool:
        return model in self.aliases

    # -- preparation: everything that can be wrong with a request is found here --------------------
    def _sampling(self, req: SamplingFields, thinking: bool) -> SamplingParams:
        p = self.engine.sampling_defaults(thinking)
        for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty", "seed"):
            v = getattr(req, name)
            if v is not None:
                setattr(p, name, v)
        if req.repeat_last_n is not None:
            p.penalty_last_n = self.engine.context_limit if req.repeat_last_n == -1 else req.repeat_last_n
        if req.logit_bias:
            n_vocab = self.engine.runner.n_vocab
            bias = {}
            for k, b in req.logit_bias.items():
                tok = int(k)
                if not 0 <= tok < n_vocab:
                    raise RequestError(400, f"logit_bias: token id {tok} is outside the vocabulary "
                                            f"(0..{n_vocab - 1})", param="logit_bias")
                bias[tok] = float(b)
            p.logit_bias = bias
        return p

    def _max_tokens(self, n_prompt: int, asked: int | None, param: str) -> int:
        limit = self.engine.context_limit
        if asked is None:
            if n_prompt >= limit:
                raise RequestError(400, f"the prompt has {n_prompt} tokens, which fills this model's context of "
                                        f"{limit} tokens; shorten the messages", param="messages",
                                   code="context_length_exceeded")
            return limit - n_prompt
        if n_prompt + asked > limit:
            raise RequestError(400, f"this request needs {n_prompt} prompt tokens + {asked} max_tokens = "
                                    f"{n_prompt + asked} tokens, over the context limit of {limit} tokens; "
                                    f"lower max_tokens or shorten the prompt", param=param,
                               code="context_length_exceeded")
        return asked

    def _grammar(self, req: ChatCompletionRequest, tools: list[dict[str, Any]]) -> GrammarSpec | None:
        choice = req.tool_choice
        try:
            if tools and choice != "none":
                if choice in (None, "auto"):  # OpenAI's default with tools is auto
                    g = qgrammar.tool_call_grammar(tools, tool_format=self.tool_format, mode="auto",
                                                   parallel=req.parallel_tool_calls)
                else:
                    name = choice.function["name"] if isinstance(choice, NamedToolChoice) else None
                    g = qgrammar.tool_call_grammar(tools, tool_format=self.tool_format, mode="required",
                                                   name=name, parallel=req.parallel_tool_calls)
                return self._tool_spec(g)
            rf = req.response_format
            if rf is not None and rf.type == "json_object":
                return GrammarSpec(qgrammar.json_schema_grammar(None))
            if rf is not None and rf.type == "json_schema":
                return GrammarSpec(qgrammar.json_schema_grammar(rf.json_schema.schema_))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise RequestError(400, f"could not build a grammar from the given schema: {exc}",
                               param="response_format" if not tools else "tools") from exc
        return None

    def _tool_spec(self, g: qgrammar.ToolGrammar) -> GrammarSpec:
        patterns, tokens = tuple(g.trigger_patterns), ()
        tag_id = self.engine.token_id(qgrammar.CALL_TAG)
        if g.lazy and tag_id is not None:
            tag_pattern = qgrammar.tag_trigger_pattern(qgrammar.CALL_TAG)
            patterns = tuple(p for p in patterns if p != tag_pattern)
            tokens = (tag_id,)
        return GrammarSpec(g.gbnf, g.root, g.lazy, patterns, tokens)

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        for i, t in enumerate(tools):
            errs = qgrammar.tool_schema_errors(t["function"].get("parameters", {}))
            if errs:
                raise RequestError(400, f"tools[{i}].function.parameters: {'; '.join(errs)}",
                                   param=f"tools[{i}].function.parameters")
        thinking = req.thinking()
        render_tools = tools if tools and req.tool_choice != "none" else None
        try:
            rendered = render_chat(self.template, _messages_as_dicts(req), tools=render_tools,
                                   enable_thinking=thinking, bos_token=self.engine.bos_text,
                                   eos_token=self.engine.eos_text)
        except TemplateRenderError as exc:
            raise RequestError(400, f"messages: the chat template rejected them: {exc}", param="messages") from exc
        tokens = self.engine.tokenize(rendered.text)
        max_tokens = self._max_tokens(len(tokens), req.requested_max_tokens(), "max_tokens")
        gen = GenerationRequest(
            prompt_tokens=tokens, max_tokens=max_tokens,
            sampling=self._sampling(req, thinking is not False and rendered.thinking_open),
            stop=req.stop_list(), grammar=self._grammar(req, render_tools or []),
            thinking_open=rendered.thinking_open, thinking_budget=req.budget(), ignore_eos=req.ignore_eos,
        )
        parser = StreamParser(tools=render_tools, thinking_open=rendered.thinking_open,
                              tool_format=self.tool_format, parse_tool_calls=bool(render_tools))
        return Prepared(gen, parser, tools, rendered.text)

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        tokens = self.engine.tokenize(req.prompt_text())
        if not tokens:
            raise RequestError(400, "prompt is empty", param="prompt")
        max_tokens = self._max_tokens(len(tokens), req.max_tokens, "max_tokens")
        gen = GenerationRequest(prompt_tokens=tokens, max_tokens=max_tokens, sampling=self._sampling(req, False),
                                stop=req.stop_list(), ignore_eos=req.ignore_eos)
        return Prepared(gen, None, [], req.prompt_text())

    # -- generation ----------------------------------------------------------------------------------
    async def stream(self, prep: Prepared) -> AsyncIterator[Delta | Finish]:
        try:
            outputs = self.engine.generate(prep.gen)
            async for out in outputs:
                prep.completion_tokens += out.n_tokens
                if out.text:
                    for d in self._deltas(prep.parser.feed(out.text) if prep.parser else None, out.text):
                        yield d
                if out.finish_reason is not None:
                    if out.finish_reason == "error":
                        raise RequestError(500, out.error or "generation failed", err_type="server_error")
                    if prep.parser is not None:
                        for d in self._deltas(prep.parser.finish(), ""):
                            yield d
                    reason = out.finish_reason
                    if prep.parser is not None and prep.parser.tool_call_count and reason == "stop":
                        reason = "tool_calls"
                    yield Finish(reason, out.prompt_tokens, prep.completion_tokens, out.cached_tokens)
                    return
        except QueueFullError as exc:
            raise RequestError(429, f"the server is busy ({exc}); retry shortly", code="queue_full",
                               err_type="rate_limit_error", retry_after=2) from exc

    @staticmethod
    def _deltas(events: list | None, raw: str) -> list[Delta]:
        if events is None:
            return [Delta(content=raw)]
        out: list[Delta] = []
        for ev in events:
            if isinstance(ev, ReasoningDelta) and ev.text:
                out.append(Delta(reasoning=ev.text))
            elif isinstance(ev, ContentDelta) and ev.text:
                out.append(Delta(content=ev.text))
            elif isinstance(ev, ToolCallStart):
                out.append(Delta(tool_call={"index": ev.index, "id": ev.id, "type": "function",
                                            "function": {"name": ev.name, "arguments": ""}}))
            elif isinstance(ev, ToolCallArgs):
                out.append(Delta(tool_call={"index": ev.index, "function": {"arguments": ev.fragment}}))
        return out
