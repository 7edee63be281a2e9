"""One product: the quickstart composed in Python with public names (recipes/quickstart.py) releases what
`hf-ipt run recipes/quickstart.yaml` releases, byte for byte; and that release is the one hf-ipt made before the stages
were rebuilt on one contract (its digest, recorded at commit fab9a88)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_ipt
from hf_ipt.cli import main

REPO = Path(__file__).resolve().parent.parent
DATA = "data/train-00000-of-00001.parquet"
STATS = "release_info/continual-m3/stats.json"
# recorded before the renovation (fab9a88), from a fresh clone: the tiny model's weights, and the quickstart's released
# rows. The rows depend on the float arithmetic that trained the model: compared where the same model was built.
RECORDED_MODEL = "1feed578e5b7ed2c37c9ea16b18dd50dd7d31a5c5d9cb989a06a4abb7a6f7967"
RECORDED_DATA = "f18ef7cad3fd625fbc3577c0d3b6468d732317e106af58d6fad8523553e880fe"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def releases(tmp_path_factory, tiny_model_path) -> tuple[Path, Path]:
    """The quickstart run twice in one folder: by the CLI (into cli/) and by recipes/quickstart.py (into py/), both
    with the tiny model the tests built (the recipes build it at output/tiny-synthesizer: a link to it is reused)."""
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / "output").mkdir()
    (folder / "output" / "tiny-synthesizer").symlink_to(tiny_model_path)
    here = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["run", str(REPO / "recipes" / "quickstart.yaml"), "-q", "--run.output_dir", "cli"]) == 0
    finally:
        os.chdir(here)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "recipes" / "quickstart.py"), "py"], cwd=folder, env=env, check=True)
    return folder / "cli" / "release", folder / "py" / "release"


def test_the_python_quickstart_releases_the_bytes_of_the_cli(releases):
    cli, python = releases
    files = sorted(p.relative_to(cli / "data") for p in (cli / "data").glob("*.parquet"))
    assert files and files == sorted(p.relative_to(python / "data") for p in (python / "data").glob("*.parquet"))
    for name in files:
        assert sha256(cli / "data" / name) == sha256(python / "data" / name), name
    by_cli, by_python = (json.loads((release / STATS).read_text()) for release in releases)
    recipe = REPO / "recipes" / "quickstart.yaml"
    assert by_cli.pop("command") == f"hf-ipt run {recipe} -q --run.output_dir cli"
    assert by_python.pop("command") == "python recipes/quickstart.py py"
    assert by_cli == by_python  # the provenance, every stage's report and the figures of the rows


def test_the_quickstart_releases_the_rows_recorded_before_the_stages_were_rebuilt(releases, tiny_model_path):
    if sha256(Path(tiny_model_path) / "model.safetensors") != RECORDED_MODEL:
        pytest.skip("this machine's float arithmetic trained another tiny model: other rows, another digest")
    assert sha256(releases[0] / DATA) == RECORDED_DATA


def test_a_local_release_from_python_carries_the_card_of_the_cli(releases, tmp_path):
    """`save_release` (the public local twin of `push_release`) with `release_info` of the CLI's run folder writes
    the release `hf-ipt run` wrote: the same rows and the same stats.json but for the command."""
    import datasets

    from hf_ipt import CardOptions, release_info, save_release

    cli, _ = releases
    run_folder = cli.parent
    mixed = datasets.load_dataset("parquet", data_files=str(run_folder / "mixed" / "data" / "*.parquet"))["train"]
    card = CardOptions(pretty_name="hf-ipt quickstart")
    result = save_release(
        mixed, tmp_path / "own", repo_id="local/hf-ipt-quickstart", version="v0.1", config_name="continual-m3",
        info=release_info(hf_ipt.RunFolder(str(run_folder))), card=card,
    )  # fmt: skip
    assert result.rows == mixed.num_rows and "README.md" in result.files
    assert sha256(tmp_path / "own" / DATA) == sha256(cli / DATA)
    own, by_cli = (json.loads((folder / STATS).read_text()) for folder in (tmp_path / "own", cli))
    own.pop("command"), by_cli.pop("command")
    assert own == by_cli
    text = (tmp_path / "own" / "README.md").read_text()
    assert "bundled:quickstart" in text and "(not described)" not in text and "not recorded" not in text


def test_the_quickstart_card_reads_for_a_hub_visitor(releases):
    """The card, read as a Hub visitor reads it: one word per thing (chunks, texts, rows) with the counts stats.json
    holds, the rows the mix left out, every column described with one example row, plain warnings for the tiny
    synthesizer's figures, no git-tag wording for a local release, no link to a repository that does not exist, and
    few small plots with no empty bins."""
    import re
    import struct

    import datasets

    release = releases[0]
    card = (release / "README.md").read_text()
    stats = json.loads((release / STATS).read_text())
    provenance = stats["provenance"]
    chunks, texts = provenance["synthesis_stats"]["rows"], provenance["templify_stats"]["texts"]
    rows = stats["statistics"]["rows"]
    assert f"**chunks** ({chunks:,})" in card and f"**texts** ({texts:,})" in card and f"**rows** ({rows:,})" in card
    assert f"{stats['quality']['pairs']:,} synthesized pairs of {chunks:,} chunks" in card  # the quality section
    assert f"over {rows:,} rows;" in card and f"over {rows:,} texts" not in card  # text lengths count rows
    assert "Pairs per text" not in card.split("### Quality")[1]  # per chunk there; per text in the pairs section
    # the rows the mix left out
    augmented = provenance["mixing_report"]["sources"]["augmented"]
    left = augmented["rows_total"] - augmented["rows_selected"]
    tokens = augmented["tokens_available"] - augmented["tokens_selected"]
    assert left > 0
    assert f"{left} texts ({tokens:,} tokens) left out to keep the requested ratio" in card
    # the structure: every column of the data, described, and one example row that is a row of the data
    data = datasets.load_dataset("parquet", data_files=str(release / DATA), split="train")
    structure = card.split("## Dataset structure")[1].split("\n## ")[0]
    for column in data.column_names:
        assert re.search(rf"^\| `{column}` \| `\w+` \| \S.{{20,}} \|$", structure, re.M), column
    index = int(re.search(r"row (\d+);", structure).group(1))
    assert '| `source` | `"augmented"` |' in structure and data[index]["source"] == "augmented"
    assert f"| `num_tokens` | `{data[index]['num_tokens']}` |" in structure
    shown = structure.split("```text\n")[1].split("\n```")[0]
    assert "\n\n" in shown and data[index]["text"].startswith(shown.rstrip("…"))  # a text with its pairs
    # warnings next to the figures that signal a broken synthesizer (the tiny model's pairs are nonsense)
    assert card.count("> **Warning:**") >= 2 and "the synthesizer is not answering from it" in card
    # honest wording for a local release, no invented link
    assert "git tag" not in card and "github.com" not in card and "written to a local folder" in card
    # few, small plots, each shown in the card
    plots = sorted((release / "release_info" / "continual-m3" / "plots").glob("*.png"))
    assert len(plots) <= 6
    for plot in plots:
        width, height = struct.unpack(">II", plot.read_bytes()[16:24])
        assert width <= 500 and height <= 260, plot.name
        assert f"plots/{plot.name})" in card
    # stats.json says what the card says
    assert stats["statistics"]["example"]["index"] == index
    assert [c["name"] for c in stats["statistics"]["columns"]] == data.column_names


def test_the_quickstart_with_export_formats_writes_the_released_ids_for_olmo_core_and_megatron(
    releases, tiny_tokenizer, tmp_path
):
    """`hf-ipt run recipes/quickstart.yaml --export.formats '[olmo_core, megatron]'` on the finished run: the stages
    before are reused, the release's data bytes stay what they were, and both formats hold exactly the tokenizer's ids
    of every released row, in release order, read back by megatron-core and OLMo-core themselves."""
    import pyarrow.parquet as pq

    from hf_ipt.export import paste_lines
    from hf_ipt.testing import read_with_megatron, read_with_olmo_core

    cli = releases[0]
    before = sha256(cli / DATA)
    here = os.getcwd()
    os.chdir(cli.parent.parent)
    try:
        recipe = str(REPO / "recipes" / "quickstart.yaml")
        args = ["run", recipe, "-q", "--run.output_dir", "cli", "--export.formats", "[olmo_core, megatron]"]
        assert main(args) == 0
    finally:
        os.chdir(here)
    assert sha256(cli / DATA) == before
    texts = pq.read_table(cli / DATA).column("text").to_pylist()
    expected = [list(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    export = cli.parent / "export"
    report = hf_ipt.RunFolder(str(cli.parent)).stage("export").report()
    assert report["tokens"] == sum(map(len, expected)) and report["rows"] == len(texts)
    assert read_with_megatron([str(export / "megatron" / "train-00000")]) == expected
    lines = paste_lines(report, str(export))["olmo_core"]
    assert read_with_olmo_core(lines, sequence_length=512, work_dir=str(tmp_path))["documents"] == expected
