"""The engine itself (src/qwq/engine/), driven directly: batched == alone, forced tokens and rollback against a
full recomputation, the finish reasons, fault isolation, the background thread, capacity, bad values, and the
KV cache the engine owns.

The tiny random checkpoint (tests/tiny_checkpoints.py) carries the mechanics and is instant; the real 0.5B
model (float32, session fixture `model`) carries the numerics and real text: logits, stop strings, end of turn.
Every wait on another thread has a deadline, so a hang fails the test instead of hanging the run.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch

import qwq
from qwq.engine.background import EngineThread, Handle
from qwq.engine.engine import Engine, SequenceOutput
from qwq.engine.output import Completion
from qwq.engine.request import GenerationParams, Request
from qwq.engine.sequence import SequenceState
from qwq.errors import ContextLengthError, ServerBusyError

from tiny_checkpoints import write_gguf

TINY_CONTEXT = 64  # the tiny checkpoint's context (tiny_checkpoints.SHAPE)
REAL_CONTEXT = 128  # what the engines built on the real model here hold
DEADLINE = 60.0  # seconds any wait on another thread may take before the test fails


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> qwq.Model:
    path = write_gguf(tmp_path_factory.mktemp("engine") / "tiny.gguf")
    return qwq.load(path, dtype="float32", device="cpu")


@pytest.fixture(autouse=True)
def _one_thread_for_the_tiny_model(request) -> Iterator[None]:
    """The tiny model's matmuls run fastest on one thread; on a busy machine a 2-thread pool's barriers cost
    milliseconds per op. Tests of the real model keep the session's threads."""
    callspec = getattr(request.node, "callspec", None)
    if "model" in request.fixturenames or (callspec is not None and callspec.params.get("name") == "real"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def model_named(request, name: str) -> qwq.Model:
    return request.getfixturevalue("tiny" if name == "tiny" else "model")


def context_of(model: qwq.Model) -> int:
    return min(model.context_length, REAL_CONTEXT)


def tiny_prompt(seed: int, length: int) -> list[int]:
    """`length` random ids among the tiny vocabulary's byte and merge tokens (no special tokens)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 260, (length,), generator=generator).tolist()


# -- putting outputs together ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One request's outputs put together as a front end does (Completion's rule: ids from `start` on are
    `new_ids`), checking that nothing comes after the final output."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    rolled_back: int = 0
    num_output: int = 0
    outputs: int = 0

    def take(self, output: SequenceOutput) -> None:
        assert self.finish_reason is None, f"an output after the final one: {output}"
        self.outputs += 1
        self.token_ids[output.start :] = output.new_ids
        self.text = self.text[: output.text_start] + output.text
        self.num_output, self.rolled_back = output.num_output, output.rolled_back
        self.finish_reason, self.error = output.finish_reason, output.error

    def same_as(self, other: Run) -> bool:
        return (self.token_ids, self.text, self.finish_reason) == (other.token_ids, other.text, other.finish_reason)


def drive(engine: Engine, requests: list[Request], max_steps: int = 1000) -> list[Run]:
    """Add `requests` (all together) and step the engine until it has no work; each request's Run."""
    runs = {r.request_id: Run() for r in requests}
    engine.add(requests)
    steps = 0
    while engine.has_work:
        steps += 1
        assert steps <= max_steps, f"the engine still had work after {max_steps} steps"
        for output in engine.step():
            runs[output.request_id].take(output)
    for run in runs.values():
        assert run.finish_reason is not None, "a request ended without a final output"
        assert run.num_output == len(run.token_ids), run
    assert engine.load == (0, 0)
    return [runs[r.request_id] for r in requests]


def alone(model: qwq.Model, prompt: list[int], params: GenerationParams, **hooks) -> Run:
    """The request on its own through the synchronous driver: `Engine.stream` on a fresh one-slot engine with
    the default prefill chunk (one chunk for every prompt here)."""
    engine = Engine(model.network, model.tokenizer, context_of(model), max_batch=1)
    run = Run()
    for output in engine.stream(model.request(prompt, params, **hooks)):
        run.take(output)
    assert run.finish_reason is not None and not engine.has_work
    return run


def complete(model: qwq.Model, prompt: list[int], params: GenerationParams) -> tuple[list[int], str, str | None]:
    """The request through `model.complete(model.request(...))`: output ids, text, finish reason."""
    completion = model.complete(model.request(prompt, params))
    text = "".join(completion)
    return completion.token_ids, text, completion.finish_reason


def consume(handles: list[Handle], timeout: float = DEADLINE) -> list[Run]:
    """Read every handle's outputs on its own thread; fails (instead of hanging) if one does not end in time."""
    runs = [Run() for _ in handles]
    failures: list[BaseException] = []

    def read(handle: Handle, run: Run) -> None:
        try:
            for output in handle.outputs():
                run.take(output)
        except BaseException as exc:  # surfaced below: an assertion on another thread would be lost
            failures.append(exc)

    threads = [threading.Thread(target=read, args=pair, daemon=True) for pair in zip(handles, runs, strict=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"a handle's outputs() did not end within {timeout} s"
    assert not failures, failures
    return runs


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def pick_stop(text: str) -> str:
    """A short stop string from `text` (first seen at index >= 2, printable ASCII: two characters where it has
    them, else one), so that a run with it stops early."""
    for width in (2, 1):
        for i in range(2, len(text) * 2 // 3):
            candidate = text[i : i + width]
            if all(32 < ord(c) < 127 for c in candidate) and text.find(candidate) == i:
                return candidate
    pytest.fail(f"no usable stop string in {text!r}")


@contextmanager
def fault_in_last_layer(network, when: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], bool]) -> Iterator[None]:
    """Make the network's last decoder layer raise mid-forward (after the earlier layers wrote their KV
    entries) whenever `when(hidden, positions, slots)` holds."""

    def pre_hook(module, args):
        hidden, positions, slots = args[0], args[3], args[7]
        if when(hidden, positions, slots):
            raise RuntimeError("injected forward fault")

    handle = network.model.layers[-1].register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


class Capture:
    """A logits processor that records each call's token ids and logits (it changes nothing)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], torch.Tensor]] = []
        self.sequence: SequenceState | None = None

    def __call__(self, sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        self.sequence = sequence
        self.calls.append((list(sequence.token_ids), logits.detach().clone()))
        return logits


def penalised(logits: torch.Tensor, ids: list[int], prompt_length: int, params: GenerationParams) -> torch.Tensor:
    """The penalties recomputed from the ids alone: HF's repetition penalty over prompt and output, then
    OpenAI's presence and frequency penalties over the output."""
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[torch.tensor(ids)] = True
    penalty = params.repetition_penalty
    logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    counts = torch.bincount(torch.tensor(ids[prompt_length:], dtype=torch.long), minlength=logits.shape[0])
    counts = counts.to(logits.dtype)
    return logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)


def assert_logits_match_recomputation(
    model: qwq.Model, capture: Capture, tolerance: float = 1e-4, prompt_length: int | None = None
) -> None:
    """Every captured logits vector equals `model.logits(ids)[-1]` (no cache) for the ids it was chosen after;
    with `prompt_length`, after the request's penalties recomputed from those ids."""
    assert capture.calls and capture.sequence is not None
    final = capture.sequence.token_ids
    full = model.logits(final)  # position i of the final ids: the logits after final[: i + 1]
    worst = 0.0
    for ids, logits in capture.calls:
        # a prefix of the final ids reads its row of `full`; a sequence a rollback left behind is recomputed
        expected = full[len(ids) - 1] if final[: len(ids)] == ids else model.logits(ids)[-1]
        if prompt_length is not None:
            expected = penalised(expected, ids, prompt_length, capture.sequence.params)
        worst = max(worst, (logits - expected).abs().max().item())
    assert worst < tolerance, f"cached logits differ from a full recomputation by {worst}"


# -- 1. batched == alone -----------------------------------------------------------------------------------------------


def _eight_requests() -> list[tuple[list[int], dict]]:
    """(prompt, params) for 8 requests on the tiny model: every prompt length differs (1 token, exactly one
    chunk of 16, one chunk plus one token, a 40-token prompt of three chunks), and so do the sampling settings."""
    prompts = [tiny_prompt(seed, n) for seed, n in enumerate((1, 3, 5, 9, 16, 17, 40, 12))]
    settings = [
        dict(temperature=0),
        dict(temperature=0.8, top_k=20, seed=11),
        dict(temperature=1.0, top_p=0.9, seed=12),
        dict(temperature=1.0, min_p=0.1, seed=13),
        dict(temperature=0, repetition_penalty=1.3),
        dict(temperature=0.7, presence_penalty=0.5, frequency_penalty=0.8, seed=14),
        dict(temperature=0, stop="pick"),
        dict(temperature=1.0, top_k=50, top_p=0.95, min_p=0.05, repetition_penalty=1.1, seed=15, stop="pick"),
    ]
    for s in settings:
        s.update(max_tokens=16, ignore_eos=True)
    assert len({len(p) for p in prompts}) == 8 and max(len(p) for p in prompts) == 40
    return list(zip(prompts, settings, strict=True))


@pytest.mark.parametrize(
    ("max_batch", "prefill_chunk"), [(8, 16), (3, 5)], ids=["all-running", "three-slots-the-rest-waiting"]
)
def test_eight_concurrent_requests_equal_each_alone(tiny, max_batch, prefill_chunk):
    model = tiny
    specs = _eight_requests()
    # the stop strings come from what the request writes without one, so they end it early
    for prompt, settings in specs:
        if settings.get("stop") == "pick":
            free = alone(model, prompt, model.params(**{**settings, "stop": None}))
            settings["stop"] = pick_stop(free.text)
            stopped = alone(model, prompt, model.params(**settings))
            assert stopped.finish_reason == "stop"
            assert stopped.text == free.text[: free.text.index(settings["stop"])]
            assert len(stopped.token_ids) < len(free.token_ids)
    expected = [alone(model, prompt, model.params(**settings)) for prompt, settings in specs]
    assert expected[0].finish_reason == "length" and len(expected[0].token_ids) == 16

    engine = Engine(model.network, model.tokenizer, context_of(model), max_batch=max_batch, prefill_chunk=prefill_chunk)
    requests = [model.request(prompt, model.params(**settings)) for prompt, settings in specs]
    runs = drive(engine, requests)
    for (prompt, settings), run, want in zip(specs, runs, expected, strict=True):
        assert run.same_as(want), f"prompt of {len(prompt)} tokens with {settings}: batched {run} != alone {want}"


def test_seeded_sampling_does_not_depend_on_the_batch(tiny):
    prompt = tiny_prompt(100, 6)
    params = tiny.params(max_tokens=20, temperature=1.0, seed=1234, ignore_eos=True)
    want = alone(tiny, prompt, params)
    other = alone(tiny, prompt, tiny.params(max_tokens=20, temperature=1.0, seed=4321, ignore_eos=True))
    assert want.token_ids != other.token_ids  # the seed matters, so equal draws below are not luck

    def companions(seed: int, count: int) -> list[Request]:
        return [
            tiny.request(
                tiny_prompt(seed + i, 3 + 7 * i),
                tiny.params(max_tokens=10 + i, temperature=0.9, seed=seed + i, ignore_eos=True),
            )
            for i in range(count)
        ]

    for before, after, chunk in ((companions(200, 3), [], 512), (companions(300, 2), companions(400, 3), 4)):
        engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=6, prefill_chunk=chunk)
        target = tiny.request(prompt, params)
        runs = drive(engine, [*before, target, *after])
        assert runs[len(before)].same_as(want)


# (2., the engine against HF transformers' generate, is tests/parity/test_engine_reference.py)


# -- 3. forced tokens and rollback -------------------------------------------------------------------------------------


def _force_then_rollback(forced: list[int], replacement: list[int]):
    """A hook that forces `forced` after the 2nd output token, then after the 8th rolls back 4 tokens and
    forces `replacement` (each once). It records the ids it left behind."""
    seen: dict[str, list[int]] = {}

    def hook(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == 2 and "before_force" not in seen:
            seen["before_force"] = list(sequence.token_ids)
            sequence.force(forced)
            seen["forced"] = list(sequence.token_ids)
        elif sequence.num_output == 8 and "rolled" not in seen:
            sequence.rollback(4)
            sequence.force(replacement)
            seen["rolled"] = list(sequence.token_ids)

    return hook, seen


def _rollback_once(at: int, count: int):
    seen: dict[str, list[int]] = {}

    def hook(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == at and "rolled" not in seen:
            seen["before"] = list(sequence.token_ids)
            sequence.rollback(count)
            seen["rolled"] = list(sequence.token_ids)

    return hook, seen


@pytest.mark.parametrize(
    ("name", "batched"),
    [("tiny", False), ("tiny", True), ("real", True)],
    ids=["tiny-single-stream", "tiny-in-a-batch", "real-in-a-batch"],
)
def test_forced_tokens_and_rollback_give_the_logits_of_a_full_recomputation(request, name, batched):
    model = model_named(request, name)
    tok = model.tokenizer
    if model.config.vocab_size < 1000:
        prompt, forced, replacement = tiny_prompt(7, 9), [104, 101, 256], [33]
    else:
        prompt, forced, replacement = tok.encode("def add(a, b):"), tok.encode(" # sum of")[:3], tok.encode(" x")[:1]
    assert len(forced) == 3 and len(replacement) == 1
    max_tokens = 12
    force_hook, forced_seen = _force_then_rollback(forced, replacement)
    rollback_hook, rolled_seen = _rollback_once(at=6, count=3)
    greedy, capture_greedy = model.params(max_tokens=max_tokens, temperature=0, ignore_eos=True), Capture()
    # the sampled one also carries every penalty, whose counts must follow the rollback
    sampled = model.params(
        max_tokens=max_tokens,
        temperature=1.0,
        seed=5,
        ignore_eos=True,
        repetition_penalty=1.2,
        presence_penalty=0.3,
        frequency_penalty=0.4,
    )
    capture_sampled = Capture()
    x = model.request(prompt, greedy, processors=(capture_greedy,), hooks=(force_hook,))
    y = model.request(prompt[:-1], sampled, processors=(capture_sampled,), hooks=(rollback_hook,))
    context = context_of(model)
    if batched:  # companions prefill in chunks (and decode) in the same steps as the forced tokens are fed
        companions = [
            model.request(list(range(30, 40)), model.params(max_tokens=6, temperature=0, ignore_eos=True)),
            model.request(list(range(60, 65)), model.params(max_tokens=9, temperature=1.0, seed=1, ignore_eos=True)),
        ]
        engine = Engine(model.network, tok, context, max_batch=4, prefill_chunk=3)
        first, run_x, run_y, last = drive(engine, [companions[0], x, y, companions[1]])
        assert first.finish_reason == last.finish_reason == "length"
    else:
        engine = Engine(model.network, tok, context, max_batch=1)
        run_x, run_y = Run(), Run()
        for request, run in ((x, run_x), (y, run_y)):
            for output in engine.stream(request):
                run.take(output)
            assert not engine.has_work
        # the public Completion reports the same ids after the rollback
        hook, _ = _force_then_rollback(forced, replacement)
        completion = model.complete(model.request(prompt, greedy, hooks=(hook,)))
        list(completion.pieces())
        assert completion.token_ids == run_x.token_ids and completion.rolled_back == 4
        assert completion.token_count == max_tokens

    # (a) the logits after the forced tokens are those of a prompt that held them (here: of every step)
    held = forced_seen["forced"]
    assert held == forced_seen["before_force"] + forced
    assert any(ids == held for ids, _ in capture_greedy.calls), "no token was chosen right after the forced ones"
    assert_logits_match_recomputation(model, capture_greedy)
    first = Capture()
    held_prompt = model.request(held, model.params(max_tokens=1, temperature=0), processors=(first,))
    drive(Engine(model.network, tok, context), [held_prompt])
    forced_logits = next(logits for ids, logits in capture_greedy.calls if ids == held)
    assert (forced_logits - first.calls[0][1]).abs().max().item() < 1e-4

    # (b) after a rollback the logits are those of the shorter sequence
    rolled = forced_seen["rolled"]
    assert rolled == held[: len(held) - 1] + replacement  # 8 outputs, 4 rolled back, one forced
    assert any(ids == rolled for ids, _ in capture_greedy.calls)
    assert rolled_seen["rolled"] == rolled_seen["before"][:-3]
    assert any(ids == rolled_seen["rolled"] for ids, _ in capture_sampled.calls)
    assert_logits_match_recomputation(model, capture_sampled, prompt_length=len(prompt) - 1)

    # the reported output ids are the sequence's after the rollback, not what was handed out before it
    for run, capture, rolled_back in ((run_x, capture_greedy, 4), (run_y, capture_sampled, 3)):
        assert run.finish_reason == "length"
        assert run.token_ids == capture.sequence.output_ids
        assert len(run.token_ids) == max_tokens and run.rolled_back == rolled_back
    assert run_x.token_ids[:5] == rolled[len(prompt) :]
    assert run_y.token_ids[:3] == rolled_seen["rolled"][len(prompt) - 1 :]
    # and the greedy continuation is what the shorter, forced prompt gives on its own
    rest = alone(model, rolled, model.params(max_tokens=max_tokens - 5, temperature=0, ignore_eos=True))
    assert run_x.token_ids[5:] == rest.token_ids


def test_rolled_back_text_not_yet_handed_out_is_withdrawn(tiny):
    """Tokens forced and rolled back in the same hook call never reach the client: not as ids, events or text."""
    prompt = tiny.tokenizer.encode("hello there")
    banana = tiny.tokenizer.encode("BANANA")

    def hook(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == 1:
            sequence.force(banana)
            sequence.rollback(len(banana))

    params = tiny.params(max_tokens=8, temperature=0, ignore_eos=True)
    plain = alone(tiny, prompt, params)
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT)
    request = tiny.request(prompt, params, hooks=(hook,))
    outputs = list(engine.stream(request))
    run = Run()
    for output in outputs:
        run.take(output)
    assert run.token_ids == plain.token_ids and run.rolled_back == len(banana)
    assert [e.token for o in outputs for e in o.events] == plain.token_ids
    assert "BANANA" not in run.text, f"rolled-back text was handed out: {run.text!r}"
    assert run.text == plain.text


def test_a_rollback_keeps_the_held_back_text_of_the_tokens_it_keeps(tiny):
    """With a stop string "XYZ", a kept "X" is held back as a possible start of it; rolling back a later token
    must not lose that "X" from the text."""
    prompt, x, incomplete = [104, 101, 108], 88, 226  # tiny ids are bytes: "X", and a UTF-8 lead byte

    def force_x(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == 1:
            sequence.force([x])

    def force_x_and_take_one_back(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == 1:
            sequence.force([x, incomplete])  # the lead byte writes no text yet
            sequence.rollback(1)

    params = tiny.params(max_tokens=10, temperature=0, ignore_eos=True, stop=["XYZ"])
    want = alone(tiny, prompt, params, hooks=(force_x,))
    got = alone(tiny, prompt, params, hooks=(force_x_and_take_one_back,))
    assert got.token_ids == want.token_ids and "X" in want.text
    assert got.text == want.text, f"the rollback lost held-back text: {got.text!r} != {want.text!r}"


def test_a_length_finish_releases_text_held_for_a_stop_string(tiny):
    """The last token's "X" is held back as a possible start of the stop string "X?"; the finish releases it."""
    prompt, max_tokens = [104, 101, 108], 6

    def end_with_x(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == max_tokens - 1:
            sequence.force([88])

    params = tiny.params(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    plain = alone(tiny, prompt, params, hooks=(end_with_x,))
    held = alone(tiny, prompt, params.merged(stop=("X?",)), hooks=(end_with_x,))
    assert plain.finish_reason == held.finish_reason == "length" and plain.token_ids[-1] == 88
    assert held.text == plain.text and held.text.endswith("X")


# -- 4. finish reasons -------------------------------------------------------------------------------------------------


def test_finish_reasons_stop_token_stop_string_and_length(model):
    tok = model.tokenizer
    say_ok = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Say OK and nothing else."}]))
    code = tok.encode("def is_even(n):")
    free = alone(model, code, model.params(max_tokens=12, temperature=0))
    words = [w for w in free.text.split() if len(w) >= 2 and free.text.index(w) > 0]
    stop = words[1]
    specs = [
        (say_ok, model.params(max_tokens=16, temperature=0)),
        (code, model.params(max_tokens=12, temperature=0, stop=[stop])),
        (code, model.params(max_tokens=4, temperature=0, ignore_eos=True)),
    ]
    engine = Engine(model.network, tok, REAL_CONTEXT, max_batch=3)
    end_token, stop_string, length = drive(engine, [model.request(p, params) for p, params in specs])

    assert end_token.finish_reason == "stop" and end_token.error is None
    assert end_token.token_ids[-1] in model.generation_defaults.eos_token_ids
    assert len(end_token.token_ids) < 16 and "OK" in end_token.text and "<|im_end|>" not in end_token.text

    assert stop_string.finish_reason == "stop"
    assert stop_string.text == free.text[: free.text.index(stop)], (stop, stop_string.text, free.text)
    assert stop not in stop_string.text
    assert len(stop_string.token_ids) < len(free.token_ids)
    assert stop_string.token_ids == free.token_ids[: len(stop_string.token_ids)]

    assert length.finish_reason == "length" and len(length.token_ids) == 4
    assert length.token_ids == free.token_ids[:4]


def test_custom_stop_token_ends_the_reply(tiny):
    prompt = tiny_prompt(21, 5)
    free = alone(tiny, prompt, tiny.params(max_tokens=20, temperature=0, ignore_eos=True))
    index = next(i for i, t in enumerate(free.token_ids) if i >= 3 and t not in free.token_ids[:i])
    stopped = alone(tiny, prompt, tiny.params(max_tokens=20, temperature=0, stop_token_ids=[free.token_ids[index]]))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: index + 1]  # the end token is reported among the ids


def test_abort_frees_the_slot_for_a_waiting_request(tiny):
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=1)
    long = tiny.request(tiny_prompt(1, 6), tiny.params(max_tokens=40, temperature=0, ignore_eos=True))
    short_params = tiny.params(max_tokens=8, temperature=0.9, seed=3, ignore_eos=True)
    waiting = tiny.request(tiny_prompt(2, 11), short_params)
    doomed = tiny.request(tiny_prompt(3, 4), short_params)
    runs = {r.request_id: Run() for r in (long, waiting, doomed)}
    engine.add([long, waiting, doomed])
    for _ in range(3):
        for output in engine.step():
            runs[output.request_id].take(output)
    assert engine.load == (1, 2)
    assert len(runs[long.request_id].token_ids) == 3 and runs[waiting.request_id].outputs == 0

    engine.abort(long.request_id)
    engine.abort(doomed.request_id)  # still in the waiting line
    for output in engine.step():
        runs[output.request_id].take(output)
    assert runs[long.request_id].finish_reason == "abort"
    assert len(runs[long.request_id].token_ids) == 3  # the abort came before this step's forward
    assert runs[doomed.request_id].finish_reason == "abort" and runs[doomed.request_id].token_ids == []
    running = engine.scheduler.running
    assert [s.request.request_id for s in running] == [waiting.request_id] and running[0].slot == 0
    assert engine.load == (1, 0)
    while engine.has_work:
        for output in engine.step():
            runs[output.request_id].take(output)
    assert runs[waiting.request_id].same_as(alone(tiny, waiting.prompt_ids, short_params))
    assert runs[waiting.request_id].finish_reason == "length"


def test_closing_the_stream_aborts_its_request(tiny):
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT)
    request = tiny.request(tiny_prompt(4, 5), tiny.params(max_tokens=30, temperature=0, ignore_eos=True))
    stream = engine.stream(request)
    next(stream)
    assert engine.has_work
    stream.close()
    assert not engine.has_work and engine.load == (0, 0)


# -- 5. fault isolation ------------------------------------------------------------------------------------------------


def _good_specs(tiny: qwq.Model) -> list[tuple[list[int], GenerationParams]]:
    return [
        (tiny_prompt(50, 1), tiny.params(max_tokens=12, temperature=0, ignore_eos=True)),
        (tiny_prompt(51, 5), tiny.params(max_tokens=14, temperature=1.0, seed=9, ignore_eos=True)),
        (tiny_prompt(52, 20), tiny.params(max_tokens=10, temperature=0, repetition_penalty=1.2, ignore_eos=True)),
        (tiny_prompt(53, 12), tiny.params(max_tokens=16, temperature=0.8, top_k=30, seed=2, ignore_eos=True)),
    ]


def raising_after(calls: int, exc: Exception):
    count = 0

    def processor(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        if count > calls:
            raise exc
        return logits

    return processor


def test_a_raising_processor_fails_only_its_request(tiny):
    good = _good_specs(tiny)
    expected = [alone(tiny, p, params) for p, params in good]
    bad = tiny.request(
        tiny_prompt(54, 7),
        tiny.params(max_tokens=20, temperature=0, ignore_eos=True),
        processors=(raising_after(2, RuntimeError("boom")),),
    )
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=5, prefill_chunk=8)
    *runs, failed = drive(engine, [*(tiny.request(p, params) for p, params in good), bad])
    assert failed.finish_reason == "error"
    assert "RuntimeError" in failed.error and "boom" in failed.error
    assert len(failed.token_ids) == 2
    for run, want in zip(runs, expected, strict=True):
        assert run.same_as(want)


def test_a_failing_prefill_fails_only_its_request_and_its_slot_is_reused(tiny):
    good = _good_specs(tiny)
    expected = [alone(tiny, p, params) for p, params in good]
    bad = tiny.request(tiny_prompt(55, 23), tiny.params(max_tokens=10, temperature=0, ignore_eos=True))
    # the 23-token prompt is fed in chunks of 16 and 7; the others never feed 7 tokens at once
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=3, prefill_chunk=16)
    requests = [tiny.request(p, params) for p, params in good]
    with fault_in_last_layer(tiny.network, lambda hidden, positions, slots: hidden.shape[1] == 7):
        runs = drive(engine, [requests[0], bad, *requests[1:]])
    failed = runs.pop(1)
    assert failed.finish_reason == "error" and "forward pass" in failed.error
    assert failed.token_ids == []
    for run, want in zip(runs, expected, strict=True):
        assert run.same_as(want)


def test_a_failing_batched_decode_fails_only_the_faulty_row(tiny):
    good = _good_specs(tiny)
    expected = [alone(tiny, p, params) for p, params in good]
    spy: dict[str, int] = {}

    def record_slot(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        spy["slot"] = sequence.slot
        return logits

    bad_prompt = tiny_prompt(56, 4)
    bad = tiny.request(
        bad_prompt, tiny.params(max_tokens=20, temperature=0, ignore_eos=True), processors=(record_slot,)
    )

    def faulty(hidden: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> bool:
        rows = slots.tolist()
        if hidden.shape[1] != 1 or spy.get("slot") not in rows:
            return False
        return int(positions[rows.index(spy["slot"]), 0]) >= len(bad_prompt) + 2  # after 3 tokens

    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=5)
    with fault_in_last_layer(tiny.network, faulty):
        *runs, failed = drive(engine, [*(tiny.request(p, params) for p, params in good), bad])
    assert failed.finish_reason == "error" and "forward pass" in failed.error
    assert len(failed.token_ids) == 3
    for run, want in zip(runs, expected, strict=True):
        assert run.same_as(want)


def test_engine_thread_ends_every_handle_and_isolates_failures(tiny):
    good = _good_specs(tiny)
    expected = [alone(tiny, p, params) for p, params in good]
    nan = tiny.request(
        tiny_prompt(57, 3),
        tiny.params(max_tokens=10, temperature=0.7, seed=1),
        processors=(lambda s, logits: torch.full_like(logits, math.nan),),
    )
    boom = tiny.request(
        tiny_prompt(58, 9),
        tiny.params(max_tokens=10, temperature=0),
        processors=(raising_after(4, ValueError("bad processor")),),
    )
    thread = EngineThread(Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=4, prefill_chunk=8))
    try:
        requests = [tiny.request(p, params) for p, params in good]
        handles = thread.submit([requests[0], nan, requests[1]]) + thread.submit([boom, *requests[2:]])
        runs = consume(handles)
    finally:
        thread.close()
    by_id = {h.request.request_id: run for h, run in zip(handles, runs, strict=True)}
    assert by_id[nan.request_id].finish_reason == "error" and "finite logits" in by_id[nan.request_id].error
    assert by_id[boom.request_id].finish_reason == "error" and "bad processor" in by_id[boom.request_id].error
    for request, want in zip(requests, expected, strict=True):
        assert by_id[request.request_id].same_as(want)


def test_engine_thread_survives_an_engine_failure(tiny, monkeypatch):
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=2)
    plan, calls = engine.scheduler.plan, []

    def broken_once():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("scheduler bug")
        return plan()

    monkeypatch.setattr(engine.scheduler, "plan", broken_once)
    params = tiny.params(max_tokens=10, temperature=0, ignore_eos=True)
    thread = EngineThread(engine)
    try:
        runs = consume(thread.submit([tiny.request(tiny_prompt(60 + i, 4), params) for i in range(3)]))
        assert [r.finish_reason for r in runs] == ["error"] * 3
        assert all("scheduler bug" in r.error for r in runs)
        later = tiny.request(tiny_prompt(70, 6), params)
        (after,) = consume(thread.submit([later]))
    finally:
        thread.close()
    assert after.same_as(alone(tiny, later.prompt_ids, params))


def _slow(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
    time.sleep(0.02)
    return logits


def _start_slow_requests(tiny: qwq.Model) -> tuple[EngineThread, list[Handle]]:
    thread = EngineThread(Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=2))
    params = tiny.params(max_tokens=50, temperature=0, ignore_eos=True)
    requests = [tiny.request(tiny_prompt(80 + i, 5), params, processors=(_slow,)) for i in range(3)]
    return thread, thread.submit(requests)  # two run, one waits


def test_engine_thread_close_ends_requests_in_flight(tiny):
    thread, handles = _start_slow_requests(tiny)
    runs = [Run() for _ in handles]
    readers = [
        threading.Thread(target=lambda h=h, r=r: [r.take(o) for o in h.outputs()], daemon=True)
        for h, r in zip(handles, runs, strict=True)
    ]
    for reader in readers:
        reader.start()
    wait_for(lambda: len(runs[0].token_ids) >= 2 and len(runs[1].token_ids) >= 2, "two requests to be running")
    thread.close()
    deadline = time.monotonic() + DEADLINE
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    assert not any(r.is_alive() for r in readers), "a handle's outputs() did not end after close()"
    assert [r.finish_reason for r in runs] == ["abort"] * 3
    with pytest.raises(ServerBusyError):
        thread.submit([tiny.request([1, 2], tiny.params(max_tokens=2))])


def test_engine_thread_close_keeps_the_counts_of_what_was_streamed(tiny):
    """The final output close() hands a running request must not erase the output it already streamed."""
    thread, handles = _start_slow_requests(tiny)
    completions = [Completion(h.outputs(), h.request) for h in handles[:2]]
    streamed: list[list[int]] = [[], []]

    def read(index: int) -> None:
        for piece in completions[index].pieces():
            streamed[index].extend(e.token for e in piece.events)

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(len(s) >= 2 for s in streamed), "two requests to stream tokens")
    thread.close()
    deadline = time.monotonic() + DEADLINE
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    assert not any(r.is_alive() for r in readers)
    for completion, ids in zip(completions, streamed, strict=True):
        assert completion.finish_reason == "abort"
        assert completion.token_ids == ids, "the shutdown's final output reset the output ids"
        assert completion.token_count == len(ids)


def test_capacity_is_max_batch_plus_max_waiting_and_add_is_all_or_none(tiny):
    params = tiny.params(max_tokens=3, temperature=0, ignore_eos=True)

    def request(seed: int) -> Request:
        return tiny.request(tiny_prompt(seed, 4), params)

    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=2, max_waiting=2)
    accepted = [request(i) for i in range(4)]
    for r in accepted:
        engine.add([r])
    with pytest.raises(ServerBusyError, match="capacity 4"):
        engine.add([request(9)])
    assert engine.load == (0, 4)
    engine.step()
    assert engine.load == (2, 2)
    with pytest.raises(ServerBusyError):
        engine.add([request(10)])
    while engine.has_work:
        engine.step()

    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=2, max_waiting=2)
    first, refused = [request(20), request(21)], [request(22), request(23), request(24)]
    engine.add(first)
    with pytest.raises(ServerBusyError):
        engine.add(refused)
    assert engine.load == (0, 2)
    too_long = tiny.request(tiny_prompt(25, 4), tiny.params(max_tokens=50))
    too_long.params = dataclasses.replace(too_long.params, max_tokens=TINY_CONTEXT)
    with pytest.raises(ContextLengthError):
        engine.add([request(26), too_long])  # checks come first: the good one is not accepted either
    assert engine.load == (0, 2)
    seen: set[int] = set()
    while engine.has_work:
        seen |= {o.request_id for o in engine.step()}
    assert seen == {r.request_id for r in first}
    with pytest.raises(qwq.InvalidRequestError):
        Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=0)


# -- 6. bad values -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6])
def test_a_tiny_temperature_is_greedy(tiny, temperature):
    prompt = tiny_prompt(90, 6)
    greedy = alone(tiny, prompt, tiny.params(max_tokens=16, temperature=0, ignore_eos=True))
    tiny_t = alone(tiny, prompt, tiny.params(max_tokens=16, temperature=temperature, top_k=5, seed=3, ignore_eos=True))
    assert tiny_t.finish_reason == "length" and tiny_t.error is None
    assert tiny_t.token_ids == greedy.token_ids


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1.5, True, "7"])
def test_out_of_range_seeds_are_refused_by_name(tiny, seed):
    with pytest.raises(qwq.InvalidRequestError, match="seed"):
        GenerationParams(seed=seed)
    with pytest.raises(qwq.InvalidRequestError, match="seed"):
        tiny.params(max_tokens=4, seed=seed)


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), 0])
def test_seeds_at_the_ends_of_the_range_run(tiny, seed):
    prompt = tiny_prompt(91, 5)
    params = tiny.params(max_tokens=12, temperature=1.0, seed=seed, ignore_eos=True)
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=2)
    first, again = drive(engine, [tiny.request(prompt, params), tiny.request(prompt, params)])
    assert first.finish_reason == "length" and first.error is None
    assert first.same_as(again)


def test_nan_logits_end_the_request_with_an_error_not_an_exception(tiny):
    companion = (tiny_prompt(92, 8), tiny.params(max_tokens=10, temperature=0.9, seed=4, ignore_eos=True))
    want = alone(tiny, *companion)
    engine = Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=3)
    requests = [
        tiny.request(
            tiny_prompt(93, 5),
            tiny.params(max_tokens=10, temperature=temperature),
            processors=(lambda s, logits: torch.full_like(logits, math.nan),),
        )
        for temperature in (0, 1.0)
    ]
    greedy_nan, sampled_nan, run = drive(engine, [*requests, tiny.request(*companion)])  # step() never raises
    for failed in (greedy_nan, sampled_nan):
        assert failed.finish_reason == "error" and "finite logits" in failed.error
        assert failed.token_ids == []
    assert run.same_as(want)


# -- 7. the engine owns the KV cache -----------------------------------------------------------------------------------


def test_two_engines_on_one_network_interleave_without_interference(tiny):
    specs = [
        (tiny_prompt(94, 20), tiny.params(max_tokens=16, temperature=0, ignore_eos=True)),
        (tiny_prompt(95, 3), tiny.params(max_tokens=24, temperature=1.0, seed=8, ignore_eos=True)),
    ]
    expected = [alone(tiny, p, params) for p, params in specs]
    engines = [Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, prefill_chunk=8) for _ in specs]  # slot 0 each
    requests = [tiny.request(p, params) for p, params in specs]
    runs = [Run(), Run()]
    for engine, request in zip(engines, requests, strict=True):
        engine.add([request])
    for _ in range(100):
        if not any(e.has_work for e in engines):
            break
        for engine, run in zip(engines, runs, strict=True):
            for output in engine.step():
                run.take(output)
    for run, want in zip(runs, expected, strict=True):
        assert run.same_as(want)


def test_open_completions_each_get_their_own_cache(tiny):
    specs = [
        (tiny_prompt(96, 10), tiny.params(max_tokens=12, temperature=0, ignore_eos=True)),
        (tiny_prompt(97, 4), tiny.params(max_tokens=12, temperature=0.8, seed=2, ignore_eos=True)),
    ]
    expected = [complete(tiny, p, params) for p, params in specs]
    assert [ids for ids, _, _ in expected] == [alone(tiny, p, params).token_ids for p, params in specs]
    first = tiny.complete(tiny.request(*specs[0]))
    pieces = first.pieces()
    head = [next(pieces) for _ in range(3)]  # left open: the model's own engine holds a half-written sequence
    second = complete(tiny, *specs[1])  # so this one gets an engine and cache of its own
    rest = list(pieces)
    assert (first.token_ids, "".join(p.text for p in head + rest), first.finish_reason) == expected[0]
    assert second == expected[1]


def test_generate_in_process_while_an_engine_thread_serves(tiny):
    served = (tiny_prompt(98, 7), tiny.params(max_tokens=40, temperature=0.9, seed=6, ignore_eos=True))
    local = tiny_prompt(99, 12)
    want_served = alone(tiny, *served)
    want_local = tiny.generate(local, max_new_tokens=20, temperature=0, ignore_eos=True)
    calls = []

    def slow_counting(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        calls.append(time.monotonic())
        time.sleep(0.01)
        return logits

    thread = EngineThread(Engine(tiny.network, tiny.tokenizer, TINY_CONTEXT, max_batch=2))
    try:
        (handle,) = thread.submit([tiny.request(*served, processors=(slow_counting,))])
        wait_for(lambda: len(calls) >= 2, "the served request to start")
        started, served_so_far = time.monotonic(), len(calls)
        got_local = [tiny.generate(local, max_new_tokens=20, temperature=0, ignore_eos=True) for _ in range(3)]
        (got_served,) = consume([handle])
    finally:
        thread.close()
    assert served_so_far < 40 and calls[-1] > started, "the served request was not running alongside"
    assert got_local == [want_local] * 3
    assert got_served.same_as(want_served)


# -- the text pipeline's last stage (output.py) ------------------------------------------------------------------------


def test_completion_passes_unsplit_text_through_unchanged():
    """Without a reasoning split the text pipeline hands the engine's text on as it is: a raw completion of
    `def f(n):` starts with the newline and indent the model wrote."""
    outputs = [
        SequenceOutput(1, text="\n    ", start=0, new_ids=(198, 262), num_output=2),
        SequenceOutput(1, text="return n", start=2, new_ids=(470, 308), num_output=4, finish_reason="length"),
    ]
    completion = Completion(iter(outputs), Request([1, 2, 3, 4, 5], GenerationParams()))
    assert "".join(completion) == "\n    return n"
    assert completion.token_ids == [198, 262, 470, 308] and completion.finish_reason == "length"
