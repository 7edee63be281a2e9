"""The export stage: the released rows as the token files OLMo-core, Megatron and LLaMA-Factory train on.

Every file is read back with the framework's own code (megatron-core's `IndexedDataset`; OLMo-core's
`NumpyFSLDatasetConfig`, built from the very lines the export says to paste, in its own folder made by .ci/install)
and must hold exactly `tokenizer(text, add_special_tokens=False)` of every released row, in release order, for a
corpus whose content holds literal `<s>` / `</s>`. LLaMA-Factory cannot be installed next to the locked torch (see
`llamafactory_pretrain`): its entry is checked against its pre-training preprocessing as read from its source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from itertools import chain
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from hf_ipt import ExportConfig, ExportStage, RunConfig, TemplifyStage
from hf_ipt.config import load_recipe
from hf_ipt.execution.phases import WORK_DIR
from hf_ipt.export import TokenCountMismatch, paste_lines
from hf_ipt.pipeline import check
from hf_ipt.stages import MixStage, ReleaseStage
from hf_ipt.stages.export import TokenizeShards
from hf_ipt.store import RunFolder
from hf_ipt.testing import read_with_megatron, read_with_olmo_core
from hf_ipt.validation import ConfigError

# tests/hub_server.py: the local Hub double and its `local_hub` fixture
pytest_plugins = ["hub_server"]
TEST_TOKEN = "hf_localhubSECRETtoken0123456789abcdef"  # the token tests/hub_server.py accepts
REPO = Path(__file__).resolve().parent.parent
ALL_FORMATS = ["olmo_core", "megatron", "llamafactory"]
CONTENT = [
    "An HTML page sold it for <s>$40</s> $30.",  # literal BOS/EOS strings inside the content
    "Question: what does </s> end? Answer: a sequence.\n\nQuestion: and <s>? Answer: it starts one.",
    "naïve café — 東京, tabs\tand  double  spaces",
    "def f(x):\n    return x * 2\n",
    "A longer text that goes on for a while so that the files must be cut into several parts " * 3,
]


def corpus(count: int) -> list[str]:
    """Released texts as the mix writes them: each wrapped in the target BOS/EOS, some with `<s>` in the content."""
    return [f"<s>{CONTENT[i % len(CONTENT)]} (row {i})</s>" for i in range(count)]


def expected_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]


def commit_mix(folder: Path, tokenizer, texts: list[str], rows_per_file: int = 100_000) -> RunConfig:
    """A run folder whose mix stage committed `texts` (with the mix's columns, counted with `tokenizer`), in data
    files of `rows_per_file` rows."""
    rows = Dataset.from_dict(
        {
            "text": texts,
            "num_tokens": [len(ids) for ids in expected_ids(tokenizer, texts)],
            "source": ["augmented" if i % 3 else "general" for i in range(len(texts))],
            "source_index": list(range(len(texts))),
        }
    )
    RunFolder(str(folder)).stage(MixStage.folder).save(rows, config={"upstream": None}, rows_per_file=rows_per_file)
    return RunConfig(output_dir=str(folder))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def export_files(folder: Path) -> dict[str, bytes]:
    """The export's files (its bookkeeping folder aside)."""
    return {name: data for name, data in snapshot(folder / "export").items() if not name.startswith(".hf_ipt")}


def stage(tokenizer_path: str, formats=ALL_FORMATS, **settings) -> ExportStage:
    config = ExportConfig(formats=list(formats), tokens_per_file=settings.pop("tokens_per_file", 300), **settings)
    return ExportStage(config, tokenizer_path, dataset_name="m2")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_path, tiny_tokenizer):
    """60 released rows exported in every format, 7 rows a batch, files cut at 300 tokens."""
    folder = tmp_path_factory.mktemp("export")
    texts = corpus(60)
    run = commit_mix(folder, tiny_tokenizer, texts)
    summary = stage(tiny_model_path, batch_size=7).run(run)
    report = RunFolder(str(folder)).stage("export").report()
    return folder, run, texts, summary, report


def test_megatron_core_reads_exactly_the_tokenizers_ids_of_every_row_in_release_order(exported, tiny_tokenizer):
    folder, _, texts, summary, report = exported
    expected = expected_ids(tiny_tokenizer, texts)
    prefixes = list(chain.from_iterable(report["formats"]["megatron"]["prefixes"].values()))
    assert len(prefixes) > 2  # cut into parts at document boundaries
    assert read_with_megatron([str(folder / "export" / p) for p in prefixes]) == expected
    assert report["formats"]["megatron"]["dtype"] == "uint16"  # megatron-core's choice for a 2,048-id vocabulary
    # a literal `<s>` inside the content is the tokenizer's BOS id, as the mix counted it
    assert expected[0].count(tiny_tokenizer.bos_token_id) == 2
    assert summary.rows == 60 and summary.figures["tokens"] == sum(map(len, expected))
    by_source = report["sources"]
    assert by_source["general"]["rows"] == 20 and by_source["augmented"]["rows"] == 40
    assert by_source["general"]["tokens"] == sum(len(ids) for i, ids in enumerate(expected) if i % 3 == 0)


def test_olmo_core_builds_its_dataset_from_the_pasted_lines_and_reads_every_row(exported, tiny_tokenizer, tmp_path):
    folder, _, texts, _, report = exported
    expected = expected_ids(tiny_tokenizer, texts)
    lines = paste_lines(report, str(folder / "export"))["olmo_core"]
    read = read_with_olmo_core(lines, sequence_length=16, work_dir=str(tmp_path / "olmo-work"))
    assert read["class"] == "NumpyFSLDataset"
    assert read["documents"] == expected  # the metadata files' boundaries: one document per row
    # fixed-length instances: each file's ids back to back, cut every 16 ids (a file's remainder is left out)
    per_file, row = [], 0
    for relative in report["formats"]["olmo_core"]["files"]["train"]:
        size = (folder / "export" / relative).stat().st_size // 2  # uint16
        ids = []
        while len(ids) < size:
            ids += expected[row]
            row += 1
        assert len(ids) == size
        per_file += [ids[i : i + 16] for i in range(0, size - 15, 16)]
    assert read["instances"] == per_file and row == len(texts)
    assert report["formats"]["olmo_core"]["dtype"] == "uint16"


def llamafactory_pretrain(texts: list[str], tokenizer, *, packing: bool, cutoff_len: int, template=None):
    """LLaMA-Factory's pre-training preprocessing (`PretrainDatasetProcessor.preprocess_dataset` in
    `src/llamafactory/data/processor/pretrain.py`, LLaMA-Factory 0.9.5; read with the search tools, the same at its
    main branch), re-typed here: LLaMA-Factory itself cannot be installed next to the locked CPU torch 2.13 (it needs
    torchaudio, whose newest wheel on PyPI, 2.11.1, is built for torch 2.11 and fails to load its library here; and
    transformers <= 5.6.0, datasets <= 4.0.0, gradio, ...). Returns the input_ids it trains on."""
    eos_token = "<|end_of_text|>" if template == "llama3" else tokenizer.eos_token
    text_examples = [text + eos_token for text in texts]
    if not packing:
        if getattr(tokenizer, "add_bos_token", False):
            text_examples = [tokenizer.bos_token + example for example in text_examples]
        return tokenizer(text_examples, add_special_tokens=False, truncation=True, max_length=cutoff_len)["input_ids"]
    tokenized = tokenizer(text_examples, add_special_tokens=False)["input_ids"]
    concatenated = list(chain(*tokenized))
    total = (len(concatenated) // cutoff_len) * cutoff_len
    blocks = [concatenated[i : i + cutoff_len] for i in range(0, total, cutoff_len)]
    if getattr(tokenizer, "add_bos_token", False):
        for block in blocks:
            block[0] = tokenizer.bos_token_id
    return blocks


def llamafactory_texts(export: Path, entry: dict) -> list[str]:
    """The texts LLaMA-Factory loads for a dataset_info.json entry (`file_name` a folder: its files, as its loader
    lists them; sorted here, the order it leaves to the file system)."""
    folder = export / "llamafactory" / entry["file_name"]
    files = sorted(folder.iterdir())
    assert all(path.suffix == ".parquet" for path in files)  # FILEEXT2TYPE: one type per dataset
    return list(
        chain.from_iterable(pq.read_table(path).column(entry["columns"]["prompt"]).to_pylist() for path in files)
    )


@pytest.mark.parametrize("tokenizer_name", ["tiny", "mistral"])
def test_llamafactory_trains_on_the_released_ids_without_a_second_eos(
    tokenizer_name, tiny_model_path, tiny_tokenizer, mistral_tokenizer_dir, tmp_path
):
    path = tiny_model_path if tokenizer_name == "tiny" else mistral_tokenizer_dir
    tokenizer = tiny_tokenizer if tokenizer_name == "tiny" else AutoTokenizer.from_pretrained(path)
    texts = corpus(25)
    stage(path, ["llamafactory"]).run(commit_mix(tmp_path, tokenizer, texts))
    info = json.loads((tmp_path / "export" / "llamafactory" / "dataset_info.json").read_text())
    # the fields LLaMA-Factory's DatasetAttr reads (data/parser.py): a local folder, alpaca formatting, `prompt` only
    assert info == {"m2": {"file_name": "train", "formatting": "alpaca", "columns": {"prompt": "text"}}}
    loaded = llamafactory_texts(tmp_path / "export", info["m2"])
    stream = list(chain.from_iterable(expected_ids(tokenizer, texts)))
    # with packing (its default for stage pt): the released ids back to back, LLaMA-Factory's EOS not doubled
    blocks = llamafactory_pretrain(loaded, tokenizer, packing=True, cutoff_len=32)
    trained = list(chain.from_iterable(blocks))
    assert trained == stream[: len(trained)] or getattr(tokenizer, "add_bos_token", False)
    if getattr(tokenizer, "add_bos_token", False):  # its packing writes BOS over the first id of every block
        assert all(block[0] == tokenizer.bos_token_id for block in blocks)
        assert [b[1:] for b in blocks] == [stream[i + 1 : i + 32] for i in range(0, len(trained), 32)]
    # the released texts given as they are would be trained with a second EOS: what the entry's column avoids
    doubled = llamafactory_pretrain(texts, tokenizer, packing=True, cutoff_len=32)
    assert list(chain.from_iterable(doubled))[: len(trained)] != stream[: len(trained)]
    # without packing, a tokenizer with add_bos_token gets a second BOS: the pasted lines keep packing on
    unpacked = llamafactory_pretrain(loaded, tokenizer, packing=False, cutoff_len=10_000)
    assert (unpacked == expected_ids(tokenizer, texts)) != getattr(tokenizer, "add_bos_token", False)
    lines = paste_lines(RunFolder(str(tmp_path)).stage("export").report(), "R")["llamafactory"]
    assert "packing: true" in lines and "dataset: m2" in lines and "dataset_dir: R/llamafactory" in lines


def test_a_killed_export_is_redone_to_the_same_bytes(exported, tiny_model_path, tiny_tokenizer, tmp_path):
    reference = export_files(exported[0])
    run = commit_mix(tmp_path, tiny_tokenizer, exported[2])
    script = f"""
import os, signal
from hf_ipt import ExportConfig, ExportStage, RunConfig
from hf_ipt.export.megatron import MegatronWriter
write, calls = MegatronWriter.write, []
def killed_in_the_middle(self, batch):
    calls.append(1)
    if len(calls) == 5:  # parts placed already, others half written: the process dies here
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, batch)
MegatronWriter.write = killed_in_the_middle
config = ExportConfig(formats={ALL_FORMATS!r}, tokens_per_file=300, batch_size=7)
ExportStage(config, {tiny_model_path!r}, dataset_name="m2").run(RunConfig(output_dir={str(tmp_path)!r}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    folder = RunFolder(str(tmp_path)).stage("export")
    assert folder.marker() is None  # nothing committed
    leftovers = list((tmp_path / "export" / ".hf_ipt" / "tmp").iterdir())
    assert leftovers  # the killed writer's temporary files
    again = stage(tiny_model_path, batch_size=7).run(run)
    assert not again.reused and export_files(tmp_path) == reference
    assert not list((tmp_path / "export" / ".hf_ipt" / "tmp").iterdir())


def test_two_local_workers_tokenize_the_files_of_a_release_into_the_bytes_of_one(
    exported, tiny_model_path, tiny_tokenizer, tmp_path, monkeypatch
):
    """The tokenization runs per released data file on the run's workers: 60 rows in 5 files, tokenized by two
    forked workers, give the files and the report of the one-file export in one process (batches of 7 rows cross
    the files' boundaries)."""
    reference = export_files(exported[0])
    commit_mix(tmp_path, tiny_tokenizer, exported[2], rows_per_file=13)
    done = tmp_path / "tokenized-by"
    done.mkdir()
    tokenize = TokenizeShards.__call__

    def recorded(self, index, store):  # runs in the worker processes: each leaves its shard and pid behind
        (done / f"{index}-{os.getpid()}").touch()
        return tokenize(self, index, store)

    monkeypatch.setattr(TokenizeShards, "__call__", recorded)
    summary = stage(tiny_model_path, batch_size=7).run(RunConfig(output_dir=str(tmp_path), num_workers=2))
    assert export_files(tmp_path) == reference
    assert RunFolder(str(tmp_path)).stage("export").report() == exported[4] and summary.rows == 60
    shards, workers = zip(*(name.split("-") for name in os.listdir(done)), strict=True)
    assert sorted(map(int, shards)) == [0, 1, 2, 3, 4]
    assert len(set(workers)) == 2 and str(os.getpid()) not in workers


def test_an_interrupted_export_resumes_from_its_committed_shards(
    exported, tiny_model_path, tiny_tokenizer, tmp_path, monkeypatch
):
    reference = export_files(exported[0])
    run = commit_mix(tmp_path, tiny_tokenizer, exported[2], rows_per_file=13)
    tokenize, computed = TokenizeShards.__call__, []

    def killed_on_the_third_shard(self, index, store):
        computed.append(index)
        if computed == [0, 1, 2]:
            raise RuntimeError("killed")
        return tokenize(self, index, store)

    monkeypatch.setattr(TokenizeShards, "__call__", killed_on_the_third_shard)
    with pytest.raises(RuntimeError, match="killed"):
        stage(tiny_model_path, batch_size=7).run(run)
    assert RunFolder(str(tmp_path)).stage("export").marker() is None
    pieces = tmp_path / "export" / WORK_DIR / "tokens"
    assert sorted(p.name for p in pieces.iterdir()) == [
        "ids-00000.bin", "ids-00001.bin", "lengths-00000.npy", "lengths-00001.npy"
    ]  # fmt: skip
    damaged = bytearray((pieces / "ids-00001.bin").read_bytes())
    damaged[0] ^= 0x01
    (pieces / "ids-00001.bin").write_bytes(bytes(damaged))
    again = stage(tiny_model_path, batch_size=7).run(run)
    assert computed == [0, 1, 2, 1, 2, 3, 4]  # shard 0 kept; shard 1, damaged since, made again
    assert not again.reused and export_files(tmp_path) == reference
    assert not (tmp_path / "export" / WORK_DIR).exists()  # the pieces go once the export is committed


@pytest.mark.parametrize(
    ("relative", "damage"),
    [
        ("megatron/train-00001.bin", "flip"),
        ("olmo_core/train-00000.npy", "truncate"),
        ("olmo_core/train-00002.csv.gz", "delete"),
        ("llamafactory/dataset_info.json", "flip"),
    ],
)
def test_a_damaged_export_file_is_found_and_the_export_redone(
    exported, tiny_model_path, tiny_tokenizer, tmp_path, relative, damage
):
    reference = export_files(exported[0])
    run = commit_mix(tmp_path, tiny_tokenizer, exported[2])
    stage(tiny_model_path, batch_size=7).run(run)
    assert stage(tiny_model_path, batch_size=7).run(run).reused
    path = tmp_path / "export" / relative
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-2])
    else:
        path.unlink()
    assert relative in RunFolder(str(tmp_path)).stage("export").damage()
    redone = stage(tiny_model_path, batch_size=7).run(run)
    assert not redone.reused and export_files(tmp_path) == reference


def test_without_a_mix_the_templified_texts_are_exported(tiny_model_path, tiny_tokenizer, tmp_path):
    texts = corpus(9)
    RunFolder(str(tmp_path)).stage(TemplifyStage.folder).save(Dataset.from_dict({"text": texts}), config={})
    config = ExportConfig(formats=["megatron"], batch_size=4)
    summary = ExportStage(config, tiny_model_path, reads=TemplifyStage, count_column=None).run(
        RunConfig(output_dir=str(tmp_path))
    )
    report = RunFolder(str(tmp_path)).stage("export").report()
    assert read_with_megatron([str(tmp_path / "export" / "megatron" / "train-00000")]) == expected_ids(
        tiny_tokenizer, texts
    )
    assert summary.rows == 9 and report["sources"]["augmented"]["rows"] == 9 and not report["counts_checked"]


@pytest.mark.parametrize("rows_per_file", [100_000, 5])  # row 9 in the first file, or in the second shard
def test_a_row_counted_with_another_tokenizer_stops_the_export_with_the_row(
    tiny_model_path, tiny_tokenizer, tmp_path, rows_per_file
):
    texts = corpus(12)
    run = commit_mix(tmp_path, tiny_tokenizer, texts)
    rows = RunFolder(str(tmp_path)).stage(MixStage.folder).load()["train"]
    counts = list(rows["num_tokens"])
    counts[9] += 1  # what another revision of the tokenizer would have counted
    changed = rows.remove_columns("num_tokens").add_column("num_tokens", counts)
    RunFolder(str(tmp_path)).stage(MixStage.folder).save(
        changed, config={"upstream": None}, rows_per_file=rows_per_file
    )
    with pytest.raises(TokenCountMismatch, match=r"row 9 of the release has \d+ tokens .* the mix counted"):
        stage(tiny_model_path, ["olmo_core"], batch_size=5).run(run)
    assert RunFolder(str(tmp_path)).stage("export").marker() is None


def test_the_release_carries_the_export_files_and_the_lines_to_paste(
    exported, tiny_model_path, tiny_tokenizer, tmp_path
):
    from hf_ipt.release.hub import ReleaseConfig

    run = commit_mix(tmp_path, tiny_tokenizer, exported[2])
    export = stage(tiny_model_path, ["olmo_core", "megatron"], batch_size=7)
    export.run(run)
    release = ReleaseConfig(repo_id="local/export-test", version="v0.1", config_name="m2", plots=False)
    plain = ReleaseStage(release, to="local").run(run)
    with_export = ReleaseStage(release, to="local", export=export)
    RunFolder(str(tmp_path)).stage(ReleaseStage.folder).clear()
    with_export.run(run)
    out = tmp_path / "release"
    shipped = {k.removeprefix("release_info/m2/export/"): v for k, v in snapshot(out).items() if "/export/" in k}
    assert shipped == {k: v for k, v in export_files(tmp_path).items() if not k.startswith("llamafactory")}
    card = (out / "README.md").read_text()
    assert "### Training on this release" in card and plain.rows == 60
    assert f"--data-path {out}/release_info/m2/export/megatron/train-00000" in card
    assert f'"{out}/release_info/m2/export/olmo_core/train-00000.npy"' in card
    stats = json.loads((out / "release_info" / "m2" / "stats.json").read_text())
    assert stats["export"]["sources"]["general"]["rows"] == 20
    assert "release_info/m2/export/megatron/train-00000.idx" in stats["files"]["export"]
    # a damaged export is never released: the release stops with the file and the command
    (tmp_path / "export" / "megatron" / "train-00000.bin").write_bytes(b"\0")
    RunFolder(str(tmp_path)).stage(ReleaseStage.folder).clear()
    with pytest.raises(Exception, match="train-00000.bin is damaged.*hf-ipt export"):
        with_export.run(run)


def test_a_hub_release_uploads_the_export_files_with_the_data(
    local_hub, exported, tiny_model_path, tiny_tokenizer, tmp_path
):
    from hf_ipt.release.hub import ReleaseConfig

    run = commit_mix(tmp_path, tiny_tokenizer, exported[2])
    export = stage(tiny_model_path, ["megatron", "llamafactory"], batch_size=7)
    export.run(run)
    repo_id = "hf-ipt-tester/export-release"
    config = ReleaseConfig(repo_id=repo_id, version="v1.0", config_name="m2", plots=False, token=TEST_TOKEN)
    ReleaseStage(config, to="hub", export=export).run(run)
    files = local_hub.list_files(repo_id, revision="v1.0")
    for relative, content in export_files(tmp_path).items():
        assert local_hub.read_file(repo_id, f"release_info/m2/export/{relative}", revision="v1.0") == content
    assert files["release_info/m2/export/megatron/train-00000.bin"].lfs  # token files go through LFS
    card = local_hub.read_file(repo_id, "README.md", revision="v1.0").decode()
    assert f'hf download {repo_id} --repo-type dataset --revision v1.0 --include "release_info/m2/export/*"' in card
    assert "dataset_dir: release_info/m2/export/llamafactory" in card


def test_recipes_without_export_are_unchanged_and_a_bad_format_names_the_key(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert recipe.export.formats == [] and ExportStage.from_recipe(recipe) is None
    with pytest.raises(ConfigError, match=r"export.formats\[1\] .*must be one of .*'olmo_core'.*got 'nanotron'"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["--export.formats", "[megatron, nanotron]"])
    with pytest.raises(ConfigError, match="export.in_release is true but export.formats is empty"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["--export.in_release", "true"])
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", ["--export.formats", "[olmo_core, megatron]"])
    assert ExportStage.from_recipe(recipe).reads is MixStage
    assert ExportStage.from_recipe(recipe).tokenizer == "output/tiny-synthesizer"


def test_preflight_names_a_missing_package_and_a_missing_tokenizer(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "megatron" else find_spec(name))
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", ["--export.formats", "[megatron]"])
    templify = dataclasses.replace(recipe.templify, target_tokenizer=None)
    recipe = dataclasses.replace(recipe, mix=None, mix_sources={}, templify=templify)  # no mix, no target tokenizer
    assert ExportStage.from_recipe(recipe).reads is TemplifyStage
    problems = {p.key: p for p in check(recipe, ["export"])}
    assert "pip install 'hf-ipt[export]'" in problems["export.formats"].fix
    assert "templify.target_tokenizer" in problems


def test_a_copy_whose_bytes_differ_from_the_committed_checksum_is_refused_and_removed(tmp_path):
    from hf_ipt.store import FileCopy, Store, checksum

    origin, target = Store(str(tmp_path / "export")), Store(str(tmp_path / "release"))
    origin.write_atomic("megatron/train-00000.bin", b"ids as committed")
    committed = checksum(b"ids as committed")
    assert target.copy_from(FileCopy(origin, "megatron/train-00000.bin", committed), "a.bin") == committed
    origin.write_atomic("megatron/train-00000.bin", b"ids, changed!!!!")  # same size, other bytes
    with pytest.raises(ValueError, match="is not the file its folder committed"):
        target.copy_from(FileCopy(origin, "megatron/train-00000.bin", committed), "b.bin")
    assert not target.exists("b.bin") and not list((tmp_path / "release" / ".hf_ipt" / "tmp").iterdir())
