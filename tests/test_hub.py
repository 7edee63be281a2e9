"""Versioned Hub releases, dataset cards and the local Hub double (issue 5).

Every test talks HTTP to the local Hub-compatible server of tests/hub_server.py through the real `huggingface_hub`
and `datasets` clients; failures are injected in the server, not mocked in the client.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from hf_ipt.release.bundle import redact
from hf_ipt.release.card import (
    CardOptions,
    ReleaseInfo,
    SourceInfo,
    SynthesizerInfo,
    combine_licenses,
    render_card,
    replace_sections,
    size_category,
)
from hf_ipt.release.hub import (
    ReleaseConfig,
    ReleaseError,
    VersionExistsError,
    list_versions,
    load_release,
    push_release,
    verify_release,
)
from hf_ipt.release.plots import render_plots
from hf_ipt.release.statistics import compute_statistics

# tests/hub_server.py: the local Hub double and its `local_hub` fixture. Imported as a plugin (not at the top of this
# module) so pytest registers it before its first import.
pytest_plugins = ["hub_server"]
TEST_TOKEN = "hf_localhubSECRETtoken0123456789abcdef"  # the token tests/hub_server.py accepts

REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = {"retry_base_delay": 0.01, "retry_max_delay": 0.05}
WORDS = "the model reads a text and writes questions about its facts numbers dates and names".split()


def new_repo(name: str) -> str:
    # one server serves the whole session: every test gets its own repo
    return f"hf-ipt-tester/{name}-{uuid.uuid4().hex[:8]}"


def synthesized_rows(n: int, seed: int, tag: str) -> Dataset:
    """Rows shaped like the output of synthesis + templify + mixing, with varied pairs, drops and sources."""
    rng = random.Random(seed)
    rows: dict[str, list] = {k: [] for k in ("text", "source", "pairs", "synth_status", "parse_drops", "mode")}
    for i in range(n):
        source = "openorca" if rng.random() < 0.4 else "raw-web"
        n_pairs = 0 if source == "openorca" else rng.randint(0, 4)
        text = f"{tag} row {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
        rows["text"].append(text)
        rows["source"].append(source)
        rows["pairs"].append([{"instruction": f"q{j}?", "response": f"a{j}"} for j in range(n_pairs)])
        rows["synth_status"].append("ok" if n_pairs else "no_pairs")
        rows["parse_drops"].append(
            {"unterminated": rng.randint(0, 1), "malformed": rng.randint(0, 2), "empty_answer": 0, "duplicate": 0}
        )
        rows["mode"].append(rng.choice(["classic", "classic", "dialog", "numbered"]))
    return Dataset.from_dict(rows)


def word_tokenizer():
    """A real fast tokenizer whose tokens are the whitespace-separated words (so counts are checkable by hand)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(WORDS)))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def figures(dataset: Dataset) -> dict:
    """The card's figures recomputed here, independently of hf_ipt.stats."""
    texts, pairs, drops = dataset["text"], dataset["pairs"], dataset["parse_drops"]
    kept = sum(len(p) for p in pairs)
    dropped = sum(sum(d.values()) for d in drops)
    tokens_by_source = Counter()
    for text, source in zip(texts, dataset["source"], strict=True):
        tokens_by_source[source] += len(text.split())
    return {
        "rows": len(texts),
        "characters": sum(len(t) for t in texts),
        "words": sum(len(t.split()) for t in texts),
        "pairs": kept,
        "per_text": {str(k): v for k, v in sorted(Counter(len(p) for p in pairs).items())},
        "drop_rate": dropped / (kept + dropped),
        "modes": dict(Counter(dataset["mode"])),
        "tokens_by_source": dict(tokens_by_source),
    }


def assert_token_nowhere(hub, repo_id: str, *texts: str) -> None:
    for commit, path, body in hub.all_file_bodies(repo_id):
        assert TEST_TOKEN.encode() not in body, f"the token is in {path} at {commit}"
    for text in texts:
        assert TEST_TOKEN not in text


def continual_info(tokenizer=None) -> ReleaseInfo:
    return ReleaseInfo(
        synthesizer=SynthesizerInfo(
            revision="a1b2c3d",
            engine="vllm",
            rounds=3,
            max_model_len=4096,
            sampling={"temperature": 0.0, "max_new_tokens": 400},
        ),
        sources=[
            SourceInfo("raw-web", license="odc-by", revision="9f8e7d6", fingerprint="5d41402abc4b2a76"),
            SourceInfo("openorca", kind="general_instructions", license="mit", revision="c0ffee1"),
        ],
        mixing_report={"requested_ratio": {"raw-web": 1, "openorca": 1}},
        recipe={"synthesizer": {"rounds": 3}, "hub": {"hub_token": TEST_TOKEN}, "tokenizer": "word-level"},
        command=f"hf-ipt release recipe.yaml --hub-token {TEST_TOKEN}",
        tokenizer=tokenizer,
    )


# ------------------------------------------------------------------------------------------------ releases
def test_two_config_release_then_second_version(local_hub, caplog, capfd):
    from hub_server import validate_card_metadata

    assert local_hub.token == TEST_TOKEN
    caplog.set_level(logging.DEBUG)
    repo = new_repo("ipt-corpus")
    m3_v1 = synthesized_rows(36, seed=1, tag="v1")
    m2_v1 = DatasetDict(
        train=synthesized_rows(24, seed=2, tag="m2"), validation=synthesized_rows(8, seed=3, tag="m2v")
    )
    info = {
        "continual-m3": continual_info(word_tokenizer()),
        "from-scratch-m2": ReleaseInfo(
            synthesizer=SynthesizerInfo(rounds=2, max_model_len=4096),
            sources=[SourceInfo("raw-web", license="odc-by")],
        ),
    }
    first = push_release({"continual-m3": m3_v1, "from-scratch-m2": m2_v1}, repo, version="v1.0", info=info, **FAST)
    m3_v2 = synthesized_rows(50, seed=4, tag="v2")
    options = CardOptions(pretty_name="IPT corpus", extra_sections={"Citation": "Cite us, please.", "Contact": "Ask."})
    second = push_release(
        m3_v2, repo, version="v1.1", config_name="continual-m3", info=info["continual-m3"], card=options, **FAST
    )

    # versions are tags; main moved on to the second one
    assert list_versions(repo) == {"v1.0": first.commit, "v1.1": second.commit}
    assert HfApi().dataset_info(repo).sha == second.commit
    verify_release(m3_v1, repo, "v1.0", "continual-m3")
    verify_release(m2_v1, repo, "v1.0", "from-scratch-m2")
    verify_release(m3_v2, repo, "v1.1", "continual-m3")
    verify_release(m2_v1, repo, "v1.1", "from-scratch-m2")
    assert load_dataset(repo, "continual-m3", revision="v1.0", split="train")["text"] == m3_v1["text"]
    assert load_dataset(repo, "continual-m3", split="train")["text"] == m3_v2["text"]

    expected = {
        "v1.0": {"continual-m3": (m3_v1, "v1.0"), "from-scratch-m2": (m2_v1, "v1.0")},
        "v1.1": {"continual-m3": (m3_v2, "v1.1"), "from-scratch-m2": (m2_v1, "v1.0")},
    }
    for version, configs in expected.items():
        readme = local_hub.read_file(repo, "README.md", version).decode()
        errors, _ = validate_card_metadata(readme)
        assert errors == []
        DatasetCard(readme).validate()  # the Hub's validate-yaml, through the client
        metadata = DatasetCard(readme).data.to_dict()
        assert {c["config_name"] for c in metadata["configs"]} == {"continual-m3", "from-scratch-m2"}
        assert metadata["license"] == ["odc-by", "mit"]
        assert metadata["size_categories"] == ["n<1K"]
        assert metadata["source_datasets"] == ["raw-web", "openorca"]
        for config, (data, produced_by) in configs.items():
            splits = data if isinstance(data, DatasetDict) else {"train": data}
            rows = sum(d.num_rows for d in splits.values())
            split_text = ", ".join(f"{s} ({d.num_rows})" for s, d in splits.items())
            assert f"| `{config}` | {split_text} | {rows} | {produced_by} |" in readme
            assert f'load_dataset("{repo}", "{config}", revision="{version}")' in readme
            report = json.loads(local_hub.read_file(repo, f"release_info/{config}/stats.json", version))
            assert report["release_version"] == produced_by
            stats = report["statistics"]
            assert {s: v["rows"] for s, v in stats["splits"].items()} == {s: d.num_rows for s, d in splits.items()}
            merged = [figures(d) for d in splits.values()]
            pairs = sum(f["pairs"] for f in merged)
            assert stats["pairs"]["total"] == pairs
            assert f"Pairs: {pairs:,} over {rows:,} texts" in readme
            assert stats["text"]["characters"]["total"] == sum(f["characters"] for f in merged)
            for path in report["files"]["plots"].values():
                assert local_hub.read_file(repo, path, version).startswith(PNG_MAGIC)
                assert f"]({path})" in readme
            assert set(report["files"]["plots"]) == {"pairs_per_text", "text_length", "template_modes", "source_mix"}

    # the tokenizer counted tokens of the continual config; shares and drops match the rows
    v2 = figures(m3_v2)
    stats = json.loads(local_hub.read_file(repo, "release_info/continual-m3/stats.json", "v1.1"))["statistics"]
    assert stats["text"]["tokens"]["total"] == v2["words"]
    assert {s: e["tokens"] for s, e in stats["sources"]["per_source"].items()} == v2["tokens_by_source"]
    assert stats["pairs"]["per_text"] == v2["per_text"]
    assert stats["synthesis"]["total_drop_rate"] == pytest.approx(v2["drop_rate"])
    assert stats["template_modes"]["counts"] == v2["modes"]
    readme_v11 = local_hub.read_file(repo, "README.md", "v1.1").decode()
    share = stats["sources"]["achieved_ratio"]["openorca"]
    assert f"| `openorca` | 50.00% | {100 * share:.2f}% |" in readme_v11
    # extra sections replaced the citation and added a contact section; the title came from the options
    assert "Cite us, please." in readme_v11 and "@inproceedings" not in readme_v11
    assert "## Contact\n\nAsk." in readme_v11 and "# IPT corpus" in readme_v11
    assert "@inproceedings{cheng2024instruction" in local_hub.read_file(repo, "README.md", "v1.0").decode()

    recipe = local_hub.read_file(repo, "release_info/continual-m3/recipe.yaml", "v1.1").decode()
    assert "hub_token: <redacted>" in recipe and "tokenizer: word-level" in recipe
    assert "--hub-token <redacted>" in readme_v11
    assert_token_nowhere(local_hub, repo, caplog.text, *capfd.readouterr())


def test_existing_version_is_refused_unless_forced(local_hub):
    repo = new_repo("refuse")
    first, second = synthesized_rows(12, seed=5, tag="a"), synthesized_rows(15, seed=6, tag="b")
    released = push_release(first, repo, version="v1.0", plots=False, **FAST)

    local_hub.reset_log()
    with pytest.raises(VersionExistsError, match=r"version v1\.0 of .* already exists"):
        push_release(second, repo, version="v1.0", plots=False, **FAST)
    written = [
        r for r in local_hub.requests if r.endpoint in ("commit", "preupload", "lfs_batch", "lfs_upload", "tag")
    ]
    assert written == []  # refused before anything was uploaded
    verify_release(first, repo, "v1.0")

    # a forced release whose new tag cannot be created puts the old tag back: the version never disappears
    local_hub.inject_failure("tag", status=403, method="POST")
    with pytest.raises(ReleaseError, match="tag .* as v1.0"):
        push_release(second, repo, version="v1.0", force=True, plots=False, **FAST)
    assert list_versions(repo) == {"v1.0": released.commit}
    verify_release(first, repo, "v1.0")

    moved = push_release(second, repo, version="v1.0", force=True, plots=False, **FAST)
    assert moved.commit != released.commit
    assert list_versions(repo) == {"v1.0": moved.commit}
    verify_release(second, repo, "v1.0")

    # the same forced release again: nothing changes, nothing is uploaded or committed
    local_hub.reset_log()
    again = push_release(second, repo, version="v1.0", force=True, plots=False, **FAST)
    assert again.commit == moved.commit
    assert local_hub.calls("commit") == [] and local_hub.lfs_uploads == []


def test_failed_push_leaves_no_tag_and_rerun_completes(local_hub, caplog):
    caplog.set_level(logging.DEBUG)
    repo = new_repo("resume")
    data = {
        "continual-m3": synthesized_rows(20, seed=7, tag="c"),
        "from-scratch-m2": synthesized_rows(10, seed=8, tag="s"),
    }
    # the first config's data commit goes through, then every commit fails
    local_hub.inject_failure("commit", status=500, skip=1, times=100)
    with pytest.raises(ReleaseError) as failure:
        push_release(data, repo, version="v1.0", max_retries=2, **FAST)
    message = str(failure.value)
    assert "push the data of config 'from-scratch-m2'" in message and "after 3 attempts" in message
    assert "data of config 'continual-m3' committed" in message and "tag was not created" in message
    first_data_commit = local_hub.repo(repo).branches["main"]
    assert failure.value.completed == [f"data of config 'continual-m3' committed ({first_data_commit})"]
    assert list_versions(repo) == {}

    # second try: the card commit is interrupted (connection dropped) every time
    local_hub.clear_failures()
    local_hub.inject_failure("commit", disconnect="before", skip=1, times=100)
    with pytest.raises(ReleaseError, match="commit the dataset card") as interrupted:
        push_release(data, repo, version="v1.0", max_retries=1, **FAST)
    assert [c.split(" (")[0] for c in interrupted.value.completed] == [f"data of config {c!r} committed" for c in data]
    assert list_versions(repo) == {}

    local_hub.clear_failures()
    local_hub.reset_log()
    result = push_release(data, repo, version="v1.0", **FAST)
    assert list_versions(repo) == {"v1.0": result.commit}
    # only the card commit was missing: no data commit, and no file uploaded twice
    assert len(local_hub.calls("commit", status=200)) == 1
    assert local_hub.lfs_uploads == []
    titles = [c.title for c in local_hub.repo(repo).commits.values()]
    assert titles.count("hf-ipt v1.0: data of config continual-m3") == 1
    assert titles.count("hf-ipt v1.0: data of config from-scratch-m2") == 1
    files = local_hub.list_files(repo, "v1.0")
    assert sorted(p for p in files if p.endswith(".parquet")) == [
        "continual-m3/train-00000-of-00001.parquet",
        "from-scratch-m2/train-00000-of-00001.parquet",
    ]
    for config, dataset in data.items():
        verify_release(dataset, repo, "v1.0", config)
    assert_token_nowhere(local_hub, repo, caplog.text, message, str(interrupted.value))


def test_transient_errors_are_retried(local_hub):
    repo = new_repo("flaky")
    data = {"a": synthesized_rows(10, seed=9, tag="a"), "b": synthesized_rows(10, seed=10, tag="b")}
    local_hub.inject_failure("create_repo", status=503)
    local_hub.inject_failure("commit", disconnect="after")  # first data commit: applied, but the answer is lost
    local_hub.inject_failure("commit", status=412, skip=2)  # the card commit meets a conflict
    local_hub.inject_failure("commit", status=500, skip=3)  # and then a server error
    local_hub.inject_failure("tag", status=429, retry_after=0, method="POST")
    result = push_release(data, repo, version="v1.0", plots=False, **FAST)

    injected = [(r.endpoint, r.status) for r in local_hub.requests if r.injected]
    assert injected == [("create_repo", 503), ("commit", -1), ("commit", 412), ("commit", 500), ("tag", 429)]
    assert list_versions(repo) == {"v1.0": result.commit}
    titles = [c.title for c in local_hub.repo(repo).commits.values()]
    assert titles.count("hf-ipt v1.0: data of config a") == 1  # the lost answer did not cause a second commit
    for config, dataset in data.items():
        verify_release(dataset, repo, "v1.0", config)


def test_private_flag_is_honoured(local_hub):
    repo = new_repo("private")
    data = synthesized_rows(8, seed=11, tag="p")
    push_release(data, repo, version="v1.0", private=True, plots=False, **FAST)
    assert HfApi().dataset_info(repo).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info(repo)

    local_hub.reset_log()
    with pytest.raises(
        ReleaseError, match="refused, nothing was uploaded: .* asks for a public repo but .* is private"
    ):
        push_release(data, repo, version="v1.1", private=False, plots=False, **FAST)
    assert local_hub.calls("commit") == [] and local_hub.calls("preupload") == []
    verify_release(data, repo, "v1.0")


def test_release_on_a_branch_leaves_main_alone(local_hub):
    repo = new_repo("branch")
    data = {"m3": synthesized_rows(9, seed=13, tag="m3"), "m2": synthesized_rows(7, seed=14, tag="m2")}
    result = push_release(data, repo, version="v0.1", revision="candidate", default_config="m2", plots=False, **FAST)
    assert local_hub.repo(repo).branches["candidate"] == result.commit
    assert sorted(local_hub.list_files(repo, "main")) == [".gitattributes"]  # card and sidecars went with the data
    assert {"README.md", "release_info/m3/stats.json", "release_info/m2/stats.json"} <= set(
        local_hub.list_files(repo, "v0.1")
    )
    readme = local_hub.read_file(repo, "README.md", "v0.1").decode()
    assert "| `m2` (default) |" in readme
    verify_release(data["m2"], repo, "v0.1")  # the default config loads without a name
    verify_release(data["m3"], repo, "v0.1", "m3")


def test_bad_inputs_fail_before_any_upload(local_hub, monkeypatch):
    data = synthesized_rows(6, seed=12, tag="x")
    with pytest.raises(ValueError, match=r"did you mean 'v1\.0'"):
        ReleaseConfig(repo_id="me/x", version="1.0")
    with pytest.raises(ValueError, match="namespace/name"):
        ReleaseConfig(repo_id="just-a-name", version="v1.0")
    with pytest.raises(ValueError, match="'data'"):
        ReleaseConfig(repo_id="me/x", version="v1.0", config_name="data")
    with pytest.raises(ValueError, match="rounds"):
        SynthesizerInfo(rounds=0)
    with pytest.raises(ValueError, match="kind"):
        SourceInfo("x", kind="raw_corpus")  # one spelling per kind: the mix's (`raw`, `general_instructions`)
    assert "token" not in repr(ReleaseConfig(repo_id="me/x", version="v1.0", token=TEST_TOKEN))

    local_hub.reset_log()
    repo = new_repo("bad")
    with pytest.raises(TypeError, match="materialize"):
        push_release(IterableDataset.from_generator(lambda: iter([{"text": "a"}])), repo, version="v1.0")
    with pytest.raises(ValueError, match="no rows"):
        push_release(data.select([]), repo, version="v1.0")
    with pytest.raises(ValueError, match="no text column 'content'"):
        push_release(data, repo, version="v1.0", info=ReleaseInfo(text_column="content"))
    with pytest.raises(ValueError, match="keys .* are the config names"):
        push_release({"a": data}, repo, version="v1.0", config_name="b")
    with pytest.raises(FileNotFoundError, match="recipe"):
        push_release(data, repo, version="v1.0", recipe="/nonexistent/recipe.yaml")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="no Hub token"):
        push_release(data, repo, version="v1.0")
    assert local_hub.requests == []


def test_load_release_checks_the_version(local_hub):
    with pytest.raises(ValueError, match="tag like 'v1.0'"):
        load_release("me/x", "main")


# ------------------------------------------------------------------------------------------------ cards
def test_card_pieces():
    assert combine_licenses([SourceInfo("a", license="odc-by"), SourceInfo("b", license="odc-by")]) == ["odc-by"]
    assert combine_licenses([SourceInfo("a", license="mit"), SourceInfo("b")]) == ["mit", "unknown"]
    assert [size_category(n) for n in (0, 999, 1000, 10**6, 10**12)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "1M<n<10M",
        "n>1T",
    ]
    text = "# T\n\n## A\n\n```\n## not a heading\n```\n\n## B\n\nkeep\n"
    assert replace_sections(text, {"## B": "new"}) == "# T\n\n## A\n\n```\n## not a heading\n```\n\n## B\n\nnew\n"
    assert redact({"api_key": "k", "max_new_tokens": 400, "nested": [{"password": "p"}]}) == {
        "api_key": "<redacted>",
        "max_new_tokens": 400,
        "nested": [{"password": "<redacted>"}],
    }


def test_user_template_overrides_the_default():
    card = render_card(
        {},
        repo_id="me/x",
        version="v2.0",
        options=CardOptions(template="---\n{{ card_data }}\n---\n# Mine {{ version }}\n"),
    )
    assert str(card).endswith("# Mine v2.0") or "# Mine v2.0" in str(card)
    assert card.data.to_dict()["pretty_name"] == "x"
    with pytest.raises(FileNotFoundError, match="not a file"):
        render_card({}, repo_id="me/x", version="v2.0", options=CardOptions(template="no/such/template.md"))


def test_statistics_from_reports_when_columns_are_gone(tmp_path):
    # a mixed dataset: text, the mix's token counts and sources; pairs and modes only in the step reports
    mixed = Dataset.from_dict(
        {"text": ["one two", "three", "four five six"], "num_tokens": [2, 1, 3], "source": ["aug", "orca", "aug"]}
    )
    info = ReleaseInfo(
        templify_stats={  # shaped like hf_ipt.stats.templify_stats
            "modes": {"classic": 2},
            "families": {"qa": 2},
            "pairs_per_text": {
                "count": 2,
                "total": 5,
                "mean": 2.5,
                "histogram": {"edges": [0, 1, 2, 4], "counts": [0, 1, 1]},
            },
        },
        mixing_report={  # shaped like hf_ipt.mixing.MixReport.to_dict()
            "requested_ratio": {"aug": 1.0, "orca": 1.0},
            "achieved_ratio": {"aug": 1.0, "orca": 0.2},
            "sources": {
                "aug": {"rows_selected": 2, "tokens_selected": 5},
                "orca": {"rows_selected": 1, "tokens_selected": 1},
            },
        },
        synthesis_stats={
            "status_counts": {"ok": 1, "no_pairs": 1},
            "parse_drops": {"malformed": 1},
            "pairs": 2,
            "special_strings": 1,
        },
    )
    stats = compute_statistics({"train": mixed}, info)
    tokens = stats["text"]["tokens"]
    # the counts come from the mix's column; no tokenizer was named, so the card names none (never the column)
    assert tokens["total"] == 6 and tokens["tokenizer"] is None and tokens["counted_by"] == "column 'num_tokens'"
    assert stats["sources"]["per_source"] == {
        "aug": {"rows": 2, "characters": 20, "tokens": 5},
        "orca": {"rows": 1, "characters": 5, "tokens": 1},
    }
    assert stats["sources"]["achieved_ratio"] == {"aug": 5 / 6, "orca": 1 / 6}
    assert stats["sources"]["requested_ratio"] == {"aug": 0.5, "orca": 0.5}
    assert stats["sources"]["reported"] == {"aug": {"rows": 2, "tokens": 5}, "orca": {"rows": 1, "tokens": 1}}
    assert stats["pairs"]["origin"] == "templify report" and stats["pairs"]["total"] == 5
    assert stats["synthesis"]["total_drop_rate"] == pytest.approx(1 / 3)
    assert stats["template_modes"] == {"origin": "templify report", "counts": {"classic": 2}, "families": {"qa": 2}}
    card = str(
        render_card({"mix": {"statistics": stats, "provenance": {}, "files": {}}}, repo_id="me/x", version="v1.0")
    )
    assert "Pairs (as reported by the templify report): 5 over 2 texts, 2.50 per text" in card
    assert "| `aug` | 50.00% | 83.33% |" in card
    assert "given to the\nsynthesizer as text rather than as control tokens: 1." in card
    first = render_plots(stats, tmp_path / "a")
    second = render_plots(stats, tmp_path / "b")
    assert sorted(first) == ["pairs_per_text", "source_mix", "template_modes", "text_length"]
    assert all(first[k].read_bytes() == second[k].read_bytes() for k in first)  # re-runs upload nothing new


# ------------------------------------------------------------------------------------------------ the double
def test_local_hub_speaks_the_protocol(local_hub, monkeypatch):
    import hub_server
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import get_session

    api = HfApi()
    repo = new_repo("protocol")
    api.create_repo(repo, repo_type="dataset")
    assert api.create_repo(repo, repo_type="dataset", exist_ok=True).repo_id == repo
    monkeypatch.setattr(hub_server, "TREE_PAGE_SIZE", 2)
    operations = [CommitOperationAdd(f"folder/f{i}.txt", f"file {i}".encode()) for i in range(5)]
    operations.append(CommitOperationAdd("data.parquet", b"PAR1" + bytes(range(256)) + b"PAR1"))
    first = api.create_commit(repo, operations, commit_message="files", repo_type="dataset")
    stored = local_hub.list_files(repo)
    assert stored["data.parquet"].lfs and not stored["folder/f0.txt"].lfs  # LFS by .gitattributes, like the Hub

    local_hub.reset_log()
    listed = [e.path for e in api.list_repo_tree(repo, recursive=True, repo_type="dataset")]
    assert sorted(listed) == sorted(
        [".gitattributes", "data.parquet", "folder", *[f"folder/f{i}.txt" for i in range(5)]]
    )
    assert len(local_hub.calls("tree")) == 4  # 8 entries, 2 per page, followed through the Link header

    info = {e.path: e for e in api.get_paths_info(repo, ["folder", "data.parquet", "nope"], repo_type="dataset")}
    assert sorted(info) == ["data.parquet", "folder"] and info["data.parquet"].lfs.size == 264

    url = f"{local_hub.url}/datasets/{repo}/resolve/main/folder/f3.txt"
    response = get_session().get(url, headers={"Range": "bytes=2-4", "Authorization": f"Bearer {TEST_TOKEN}"})
    assert (
        response.status_code == 206
        and response.content == b"le "
        and response.headers["Content-Range"] == "bytes 2-4/6"
    )
    assert response.headers["X-Repo-Commit"] == first.oid

    api.create_commit(repo, [CommitOperationAdd("x.txt", b"x")], commit_message="move main", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(
            repo,
            [CommitOperationAdd("y.txt", b"y")],
            commit_message="stale",
            repo_type="dataset",
            parent_commit=first.oid,
        )
    assert stale.value.response.status_code == 412
    api.create_tag(repo, tag="v0.1", revision=first.oid, repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as duplicate:
        api.create_tag(repo, tag="v0.1", repo_type="dataset")
    assert duplicate.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as on_tag:
        api.create_commit(
            repo, [CommitOperationAdd("z.txt", b"z")], commit_message="on a tag", revision="v0.1", repo_type="dataset"
        )
    assert on_tag.value.response.status_code == 400
    proposal = api.create_commit(
        repo, [CommitOperationAdd("pr.txt", b"pr")], commit_message="proposal", repo_type="dataset", create_pr=True
    )
    assert proposal.pr_url.endswith("/discussions/1")
    assert api.file_exists(repo, "pr.txt", revision="refs/pr/1", repo_type="dataset")
    assert not api.file_exists(repo, "pr.txt", repo_type="dataset")
    monkeypatch.setattr(hub_server, "MAX_FILES_PER_FOLDER", 6)  # the Hub's limit is 10k; "folder" holds 5 files
    with pytest.raises(HfHubHTTPError, match="fewer than 6 files"):
        api.create_commit(
            repo, [CommitOperationAdd("folder/f5.txt", b"5")], commit_message="one too many", repo_type="dataset"
        )
    with pytest.raises(ValueError, match="not a license identifier"):
        DatasetCard("---\nlicense: my-own-license\n---\n# x\n").validate()
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as wrong_token:
        HfApi(token="hf_wrong").dataset_info(repo)
    assert wrong_token.value.response.status_code == 401


# ------------------------------------------------------------------------------------------------ packaging
def test_wheel_ships_the_card_templates(tmp_path):
    # .ci/install puts uv into the test environment itself, which need not be on PATH
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed: it builds the wheel (pip install uv)")
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("hf_ipt-*.whl")
    templates = sorted(p.name for p in (REPO_ROOT / "dataset_cards").glob("*.md"))
    assert templates
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    for name in templates:
        assert f"hf_ipt/dataset_cards/{name}" in names
    # installed from the wheel (no source checkout around), hf-ipt still finds its default template
    found = subprocess.run(
        [sys.executable, "-c", "from hf_ipt.release.card import template_path; print(template_path())"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip() == str(tmp_path / "site" / "hf_ipt" / "dataset_cards" / "hf_ipt_dataset_card.md")


# ------------------------------------------------------------------------------------------------ issue 12
def test_a_push_to_a_hub_that_stops_answering_ends_in_bounded_time_then_completes(local_hub):
    """The Hub freezes after the data commit (the card commit would hang forever without timeouts): the push stops
    within its retry budget with an error that says what was uploaded, that no tag was made and how to resume."""
    import time

    repo = new_repo("frozen")
    data = synthesized_rows(12, seed=21, tag="f")
    local_hub.freeze_after_commits(1)
    started = time.monotonic()
    with pytest.raises(ReleaseError) as failure:
        push_release(data, repo, version="v1.0", plots=False, timeout=0.5, retry_budget=2, max_retries=1000, **FAST)
    elapsed = time.monotonic() - started
    message = str(failure.value)
    assert local_hub.frozen and any(r.status == -2 for r in local_hub.requests)  # requests did hang there
    assert "no usable answer for 2s (release.retry_budget)" in message and "release.timeout" in message
    assert "data of config 'default' committed" in message and "tag was not created" in message
    assert "Re-running the same release completes it" in message
    # bounded: the budget, plus one request timeout, plus at most one of huggingface_hub's own back-off sleeps (8 s)
    assert elapsed < 2 + 0.5 + 8 + 20, elapsed
    local_hub.unfreeze()
    assert list_versions(repo) == {}
    result = push_release(data, repo, version="v1.0", plots=False, timeout=5, retry_budget=30, **FAST)
    assert list_versions(repo) == {"v1.0": result.commit}
    verify_release(data, repo, "v1.0", "default")


def test_a_license_the_hub_does_not_know_is_declared_as_other_and_the_push_lands(local_hub):
    """The quickstart's `psf-2.0` is not a Hub license id: the card says `other` + `license_name` + `license_link`
    (the Hub double refuses unknown ids as the Hub does), and `source_datasets` gets no local path."""
    import hub_server

    repo = new_repo("license")
    info = ReleaseInfo(
        sources=[
            SourceInfo("bundled:quickstart", license="psf-2.0", mix_names=["augmented"]),
            SourceInfo("/data/corpus.jsonl", license="mit", mix_names=["raw"]),
            SourceInfo("Open-Orca/OpenOrca", kind="general_instructions", license="mit", mix_names=["general"]),
        ]
    )
    data = synthesized_rows(10, seed=22, tag="l")
    result = push_release(data, repo, version="v1.0", info=info, plots=False, **FAST)
    assert list_versions(repo) == {"v1.0": result.commit}
    card_text = local_hub.read_file(repo, "README.md", "v1.0").decode()
    assert hub_server.validate_card_metadata(card_text) == ([], [])
    metadata = DatasetCard(card_text).data.to_dict()
    assert metadata["license"] == ["mit", "other"] and metadata["license_name"] == "psf-2.0"
    assert metadata["license_link"] == "README.md#licenses"
    assert metadata["source_datasets"] == ["Open-Orca/OpenOrca"]
    assert "`psf-2.0` is not a license id the Hub knows" in card_text
    # the double refuses what the Hub refuses, with the one list hf-ipt keeps
    errors, _ = hub_server.validate_card_metadata("---\nlicense: psf-2.0\n---\n# x\n")
    assert errors == ["\"license\" 'psf-2.0' is not a license identifier known to the Hub"]
    # an explicit card.license_link is used
    options = CardOptions(license="psf-2.0", license_link="https://docs.python.org/3/license.html")
    card = render_card({"m": None}, repo_id="me/x", version="v1.0", options=options)
    assert card.data.to_dict()["license_link"] == "https://docs.python.org/3/license.html"
    # metadata the Hub would refuse is refused when the recipe is read, naming the key
    with pytest.raises(ValueError, match=r"card\.language .* got \['English'\]"):
        CardOptions(language=["English"])


def mixed_release_rows() -> Dataset:
    """Rows as the mix writes them: the source column holds mix names, token counts in `num_tokens`."""
    return Dataset.from_dict(
        {
            "text": ["one two three", "four five", "six", "seven eight nine ten"],
            "source": ["augmented", "augmented", "general", "general"],
            "num_tokens": [3, 2, 1, 4],
            "mode": ["classic", "dialog", None, None],
        }
    )


def test_card_sources_are_counted_by_mix_name_and_the_tokenizer_is_named():
    info = ReleaseInfo(
        sources=[
            SourceInfo("bundled:quickstart", license="psf-2.0", mix_names=["augmented"]),
            SourceInfo("Open-Orca/OpenOrca", kind="general_instructions", license="mit", mix_names=["general"]),
        ],
        mixing_report={"requested_ratio": {"augmented": 1, "general": 1}},
        templify_stats={"families": {"qa": 3, "options": 1}},
        tokenizer="my-org/my-tokenizer",
    )
    stats = compute_statistics({"train": mixed_release_rows()}, info)
    report = {"statistics": stats, "provenance": {"sources": [redact(vars(s)) for s in info.sources]}, "files": {}}
    card = str(render_card({"m": report}, repo_id="me/x", version="v1.0"))
    sources = card.split("### Sources")[1].split("###")[0]
    assert "not described" not in card and "license unknown" not in card
    assert "| `bundled:quickstart` as `augmented` | raw | — | — | psf-2.0 | 2 | 5 |" in sources
    assert "| `Open-Orca/OpenOrca` as `general` | general_instructions | — | — | mit | 2 | 5 |" in sources
    assert "Tokens (tokenizer `my-org/my-tokenizer`, counted by column 'num_tokens')" in card
    assert "tokenizer `column" not in card
    # modes and families in separate tables
    modes = card.split("### Template modes")[1].split("###")[0]
    mode_table, family_table = modes.split("| Family | Count |")
    assert "family" not in mode_table.lower() and "| `classic` | 1 |" in mode_table
    assert "| `qa` | 3 |" in family_table and "| `options` | 1 |" in family_table


def test_source_mix_plot_shows_requested_and_achieved(tmp_path):
    base = {"sources": {"ratio_unit": "tokens", "achieved_ratio": {"a": 0.8, "b": 0.2}}}
    as_asked = render_plots({"sources": {**base["sources"], "requested_ratio": {"a": 0.8, "b": 0.2}}}, tmp_path / "x")
    off = render_plots({"sources": {**base["sources"], "requested_ratio": {"a": 0.5, "b": 0.5}}}, tmp_path / "y")
    # the same achieved shares drawn against another request give another picture
    assert as_asked["source_mix"].read_bytes() != off["source_mix"].read_bytes()
    again = render_plots({"sources": {**base["sources"], "requested_ratio": {"a": 0.5, "b": 0.5}}}, tmp_path / "z")
    assert again["source_mix"].read_bytes() == off["source_mix"].read_bytes()


def test_content_fingerprint_ignores_file_times_and_chunking(tmp_path):
    from datasets import concatenate_datasets

    from hf_ipt.stats import content_fingerprint
    from hf_ipt.store import ParquetRows, Store

    rows = synthesized_rows(30, seed=23, tag="c")
    rows.to_parquet(tmp_path / "a.parquet")
    first = Dataset.from_parquet(str(tmp_path / "a.parquet"), cache_dir=str(tmp_path / "c1"))
    os.utime(tmp_path / "a.parquet", (1, 1))  # same bytes, another mtime
    second = Dataset.from_parquet(str(tmp_path / "a.parquet"), cache_dir=str(tmp_path / "c2"))
    assert first._fingerprint != second._fingerprint  # what stats.json recorded before
    chunked = concatenate_datasets([rows.select(range(11)).flatten_indices(), rows.select(range(11, 30))])
    assert content_fingerprint(first) == content_fingerprint(second) == content_fingerprint(chunked)
    assert content_fingerprint(rows.select(range(29))) != content_fingerprint(rows)
    # the same rows read batch by batch from Parquet files (a local release reads its rows so) have the same digest
    store = Store(str(tmp_path))
    for name, part in (("b.parquet", rows.select(range(7))), ("c.parquet", rows.select(range(7, 30)))):
        part.to_parquet(tmp_path / name)
    assert content_fingerprint(ParquetRows(store, ["b.parquet", "c.parquet"], 30)) == content_fingerprint(rows)


def test_two_uninterrupted_runs_give_byte_identical_release_folders(tmp_path, tiny_model_path, monkeypatch):
    """A small quickstart-like pipeline run twice, into the same (relative) folder as a user re-running it: card,
    stats.json, recipe, plots and data are byte-identical; and the card's loading snippet works as printed."""
    import re

    import yaml

    from hf_ipt.cli import main

    recipe = {
        "source": {"path": "bundled:quickstart", "max_rows": 12, "license": "psf-2.0"},
        "chunk": {"enabled": False},
        "synth": {
            "model": tiny_model_path,
            "engine": "transformers",
            "rounds": 2,
            "max_model_len": 512,
            "max_new_tokens": 32,
            "batch_size": 6,
            "engine_kwargs": {"batch_size": 6, "dtype": "float32"},
        },
        "templify": {"seed": 0, "target_tokenizer": tiny_model_path},
        "mix": {"weights": {"augmented": 1, "general": 1}, "tokenizer": tiny_model_path, "tolerance": 0.3},
        "mix_sources": {"general": {"path": "bundled:quickstart_general", "kind": "general_instructions"}},
        "release": {"repo_id": "local/repro", "version": "v0.1", "config_name": "continual-m2"},
        "release_to": "local",
        "run": {"output_dir": "output/repro", "shard_size": 6},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    releases = []
    for attempt in range(2):
        assert main(["run", "r.yaml", "-q"]) == 0
        kept = tmp_path / f"run{attempt}"
        shutil.move("output/repro", kept)
        releases.append(kept / "release")

    def files(root: Path) -> dict[str, bytes]:
        # .hf_ipt/ holds the run's own bookkeeping (when each stage finished), not the release
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".hf_ipt" not in p.parts
        }

    first, second = (files(r) for r in releases)
    assert first.keys() == second.keys()
    kinds = {Path(name).suffix for name in first}
    assert {".md", ".json", ".yaml", ".png", ".parquet"} <= kinds, kinds
    different = [name for name in first if first[name] != second[name]]
    assert different == []

    # the card's snippet, run as printed from the folder the release was made in
    Path("output/repro").mkdir(parents=True)
    shutil.move(releases[1], "output/repro/release")
    card = Path("output/repro/release/README.md").read_text()
    calls = re.findall(r"^(\w+) = (load_dataset\(.*\))$", card, re.MULTILINE)
    assert calls == [("continual_m2", 'load_dataset("output/repro/release", "continual-m2")')]
    loaded = eval(calls[0][1], {"load_dataset": load_dataset})  # noqa: S307 - the card's own line, as a user runs it
    stats = json.loads(Path("output/repro/release/release_info/continual-m2/stats.json").read_text())
    assert loaded["train"].num_rows == stats["statistics"]["rows"] > 0
