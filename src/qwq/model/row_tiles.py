"""Prompt rows in fixed tiles, so that a token's numbers do not depend on how its prompt was cut into chunks.

A GEMM's (and an attention kernel's) rounding depends on how many rows the call has, so the same prompt token
computed in a 512-row chunk and in a 300-row one differs in the last bits. The prefix cache starts a prompt
mid-way (after its longest cached prefix), so to be exact — outputs identical with the cache on or off — every
prompt chunk is computed ROW_TILE rows at a time, tiles counted from the chunk's start (chunks start at
multiples of ROW_TILE wherever a cached prefix can end), and a tile's attention reads exactly the keys up to
its last row.
"""

from __future__ import annotations

from collections.abc import Iterator

ROW_TILE = 64


def row_tiles(count: int) -> Iterator[tuple[int, int]]:
    """[start, end) of each tile of `count` rows; the last may be shorter."""
    for start in range(0, count, ROW_TILE):
        yield start, min(start + ROW_TILE, count)
