"""OpenAI request shapes (chat and legacy completions) plus Qwen's extensions, validated by pydantic.

Validation here is what turns bad input into a 400 that names the field; nothing past this point
should see a wrongly typed value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Lenient(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers commonly do (clients send vendor extras);
    # types are strict, so "yes" is not a boolean and "0.5" is not a number.
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class FunctionCallIn(_Lenient):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> Message:
        if self.role in ("system", "developer", "user", "tool") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content


class FunctionDef(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: dict[str, str]

    @field_validator("function")
    @classmethod
    def _has_name(cls, v: dict[str, str]) -> dict[str, str]:
        if not v.get("name"):
            raise ValueError("tool_choice.function.name is required")
        return v


class JsonSchemaSpec(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format.json_schema.schema is required for type json_schema")
        return self


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingFields(_Lenient):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    # llama-server's and Ollama's name: how many recent tokens the three penalties look at
    repeat_last_n: int | None = Field(default=None, ge=-1, description="tokens the repetition, frequency and "
                                      "presence penalties look back on: 0 turns them off, -1 means the whole "
                                      "context (default 64)")
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # benchmarking aid: generate exactly max_tokens

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            if not k.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys are token ids; got {k!r}")
            if not -100 <= b <= 100:
                raise ValueError(f"logit_bias values must be within [-100, 100]; got {b}")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    enable_thinking: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=0)
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server")
        kw = self.chat_template_kwargs or {}
        if "enable_thinking" in kw and not isinstance(kw["enable_thinking"], bool):
            raise ValueError("chat_template_kwargs.enable_thinking must be a JSON boolean")
        for key in ("thinking_budget", "thinking_budget_tokens"):
            if key in kw and (not isinstance(kw[key], int) or isinstance(kw[key], bool) or kw[key] < 0):
                raise ValueError(f"chat_template_kwargs.{key} must be a non-negative integer")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            if self.tool_choice != "auto":
                raise ValueError("tool_choice requires tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function["name"] not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function['name']!r}, which is not in tools")
        if self.tools:
            names = [t.function.name for t in self.tools]
            if len(names) != len(set(names)):
                raise ValueError("tools have duplicate function names")
        return self

    def thinking(self) -> bool | None:
        if self.enable_thinking is not None:
            return self.enable_thinking
        return (self.chat_template_kwargs or {}).get("enable_thinking")

    def budget(self) -> int | None:
        if self.thinking_budget is not None:
            return self.thinking_budget
        kw = self.chat_template_kwargs or {}
        return kw.get("thinking_budget", kw.get("thinking_budget_tokens"))

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: exactly one prompt per request is supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        return self

    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt
