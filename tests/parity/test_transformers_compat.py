"""qwq.transformers against HF transformers on the real 0.5B GGUF: the QwQ model card's snippet, with only its
import changed, gives HF's greedy reply token for token; batches, streamers, the tokenizer calls and refusals."""

from __future__ import annotations

import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

from qwq.errors import InvalidRequestError, ModelLoadError
from qwq.transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer, TextStreamer

NEW_TOKENS = 48
BATCH_TOKENS = 24
STREAM_TOKENS = 12
SYSTEM = "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. You should think step-by-step."
PROMPTS = [
    "Hi",
    "Write a Python function that checks whether a number is prime.",
    "Explain the difference between a list and a tuple in Python, with an example of each.",
]


def _model_card_snippet(model_name: str) -> SimpleNamespace:
    """The model card's snippet, verbatim but for the import line, the model and a shorter, greedy reply."""
    from qwq.transformers import AutoModelForCausalLM, AutoTokenizer

    # fmt: off
    model = AutoModelForCausalLM.from_pretrained(model_name, torch_dtype="auto", device_map="auto")
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    prompt = "How many r in strawberry."
    messages = [
        {"role": "system", "content": "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. You should think step-by-step."},  # noqa: E501
        {"role": "user", "content": prompt},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    model_inputs = tokenizer([text], return_tensors="pt").to(model.device)
    generated_ids = model.generate(**model_inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    generated_ids = [output_ids[len(input_ids):] for input_ids, output_ids in zip(model_inputs.input_ids, generated_ids)]  # noqa: B905, E501
    response = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    # fmt: on
    return SimpleNamespace(model=model, tokenizer=tokenizer, text=text, generated_ids=generated_ids, response=response)


@pytest.fixture(scope="module")
def snippet(gguf_path):
    # the reference is HF's float32 model on the CPU, so "auto" is held to the CPU (and qwq's float32) here
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        return _model_card_snippet(str(gguf_path))


def _chat(tokenizer, prompt: str) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_model_card_snippet_gives_hf_greedy_reply(snippet, hf_model, hf_tokenizer):
    assert snippet.model.device == torch.device("cpu") and snippet.model.dtype == torch.float32
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "How many r in strawberry."}]
    assert snippet.text == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = hf_tokenizer([snippet.text], return_tensors="pt")
    with torch.inference_mode():
        output = hf_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    expected = output[0, inputs.input_ids.shape[1] :]
    assert snippet.generated_ids[0].tolist() == expected.tolist()
    assert snippet.response == hf_tokenizer.batch_decode([expected], skip_special_tokens=True)[0]
    assert snippet.response.strip()


def test_no_transformers_import(gguf_path):
    code = (
        "import sys\n"
        "from qwq.transformers import AutoTokenizer\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(gguf_path)!r})\n"
        "tokenizer.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True)\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_tokenizer_calls_match_hf(snippet, hf_tokenizer):
    tokenizer = snippet.tokenizer
    for name in ("eos_token", "eos_token_id", "pad_token", "pad_token_id"):
        assert getattr(tokenizer, name) == getattr(hf_tokenizer, name), name
    texts = [_chat(tokenizer, p) for p in PROMPTS]
    for side in ("left", "right"):
        ours = tokenizer(texts, padding=True, padding_side=side, return_tensors="pt")
        theirs = hf_tokenizer(texts, padding=True, padding_side=side, return_tensors="pt")
        assert torch.equal(ours.input_ids, theirs.input_ids) and torch.equal(ours.attention_mask, theirs.attention_mask)
    assert tokenizer(texts[0]).input_ids == hf_tokenizer(texts[0]).input_ids
    messages = [{"role": "user", "content": PROMPTS[1]}]
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    theirs = hf_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=False
    )
    assert torch.equal(ours, theirs)
    ids = snippet.generated_ids[0]
    for skip in (False, True):
        assert tokenizer.decode(ids, skip_special_tokens=skip) == hf_tokenizer.decode(ids, skip_special_tokens=skip)
    assert tokenizer.decode(ids.tolist()) == tokenizer.batch_decode(ids[None])[0]


def test_batch_rows_equal_each_prompt_alone(snippet):
    model, tokenizer = snippet.model, snippet.tokenizer
    texts = [_chat(tokenizer, PROMPTS[0]), snippet.text, _chat(tokenizer, PROMPTS[2])]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    assert len(set(inputs.attention_mask.sum(1).tolist())) == len(texts)  # three lengths, padded on the left
    assert inputs.attention_mask[:, -1].all() and not inputs.attention_mask[:, 0].all()
    output = model.generate(**inputs, do_sample=False, max_new_tokens=BATCH_TOKENS)
    width = inputs.input_ids.shape[1]
    assert torch.equal(output[:, :width], inputs.input_ids)
    for row, text in zip(output, texts, strict=True):
        if text == snippet.text:  # the snippet has run this prompt alone already
            expected = snippet.generated_ids[0][:BATCH_TOKENS].tolist()
        else:
            alone = tokenizer(text, return_tensors="pt")
            ids = model.generate(**alone, do_sample=False, max_new_tokens=BATCH_TOKENS)
            expected = ids[0, alone.input_ids.shape[1] :].tolist()
        new = row[width:].tolist()
        assert new[: len(expected)] == expected
        assert all(token == tokenizer.pad_token_id for token in new[len(expected) :])


def test_text_streamer_prints_piece_by_piece(snippet, capsys, monkeypatch):
    model, tokenizer = snippet.model, snippet.tokenizer
    writes: list[str] = []
    write = sys.stdout.write
    monkeypatch.setattr(sys.stdout, "write", lambda text: (writes.append(text), write(text))[1])
    inputs = tokenizer([snippet.text], return_tensors="pt")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = model.generate(**inputs, max_new_tokens=STREAM_TOKENS, do_sample=False, streamer=streamer)
    monkeypatch.undo()
    reply = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert reply == tokenizer.decode(snippet.generated_ids[0][:STREAM_TOKENS], skip_special_tokens=True)
    assert capsys.readouterr().out == reply + "\n"
    assert len([text for text in writes if text]) > 2


def test_transformers_own_streamer_works_too(snippet, hf_tokenizer, capsys):
    from transformers import TextStreamer as HFTextStreamer

    inputs = snippet.tokenizer([snippet.text], return_tensors="pt")
    streamer = HFTextStreamer(hf_tokenizer, skip_prompt=True, skip_special_tokens=True)
    snippet.model.generate(**inputs, max_new_tokens=STREAM_TOKENS, do_sample=False, streamer=streamer)
    expected = snippet.tokenizer.decode(snippet.generated_ids[0][:STREAM_TOKENS], skip_special_tokens=True)
    assert capsys.readouterr().out == expected + "\n"


def test_iterator_streamer_from_a_thread(snippet):
    model, tokenizer = snippet.model, snippet.tokenizer
    inputs = tokenizer([snippet.text], return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=120, skip_special_tokens=True)
    result = {}

    def run() -> None:
        result["ids"] = model.generate(**inputs, max_new_tokens=STREAM_TOKENS, do_sample=False, streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert len(pieces) > 2
    assert "".join(pieces) == tokenizer.decode(result["ids"][0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize(
    "keyword, value",
    [("num_beams", 4), ("output_scores", True), ("return_dict_in_generate", True), ("min_new_tokens", 4)],
)
def test_unsupported_generate_keyword_is_named(snippet, keyword, value):
    inputs = snippet.tokenizer(["hi"], return_tensors="pt")
    with pytest.raises(InvalidRequestError, match=keyword):
        snippet.model.generate(**inputs, max_new_tokens=2, **{keyword: value})


def test_generate_refusals(snippet):
    tokenizer, model = snippet.tokenizer, snippet.model
    batch = tokenizer(["hi", "hello there"], padding=True, return_tensors="pt")
    with pytest.raises(InvalidRequestError, match="streamer") as caught:
        model.generate(**batch, max_new_tokens=2, streamer=TextStreamer(tokenizer))
    assert caught.value.field == "streamer"
    with pytest.raises(InvalidRequestError, match="padding=True"):
        tokenizer(["hi", "hello there"], return_tensors="pt")


@pytest.mark.parametrize(
    "options, keyword",
    [
        ({"revision": "main"}, "revision"),
        ({"device_map": {"model.embed_tokens": "cpu", "lm_head": "cuda:1"}}, "device_map"),
        ({"device_map": "balanced"}, "device_map"),
        ({"torch_dtype": "auto", "dtype": "float32"}, "dtype"),
        ({"gguf_file": "model.gguf"}, "gguf_file"),
    ],
)
def test_unsupported_load_keyword_is_named(gguf_path, options, keyword):
    with pytest.raises(InvalidRequestError, match=keyword):
        AutoModelForCausalLM.from_pretrained(str(gguf_path), **options)


def test_bad_path_is_one_line_qwq_error(tmp_path):
    for load in (AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained):
        with pytest.raises(ModelLoadError) as caught:
            load(str(tmp_path / "missing" / "model.gguf"))
        assert "missing" in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(ModelLoadError, match="absent.gguf"):
            load(tmp_path, gguf_file="absent.gguf")
    with pytest.raises(InvalidRequestError, match="cache_dir"):
        AutoTokenizer.from_pretrained(str(tmp_path), cache_dir=str(tmp_path))


def test_names_map_as_transformers_spells_them(monkeypatch, gguf_path):
    monkeypatch.setattr("qwq.transformers.sources.resolve", lambda name: name)
    from qwq.transformers.sources import checkpoint_path

    assert checkpoint_path("Qwen/QwQ-32B-Preview") == "hf.co/Qwen/QwQ-32B-Preview"
    assert checkpoint_path("org/Repo-GGUF", gguf_file="m.gguf") == "hf.co/org/Repo-GGUF/m.gguf"
    assert checkpoint_path("hf.co/org/Repo-GGUF", gguf_file="m.gguf") == "hf.co/org/Repo-GGUF/m.gguf"
    assert checkpoint_path("qwen2.5-coder:0.5b") == "qwen2.5-coder:0.5b"
    assert checkpoint_path(gguf_path.parent, gguf_file=gguf_path.name) == gguf_path


def test_gguf_file_beside_directory_and_qwq_load_options(snippet, gguf_path):
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, padding_side="right")
    assert tokenizer.chat_template == snippet.tokenizer.chat_template and tokenizer.padding_side == "right"
    plan = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, device_map="meta", quantization="int4", context_length=4096
    )
    assert plan.qwq_model.quantization == "int4" and plan.qwq_model.context_length == 4096
    assert plan.config.num_hidden_layers == snippet.model.config.num_hidden_layers
