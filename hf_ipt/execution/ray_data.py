"""Ray Data: an hf-ipt batched map function under `map_batches`, batches aligned exactly like `Dataset.map`'s.

`ray_map_batches` runs the same map function under Ray Data `map_batches`, one actor per GPU (`num_actors`,
`num_gpus_per_actor`), on pyarrow batches cut exactly like `Dataset.map`'s (the dataset is first cut into blocks of
`batch_size` rows, in order), so the rows, M-shot chains included, equal a plain map's. `ray_map_parquet` reads Parquet
files (local, or any fsspec URL such as `hf://datasets/org/corpus/data`) and writes Parquet files.

Example:
    >>> ray.init(address="auto")  # doctest: +SKIP
    >>> ray_map_parquet("s3://bucket/raw/", "s3://bucket/synthesized/", synth, batch_size=1024,
    ...                 num_actors=16, num_gpus_per_actor=1)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hf_ipt._deps import require
from hf_ipt.execution.base import check_positive, check_resource, refuse_reserved
from hf_ipt.store import Store


class ArrowBatchMapper:
    """Runs an hf-ipt batched map function (dict of lists in and out) on Ray Data's pyarrow batches.

    Input columns the function returns unchanged keep their exact Arrow type; new columns are converted from the
    Python values. Used as the callable class of `map_batches` (one instance per actor).

    Example:
        >>> ray_ds.map_batches(ArrowBatchMapper, fn_constructor_args=(synth,), batch_format="pyarrow",
        ...                    batch_size=1024, concurrency=4, num_gpus=1)  # doctest: +SKIP
    """

    def __init__(self, function: Callable[[dict[str, list]], dict[str, list]]) -> None:
        if not callable(function):
            raise TypeError(f"ArrowBatchMapper needs a batched map function, got {type(function).__name__}")
        self.function = function

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        batch = table.to_pydict()
        result = self.function(batch)
        if not isinstance(result, Mapping):
            raise TypeError(f"the map function must return a dict of columns, got {type(result).__name__}")
        arrays, names = [], []
        for name, values in result.items():
            if name in batch and values is batch[name]:
                arrays.append(table.column(name))  # untouched input column: keep its Arrow type as it is
            else:
                arrays.append(values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values))
            names.append(name)
        lengths = {len(a) for a in arrays}
        if lengths and lengths != {table.num_rows}:
            raise ValueError(
                f"the map function returned columns of {sorted(lengths)} rows for a batch of {table.num_rows}; "
                "it must return one row per input row"
            )
        return pa.table(arrays, names=names)


def ray_map_batches(
    ray_dataset: Any,
    function: Callable[[dict[str, list]], dict[str, list]],
    *,
    batch_size: int,
    num_actors: int,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float | None = None,
    **map_batches_kwargs: Any,
) -> Any:
    """`function` over a Ray Dataset with `num_actors` actors, batches identical to `Dataset.map(batch_size=...)`'s.

    The dataset is first cut, in order, into blocks of exactly `batch_size` rows (the last may be shorter) so that
    each call sees the rows a plain `map` would give it — with `rounds > 1` the batch decides the chains. Row order is
    preserved. Each actor holds one engine: give it `num_gpus_per_actor=1` (Ray sets its CUDA_VISIBLE_DEVICES), or
    `tensor_parallel_size` GPUs for a model that needs several. Further keyword arguments go to `map_batches`.

    Example:
        >>> out = ray_map_batches(ray.data.read_parquet(path), synth, batch_size=1024, num_actors=8,
        ...                       num_gpus_per_actor=1)  # doctest: +SKIP
    """
    check_positive("batch_size", batch_size)
    check_positive("num_actors", num_actors)
    check_resource("num_gpus_per_actor", num_gpus_per_actor)
    if num_cpus_per_actor is not None:
        check_positive("num_cpus_per_actor", num_cpus_per_actor, integer=False)
    refuse_reserved(
        "ray_map_batches",
        {"fn_constructor_args", "batch_format", "concurrency", "num_gpus", "num_cpus"},
        map_batches_kwargs,
        "use its own arguments instead",
    )
    # chains are formed inside a batch, so blocks must reach the actors whole and in order
    ray_dataset.context.execution_options.preserve_order = True
    aligned = ray_dataset.repartition(target_num_rows_per_block=batch_size, strict=True)
    aligned.context.execution_options.preserve_order = True
    resources: dict[str, Any] = {}
    if num_gpus_per_actor:
        resources["num_gpus"] = num_gpus_per_actor
    if num_cpus_per_actor is not None:
        resources["num_cpus"] = num_cpus_per_actor
    return aligned.map_batches(
        ArrowBatchMapper,
        fn_constructor_args=(function,),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=num_actors,
        **resources,
        **map_batches_kwargs,
    )


def _pyarrow_filesystem(location: str | Store) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a local path or any fsspec URL (s3://, gs://, hf://datasets/...)."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    store = location if isinstance(location, Store) else Store(location)
    if store.is_local:
        return None, store.root
    return PyFileSystem(FSSpecHandler(store.fs)), store.root


def ray_map_parquet(
    input_path: str | Store | Sequence[str | Store],
    output_dir: str | Store,
    function: Callable[[dict[str, list]], dict[str, list]],
    *,
    batch_size: int,
    num_actors: int,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float | None = None,
    **map_batches_kwargs: Any,
) -> None:
    """Read Parquet, map with `ray_map_batches`, write Parquet files (in row order by file name) to `output_dir`.

    Locations are local paths, or `hf_ipt.store.Store`s for fsspec URLs with their options (`s3://`, `gs://`,
    `hf://datasets/org/name/...` — Hub writes need a token). The output loads with `datasets.load_dataset("parquet",
    data_files=f"{output_dir}/*.parquet")`.

    Example:
        >>> ray_map_parquet("raw/", "synthesized/", synth, batch_size=1024, num_actors=2,
        ...                 num_gpus_per_actor=1)  # doctest: +SKIP
    """
    ray = require("ray", "running on Ray")
    paths = [input_path] if isinstance(input_path, str | Store) else list(input_path)
    if not paths:
        raise ValueError("input_path must name at least one Parquet file or folder")
    read_fs, first = _pyarrow_filesystem(paths[0])
    resolved = [first] + [_pyarrow_filesystem(p)[1] for p in paths[1:]]
    write_fs, out_path = _pyarrow_filesystem(output_dir)
    context = ray.data.DataContext.get_current()
    previous = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        source = ray.data.read_parquet(resolved if len(resolved) > 1 else resolved[0], filesystem=read_fs)
        mapped = ray_map_batches(
            source,
            function,
            batch_size=batch_size,
            num_actors=num_actors,
            num_gpus_per_actor=num_gpus_per_actor,
            num_cpus_per_actor=num_cpus_per_actor,
            **map_batches_kwargs,
        )
        mapped.write_parquet(out_path, filesystem=write_fs)
    finally:
        context.execution_options.preserve_order = previous


# --------------------------------------------------------------------------------------------------------------------
# Executors of the sharded runner: where its workers run
