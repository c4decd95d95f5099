"""The reasoning controls inside the engine (reasoning/controls.py): loop recovery and stop, the thinking budget
and minimum, the language guard, the safety guard on the streamed reply, and what the text pipeline reports.

Most tests script the model's text with a logits processor that forces the tokens of a chosen reply (so a
loop, an early close or a harmful phrase happens exactly where the test wants it) on a tiny random
checkpoint; the controls act on it as on any reply. The budget and language tests run the real 0.5B model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

import qwq
from qwq.engine.output import Completion
from qwq.engine.reasoning_split import ReasoningFormat
from qwq.engine.request import GenerationParams, LanguageParams, ReasoningParams
from qwq.engine.sequence import SequenceState
from qwq.errors import ContentFilterError, InvalidRequestError
from qwq.reasoning.language import mixing

from tiny_checkpoints import write_gguf

QWQ_PREVIEW = ReasoningFormat.named("qwq-preview")
THINK = ReasoningFormat("think", True, True)  # a template that opens <think> in the prompt
HEADING = "**Final Answer**"
CYCLE = "The sum is 7, so x is 3. Let me check that again.\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Iterator[qwq.Model]:
    path = write_gguf(tmp_path_factory.mktemp("controls") / "tiny.gguf", context=4096)
    model = qwq.load(path, dtype="float32", device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's matmuls run fastest on one thread
    yield model
    torch.set_num_threads(threads)


def scripted(tokenizer, reply: Callable[[str], str | None]) -> Callable[[SequenceState, torch.Tensor], torch.Tensor]:
    """A logits processor that makes the model write what `reply(text so far)` says comes next (None: the
    end-of-turn token): the next token is the first of that continuation's encoding."""
    end = tokenizer.token_id("<|im_end|>")

    def processor(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        following = reply(sequence.text_from(0))
        target = end if not following else tokenizer.encode(following)[0]
        forced = torch.full_like(logits, -torch.inf)
        forced[target] = 0.0
        return forced

    return processor


def answer_after(cue: str, answer: str, before: str) -> Callable[[str], str | None]:
    """The reply `before` (followed as long as the text is its prefix); once a control has written `cue`,
    `answer` and the end of the turn."""

    def reply(text: str) -> str | None:
        if cue in text:
            written = text.rsplit(cue, 1)[1].lstrip()
            return answer[len(written) :] or None
        return before[len(text) :] if before.startswith(text) else None

    return reply


def run(model: qwq.Model, fmt: ReasoningFormat, reply, params, monkeypatch, guard=None) -> tuple[Completion, list]:
    monkeypatch.setattr(model, "reasoning", fmt)
    prompt = model.tokenizer.encode("Solve it.")
    request = model.request(prompt, params, guard=guard)
    request.processors = (scripted(model.tokenizer, reply), *request.processors)
    completion = model.complete(request)
    return completion, list(completion.pieces())


def streamed_text(pieces) -> tuple[str, str]:
    """The reasoning and answer a streaming client ends up with, taking back what the pieces retract."""
    reasoning = answer = ""
    for piece in pieces:
        reasoning = reasoning[: len(reasoning) - piece.retracted_reasoning] + piece.reasoning
        answer = answer[: len(answer) - piece.retracted_answer] + piece.answer
    return reasoning, answer


# -- loops -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [QWQ_PREVIEW, THINK], ids=["qwq-preview", "think"])
def test_a_loop_in_the_reasoning_is_cut_and_the_answer_follows(tiny, fmt, monkeypatch):
    cue = HEADING if fmt is QWQ_PREVIEW else "</think>"
    reply = answer_after(cue, "42", "Let me think about x.\n" + CYCLE * 40)
    params = tiny.params(max_tokens=3000, temperature=0)
    completion, pieces = run(tiny, fmt, reply, params, monkeypatch)
    assert completion.finish_reason == "stop", completion.notices
    assert completion.answer.strip() == "42"
    assert completion.reasoning.count("The sum is 7") == 1, "one pass of the loop is kept, the repeats are cut"
    report = completion.report["loops"]
    assert report["detected"] == report["recovered"] == 1 and report["tokens_cut"] >= 2 * len(CYCLE) - 8
    assert [n.kind for n in completion.notices] == ["loop"]
    assert streamed_text(pieces) == (completion.reasoning, completion.answer)
    assert any(p.retracted_reasoning for p in pieces), "the repeats streamed before detection were taken back"


def test_stop_cuts_the_loop_and_ends_with_finish_reason_loop(tiny, monkeypatch):
    reply = answer_after(HEADING, "42", "Let me think about x.\n" + CYCLE * 40)
    completion, pieces = run(
        tiny, QWQ_PREVIEW, reply, tiny.params(max_tokens=3000, temperature=0, loop="stop"), monkeypatch
    )
    assert completion.finish_reason == "loop"
    assert completion.reasoning.count("The sum is 7") == 1 and not completion.answer
    assert completion.report["loops"] == {
        "action": "stop",
        "detected": 1,
        "recovered": 0,
        "tokens_cut": completion.notices[0].data["tokens_cut"],
    }
    assert streamed_text(pieces) == (completion.reasoning, completion.answer)


def test_a_second_loop_after_the_cue_stops(tiny, monkeypatch):
    """The answer loops too: recovery does not cue twice, it ends with `loop` and the repeats cut."""
    reply = answer_after(HEADING, "Answer: 42. " * 200, "Let me think about x.\n" + CYCLE * 40)
    completion, _ = run(tiny, QWQ_PREVIEW, reply, tiny.params(max_tokens=3000, temperature=0), monkeypatch)
    assert completion.finish_reason == "loop"
    assert completion.report["loops"]["detected"] == 2 and completion.report["loops"]["recovered"] == 1
    assert completion.answer.count("Answer: 42.") < 20


def test_no_answer_within_its_budget_ends_with_the_cause(tiny, monkeypatch):
    endless = "".join(f"Item {i} is {i * i}. " for i in range(400))  # makes progress: no loop
    reply = answer_after(HEADING, endless, "Let me think about x.\n" + CYCLE * 40)
    params = tiny.params(max_tokens=3000, temperature=0, max_answer_tokens=50)
    completion, _ = run(tiny, QWQ_PREVIEW, reply, params, monkeypatch)
    assert completion.finish_reason == "loop"  # the answer was cued by a loop, and never ended
    assert completion.notices[-1].data["cued"] == "loop"


def test_loops_off_lets_the_loop_run_to_the_limit(tiny, monkeypatch):
    reply = answer_after(HEADING, "42", "Let me think about x.\n" + CYCLE * 40)
    completion, _ = run(tiny, QWQ_PREVIEW, reply, tiny.params(max_tokens=600, temperature=0, loop="off"), monkeypatch)
    assert completion.finish_reason == "length" and not completion.notices and completion.report == {}


# -- the thinking budget ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [QWQ_PREVIEW, THINK], ids=["qwq-preview", "think"])
def test_the_thinking_budget_cues_the_answer_at_the_budget(tiny, fmt, monkeypatch):
    cue = HEADING if fmt is QWQ_PREVIEW else "</think>"
    thinking = "".join(f"Step {i}: add {i} to the total. " for i in range(300))
    params = tiny.params(max_tokens=2000, temperature=0, max_thinking_tokens=200, loop="off")
    completion, _ = run(tiny, fmt, answer_after(cue, "42", thinking), params, monkeypatch)
    assert completion.finish_reason == "stop" and completion.answer.strip() == "42"
    report = completion.report["thinking"]
    assert report["budget_reached"] and abs(report["tokens"] - 200) <= 16, report
    assert completion.notices[0].kind == "budget"


def test_with_a_budget_a_reply_that_ends_inside_its_reasoning_still_gets_an_answer(tiny, monkeypatch):
    """The end-of-turn token inside the reasoning (the model stopped before any heading) is replaced by the
    answer's cue: a budgeted reply always ends with an answer."""
    params = tiny.params(max_tokens=400, temperature=0, max_thinking_tokens=200, loop="off")
    completion, _ = run(tiny, QWQ_PREVIEW, answer_after(HEADING, "42", "x is 42, I think."), params, monkeypatch)
    assert completion.finish_reason == "stop" and completion.answer.strip() == "42"
    assert completion.reasoning.startswith("x is 42, I think.")
    assert completion.notices[0].data == {"ended_early": True}


def test_a_reply_that_closes_its_reasoning_early_is_made_to_go_on(tiny, monkeypatch):
    early = "x is 3.\n\n**Final Answer**\n\n3"
    longer = "x is 3.\n\nWait, let me verify by substituting x back into the equation and checking each side."

    def reply(text: str) -> str | None:
        if "Wait," not in text:
            return answer_after(HEADING, "3", early)(text)
        if HEADING in text:
            return answer_after(HEADING, "3", "")(text)
        after = text.split("Wait,", 1)[1]
        return (longer.split("Wait,", 1)[1] + "\n\n**Final Answer**\n\n")[len(after) :] or None

    params = tiny.params(max_tokens=2000, temperature=0, min_thinking_tokens=40, loop="off")
    completion, _ = run(tiny, QWQ_PREVIEW, reply, params, monkeypatch)
    assert [n.kind for n in completion.notices] == ["thinking_extended"]
    assert "Wait," in completion.reasoning and completion.answer.strip() == "3"
    assert completion.report["thinking"]["tokens"] >= 40


def test_reasoning_params_are_checked_by_name():
    with pytest.raises(InvalidRequestError, match="min_thinking_tokens"):
        GenerationParams.of(reasoning=ReasoningParams(min_thinking_tokens=9, max_thinking_tokens=5))
    with pytest.raises(InvalidRequestError, match="repetition_detection.action"):
        ReasoningParams(loop="sometimes")
    with pytest.raises(InvalidRequestError, match="language_guard.mode"):
        LanguageParams(mode="strict")


# -- every control off costs nothing per token -------------------------------------------------------------------------


def test_a_plain_model_with_every_control_off_runs_no_control(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "reasoning", ReasoningFormat.named("none"))
    request = tiny.request([1, 2, 3], tiny.params(max_tokens=4))
    assert request.controls is None and request.hooks == () and request.processors == ()
    monkeypatch.setattr(tiny, "reasoning", QWQ_PREVIEW)  # a reasoning model: loop recovery on by default
    assert tiny.request([1, 2, 3], tiny.params(max_tokens=4)).controls.loop_action == "recover"


# -- the real model ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [QWQ_PREVIEW, THINK], ids=["qwq-preview", "think"])
def test_the_real_model_answers_after_its_thinking_budget(model, fmt, monkeypatch):
    """Forced formats on the 0.5B: QwQ-Preview's (the reply is reasoning until the heading) and `<think>`'s
    (the prompt opens the tag). The reasoning ends within 16 tokens of the budget and an answer follows."""
    monkeypatch.setattr(model, "reasoning", fmt)
    messages = [{"role": "user", "content": "What is 17 times 23? Explain every step in detail."}]
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    prompt = model.tokenizer.encode(text + ("<think>\n" if fmt is THINK else ""))
    params = model.params(max_tokens=120, temperature=0, max_thinking_tokens=48, max_answer_tokens=16)
    completion = model.complete(model.request(prompt, params, messages=messages))
    list(completion.pieces())
    thinking = completion.report["thinking"]
    assert thinking["budget_reached"] and abs(thinking["tokens"] - 48) <= 16, thinking
    assert completion.answer.strip(), "no answer after the budget's cue"
    assert completion.finish_reason in ("stop", "budget")


def test_the_language_guard_keeps_a_chinese_question_answered_in_english(model):
    question = [{"role": "user", "content": "请用中文解释什么是质数。"}]
    warned = model.chat(question, stream=True, max_new_tokens=24, temperature=0, language_guard="warn", language="en")
    list(warned.pieces())
    assert warned.report["language"]["foreign_letters"] > 0, "the unguarded reply should be in Chinese"
    enforced = model.chat(
        question, stream=True, max_new_tokens=24, temperature=0, language_guard="enforce", language="en"
    )
    list(enforced.pieces())
    allowed = frozenset({"latin"})
    assert mixing(enforced.text, allowed)[0] == 0 and enforced.report["language"]["foreign_letters"] == 0
    assert enforced.text.strip()
    # no language named: the expected script is the question's own (Chinese), so an English reply would be foreign
    detected = model.chat(question, stream=True, max_new_tokens=2, temperature=0, language_guard="warn")
    list(detected.pieces())
    assert detected.report["language"]["scripts"] == ["han"]


# -- the safety guard on the prompt and on the streamed reply --------------------------------------------------------

POLICY = """
chunk_tokens = 16

[categories.weapons]
description = "Instructions for building weapons"
keywords = ["pipe bomb"]
"""


@pytest.fixture
def policy(tmp_path):
    from qwq.reasoning.guard_policy import PolicyGuard

    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return PolicyGuard.from_file(path)


def test_a_blocked_prompt_is_refused_before_anything_runs(tiny, policy):
    messages = [{"role": "user", "content": "How do I build a pipe bomb?"}]
    with pytest.raises(ContentFilterError, match="weapons"):
        tiny.chat_request(messages, tiny.params(max_tokens=4), guard=policy)
    allowed = tiny.chat_request(messages, tiny.params(max_tokens=4, guard=False), guard=policy)
    assert allowed.controls is None or allowed.controls._guard is None


def test_a_blocked_reply_is_cut_and_ends_with_content_filter(tiny, policy, monkeypatch):
    harmless = "".join(f"Line {i} of a harmless story. " for i in range(6))
    reply = answer_after(HEADING, "", harmless + "Now here is how to build a pipe bomb: first take a long pipe. ")
    completion, pieces = run(
        tiny, QWQ_PREVIEW, reply, tiny.params(max_tokens=800, temperature=0, loop="off"), monkeypatch, guard=policy
    )
    assert completion.finish_reason == "content_filter"
    assert "pipe bomb" not in completion.text and completion.text.startswith("Line 0")
    assert completion.report["guard"] == {"blocked": "weapons"}
    assert streamed_text(pieces) == (completion.reasoning, completion.answer)
    notice = completion.notices[-1]
    assert notice.kind == "content_filter" and notice.data["category"] == "weapons"


def test_a_guard_without_a_server_guard_is_named():
    with pytest.raises(InvalidRequestError, match="no.*configured|none is configured"):
        from qwq.reasoning.controls import build_controls

        build_controls(ReasoningParams(guard=True), QWQ_PREVIEW, None, [], None)
