"""Tool calls: the hermes-style parser (whole == streamed at every split), the tools and tool results through
the real 0.5B's chat template (== transformers'), and tool_choice's checks, grammar and mask."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from llguidance import LLMatcher

import qwq
from qwq.engine.grammar import grammar_tokenizer
from qwq.engine.output import Piece
from qwq.engine.tool_calls import ToolCallParser, ToolCallStream, ToolDelta, parse_tool_calls
from qwq.engine.tool_choice import ToolChoice, check_tools
from qwq.errors import InvalidRequestError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
VOCAB = 151936  # the 0.5B's logits
REPLIES = [
    CALL,
    f"Let me look.\n\n{CALL}",
    f"{CALL}\n{CALL.replace('Paris', 'Köln')}\n",
    f"before {CALL} after",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',  # malformed: content
    '<tool_call>\n{"arguments": {}}\n</tool_call> no name',
    "no call at all, a < sign and <tool",
    "  spaces kept  ",
    f"{CALL}\n<tool_call>\n[1, 2]\n</tool_call>",
    '<tool_call>\n{"name": "get_time", "arguments": {}}',  # unclosed at the end: still a call
    "<tool_call>\nnot json",
]


def _streamed(text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]]]:
    parser, content, calls = ToolCallParser(), [], []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        delta = parser.push(text[start:end])
        content.append(delta.content)
        calls += delta.calls
    rest = parser.flush()
    content.append(rest.content)
    calls += rest.calls
    return "".join(content), [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("text", REPLIES)
def test_split_at_every_position_is_the_whole(text):
    whole = parse_tool_calls(text)
    expected = (whole.content, [(c.name, c.arguments) for c in whole.calls])
    for cut in range(len(text) + 1):
        assert _streamed(text, [cut]) == expected, cut
    assert _streamed(text, list(range(1, len(text)))) == expected  # one character a piece


BARE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
NAMED_REPLIES = [
    f" {BARE}\n",
    BARE.replace("get_weather", "other"),
    f"{BARE} and more",
    "{not json",
    f"x {BARE}",
    *REPLIES,
]


@pytest.mark.parametrize("text", NAMED_REPLIES)
def test_bare_json_calls_split_at_every_position_is_the_whole(text):
    names = ["get_weather"]
    whole = parse_tool_calls(text, names)
    expected = (whole.content, [(c.name, c.arguments) for c in whole.calls])
    for cut in range(len(text) + 1):
        parser, content, calls = ToolCallParser(names), [], []
        for delta in (parser.push(text[:cut]), parser.push(text[cut:]), parser.flush()):
            content.append(delta.content)
            calls += [(c.name, c.arguments) for c in delta.calls]
        assert ("".join(content), calls) == expected, cut


def test_a_bare_json_answer_naming_an_offered_tool_is_a_call():
    assert [c.name for c in parse_tool_calls(f" {BARE}\n", ["get_weather"]).calls] == ["get_weather"]
    assert parse_tool_calls(f" {BARE}\n", ["get_weather"]).content == ""
    for text, names in ((BARE, []), (BARE, ["other"]), (f"{BARE} and more", ["get_weather"])):
        assert parse_tool_calls(text, names) == ToolDelta(text), (text, names)


def test_calls_and_content():
    one = parse_tool_calls(f"Let me look.\n\n{CALL}")
    assert one.content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in one.calls] == [("get_weather", {"city": "Paris"})]
    assert one.calls[0].id.startswith("call_") and len(one.calls[0].id) > 10
    two = parse_tool_calls(f"{CALL}\n{CALL.replace('Paris', 'Köln')}\n")
    assert two.content == "" and [c.arguments_dict()["city"] for c in two.calls] == ["Paris", "Köln"]
    assert two.calls[0].id != two.calls[1].id
    around = parse_tool_calls(f"before {CALL} after")
    assert around.content == "beforeafter" and len(around.calls) == 1


def test_malformed_blocks_stay_content():
    for text in REPLIES[4:6] + ["<tool_call>\nnot json"]:
        parsed = parse_tool_calls(text)
        assert parsed.calls == () and parsed.content == text
    mixed = parse_tool_calls(f"{CALL}\n<tool_call>\n[1, 2]\n</tool_call>")
    assert len(mixed.calls) == 1 and mixed.content == "<tool_call>\n[1, 2]\n</tool_call>"  # after a call: no gap
    assert parse_tool_calls("no call, <tool").content == "no call, <tool"


def test_stream_of_pieces_with_a_retraction():
    stream = ToolCallStream()
    shown = ""
    for piece in [Piece(answer="Hello hello"), Piece(answer=" world", retracted_answer=6), Piece(answer=CALL[:20])]:
        piece, calls = stream.push(piece)
        shown = shown[: len(shown) - piece.retracted_answer] + piece.answer
        assert calls == ()
    piece, calls = stream.push(Piece(answer=CALL[20:], finish_reason="stop"))
    shown += piece.answer
    assert shown == stream.content == "Hello world" and [c.name for c in calls] == ["get_weather"]


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    return qwq.load(gguf_path, device="meta").tokenizer


CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
]


def test_template_renders_tools_and_results_as_transformers(tokenizer, hf_tokenizer):
    for messages in (CONVERSATION[:1], CONVERSATION, [{"role": "system", "content": "Be brief."}, *CONVERSATION]):
        ours = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=[WEATHER, TIME])
        theirs = hf_tokenizer.apply_chat_template(
            messages, tools=[WEATHER, TIME], tokenize=False, add_generation_prompt=True
        )
        assert ours == theirs
    assert "<tools>" in ours and "<tool_response>\nsunny\n</tool_response>" in ours


def test_template_reads_openai_arguments_text(tokenizer):
    as_text = json.loads(json.dumps(CONVERSATION))
    as_text[1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris"}'
    assert tokenizer.apply_chat_template(as_text, tools=[WEATHER]) == tokenizer.apply_chat_template(
        CONVERSATION, tools=[WEATHER]
    )
    as_text[1]["tool_calls"][0]["function"]["arguments"] = "{city"
    with pytest.raises(InvalidRequestError, match=r"messages\[1\]\.tool_calls\[0\]\.function\.arguments"):
        tokenizer.apply_chat_template(as_text, tools=[WEATHER])


def test_bad_tools_and_choices_name_the_field():
    bad_tools = [
        ([{"type": "function", "function": {"description": "x"}}], r"tools\[0\]\.function\.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "parameters"),
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "parameters"),
        (["f"], r"tools\[0\]"),
    ]
    for tools, field in bad_tools:
        with pytest.raises(InvalidRequestError, match=field):
            check_tools(tools)
    tools = check_tools([WEATHER])
    for choice in ("sometimes", {"type": "function", "function": {"name": "nope"}}, {"function": 3}):
        with pytest.raises(InvalidRequestError, match="tool_choice") as caught:
            ToolChoice.of(choice, tools)
        assert caught.value.field == "tool_choice"
    with pytest.raises(InvalidRequestError, match="needs tools"):
        ToolChoice.of("required", [])
    assert ToolChoice.of({"type": "function", "function": {"name": "get_weather"}}, tools).name == "get_weather"


def _accepts(grammar: str, tokenizer, text: str) -> bool:
    matcher = LLMatcher(grammar_tokenizer(tokenizer, VOCAB, [tokenizer.token_id("<|im_end|>")]), grammar, log_level=0)
    return all(matcher.consume_token(t) for t in tokenizer.encode(text)) and matcher.is_accepting()


def test_required_and_named_are_one_call_valid_under_its_schema(tokenizer):
    tools = check_tools([WEATHER, TIME])
    named = ToolChoice.of({"type": "function", "function": {"name": "get_weather"}}, tools).grammar(tools, tokenizer)
    required = ToolChoice.of("required", tools).grammar(tools, tokenizer)
    time_call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert _accepts(named.grammar, tokenizer, CALL) and not _accepts(named.grammar, tokenizer, time_call)
    assert _accepts(required.grammar, tokenizer, CALL) and _accepts(required.grammar, tokenizer, time_call)
    for wrong in (CALL.replace('"Paris"', "3"), CALL.replace("city", "town"), "Paris is sunny", CALL[:-1]):
        assert not _accepts(required.grammar, tokenizer, wrong), wrong
    assert ToolChoice.of("auto", tools).grammar(tools, tokenizer) is None
    unenforceable = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "$ref": "#/x"}}}]
    with pytest.raises(InvalidRequestError, match=r"tools\[0\]\.function\.parameters"):
        ToolChoice.of("required", unenforceable).grammar(check_tools(unenforceable), tokenizer)


def test_none_masks_the_call_tag(tokenizer):
    tools = check_tools([WEATHER])
    (forbid,) = ToolChoice.of("none", tools).processors(tools, tokenizer)
    logits = forbid(SimpleNamespace(output_ids=[]), torch.zeros(VOCAB))
    assert logits[tokenizer.token_id("<tool_call>")] == float("-inf") and logits.isfinite().sum() == VOCAB - 1
    assert ToolChoice.of("auto", tools).processors(tools, tokenizer) == ()
