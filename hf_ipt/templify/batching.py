"""Laying synthesized rows out in map batches of whole chains, whatever the batch size (see `templify`).

Example:
    >>> plan_chain_batches(["a", "a", "b"], [1, 0, 0], batch_size=2).indices.tolist()
    [1, 0, 2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hf_ipt import columns as C


@dataclass(frozen=True)
class ChainBatches:
    """Where each input row goes so that every map batch holds whole chains.

    `indices[k]` is the input row placed in slot k, or `padding_row` (one past the last input row) for an empty
    slot; slots come in batches of `batch_size`, and the number of batches is a multiple of `num_shards` so that
    `Dataset.map(num_proc=num_shards)`, which cuts the slots into equal contiguous shards, cuts between batches.
    With one shard the slots end at the last row (the last batch may be short).

    Example:
        >>> plan = plan_chain_batches(["a", "a"], [1, 0], batch_size=4)
        >>> plan.indices.tolist(), plan.padding_row, plan.num_chains
        ([1, 0], 2, 1)
        >>> plan_chain_batches(["a", "a"], [1, 0], batch_size=2, num_shards=2).indices.tolist()  # padded for 2 shards
        [1, 0, 2, 2]
    """

    indices: Any  # numpy int64 array
    batch_size: int
    padding_row: int
    num_chains: int


def plan_chain_batches(chain_ids: Any, positions: Any, batch_size: int, num_shards: int = 1) -> ChainBatches:
    """Lay chains out in batches of whole chains: chains in order of first appearance, each chain's rows in
    position order; a chain that does not fit in what is left of a batch starts the next one.

    Example:
        >>> plan = plan_chain_batches(["b", "a", "b", "a", "c"], [0, 0, 1, 1, 0], batch_size=3)
        >>> plan.indices.tolist(), plan.batch_size
        ([0, 2, 5, 1, 3, 4], 3)
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = chain_ids if isinstance(chain_ids, (pa.Array, pa.ChunkedArray)) else pa.array(chain_ids, type=pa.string())
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise ValueError(f"column {C.CHAIN_ID!r} must hold strings, but its type is {ids.type}")
    if ids.null_count:
        first = int(np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"column {C.CHAIN_ID!r} is null at row {first}; every synthesized row has a chain id")
    pos = positions if isinstance(positions, (pa.Array, pa.ChunkedArray)) else pa.array(positions)
    if not pa.types.is_integer(pos.type):
        raise ValueError(f"column {C.CHAIN_POSITION!r} must hold integers, but its type is {pos.type}")
    if pos.null_count:
        first = int(np.flatnonzero(pc.is_null(pos).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"column {C.CHAIN_POSITION!r} is null at row {first}")
    pos = pos.to_numpy().astype(np.int64) if isinstance(pos, pa.Array) else np.asarray(pos.to_numpy(), np.int64)
    if len(pos) and pos.min() < 0:
        raise ValueError(f"column {C.CHAIN_POSITION!r} holds a negative value at row {int(np.argmin(pos))}")
    num_rows = len(pos)
    unique = pc.unique(ids)  # in order of first appearance
    codes = np.asarray(pc.index_in(ids, value_set=unique).to_numpy(), dtype=np.int64)
    order = np.lexsort((pos, codes))
    sorted_codes, sorted_pos = codes[order], pos[order]
    repeated = np.flatnonzero((sorted_codes[1:] == sorted_codes[:-1]) & (sorted_pos[1:] == sorted_pos[:-1]))
    if len(repeated):
        row = int(order[repeated[0] + 1])
        raise ValueError(
            f"chain {unique[int(sorted_codes[repeated[0]])].as_py()!r} has two rows at {C.CHAIN_POSITION} "
            f"{int(sorted_pos[repeated[0]])} (the second is row {row}); each (chain_id, chain_position) must appear "
            "once (was the synthesized dataset concatenated with itself?)"
        )
    counts = np.bincount(codes, minlength=len(unique)) if num_rows else np.zeros(0, np.int64)
    slots = max(batch_size, int(counts.max()) if len(counts) else 1)
    chain_slot = np.empty(len(counts), dtype=np.int64)
    cursor = 0
    for chain, length in enumerate(counts.tolist()):
        room = slots - cursor % slots
        if length > room:
            cursor += room
        chain_slot[chain] = cursor
        cursor += length
    num_batches = -(-cursor // slots)
    num_batches = -(-num_batches // num_shards) * num_shards
    indices = np.full(num_batches * slots, num_rows, dtype=np.int64)
    chain_first_sorted = np.cumsum(counts) - counts
    within = np.arange(num_rows, dtype=np.int64) - chain_first_sorted[sorted_codes]
    indices[chain_slot[sorted_codes] + within] = order
    if num_shards == 1:
        # the last batch may be short (map takes it as it is): no padding after the last row, so the progress bar
        # counts about the rows there are (321 rows in batches of 1000 are 321 slots, not 1000)
        indices = indices[: int(chain_slot[sorted_codes[-1]] + within[-1]) + 1] if num_rows else indices[:0]
    return ChainBatches(indices=indices, batch_size=slots, padding_row=num_rows, num_chains=len(counts))
