"""How the rows of a batch form multi-round ("M-shot") chains, exactly as the method's reference lays them out.

With N rows and M rounds, the rows are cut into M consecutive blocks of B = ceil(N / M) rows; block r is round r. Row i
of round r is chained to row i of round r-1, so chain i is the strided sequence of rows i, i+B, i+2B, … . The last
round may be shorter (or, as for N=1/M=2 or N=4/M=3, empty): chains without a row there simply end a round earlier.
"""

from __future__ import annotations

import math


def chain_layout(num_rows: int, rounds: int) -> list[list[int]]:
    """Row indexes of each chain, in round order.

    Example:
        >>> chain_layout(5, 3)
        [[0, 2, 4], [1, 3]]
        >>> chain_layout(1, 2)
        [[0]]
        >>> chain_layout(0, 3)
        []
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if num_rows <= 0:
        return []
    stride = math.ceil(num_rows / rounds)
    return [list(range(start, num_rows, stride)) for start in range(stride)]


def rounds_of(layout: list[list[int]]) -> list[list[tuple[int, int]]]:
    """The layout regrouped by round: for each round, the (chain index, row index) pairs that run in it.

    Example:
        >>> rounds_of([[0, 2, 4], [1, 3]])
        [[(0, 0), (1, 1)], [(0, 2), (1, 3)], [(0, 4)]]
    """
    depth = max((len(chain) for chain in layout), default=0)
    return [[(c, chain[r]) for c, chain in enumerate(layout) if r < len(chain)] for r in range(depth)]
