"""Rendering with the official templates must give exactly Qwen's documented prompt layout.

The expected strings are written out by hand from the format described in the Qwen docs
(ChatML <|im_start|>/<|im_end|> turns, a `# Tools` system block listing each tool as JSON inside
<tools></tools>, tool results as <tool_response> blocks in one user turn, an empty think block when
enable_thinking is false, reasoning of turns before the last user query dropped).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenhost.qwen.template import (
    TemplateRenderError,
    detect_tool_format,
    render_chat,
    template_supports_thinking,
)

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "qwen" / "templates"


def tpl(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


QWEN3 = "Qwen-Qwen3-0.6B"
QWEN25 = "Qwen-Qwen2.5-7B-Instruct"
QWEN35 = "Qwen3.5-4B"
CODER = "Qwen3-Coder"
QWQ = "Qwen-QwQ-32B"
R1 = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo <now> & later",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# json.dumps style: ", " and ": " separators, no ASCII or HTML escaping, key order kept.
WEATHER_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Météo <now> & later", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
)
HERMES_TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + WEATHER_JSON
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
HELLO = {"role": "user", "content": "Hello"}


def call(cid: str, city: str) -> dict:
    # OpenAI wire format: arguments is a JSON *string*.
    return {"id": cid, "type": "function",
            "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'}}


TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "reasoning_content": "Call the tool twice.",
     "tool_calls": [call("a", "Paris"), call("b", "Rome")]},
    {"role": "tool", "tool_call_id": "a", "content": "18°C"},
    {"role": "tool", "tool_call_id": "b", "content": "22°C"},
]


class TestQwen3:
    def test_plain_default_thinking(self) -> None:
        r = render_chat(tpl(QWEN3), [SYSTEM, HELLO])
        assert r.text == (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        # Qwen3 lets the model open <think> itself; the prompt does not.
        assert r.thinking_open is False

    def test_enable_thinking_true_is_the_default(self) -> None:
        assert render_chat(tpl(QWEN3), [SYSTEM, HELLO], enable_thinking=True).text == \
            render_chat(tpl(QWEN3), [SYSTEM, HELLO]).text

    def test_enable_thinking_false_prefills_empty_think(self) -> None:
        r = render_chat(tpl(QWEN3), [SYSTEM, HELLO], enable_thinking=False)
        assert r.text == (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )
        assert r.thinking_open is False

    def test_enable_thinking_from_extra(self) -> None:
        r = render_chat(tpl(QWEN3), [HELLO], extra={"enable_thinking": False})
        assert r.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        # the named argument wins over extra
        r = render_chat(tpl(QWEN3), [HELLO], enable_thinking=True, extra={"enable_thinking": False})
        assert r.text.endswith("<|im_start|>assistant\n")

    def test_tools_with_system(self) -> None:
        r = render_chat(tpl(QWEN3), [SYSTEM, {"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
        assert r.text == (
            "<|im_start|>system\nYou are a helpful assistant.\n\n"
            + HERMES_TOOLS_BLOCK
            + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def test_tool_calls_and_responses(self) -> None:
        r = render_chat(tpl(QWEN3), TOOL_TURNS, tools=[WEATHER])
        assert r.text == (
            "<|im_start|>system\n"
            + HERMES_TOOLS_BLOCK
            + "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
            # after the last user query the reasoning is kept, before the calls
            "<|im_start|>assistant\n<think>\nCall the tool twice.\n</think>\n\n"
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
            # consecutive tool results share one user turn
            "<|im_start|>user\n<tool_response>\n18°C\n</tool_response>\n"
            "<tool_response>\n22°C\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    @pytest.mark.parametrize("assistant", [
        {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello! How can I help?"},
        {"role": "assistant", "content": "Hello! How can I help?", "reasoning_content": "A greeting."},
    ])
    def test_earlier_reasoning_dropped(self, assistant: dict) -> None:
        msgs = [HELLO, assistant, {"role": "user", "content": "Tell me a joke."}]
        assert render_chat(tpl(QWEN3), msgs).text == (
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nTell me a joke.<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def test_text_parts_flattened(self) -> None:
        parts = {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]}
        assert render_chat(tpl(QWEN3), [parts]).text == (
            "<|im_start|>user\nHello\nworld<|im_end|>\n<|im_start|>assistant\n"
        )

    def test_image_part_rejected(self) -> None:
        msg = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        with pytest.raises(TemplateRenderError):
            render_chat(tpl(QWEN3), [msg])

    def test_no_generation_prompt(self) -> None:
        r = render_chat(tpl(QWEN3), [HELLO], add_generation_prompt=False)
        assert r.text == "<|im_start|>user\nHello<|im_end|>\n"
        assert r.thinking_open is False


class TestQwen25:
    def test_tools_default_system_and_tool_turns(self) -> None:
        msgs = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call("a", "Paris")]},
            {"role": "tool", "tool_call_id": "a", "content": "18°C"},
        ]
        assert render_chat(tpl(QWEN25), msgs, tools=[WEATHER]).text == (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n"
            + HERMES_TOOLS_BLOCK
            + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n18°C\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def test_no_tools_default_system(self) -> None:
        r = render_chat(tpl(QWEN25), [HELLO], enable_thinking=False)
        assert r.text == (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        )
        assert r.thinking_open is False


class TestQwen35:
    def test_thinking_prefill_opens_think(self) -> None:
        r = render_chat(tpl(QWEN35), [HELLO])
        assert r.text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n"
        assert r.thinking_open is True

    def test_thinking_off_closes_think(self) -> None:
        r = render_chat(tpl(QWEN35), [HELLO], enable_thinking=False)
        assert r.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert r.thinking_open is False

    def test_xml_tool_call_history(self) -> None:
        msgs = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call("a", "Paris")]},
            {"role": "tool", "tool_call_id": "a", "content": "18°C"},
        ]
        r = render_chat(tpl(QWEN35), msgs)
        assert r.text == (
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
            "</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n18°C\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n"
        )
        assert r.thinking_open is True

    def test_tools_block_is_xml_flavoured(self) -> None:
        text = render_chat(tpl(QWEN35), [HELLO], tools=[WEATHER]).text
        assert text.startswith(
            "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
            + WEATHER_JSON + "\n</tools>"
        )
        assert "<function=example_function_name>" in text

    def test_template_exception_becomes_render_error(self) -> None:
        with pytest.raises(TemplateRenderError, match="No user query"):
            render_chat(tpl(QWEN35), [SYSTEM])


class TestThinkingPrefillOthers:
    def test_qwq(self) -> None:
        r = render_chat(tpl(QWQ), [HELLO], enable_thinking=True)
        assert r.text.endswith("<|im_start|>assistant\n<think>\n")
        assert r.thinking_open is True
        # llama.cpp's copy closes think unless enable_thinking is passed as true
        assert render_chat(tpl(QWQ), [HELLO]).thinking_open is False

    def test_r1_distill(self) -> None:
        r = render_chat(tpl(R1), [HELLO], enable_thinking=True, bos_token="<｜begin▁of▁sentence｜>")
        assert r.text == "<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜><think>\n"
        assert r.thinking_open is True


def test_detect_tool_format() -> None:
    assert detect_tool_format(tpl(QWEN3)) == "hermes"
    assert detect_tool_format(tpl(QWEN25)) == "hermes"
    assert detect_tool_format(tpl(QWQ)) == "hermes"
    assert detect_tool_format(tpl(QWEN35)) == "xml"
    assert detect_tool_format(tpl(CODER)) == "xml"


def test_template_supports_thinking() -> None:
    assert template_supports_thinking(tpl(QWEN3))
    assert template_supports_thinking(tpl(QWEN35))
    assert template_supports_thinking(tpl(QWQ))
    assert not template_supports_thinking(tpl(QWEN25))
    assert not template_supports_thinking(tpl(CODER))


class TestEnvironment:
    def test_tojson_options(self) -> None:
        value = {"b": "é<&>", "a": [1, 2]}
        msgs = [HELLO]
        assert render_chat("{{ x | tojson }}", msgs, extra={"x": value}).text == '{"b": "é<&>", "a": [1, 2]}'
        assert render_chat("{{ x | tojson(indent=2) }}", msgs, extra={"x": {"a": 1}}).text == '{\n  "a": 1\n}'
        assert render_chat("{{ x | tojson(separators=(',', ':')) }}", msgs,
                           extra={"x": {"a": [1, 2]}}).text == '{"a":[1,2]}'
        assert render_chat("{{ x | tojson(ensure_ascii=True) }}", msgs, extra={"x": "é"}).text == '"\\u00e9"'

    def test_strftime_now_and_loopcontrols(self) -> None:
        text = render_chat("{{ strftime_now('%Y') }}{% for m in messages %}{% break %}{% endfor %}", [HELLO]).text
        assert len(text) == 4 and text.isdigit()

    def test_trim_and_lstrip_blocks(self) -> None:
        assert render_chat("  {% if true %}\nx\n  {% endif %}\n", [HELLO]).text == "x\n"

    def test_sandboxed(self) -> None:
        with pytest.raises(TemplateRenderError):
            render_chat("{{ messages.append(1) }}", [HELLO])

    def test_raise_exception(self) -> None:
        with pytest.raises(TemplateRenderError, match="nope"):
            render_chat("{{ raise_exception('nope') }}", [HELLO])

    def test_bad_template_syntax(self) -> None:
        with pytest.raises(TemplateRenderError):
            render_chat("{% if %}", [HELLO])

    def test_arguments_string_becomes_mapping(self) -> None:
        text = render_chat("{{ messages[0].tool_calls[0].function.arguments.city }}",
                           [{"role": "assistant", "content": None, "tool_calls": [call("a", "Oslo")]}]).text
        assert text == "Oslo"

    def test_enable_thinking_none_is_undefined(self) -> None:
        t = "{{ 'undef' if enable_thinking is not defined else enable_thinking }}"
        assert render_chat(t, [HELLO]).text == "undef"
        assert render_chat(t, [HELLO], enable_thinking=False).text == "False"
