"""The prefix cache (src/qwq/engine/prefix_cache.py): exact (outputs and log-probabilities bit for bit the same
with the cache on or off, whatever chunk a prompt resumes in), shared by concurrent requests, within its
memory cap with least-recently-used eviction, and never serving entries of another prefix or layout.

A tiny random checkpoint quantized by qwq (so its layers run the tiled prompt path and the decode kernels, as
real quantized models do) carries the engine tests; the pool itself is checked on a bare KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from gguf import GGMLQuantizationType as QType

import qwq
from qwq.engine.engine import Engine
from qwq.engine.prefix_cache import BLOCK, PrefixCache, prompt_rows_exact
from qwq.errors import InvalidRequestError
from qwq.model.kv_cache import KVCache

from tiny_checkpoints import GGUF_MIX, write_gguf

CONTEXT = 1024
CHUNK = 128  # two blocks: prompts resume mid-chunk as well as on the chunk grid


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("prefix") / "tiny.gguf", QType.F32, context=CONTEXT, extra_tokens=9)


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
    torch.set_num_threads(1)  # the tiny model is fastest on one thread
    yield
    torch.set_num_threads(threads)


def tokens(seed: int, count: int) -> list[int]:
    return torch.randint(0, 260, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(model: qwq.Model, prompts: list[list[int]], cache: PrefixCache | None, max_batch: int = 1) -> list[tuple]:
    """(output ids, log-probs, cached prompt tokens) per prompt, run one after another on one engine."""
    engine = Engine(
        model.network, model.tokenizer, CONTEXT, max_batch=max_batch, prefill_chunk=CHUNK, prefix_cache=cache
    )
    results = []
    for prompt in prompts:
        request = model.request(prompt, model.params(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0))
        ids, logprobs, cached = [], [], 0
        for output in engine.stream(request):
            ids[output.start :] = output.new_ids
            logprobs += [event.logprob for event in output.events]
            cached = max(cached, output.cached_tokens)
        results.append((ids, logprobs, cached))
    return results


def test_quantized_models_get_a_prefix_cache_and_float_ones_do_not(tiny_path, quantized):
    assert quantized.prefix_cache is not None and prompt_rows_exact(quantized.network)
    assert qwq.load(tiny_path, dtype="float32").prefix_cache is None  # float GEMMs are not tiled: not exact


def test_a_conversation_resumes_after_its_cached_prefix_with_identical_outputs(quantized):
    """Turn 1's prompt is cut [0, 128) [128, 200); turn 2 (turn 1 + its reply + a new message) resumes at 192,
    mid-chunk, and a third prompt at a chunk boundary (256): each must give what a cold engine gives."""
    first = tokens(1, 200)
    second = first + tokens(2, 12) + tokens(3, 150)
    third = second[:256] + tokens(4, 40)
    cold = run(quantized, [first, second, third], cache=None)
    warm = run(quantized, [first, second, third], cache=PrefixCache())
    assert [cached for *_, cached in warm] == [0, 192, 256]
    for (ids, logprobs, _), (want_ids, want_logprobs, _) in zip(warm, cold, strict=True):
        assert ids == want_ids
        assert logprobs == want_logprobs  # bit for bit: the same floats


def test_concurrent_requests_share_a_system_prompt(quantized):
    system = tokens(5, 300)
    prompts = [system + tokens(10 + i, 20 + 7 * i) for i in range(4)]
    cold = [run(quantized, [prompt], cache=None)[0] for prompt in prompts]
    cache = PrefixCache()
    run(quantized, [prompts[0]], cache=cache)  # the system prompt is cached by the first request
    engine = Engine(
        quantized.network, quantized.tokenizer, CONTEXT, max_batch=4, prefill_chunk=CHUNK, prefix_cache=cache
    )
    requests = [quantized.request(p, quantized.params(max_tokens=12, temperature=0, ignore_eos=True)) for p in prompts]
    engine.add(requests)
    outputs: dict[int, list[int]] = {r.request_id: [] for r in requests}
    cached: dict[int, int] = {}
    finished = 0
    for _ in range(500):
        for output in engine.step():
            outputs[output.request_id][output.start :] = output.new_ids
            cached[output.request_id] = max(cached.get(output.request_id, 0), output.cached_tokens)
            finished += output.finish_reason is not None
        if finished == len(requests):
            break
    assert finished == len(requests)
    assert [cached[r.request_id] for r in requests] == [4 * BLOCK] * 4  # the system prompt's whole blocks
    assert [outputs[r.request_id] for r in requests] == [ids for ids, *_ in cold]


def test_the_prefill_chunk_must_lie_on_the_block_grid(quantized):
    with pytest.raises(InvalidRequestError, match=f"multiple of {BLOCK}"):
        Engine(quantized.network, quantized.tokenizer, CONTEXT, prefill_chunk=100, prefix_cache=PrefixCache())


# -- the pool on a bare KV cache ------------------------------------------------------------------------------------


@pytest.fixture
def kv(quantized) -> KVCache:
    cache = KVCache(quantized.config, 2, 8 * BLOCK, torch.float32, "cpu")
    generator = torch.Generator().manual_seed(0)
    for buffer in [*cache.k, *cache.v]:
        buffer.copy_(torch.randn(buffer.shape, generator=generator))
    return cache


def pool_of(kv: KVCache, blocks: int) -> PrefixCache:
    return PrefixCache(capacity_bytes=blocks * PrefixCache.block_bytes(kv))


def test_loaded_entries_are_the_stored_ones(kv):
    pool = pool_of(kv, 8)
    prompt = tokens(20, 3 * BLOCK + 5)
    pool.store(prompt, len(prompt), kv, slot=0)
    assert pool.stats().blocks == 3
    assert pool.load(prompt, kv, slot=1) == 3 * BLOCK
    for buffer in [*kv.k, *kv.v]:
        assert torch.equal(buffer[1, :, : 3 * BLOCK], buffer[0, :, : 3 * BLOCK])


def test_a_hit_leaves_the_last_prompt_token_to_compute(kv):
    pool = pool_of(kv, 8)
    prompt = tokens(21, 2 * BLOCK)
    pool.store(prompt, len(prompt), kv, slot=0)
    assert pool.load(prompt, kv, slot=1) == BLOCK  # the second block holds the last token: computed again


def test_another_prefix_never_hits(kv):
    pool = pool_of(kv, 8)
    prompt = tokens(22, 2 * BLOCK + 1)
    pool.store(prompt, len(prompt), kv, slot=0)
    changed = list(prompt)
    changed[BLOCK - 1] += 1  # the first block differs in its last token
    assert pool.load(changed, kv, slot=1) == 0
    changed = list(prompt)
    changed[BLOCK] += 1  # the second block differs: only the first is shared
    assert pool.load(changed, kv, slot=1) == BLOCK


def test_a_cache_of_another_layout_is_not_served(kv, quantized):
    pool = pool_of(kv, 8)
    prompt = tokens(23, 2 * BLOCK + 1)
    pool.store(prompt, len(prompt), kv, slot=0)
    other = KVCache(quantized.config, 2, 8 * BLOCK, torch.bfloat16, "cpu")
    assert pool.load(prompt, other, slot=0) == 0


def test_the_memory_cap_holds_and_the_least_recently_used_leave_first(kv):
    pool = pool_of(kv, 4)
    old, recent = tokens(30, 2 * BLOCK + 1), tokens(31, 2 * BLOCK + 1)
    pool.store(old, len(old), kv, slot=0)
    pool.store(recent, len(recent), kv, slot=1)
    assert pool.stats().blocks == 4 == pool.stats().capacity_blocks
    assert pool.load(old, kv, slot=0) == 2 * BLOCK  # now `old` is the more recent of the two
    newest = tokens(32, 2 * BLOCK + 1)
    pool.store(newest, len(newest), kv, slot=1)
    assert pool.stats().blocks == 4
    assert pool.load(recent, kv, slot=0) == 0  # least recently used: evicted, both blocks
    assert pool.load(old, kv, slot=0) == 2 * BLOCK
    assert pool.load(newest, kv, slot=0) == 2 * BLOCK


def test_a_prefix_outlives_the_blocks_that_extend_it(kv):
    pool = pool_of(kv, 3)
    long = tokens(40, 3 * BLOCK + 1)
    pool.store(long, len(long), kv, slot=0)
    other = tokens(41, BLOCK + 1)
    pool.store(other, len(other), kv, slot=1)  # needs one row: the chain's last block goes, not its first
    assert pool.stats().blocks == 3
    assert pool.load(long, kv, slot=0) == 2 * BLOCK


def test_a_chain_longer_than_the_pool_keeps_what_fits(kv):
    pool = pool_of(kv, 2)
    long = tokens(50, 5 * BLOCK + 1)
    pool.store(long, len(long), kv, slot=0)
    assert pool.stats().blocks == 2
    assert pool.load(long, kv, slot=1) == 2 * BLOCK
