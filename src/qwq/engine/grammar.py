"""Grammar-constrained decoding: a request's answer held to its StructuredOutput, token by token, in the engine's
logits-processor chain (never by retrying until the text parses).

One `GrammarConstraint` per request wraps an llguidance matcher. Its processor masks every token the grammar
forbids at this point (the end tokens only once the grammar is complete); its hook advances the matcher with the
token chosen and ends the reply with `stop` once the grammar can take nothing more. Both first bring the matcher
in line with the sequence, so tokens another hook forced or rolled back are followed: a rollback rolls the
matcher back by as many tokens. A reasoning model reasons in free text: the grammar starts after the reasoning
closes (after `</think>`, or QwQ-Preview's `**Final Answer` heading), and the answer may open with a few tokens
of what the text pipeline strips there (blank lines after a tag, the heading's `**:`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch
from llguidance import LLMatcher, LLTokenizer
from llguidance.numpy import fill_next_token_bitmask

from qwq.engine.reasoning_split import ReasoningFormat
from qwq.engine.sequence import SequenceState
from qwq.engine.structured import SCHEMA_FIELD, StructuredOutput
from qwq.errors import GenerationError, InvalidRequestError
from qwq.tokenizer.tokenizer import Tokenizer
from qwq.tokenizer.vocabulary import vocabulary

LEADING_FILLER = 2  # tokens of filler the answer may open with before the grammar's first token
_CLOSE = {"think": "</think>", "qwq-preview": "**Final Answer"}
_OPEN = "<think>"
_FILLER = {"think": b" \t\r\n", "qwq-preview": b" \t\r\n*:"}  # what the splitter strips off an answer's start

_tokenizers: weakref.WeakKeyDictionary[Tokenizer, dict[tuple[int, tuple[int, ...]], LLTokenizer]] = (
    weakref.WeakKeyDictionary()
)


def grammar_tokenizer(tokenizer: Tokenizer, vocab_size: int, eos_ids: Sequence[int]) -> LLTokenizer:
    """llguidance's view of the vocabulary (its token trie; about a second for Qwen's 151k tokens, so cached per
    tokenizer), sized to the model's logits, which may have more rows than the tokenizer has tokens."""
    key = (vocab_size, tuple(eos_ids))
    cached = _tokenizers.setdefault(tokenizer, {})
    if key not in cached:
        cached[key] = LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_ids))
    return cached[key]


def _filler_mask(tokenizer: Tokenizer, vocab_size: int, style: str) -> np.ndarray:
    allowed = _FILLER.get(style, _FILLER["think"])
    table = vocabulary(tokenizer)
    mask = np.zeros(vocab_size, dtype=np.bool_)
    ids = [
        i for i, piece in enumerate(table.token_bytes) if piece and i not in table.added and piece.strip(allowed) == b""
    ]
    mask[ids] = True
    return mask


class GrammarConstraint:
    """One request's grammar: `processor` and `hook` are what the engine calls."""

    def __init__(
        self,
        structured: StructuredOutput,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_ids: Sequence[int],
        reasoning: ReasoningFormat,
    ) -> None:
        self.matcher = LLMatcher(grammar_tokenizer(tokenizer, vocab_size, eos_ids), structured.grammar, log_level=0)
        if self.matcher.is_error():
            raise InvalidRequestError(
                f"{SCHEMA_FIELD} cannot be enforced: {self.matcher.get_error()}", field=SCHEMA_FIELD
            )
        self._vocab_size = vocab_size
        self._bitmask = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)
        self._eos = sorted(set(eos_ids))
        self._filler = _filler_mask(tokenizer, vocab_size, reasoning.style)
        self._reasons = reasoning.reasons
        self._close = _CLOSE.get(reasoning.style, _CLOSE["think"])
        # a reasoning model whose prompt does not open the reasoning may open it with its first token
        self._open = tokenizer.token_id(_OPEN) if reasoning.reasons and not reasoning.starts_in_reasoning else None
        self._start: int | None = None if reasoning.starts_in_reasoning else 0  # the answer's first output token
        self._searched = 0  # characters of the reasoning searched for its close
        self._fed: list[int] = []  # the answer's tokens brought in: `_skipped` filler, then the matcher's
        self._skipped = 0
        self._rolled_back = 0  # the sequence's rollbacks seen

    # -- what the engine calls
    def processor(self, sequence: SequenceState, logits: torch.Tensor) -> torch.Tensor:
        """The logits of every token the grammar forbids now set to -inf (none while the model reasons)."""
        self._sync(sequence)
        if self._start is None:
            return logits
        fill_next_token_bitmask(self.matcher, self._bitmask)
        # bit j of 32-bit word w is token 32 w + j: the words' little-endian bytes unpacked little-bit-first
        allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[: self._vocab_size].view(np.bool_)
        if self._skipped == len(self._fed) and self._skipped < LEADING_FILLER:
            allowed |= self._filler
        if self._open is not None and sequence.num_output == 0:
            allowed[self._open] = True
        allowed[self._eos] = False
        if self.matcher.is_accepting():
            allowed[list(sequence.params.end_ids)] = True
        if logits.device.type == "cpu":  # numpy: at one row, torch's threaded masked_fill costs more than the work
            return torch.from_numpy(np.where(allowed, logits.numpy(), np.float32(-np.inf)))
        return logits.masked_fill(~torch.from_numpy(allowed).to(logits.device), -torch.inf)

    def hook(self, sequence: SequenceState, token: int) -> None:
        """The chosen token given to the matcher; a complete grammar that can take no more ends the reply."""
        self._sync(sequence)
        if self._start is not None and self._fed and self.matcher.is_stopped():
            sequence.finish("stop")

    # -- keeping the matcher in line with the sequence
    def _sync(self, sequence: SequenceState) -> None:
        if sequence.rolled_back != self._rolled_back:
            self._rolled_back = sequence.rolled_back
            self._after_rollback(sequence)
        self._find_start(sequence)
        if self._start is None:
            return
        new = sequence.token_ids[sequence.prompt_length + self._start + len(self._fed) :]
        if new and new[-1] in sequence.params.end_ids:
            new = new[:-1]  # the end token is not part of the answer's text
        for token in new:
            if self._skipped == len(self._fed) and self._skipped < LEADING_FILLER and self._filler[token]:
                self._skipped += 1
            elif not self.matcher.consume_token(token):
                raise GenerationError(f"the answer left its response format: {self.matcher.get_error()}")
            self._fed.append(token)

    def _after_rollback(self, sequence: SequenceState) -> None:
        """Forget what the rollback took back: the matcher rolled back to the kept tokens, or the answer's start
        forgotten when the reasoning's close was cut."""
        self._searched = min(self._searched, sequence.text_length)
        if self._start is not None and self._start > sequence.num_output:
            self._start = None
        answer = sequence.output_ids[self._start :] if self._start is not None else []
        keep = 0
        while keep < min(len(answer), len(self._fed)) and answer[keep] == self._fed[keep]:
            keep += 1
        if keep < len(self._fed):
            if not self.matcher.rollback(len(self._fed) - max(keep, self._skipped)):
                raise GenerationError(f"the grammar could not be rolled back: {self.matcher.get_error()}")
            del self._fed[keep:]
            self._skipped = min(self._skipped, keep)

    def _find_start(self, sequence: SequenceState) -> None:
        """Where the answer starts: at once for a model that does not reason, else after the reasoning's close."""
        if not self._reasons:
            return
        if self._open is not None:
            if not sequence.num_output or sequence.token_ids[sequence.prompt_length] != self._open:
                self._start = 0  # the reply did not open a reasoning: it is all answer
                return
            if self._start == 0 and not self._fed:
                self._start = None  # it opened one with its first token
        if self._start is not None or not sequence.num_output:
            return
        begin = max(0, self._searched - len(self._close) + 1)
        found = sequence.text_from(begin).find(self._close)
        self._searched = sequence.text_length
        if found >= 0:
            self._start = sequence.token_at(begin + found + len(self._close) - 1) + 1
