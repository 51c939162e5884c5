"""Chat templates: transformers' rendering environment and the assistant spans."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from trainsvc_lm._chat import ChatTemplate, normalize_messages
from trainsvc_lm._errors import TemplateError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tojson_keeps_unicode_and_html_and_takes_options() -> None:
    # jinja's own tojson would write \u00e9 and \u003c; transformers' keeps the text.
    t = ChatTemplate("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ y | tojson(sort_keys=true) }}")
    out = t.render([], x={"city": "Zürich <b>"}, y={"b": 1, "a": 2})
    plain, indented, ordered = out.split("|")
    assert plain == '{"city": "Zürich <b>"}'
    assert indented == json.dumps({"city": "Zürich <b>"}, indent=2, ensure_ascii=False)
    assert ordered == '{"a": 2, "b": 1}'


def test_raise_exception_becomes_template_error_with_the_message() -> None:
    t = ChatTemplate(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
        name="my-template",
    )
    with pytest.raises(TemplateError, match="my-template raised: first must be user"):
        t.render([{"role": "assistant", "content": "hi"}])
    assert t.render([{"role": "user", "content": "hi"}]) == ""


def test_syntax_error_names_template_and_line() -> None:
    with pytest.raises(TemplateError, match=r"tpl: line 2: "):
        ChatTemplate("ok\n{% if %}", name="tpl")


def test_sandbox_refuses_attribute_escapes_and_mutation() -> None:
    with pytest.raises(TemplateError, match="failed"):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render([])
    with pytest.raises(TemplateError, match="failed"):
        ChatTemplate("{{ messages.append(1) }}").render([{"role": "user", "content": "x"}])


def test_trim_lstrip_loop_controls_and_generation_tag() -> None:
    source = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'system' %}{% continue %}{% endif %}\n"
        "    {% if loop.index > 3 %}{% break %}{% endif %}\n"
        "{% generation %}[{{ m.content }}]{% endgeneration %}\n"
        "{% endfor %}"
    )
    msgs = [{"role": r, "content": c} for r, c in [("system", "s"), ("user", "a"), ("user", "b")]]
    msgs += [{"role": "user", "content": "c"}]
    # trim_blocks/lstrip_blocks drop the tag lines' indentation and the newline after a tag.
    assert ChatTemplate(source).render(msgs) == "[a][b]"


def test_special_tokens_tools_and_generation_prompt_variables() -> None:
    t = ChatTemplate(
        "{{ bos_token }}{{ tools is none }}{{ add_generation_prompt }}{{ eos_token }}",
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
    )
    assert t.render([]) == "<s>TrueFalse</s>"
    assert t.render([], tools=[{"name": "f"}], add_generation_prompt=True) == "<s>FalseTrue</s>"


def test_strftime_now_uses_the_given_time() -> None:
    t = ChatTemplate("{{ strftime_now('%d %b %Y') }}")
    assert t.render([], now=datetime(2024, 7, 26)) == "26 Jul 2024"
    assert t.render([]) == datetime.now().strftime("%d %b %Y")


def test_normalize_parses_string_arguments_and_joins_text_parts() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}],
        },
    ]
    out = normalize_messages(messages)
    assert out[0]["content"] == "ab"
    assert out[1]["tool_calls"][0] == {
        "type": "function",
        "function": {"name": "f", "arguments": {"x": 1}},
    }
    # The input is left alone.
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'  # type: ignore[index]


def test_assistant_spans_cover_content_and_end_token_only() -> None:
    t = ChatTemplate(CHATML)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "sure"},
    ]
    text, spans = t.assistant_spans(messages)
    assert text == t.render(messages)
    assert [text[a:b] for a, b in spans] == ["hello there<|im_end|>", "sure<|im_end|>"]


def test_spans_skip_a_prefilled_generation_suffix() -> None:
    # Like Qwen3 with enable_thinking=false: the prompt ends with text the history lacks.
    t = ChatTemplate(
        CHATML.replace("assistant\n{% endif %}", "assistant\n<think></think>{% endif %}")
    )
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}]
    text, spans = t.assistant_spans(messages)
    assert [text[a:b] for a, b in spans] == ["a1<|im_end|>"]


def test_template_that_rewrites_earlier_turns_is_refused() -> None:
    # The system text goes into the *last* user turn (as some official templates do),
    # so a prefix of the conversation renders differently from the whole.
    t = ChatTemplate(
        "{% for m in messages %}{% if m.role == 'user' %}[INST]"
        "{% if loop.index0 == messages|length - 2 %}SYS {% endif %}{{ m.content }}[/INST]"
        "{% elif m.role == 'assistant' %}{{ m.content }}</s>{% endif %}{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(TemplateError, match="not a prefix"):
        t.assistant_spans(messages)


def test_null_tool_calls_are_dropped_so_key_tests_see_a_plain_answer() -> None:
    # Llama 3.x templates branch on `'tool_calls' in message`.
    t = ChatTemplate("{% for m in messages %}{{ 'tool_calls' in m }}{% endfor %}")
    messages = [
        {"role": "assistant", "content": "a", "tool_calls": None},
        {"role": "assistant", "content": "b", "tool_calls": []},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
    ]
    assert t.render(messages) == "FalseFalseTrue"


def test_opening_assistant_message_span_starts_after_its_header() -> None:
    t = ChatTemplate(CHATML)
    messages = [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "yo"}]
    text, spans = t.assistant_spans(messages)
    assert [text[a:b] for a, b in spans] == ["Hi!<|im_end|>"]
    # A template that cannot render an empty conversation trains the whole opening turn.
    strict = ChatTemplate("{{ messages[0].role.upper() }}:" + CHATML)
    text, spans = strict.assistant_spans(messages)
    assert spans[0][0] == 0 and text[spans[0][0] : spans[0][1]].endswith("Hi!<|im_end|>")
