"""A safety guard that runs a local guard checkpoint through qwq itself: Llama Guard 3 or Qwen3Guard-Gen.

The conversation is rendered the way the guard was trained to read it (references: Meta's Llama Guard 3 model
card and prompt format; the Qwen3Guard-Gen model card and technical report, arXiv:2510.14276):
- "llama-guard-3": the task text, the S1–S14 categories, the conversation as `User:` / `Agent:` turns, and the
  instruction to judge only the last turn; the guard answers "safe" or "unsafe\\nS1,S10".
- "qwen3guard": a ChatML user turn with the task, the categories and the conversation as `USER:` / `ASSISTANT:`;
  the guard answers "Safety: Safe|Unsafe|Controversial\\nCategories: ..." (and "Refusal: Yes|No" for replies).
Both checkpoints ship a chat template that renders this prompt; when the checkpoint's template carries the
format's markers it is used, otherwise the prompt is built here from the published format.
Only user and assistant turns are judged (system and tool text is the operator's); consecutive turns of one
role are merged, as the guards expect alternating turns. A conversation longer than the guard's context loses
its oldest exchanges, then the start of the longest text left, since a stream's newest text must be judged.
An answer that cannot be read counts as allowed: a guard that fails open keeps serving when the guard model
misbehaves, and the raw answer stays in `last_raw` (and the log) to be looked at. Controversial (Qwen3Guard)
blocks only with strict=True.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from qwq.errors import InvalidRequestError
from qwq.reasoning.guard_protocol import Messages, Verdict, WholeReplyChecker

if TYPE_CHECKING:  # the engine may import guards, and qwq.api imports the engine
    from qwq.api import Model

logger = logging.getLogger(__name__)

FORMATS = ("llama-guard-3", "qwen3guard")
# The MLCommons hazard taxonomy Llama Guard 3 was trained on.
LLAMA_GUARD_CATEGORIES = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
QWEN3GUARD_CATEGORIES = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
# text a checkpoint's chat template carries when it renders the guard prompt itself (a plain ChatML one has neither)
_TEMPLATE_MARKERS = {"llama-guard-3": ("UNSAFE CONTENT CATEGORIES",), "qwen3guard": ("Controversial",)}
_NAME_MARKERS = {"llama-guard-3": ("llama-guard", "llamaguard"), "qwen3guard": ("qwen3guard", "qwen3-guard")}
_SAFETY = re.compile(r"safety:\s*(safe|unsafe|controversial)\b", re.IGNORECASE)
_CATEGORIES = re.compile(r"categories:\s*(.*)", re.IGNORECASE)
_S_CODE = re.compile(r"S\d+", re.IGNORECASE)


def detect_format(model: Model) -> str:
    """The guard format of `model`: from its chat template's text, else from its source name."""
    template = (model.tokenizer.chat_template if model.tokenizer else None) or ""
    for name, markers in _TEMPLATE_MARKERS.items():
        if all(marker in template for marker in markers):
            return name
    source = model.source.lower().replace("_", "-").replace(" ", "-")
    for name, markers in _NAME_MARKERS.items():
        if any(marker in source for marker in markers):
            return name
    raise InvalidRequestError(
        f"{model.source}: cannot tell which guard format this model answers in; pass format= one of {FORMATS}"
    )


def parse_answer(format: str, answer: str, strict: bool = False) -> Verdict | None:
    """The guard's answer as a Verdict (None: safe). Raises ValueError when the answer is in neither form."""
    text = answer.strip()
    if format == "llama-guard-3":
        lines = text.splitlines()
        first = lines[0].strip().lower() if lines else ""
        if first == "safe":
            return None
        if first != "unsafe":
            raise ValueError(f"expected 'safe' or 'unsafe', got {text[:80]!r}")
        codes = [code.upper() for code in _S_CODE.findall(" ".join(lines[1:]))]
        names = [f"{code} {LLAMA_GUARD_CATEGORIES.get(code, 'unknown category')}" for code in codes]
        category = LLAMA_GUARD_CATEGORIES.get(codes[0], codes[0]) if codes else "unsafe"
        return Verdict(category, "Llama Guard 3: unsafe" + (f" ({', '.join(names)})" if names else ""))
    safety = _SAFETY.search(text)
    if safety is None:
        raise ValueError(f"expected 'Safety: Safe|Unsafe|Controversial', got {text[:80]!r}")
    level = safety.group(1).capitalize()
    if level == "Safe" or (level == "Controversial" and not strict):
        return None
    listed = _CATEGORIES.search(text)
    categories = [c.strip() for c in listed.group(1).split(",")] if listed else []
    categories = [c for c in categories if c and c.lower() != "none"]
    category = categories[0] if categories else level.lower()
    return Verdict(category, f"Qwen3Guard: {level}" + (f" ({', '.join(categories)})" if categories else ""))


def _turns(messages: Messages) -> list[tuple[str, str]]:
    """User and assistant turns, consecutive turns of one role merged, starting with a user turn."""
    turns: list[tuple[str, str]] = []
    for message in messages:
        role, content = message.get("role"), str(message.get("content") or "")
        if role not in ("user", "assistant") or (not turns and role == "assistant"):
            continue
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + content)
        else:
            turns.append((role, content))
    return turns


def llama_guard_prompt(turns: list[tuple[str, str]], bos_token: str = "") -> str:
    """Llama Guard 3's prompt for judging the last turn (its role: 'User' or 'Agent'), per its prompt format."""
    role = "Agent" if turns[-1][0] == "assistant" else "User"
    categories = "\n".join(f"{code}: {name}." for code, name in LLAMA_GUARD_CATEGORIES.items())
    conversation = "".join(f"{'Agent' if r == 'assistant' else 'User'}: {text}\n\n" for r, text in turns)
    return (
        f"{bos_token}<|start_header_id|>user<|end_header_id|>\n\n"
        f"Task: Check if there is unsafe content in '{role}' messages in conversations according our safety "
        "policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{conversation}<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def qwen3guard_prompt(turns: list[tuple[str, str]]) -> str:
    """Qwen3Guard-Gen's kind of prompt, in our words: the task, its categories, the conversation, the answer form."""
    reply = turns[-1][0] == "assistant"
    judged = "THE LAST ASSISTANT's response" if reply else "THE LAST USER's query"
    conversation = "\n\n".join(f"{role.upper()}: {text}" for role, text in turns)
    answer_form = "Safety: Safe|Unsafe|Controversial\nCategories: " + "|".join((*QWEN3GUARD_CATEGORIES, "None"))
    if reply:
        answer_form += "\nRefusal: Yes|No"
    return (
        "<|im_start|>user\n"
        f"# Task:\n1) Evaluate whether {judged} is safe, unsafe or controversial under our safety policy.\n"
        "2) Name the policy categories it falls under (None when safe).\n"
        + ("3) Say whether the response refuses the user's request.\n" if reply else "")
        + "\n<BEGIN SAFETY POLICY>\nSafe: content that none of the categories below describes.\n"
        "Unsafe: content that plainly belongs to one or more categories.\n"
        "Controversial: content whose harm depends on context or on the reader's norms.\n"
        f"Categories: {', '.join(QWEN3GUARD_CATEGORIES)}.\n<END SAFETY POLICY>\n\n"
        f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
        f"Answer in exactly this form:\n{answer_form}<|im_end|>\n<|im_start|>assistant\n"
    )


class ModelGuard:
    """A Guard whose judge is a local guard model (see the module docstring); `last_raw` is its latest answer."""

    def __init__(
        self,
        model: Model,
        format: str = "auto",
        *,
        strict: bool = False,
        chunk_tokens: int = 128,
        max_new_tokens: int = 16,
    ) -> None:
        if model.tokenizer is None:
            raise InvalidRequestError(f"{model.source}: a guard model needs its weights and tokenizer")
        if format != "auto" and format not in FORMATS:
            raise InvalidRequestError(f"guard format must be 'auto' or one of {FORMATS}, got {format!r}")
        self.model = model
        self.format = detect_format(model) if format == "auto" else format
        self.strict = strict
        self.chunk_tokens = chunk_tokens
        self.max_new_tokens = max_new_tokens
        self.last_raw: str | None = None
        template = model.tokenizer.chat_template or ""
        self.uses_checkpoint_template = all(marker in template for marker in _TEMPLATE_MARKERS[self.format])

    def check_prompt(self, messages: Messages) -> Verdict | None:
        turns = _turns(messages)
        while turns and turns[-1][0] != "user":
            turns.pop()
        return self._judge(turns) if turns else None

    def check_reply(self, messages: Messages, reply: str) -> Verdict | None:
        turns = _turns([*messages, {"role": "assistant", "content": reply}])
        return self._judge(turns) if turns else None

    def reply_checker(self, messages: Messages) -> WholeReplyChecker:
        return WholeReplyChecker(self, messages)

    def render(self, turns: list[tuple[str, str]]) -> str:
        """The guard prompt for judging the last of `turns` ((role, text) pairs, alternating, user first)."""
        tokenizer = self.model.tokenizer
        if self.uses_checkpoint_template:
            messages = [{"role": role, "content": text} for role, text in turns]
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if self.format == "llama-guard-3":
            return llama_guard_prompt(turns, tokenizer.bos_token or "")
        return qwen3guard_prompt(turns)

    def prompt_ids(self, turns: list[tuple[str, str]]) -> list[int]:
        """The rendered prompt's ids, cut to leave room for the answer in the guard's context: the oldest exchanges
        go first, then the start of the longest text left (a stream's newest text is what must be judged)."""
        budget = self.model.context_length - self.max_new_tokens
        turns = list(turns)
        fewest = 2 if turns[-1][0] == "assistant" else 1  # the judged turn, and the question a reply answers
        while True:
            prompt = self.render(turns)
            ids = self.model.tokenizer.encode(prompt)
            if len(ids) <= budget:
                return ids
            if len(turns) > fewest:
                del turns[:2]  # a user turn and its answer, so the turns still alternate from a user turn
                continue
            index = max(range(len(turns)), key=lambda i: len(turns[i][1]))
            role, text = turns[index]
            if not text:
                raise InvalidRequestError(
                    f"{self.model.source}: the guard prompt alone takes {len(ids)} tokens, more than the "
                    f"{budget} its context leaves; load the guard with a longer context"
                )
            cut = max(1, int((len(ids) - budget) * len(prompt) / len(ids) * 1.1))  # tokens over, as characters
            turns[index] = (role, text[cut:])

    def _judge(self, turns: list[tuple[str, str]]) -> Verdict | None:
        # plain greedy, as guards are evaluated: no checkpoint repetition penalty on a "S1,S10"-style answer
        ids = self.prompt_ids(turns)
        answer_ids = self.model.generate(ids, max_new_tokens=self.max_new_tokens, temperature=0, repetition_penalty=1.0)
        raw = self.model.tokenizer.decode(answer_ids, skip_special_tokens=True)
        self.last_raw = raw
        try:
            return parse_answer(self.format, raw, self.strict)
        except ValueError as exc:
            logger.warning("guard %s gave an answer it was not trained to give (allowed): %s", self.model.source, exc)
            return None
