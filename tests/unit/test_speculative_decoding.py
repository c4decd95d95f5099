"""Speculative decoding by prompt lookup (src/qwq/engine/drafting.py and the engine's verification rows):
greedy and seeded sampled output token for token — and log-probability for log-probability — what plain
decoding gives, alone and batched, with token hooks that force and roll back; fewer steps where the output
copies its input; drafting that stops itself where drafts fail. The drafter's lookup is checked on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from gguf import GGMLQuantizationType as QType

import qwq
from qwq.engine.drafting import MAX_DRAFT, PromptLookupDrafter
from qwq.engine.engine import Engine, decode_rows_exact
from qwq.engine.request import GenerationParams
from qwq.engine.sequence import SequenceState

from tiny_checkpoints import GGUF_MIX, write_gguf

CONTEXT = 512


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("speculative") / "tiny.gguf", QType.F32, context=CONTEXT, extra_tokens=9)


@pytest.fixture(scope="module", params=["int8", "int4", "gguf"])
def quantized(request, tiny_path) -> qwq.Model:
    """qwq's int8 and int4 of a float file, and a quantized file at its own bits (the default for one)."""
    if request.param == "gguf":
        mix = write_gguf(tiny_path.with_name("mix.gguf"), QType.Q4_K, context=CONTEXT, extra_tokens=9, types=GGUF_MIX)
        return qwq.load(mix)
    return qwq.load(tiny_path, quant=request.param)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PATTERN = [17, 99, 123, 45, 200, 7, 64, 33, 150, 88, 12]


def copy_pattern(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
    """A logits processor that makes the output continue PATTERN (as a reply restating its input would)."""
    allowed = PATTERN[(len(sequence.token_ids)) % len(PATTERN)]
    masked = torch.full_like(logits, float("-inf"))
    masked[allowed] = logits[allowed]
    return masked


def mostly_copy(sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
    """Two choices at each step: PATTERN's next token (favoured) or another, so sampling follows the pattern
    most of the time and leaves it now and then: drafts are kept and drafts fail."""
    following = PATTERN[(len(sequence.token_ids)) % len(PATTERN)]
    masked = torch.full_like(logits, float("-inf"))
    masked[following] = logits[following] + 2.0
    masked[following + 1] = logits[following + 1]
    return masked


def run(
    model: qwq.Model, requests: list[tuple[list[int], GenerationParams, dict]], speculative: bool, max_batch: int = 1
):
    """Run the requests together; per request (ids, log-probs), plus the engine's steps and draft counts."""
    engine = Engine(model.network, model.tokenizer, CONTEXT, max_batch=max_batch, speculative=speculative)
    made = [model.request(prompt, params, **extra) for prompt, params, extra in requests]
    engine.add(made)
    ids = {r.request_id: [] for r in made}
    logprobs = {r.request_id: [] for r in made}
    done, steps = 0, 0
    while done < len(made):
        steps += 1
        assert steps < 2000
        for output in engine.step():
            ids[output.request_id][output.start :] = output.new_ids
            logprobs[output.request_id][output.start :] = [e.logprob for e in output.events]
            done += output.finish_reason is not None
    return [(ids[r.request_id], logprobs[r.request_id]) for r in made], steps, engine


def prompt(seed: int, count: int) -> list[int]:
    return torch.randint(0, 260, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_the_decode_rows_of_quantized_models_are_exact(quantized, tiny_path):
    assert decode_rows_exact(quantized.network)
    assert not decode_rows_exact(qwq.load(tiny_path, dtype="float32").network)


def test_copying_output_takes_fewer_steps_and_the_same_tokens(quantized):
    params = quantized.params(max_tokens=60, temperature=0, ignore_eos=True, logprobs=0)
    requests = [(prompt(1, 20) + PATTERN * 3, params, {"processors": (copy_pattern,)})]
    plain, plain_steps, _ = run(quantized, requests, speculative=False)
    drafted, steps, engine = run(quantized, requests, speculative=True)
    assert drafted == plain
    assert engine.kept_tokens > 30 and steps < plain_steps / 2


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0),
        dict(temperature=1.0, top_k=40, seed=3),
        dict(temperature=0.8, repetition_penalty=1.3, seed=5),
    ],
    ids=["greedy", "seeded-sampling", "penalty"],
)
def test_sampled_text_is_what_plain_decoding_writes(quantized, settings):
    params = quantized.params(max_tokens=48, ignore_eos=True, logprobs=0, **settings)
    requests = [(prompt(seed, 30) + PATTERN * 2, params, {"processors": (mostly_copy,)}) for seed in range(3)]
    requests.append((prompt(9, 30), params, {}))  # the tiny model's own text: drafts, if any, mostly fail
    plain, _, _ = run(quantized, requests, speculative=False)
    drafted, _, engine = run(quantized, requests, speculative=True)
    assert drafted == plain
    assert 0 < engine.kept_tokens < engine.drafted_tokens


def test_batched_with_drafts_equals_alone_without(quantized):
    greedy = quantized.params(max_tokens=40, temperature=0, ignore_eos=True, logprobs=0)
    sampled = quantized.params(max_tokens=40, temperature=1.0, seed=9, ignore_eos=True, logprobs=0)
    requests = [
        (prompt(1, 10) + PATTERN * 2, greedy, {"processors": (copy_pattern,)}),
        (prompt(2, 25), sampled, {}),
        (prompt(3, 40) + PATTERN * 2, sampled, {"processors": (copy_pattern,)}),
        (prompt(4, 5), greedy, {}),
    ]
    alone = [run(quantized, [r], speculative=False)[0][0] for r in requests]
    together, _, engine = run(quantized, requests, speculative=True, max_batch=4)
    assert together == alone
    assert engine.kept_tokens > 0


def force_and_roll_back_once():
    """A token hook that forces three tokens after the 6th and takes 4 back at the 15th, once each."""
    done: set[str] = set()

    def hook(sequence: SequenceState, token: int) -> None:
        if sequence.num_output == 6 and "force" not in done:
            done.add("force")
            sequence.force(PATTERN[:3])
        if sequence.num_output == 15 and "rollback" not in done:
            done.add("rollback")
            sequence.rollback(4)

    return hook


def test_hooks_that_force_and_roll_back_see_the_same_sequence(quantized):
    params = quantized.params(max_tokens=40, temperature=0, ignore_eos=True, logprobs=0)

    def requests():
        hooks = (force_and_roll_back_once(),)
        return [(prompt(5, 12) + PATTERN * 3, params, {"processors": (copy_pattern,), "hooks": hooks})]

    plain, _, _ = run(quantized, requests(), speculative=False)
    drafted, _, engine = run(quantized, requests(), speculative=True)
    assert drafted == plain
    assert engine.kept_tokens > 0


def test_the_budget_and_the_context_bound_the_drafts(quantized):
    params = quantized.params(max_tokens=7, temperature=0, ignore_eos=True)
    requests = [(prompt(6, 10) + PATTERN * 3, params, {"processors": (copy_pattern,)})]
    [(ids, _)], _, _ = run(quantized, requests, speculative=True)
    assert len(ids) == 7
    long = prompt(7, CONTEXT - 20 - 3 * len(PATTERN)) + PATTERN * 3
    params = quantized.params(max_tokens=20, temperature=0, ignore_eos=True)
    [(ids, _)], _, _ = run(quantized, [(long, params, {"processors": (copy_pattern,)})], speculative=True)
    assert len(ids) == 20  # the last position of the cache is never passed by a draft


# -- the drafter alone ----------------------------------------------------------------------------------------------


def test_the_draft_follows_the_latest_earlier_occurrence_of_the_longest_suffix():
    drafter = PromptLookupDrafter()
    tokens = [9, 2, 3, 4, 5, 8, 2, 3, 4, 6, 7, 8, 1, 2, 3, 4]
    # [1, 2, 3, 4] never occurred before; [2, 3, 4] did twice, the latest followed by 6, 7, 8
    assert drafter.draft(tokens, limit=3) == [6, 7, 8]
    assert PromptLookupDrafter().draft([5, 6, 7, 5, 6], limit=8) == [7, 5, 6]  # at most up to the end


def test_no_match_and_no_room_give_no_draft():
    drafter = PromptLookupDrafter()
    assert drafter.draft([1, 2, 3, 4, 5], limit=4) == []
    assert drafter.draft([1, 2, 1, 2], limit=0) == []


def test_drafting_pauses_while_drafts_fail_and_grows_while_they_are_kept():
    drafter = PromptLookupDrafter()
    tokens = list(range(20)) + list(range(5))
    first = drafter.draft(tokens, limit=MAX_DRAFT)
    assert first == [5, 6, 7, 8]
    drafter.record(len(first), len(first))
    assert drafter.draft(tokens, limit=MAX_DRAFT) == [5, 6, 7, 8, 9, 10]
    for _ in range(3):
        drafter.record(4, 0)
    assert drafter.draft(tokens, limit=MAX_DRAFT) == []  # paused


def test_a_rollback_drops_stale_matches():
    drafter = PromptLookupDrafter()
    assert drafter.draft([4, 5, 6, 7, 8, 4, 5], limit=2) == [6, 7]
    assert drafter.draft([4, 5, 9, 4, 5], limit=2) == [9, 4]  # shorter, other tokens: read as they are now
