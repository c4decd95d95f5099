"""Grammar-constrained decoding (engine/grammar.py, engine/structured.py) on a tiny random checkpoint: whatever
the random model would write, its answer parses and validates against the schema, greedy and sampled; the end
token comes only once the grammar is complete; a rollback and free-text reasoning are followed; batched ==
alone; a schema that cannot be enforced is refused by name. Its vocabulary is byte-level, so any JSON can be
spelled."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest
import torch

import qwq
from qwq.engine.reasoning_split import ReasoningFormat
from qwq.engine.request import GenerationParams
from qwq.engine.sequence import SequenceState
from qwq.engine.structured import StructuredOutput
from qwq.errors import InvalidRequestError

from tiny_checkpoints import write_gguf

SCHEMAS = {
    "object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "nick": {"type": "string", "maxLength": 4},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "array": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4},
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["color", "ok"],
        "additionalProperties": False,
    },
    "number": {
        "type": "object",
        "properties": {
            "x": {"type": "number", "minimum": 0, "maximum": 10},
            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}},
        },
        "required": ["x", "tags"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "integer", "maximum": 99, "minimum": 0}, "y": {"type": "null"}},
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "required": ["point"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Iterator[qwq.Model]:
    path = write_gguf(tmp_path_factory.mktemp("grammar") / "tiny.gguf", context=512)
    model = qwq.load(path, dtype="float32", device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's matmuls run fastest on one thread
    yield model
    torch.set_num_threads(threads)


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def run(model: qwq.Model, params: GenerationParams, prompt: str = "hello", **kw):
    request = model.request(model.tokenizer.encode(prompt), params, **kw)
    completion = model.complete(request)
    for _ in completion.pieces():
        pass
    return completion


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_answers_validate_greedy_and_sampled(tiny, name):
    schema = SCHEMAS[name]
    settings = [{"temperature": 0}] + [{"temperature": 1.0, "seed": seed} for seed in range(4)]
    for setting in settings:
        params = tiny.params(max_tokens=160, response_format=schema_format(schema), **setting)
        completion = run(tiny, params, prompt=f"{name} {setting}")
        assert completion.finish_reason == "stop", (setting, completion.answer)
        jsonschema.validate(json.loads(completion.answer), schema)


def closing(tokenizer):
    """A processor that favours closing quotes and brackets: a random model then ends a free-form object soon
    (what it writes is still up to the grammar)."""
    ids = [tokenizer.encode(c)[0] for c in '"}]']

    def processor(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[ids] += 6.0
        return logits

    return processor


def test_json_object_is_one_object(tiny):
    for seed in range(3):
        params = tiny.params(max_tokens=200, temperature=1.0, seed=seed, response_format={"type": "json_object"})
        completion = run(tiny, params, processors=(closing(tiny.tokenizer),))
        assert completion.finish_reason == "stop"
        assert isinstance(json.loads(completion.answer), dict)
    text = tiny.chat("hi", max_new_tokens=100, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(text), dict)
    assert tiny.params(response_format={"type": "text"}).structured is None


def eager_to_end(end: int):
    """A processor that makes the end token by far the likeliest at every step: the grammar must hold it back."""

    def processor(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[end] += 100.0
        return logits

    return processor


def test_end_token_only_once_the_grammar_is_complete(tiny):
    end = tiny.tokenizer.token_id("<|im_end|>")
    eager = (eager_to_end(end),)
    params = GenerationParams(
        max_tokens=160, temperature=0, structured=StructuredOutput("json_schema", SCHEMAS["enum"])
    )
    completion = run(tiny, params, processors=eager)
    assert end not in completion.token_ids and completion.finish_reason == "stop"  # ended by the grammar itself
    jsonschema.validate(json.loads(completion.answer), SCHEMAS["enum"])
    # an integer is complete after its first digit, but can go on: the end token is allowed from there
    number = {"type": "integer", "minimum": 0}
    params = GenerationParams(max_tokens=40, temperature=0, structured=StructuredOutput("json_schema", number))
    completion = run(tiny, params, processors=eager)
    assert completion.token_ids[-1] == end and end not in completion.token_ids[:-1]
    assert completion.finish_reason == "stop" and isinstance(json.loads(completion.answer), int)
    # with ignore_eos there is no end token: the reply runs on inside the grammar to its budget
    params = GenerationParams(
        max_tokens=12, temperature=0, ignore_eos=True, structured=StructuredOutput("json_schema", number)
    )
    completion = run(tiny, params, processors=eager)
    assert completion.answer.isdigit() and completion.finish_reason == "length"


def test_rollback_is_followed(tiny):
    """A hook that takes tokens back (as loop recovery does) rolls the matcher back with them."""
    taken = []

    def take_back(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == 8 and len(taken) < 2:
            taken.append(sequence.output_ids[-3:])
            sequence.rollback(3)

    for seed in range(3):
        taken.clear()
        params = tiny.params(
            max_tokens=160, temperature=1.0, seed=seed, response_format=schema_format(SCHEMAS["object"])
        )
        completion = run(tiny, params, hooks=(take_back,))
        assert len(taken) == 2 and completion.rolled_back == 6
        assert completion.finish_reason == "stop"
        jsonschema.validate(json.loads(completion.answer), SCHEMAS["object"])


def scripted(tokenizer, text: str):
    """A processor that makes the model write `text` first (as long as the output is a prefix of it)."""

    def processor(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        written = sequence.text_from(0)
        if not text.startswith(written) or written == text:
            return logits
        forced = torch.full_like(logits, -torch.inf)
        forced[tokenizer.encode(text[len(written) :])[0]] = 0.0
        return forced

    return processor


def test_reasoning_stays_free_text_before_the_answer(tiny):
    reasoning = "Plain words, {not json], then the answer."
    saved, tiny.reasoning = tiny.reasoning, ReasoningFormat("think", True, True)  # replies start in <think>
    try:
        params = tiny.params(max_tokens=200, temperature=0, loop="off", response_format=schema_format(SCHEMAS["enum"]))
        completion = run(tiny, params, processors=(scripted(tiny.tokenizer, reasoning + "</think>\n\n"),))
    finally:
        tiny.reasoning = saved
    assert completion.reasoning == reasoning
    assert completion.finish_reason == "stop"
    jsonschema.validate(json.loads(completion.answer), SCHEMAS["enum"])


def test_batched_equals_alone(tiny):
    requests = []
    for index, name in enumerate(["object", "array", "enum", "nested"]):
        sampling = {"temperature": 0} if index % 2 == 0 else {"temperature": 1.0, "seed": index}
        params = tiny.params(max_tokens=120, response_format=schema_format(SCHEMAS[name]), **sampling)
        requests.append((f"prompt {name}", params))
    alone = [run(tiny, params, prompt).token_ids for prompt, params in requests]
    batch = [tiny.request(tiny.tokenizer.encode(prompt), params) for prompt, params in requests]
    together = {index: completion.token_ids for index, completion in tiny.complete_batch(batch, max_batch=4)}
    assert [together[i] for i in range(len(requests))] == alone


@pytest.mark.parametrize(
    ("response_format", "field"),
    [
        (schema_format({"type": "nope"}), "response_format.json_schema.schema"),
        (schema_format({"type": "string", "pattern": "(("}), "response_format.json_schema.schema"),
        (
            schema_format({"type": "object", "properties": {"a": {"$ref": "#/missing"}}}),
            "response_format.json_schema.schema",
        ),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
        ({"type": "json_schema"}, "response_format.json_schema.schema"),
        ({"type": "xml"}, "response_format.type"),
        ("json", "response_format"),
    ],
)
def test_a_schema_that_cannot_be_enforced_is_refused_by_name(tiny, response_format, field):
    with pytest.raises(InvalidRequestError) as caught:
        tiny.params(response_format=response_format)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_structured_must_be_its_type():
    with pytest.raises(InvalidRequestError, match="structured"):
        GenerationParams(structured={"type": "json_object"})
