"""transformers' loading, tokenizing, generation and streaming calls over qwq's own API, so code written for
transformers (the QwQ model card's snippet) runs on qwq with one import changed. transformers is never imported.
"""

from qwq.transformers.model import AutoModelForCausalLM, CompatModel
from qwq.transformers.streamers import TextIteratorStreamer, TextStreamer
from qwq.transformers.tokenizer import AutoTokenizer, BatchEncoding, CompatTokenizer

__all__ = [
    "AutoModelForCausalLM",
    "AutoTokenizer",
    "BatchEncoding",
    "CompatModel",
    "CompatTokenizer",
    "TextIteratorStreamer",
    "TextStreamer",
]
