"""The one stop check: after each token (and the token hooks), whether the sequence ends and why.

`abort` and `error` are set by the engine where they happen (a cancelled request, a failure); the reasoning
controls set `loop`, `budget` and `content_filter` through `SequenceState.finish`.
"""

from __future__ import annotations

from qwq.engine.sequence import SequenceState


def check_stop(sequence: SequenceState) -> str | None:
    """The finish reason this sequence has reached, or None while it goes on."""
    if sequence.finished:
        return sequence.finish_reason
    if sequence.num_output and sequence.token_ids[-1] in sequence.params.end_ids:
        return "stop"  # the end-of-turn token
    if sequence.stopped_by_string:
        return "stop"
    if sequence.num_output >= sequence.params.max_tokens:
        return "length"
    return None
