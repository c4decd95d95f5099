"""qwq against HF transformers on the real Qwen2.5-Coder-0.5B GGUF: tokenizer, logits, greedy decoding."""

from __future__ import annotations

import json
import unicodedata

import pytest
import torch

CORPUS = [
    "Hello, world! How are you doing today?",
    "The quick brown fox jumps over the lazy dog. It's 3:45pm; we'll see.",
    "你好，世界！今天天气怎么样？我们去公园散步吧。",
    "日本語のテキストも少し。한국어도 조금.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }',
    "Emoji: 😀🎉👩‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "Long whitespace:          \t\t\t   \n\n\n\n      end   ",
    "    indented\n        more indented\n\ttab\r\nwindows line",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
    "Numbers 1234567890 and 3.14159e-10, 1,000,000.",
    "Math: $\\int_0^1 x^2 \\, dx = \\frac{1}{3}$ and \\boxed{42}",
    '<tool_call>{"name": "f"}</tool_call> <|fim_prefix|>x<|fim_suffix|>',
    "Ünïcödé àccénts, naïve café, Straße, ﬁ ligature, Ω",
    "",
]

CHAT_PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "What is the capital of France? Answer in one sentence.",
    "用中文解释一下什么是递归。",
    "Explain the difference between a list and a tuple in Python.",
    "Write a haiku about autumn leaves.",
]


@pytest.mark.parametrize("text", CORPUS)
def test_token_ids_match_hf(model, hf_tokenizer, text):
    expected = hf_tokenizer.encode(text, add_special_tokens=False)
    assert model.tokenizer.encode(text) == expected
    assert model.tokenizer.decode(expected) == hf_tokenizer.decode(expected)


def test_non_nfc_text_is_normalized_like_qwen2_tokenizer(model, gguf_path):
    """Qwen2's own tokenizer NFC-normalizes; transformers' GGUF converter drops that step, so compare with
    transformers' Qwen2Tokenizer built from the same vocabulary and merges."""
    from transformers import Qwen2Tokenizer

    model_json = json.loads(model.tokenizer.backend.model.__getstate__())
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    reference = Qwen2Tokenizer(vocab=model_json["vocab"], merges=merges)
    text = "cafe\u0301 A\u030a e\u0301te\u0301"
    assert unicodedata.normalize("NFC", text) != text
    assert model.tokenizer.encode(text) == reference.encode(text, add_special_tokens=False)


def test_chat_template_matches_hf(model, hf_tokenizer):
    conversations = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
    ]
    tools = [{"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": {}}}]
    for messages in conversations:
        for add_prompt in (True, False):
            ours = model.tokenizer.apply_chat_template(messages, add_generation_prompt=add_prompt)
            theirs = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_prompt)
            assert ours == theirs
    ours = model.tokenizer.apply_chat_template(conversations[0], tools=tools)
    assert ours == hf_tokenizer.apply_chat_template(
        conversations[0], tools=tools, tokenize=False, add_generation_prompt=True
    )


def _chat_ids(model, prompt: str) -> list[int]:
    return model.tokenizer.encode(model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}]))


def test_last_position_logits_match_hf(model, hf_model):
    for prompt in CHAT_PROMPTS[:3] + CORPUS[4:5]:
        ids = _chat_ids(model, prompt)
        with torch.inference_mode():
            expected = hf_model(torch.tensor([ids])).logits[0].float()
        ours = model.logits(ids)
        assert ours.shape == expected.shape == (len(ids), model.config.vocab_size)
        diff = (ours[-1] - expected[-1]).abs().max().item()
        assert diff < 1e-3, f"last-position logits differ by {diff} for {prompt!r}"
        assert (ours - expected).abs().max().item() < 1e-3


def test_greedy_continuations_match_hf(model, hf_model):
    stop_ids = [151645, 151643]
    for prompt in CHAT_PROMPTS:
        ids = _chat_ids(model, prompt)
        with torch.inference_mode():
            out = hf_model.generate(
                torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=stop_ids, pad_token_id=151643
            )
        expected = out[0, len(ids) :].tolist()
        ours = model.generate(ids, max_new_tokens=64, temperature=0.0, stop_token_ids=stop_ids)
        assert ours == expected, f"greedy continuation differs for {prompt!r}"
        assert len(ours) == 64 or ours[-1] in stop_ids


def test_cached_decoding_equals_recomputation(model):
    ids = _chat_ids(model, CHAT_PROMPTS[0])
    new = model.generate(ids, max_new_tokens=24, temperature=0.0, ignore_eos=True)
    full = model.logits(ids + new)
    # Replay the same steps through the KV cache: prefill, then one token at a time.
    network = model.network
    cache = network.new_cache(1, len(ids) + len(new))
    with torch.inference_mode():
        step_logits = [network(torch.tensor([ids]), torch.arange(len(ids))[None], cache)[0].float()]
        for position, token in enumerate(new, start=len(ids)):
            step_logits.append(network(torch.tensor([[token]]), torch.tensor([[position]]), cache)[0].float())
    cached = torch.cat(step_logits)
    assert (cached - full).abs().max().item() < 1e-3
    assert torch.equal(full[len(ids) - 1 : -1].argmax(-1), torch.tensor(new))


def test_tokenizer_json_directory_matches_hf(tmp_path, hf_tokenizer):
    """The HF-directory path: transformers saves its tokenizer files; qwq reads them back."""
    from qwq.tokenizer.tokenizer import Tokenizer

    hf_tokenizer.save_pretrained(tmp_path)
    ours = Tokenizer.from_hf_dir(tmp_path)
    for text in CORPUS:
        assert ours.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": CHAT_PROMPTS[2]}]
    assert ours.apply_chat_template(messages) == hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert ours.eos_token == hf_tokenizer.eos_token
