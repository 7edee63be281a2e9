"""Recipes: YAML + dotted overrides into validated config dataclasses, with helpful errors before anything loads."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hf_ipt.config import (
    ConfigError,
    RecipeConfig,
    RunConfig,
    SourceConfig,
    apply_overrides,
    closest_key,
    coerce_text,
    config_from_dict,
    describe_fields,
    dotted_keys,
    load_recipe,
    parse_overrides,
)
from hf_ipt.store import config_to_dict, fingerprint

RECIPES = Path(__file__).parent.parent / "recipes"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
source: {path: "bundled:quickstart"}
run: {output_dir: out, shard_size: 8}
synth:
  rounds: 3
  batch_size: 4
  max_new_tokens: 64
  engine_kwargs: {dtype: float32}
"""


def test_defaults_then_yaml_then_command_line(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), ["--synth.rounds", "2", "--run.shard_size=12"])
    assert recipe.synth.rounds == 2  # command line beats YAML
    assert recipe.run.shard_size == 12
    assert recipe.synth.max_new_tokens == 64  # YAML beats the default
    assert recipe.synth.max_model_len == 4096  # default kept
    assert recipe.synth.engine_kwargs == {"dtype": "float32"}
    nested = load_recipe(write(tmp_path, BASE), ["--synth.engine_kwargs.gpu_memory_utilization", "0.5"])
    assert nested.synth.engine_kwargs == {"dtype": "float32", "gpu_memory_utilization": 0.5}
    # the whole recipe can come from the command line
    bare = load_recipe(None, ["--source.path", "bundled:quickstart", "--run.output_dir", "o", "--run.overwrite"])
    assert bare.run.overwrite is True and bare.synth.rounds == 1


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("synth: {roundz: 3}", r"unknown key 'synth.roundz' \(in .*recipe.yaml\); did you mean 'synth.rounds'\?"),
        ("synt: {rounds: 3}", r"unknown key 'synt' .*did you mean 'synth'\?"),
        ("rounds: 3", r"unknown key 'rounds' .*did you mean 'synth.rounds'\?"),
        ("run: {outptu_dir: x}", r"unknown key 'run.outptu_dir' .*did you mean 'run.output_dir'\?"),
        ("mix_sources: {general: {pth: x}}", r"unknown key 'mix_sources.general.pth' .*did you mean .*path'\?"),
    ],
)
def test_unknown_keys_name_the_key_and_the_closest_valid_one(tmp_path, yaml_text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_recipe(write(tmp_path, without_section(BASE, yaml_text.split(":")[0]) + yaml_text), [])


def without_section(text: str, section: str) -> str:
    """A recipe text without one top-level section (a recipe may give each section once)."""
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if not line.startswith(" "):
            skipping = line.startswith(f"{section}:")
        if not skipping:
            kept.append(line)
    return "".join(kept)


def test_unknown_override_keys_are_errors_too(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'synth.max_new_token' \(command-line override\); did you "
        r"mean 'synth.max_new_tokens'\?.*Valid keys in section 'synth'",
    ):
        load_recipe(write(tmp_path, BASE), ["--synth.max_new_token", "3"])
    with pytest.raises(ConfigError, match="is a section; set one of its keys, e.g. --synth.model"):
        load_recipe(write(tmp_path, BASE), ["--synth", "3"])
    with pytest.raises(ConfigError, match="overrides look like --section.key VALUE"):
        parse_overrides(["synth.rounds", "3"], RecipeConfig)
    assert closest_key("zzz", ["synth.rounds"]) is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            ["--synth.rounds", "0"],
            r"synth.rounds \(in .*recipe.yaml \+ command-line overrides\) must be an integer >= 1, got 0",
        ),
        (["--synth.rounds", "three"], r"--synth.rounds must be an integer, got 'three'"),
        (
            ["--synth.engine", "vlm"],
            r"synth.engine \(in .*\) must be one of \['vllm', 'transformers', 'server'\], got 'vlm'; did you mean "
            r"'vllm'\? A custom engine is passed to Synthesizer\(engine=...\)",
        ),
        (["--synth.max_new_tokens", "5000"], r"max_new_tokens \(5000\) must be smaller than .*max_model_len"),
        (["--run.shard_size", "10"], r"run.shard_size \(10\) must be a multiple of synth.batch_size \(4\).*8 or 12"),
        (["--run.overwrite=maybe"], r"--run.overwrite must be true or false, got 'maybe'"),
        (["--source.path", "bundled:nope"], r"names no bundled corpus; available: bundled:quickstart"),
        (["--source.split", "train/x"], r"source.split must be a split name"),
        (["--run.output_dir", ""], r"run.output_dir must be a local path or an fsspec URL"),
        (["--mix.weights", "{augmented: 1, general: 1}", "--mix.tokenizer", "t"], r"mix_sources does not define"),
        (["--mix_sources.raw.path", "x"], r"mix_sources \['raw'\] have no weight .*there is no mix section"),
        (
            ["--chunk.max_chunk_tokens", "0"],
            r"chunk.max_chunk_tokens \(in .*\) must be an integer >= 1 or null, got 0",
        ),
    ],
)
def test_invalid_values_are_rejected_with_the_field_name(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_recipe(write(tmp_path, BASE), override)


def test_yaml_values_of_the_wrong_type_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"synth.rounds \(in .*\) must be an integer >= 1, got '3' \(str\)"):
        load_recipe(write(tmp_path, BASE.replace("rounds: 3", "rounds: '3'")), [])
    with pytest.raises(ConfigError, match=r"source.revision .* must be a string or null, got 1234 \(int\); quote it"):
        load_recipe(
            write(tmp_path, BASE.replace('"bundled:quickstart"}', '"bundled:quickstart", revision: 1234}')), []
        )
    with pytest.raises(ConfigError, match=r"run \(in .*\) is a section and needs a mapping of its keys"):
        load_recipe(write(tmp_path, BASE.replace("run: {output_dir: out, shard_size: 8}", "run: out")), [])
    with pytest.raises(ConfigError, match=r"missing required section 'run'"):
        load_recipe(write(tmp_path, 'source: {path: "bundled:quickstart"}\n'), [])
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_recipe(write(tmp_path, "- a\n- b\n"), [])
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_recipe(write(tmp_path, "source: {path: [\n"), [])
    with pytest.raises(ConfigError, match="recipe file .*missing.yaml' does not exist"):
        load_recipe(tmp_path / "missing.yaml", [])


def test_a_key_given_twice_is_an_error_naming_the_key_and_both_lines(tmp_path):
    # YAML itself keeps the last value silently: rounds 2 would run while the recipe also reads rounds 3
    with pytest.raises(ConfigError, match=r"recipe .*: key 'synth.rounds' appears twice: on line 5 and on line 9"):
        load_recipe(write(tmp_path, BASE + "  rounds: 2\n"), [])
    with pytest.raises(ConfigError, match=r"key 'run' appears twice: on line 3 and on line 9; keep one of them"):
        load_recipe(write(tmp_path, BASE + "run: {output_dir: other}\n"), [])
    entry = "mix_sources:\n  general:\n    path: a\n    kind: raw_corpus\n    path: b\n"
    with pytest.raises(ConfigError, match=r"key 'mix_sources.general.path' appears twice: on line 11 and on line 13"):
        load_recipe(write(tmp_path, BASE + entry), [])
    with pytest.raises(ConfigError, match=r"key 'source.path' appears twice: on line 2 and on line 2"):
        load_recipe(write(tmp_path, BASE.replace('{path: "bundled:quickstart"}', "{path: a, path: b}")), [])
    # a merge key (`<<: *anchor`) whose keys the mapping overrides is no duplicate
    merged = BASE.replace("synth:", "defaults: &d {rounds: 2, batch_size: 4}\nsynth:\n  <<: *d")
    assert "rounds: 3" in merged and read_merged(write(tmp_path, merged)) == {"rounds": 3, "batch_size": 4}


def read_merged(path: Path) -> dict:
    from hf_ipt.config import read_yaml

    synth = read_yaml(path)["synth"]
    return {k: synth[k] for k in ("rounds", "batch_size")}


@pytest.mark.parametrize(
    ("yaml_value", "override", "expected"),
    [
        (None, ["--synth.max_model_len", "100000000000000000000000"], r"synth.max_model_len .* fits in 64 bits"),
        ("max_model_len: 100000000000000000000000", [], r"synth.max_model_len \(in .*\) .* fits in 64 bits"),
        ("max_model_len: 1.0e+23", [], r"synth.max_model_len \(in .*\) must be an integer >= 2, got 1e\+23 \(float\)"),
        ("max_model_len: 4096.0", [], r"synth.max_model_len .* must be an integer >= 2, got 4096.0 \(float\)"),
        (None, ["--synth.max_model_len=1e23"], r"--synth.max_model_len must be an integer, got '1e23'"),
        (None, ["--synth.max_model_len=4096.5"], r"--synth.max_model_len must be an integer, got '4096.5'"),
        (None, ["--run.shard_size", "-" + "9" * 30], r"run.shard_size .* fits in 64 bits"),
        (None, ["--release.retry_base_delay=inf"], r"release.retry_base_delay .* must be a number >= 0 and finite"),
        (None, ["--release.retry_base_delay=nan"], r"release.retry_base_delay .* must be a number >= 0"),
        (None, ["--release.retry_base_delay", "1" + "0" * 400], r"release.retry_base_delay .* finite, got inf"),
    ],
)
def test_absurd_numbers_are_refused_with_the_key(tmp_path, yaml_value, override, expected):
    text = BASE if yaml_value is None else BASE.replace("max_new_tokens: 64", f"max_new_tokens: 64\n  {yaml_value}")
    text += "release: {repo_id: me/x, version: v0.1, config_name: c}\n"
    with pytest.raises(ConfigError, match=expected):
        load_recipe(write(tmp_path, text), override)


def test_a_huge_integer_is_echoed_as_written_not_as_a_float(tmp_path):
    text = BASE.replace("shard_size: 8", "shard_size: " + "1" + "0" * 30)
    with pytest.raises(ConfigError, match=r"got 1000000000000000000000000000000 \(a 31-digit integer\)$") as caught:
        load_recipe(write(tmp_path, text), [])
    assert "1e+30" not in str(caught.value)


def test_a_recipe_path_that_is_a_folder_or_a_device_says_what_it_is(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe '.*' is a folder, not a recipe file; give a YAML file in it"):
        load_recipe(tmp_path, [])
    with pytest.raises(ConfigError, match=r"recipe '/dev/null' is a device, not a regular file"):
        load_recipe("/dev/null", [])


def test_a_yaml_alias_bomb_is_refused_in_seconds_before_anything_walks_it(tmp_path):
    # nine levels of anchors, each repeating the one before nine times, under card.tags: 9**9 (387 million) strings
    # once expanded; the command runs in its own process, bounded in time and memory, so a regression fails here
    levels = ['    - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    recipe = write(tmp_path, BASE + "card:\n  tags:\n" + "\n".join(levels) + "\n")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    code = limit + f"from hf_ipt.cli import main; raise SystemExit(main(['config', {str(recipe)!r}]))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("hf-ipt config on a nine-level alias bomb ran for more than 60 s")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "expand to more than 100,000 values" in done.stderr and str(recipe) in done.stderr
    # aliases within the bound still work
    small = BASE + "card:\n  tags: &t [a, b]\n  summary: x\nquality: {}\n"
    assert load_recipe(write(tmp_path, small), []).card.tags == ("a", "b")


def test_absurd_numbers_are_refused_in_python_too():
    from hf_ipt.release.hub import ReleaseConfig
    from hf_ipt.synthesis import SynthesisConfig

    with pytest.raises(ConfigError, match=r"synth.max_model_len must be an integer >= 2 that fits in 64 bits"):
        SynthesisConfig(max_model_len=10**23)
    with pytest.raises(ConfigError, match=r"retry_max_delay must be a number >= 0 and finite, got inf"):
        ReleaseConfig(repo_id="me/x", version="v0.1", config_name="c", retry_max_delay=float("inf"))
    with pytest.raises(ConfigError, match=r"retry_max_delay must be a number >= 0, got a 401-digit integer"):
        ReleaseConfig(repo_id="me/x", version="v0.1", config_name="c", retry_max_delay=10**400)


def test_invalid_values_are_rejected_before_any_model_or_dataset_loads(tmp_path):
    recipe = write(tmp_path, BASE.replace("rounds: 3", "rounds: -1"))
    # a fresh interpreter: the command fails on the config alone, without importing torch/transformers/datasets
    code = textwrap.dedent(
        f"""
        import sys
        from hf_ipt.cli import main
        code = main(["synthesize", {str(recipe)!r}, "--synth.model", "/nonexistent/model"])
        heavy = [m for m in ("torch", "transformers", "vllm") if m in sys.modules]
        print("exit", code, "heavy", heavy)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "exit 2 heavy []" in result.stdout, result.stderr
    assert re.search(r"synth.rounds \(in .*recipe.yaml.*\) must be an integer >= 1, got -1", result.stderr)


def test_command_line_strings_are_coerced_to_the_field_types():
    assert coerce_text("yes", bool, "k") is True and coerce_text("OFF", bool, "k") is False
    assert coerce_text("None", int | None, "k") is None and coerce_text("7", int | None, "k") == 7
    assert coerce_text("0123", str, "source.revision") == "0123"  # never read as a number
    assert coerce_text("[a, b]", str | list[str] | None, "k") == ["a", "b"]
    assert coerce_text("data/*.json", str | list[str] | None, "k") == "data/*.json"
    assert coerce_text("{x: 1}", dict, "k") == {"x": 1}
    assert coerce_text("2.5", float, "k") == 2.5
    with pytest.raises(ConfigError, match="must be a mapping"):
        coerce_text("[1]", dict[str, float], "k")
    overrides = parse_overrides(["--run.overwrite", "--synth.rounds=2", "--run.verify_inputs", "false"], RecipeConfig)
    assert overrides == {"run.overwrite": True, "synth.rounds": 2, "run.verify_inputs": False}
    with pytest.raises(ConfigError, match="--synth.rounds needs a value"):
        parse_overrides(["--synth.rounds"], RecipeConfig)
    positionals: list[str] = []
    assert parse_overrides(["r.yaml", "--run.overwrite", "--synth.rounds", "2"], RecipeConfig, positionals=positionals)
    assert positionals == ["r.yaml"]


@given(st.integers(min_value=-(10**12), max_value=10**12), st.text(min_size=1).filter(lambda t: t == t.strip()))
def test_override_round_trip(number, text):
    assert coerce_text(str(number), int, "k") == number
    assert coerce_text(text, str, "k") == text
    merged = apply_overrides({"synth": {"rounds": 3}}, {"synth.rounds": number, "source.path": text})
    assert merged == {"synth": {"rounds": number}, "source": {"path": text}}


def test_text_column_is_set_once_for_source_and_synthesis(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), ["--source.text_column", "body"])
    assert recipe.synth.text_column == "body"
    recipe = load_recipe(write(tmp_path, BASE), ["--synth.text_column", "body"])
    assert recipe.source.text_column == "body"
    assert recipe.templify.text_column == "body"
    with pytest.raises(ConfigError, match="source.text_column='b', synth.text_column='a' differ"):
        load_recipe(write(tmp_path, BASE), ["--synth.text_column", "a", "--source.text_column", "b"])


def test_a_recipe_survives_a_round_trip_and_fingerprints_are_stable(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), [])
    again = config_from_dict(RecipeConfig, config_to_dict(recipe))
    assert again == recipe
    assert fingerprint(again) == fingerprint(recipe)
    assert fingerprint(load_recipe(write(tmp_path, BASE), ["--synth.rounds", "2"])) != fingerprint(recipe)
    # what a resumed synthesis must match excludes where the output goes and how to talk to the storage
    moved = dataclasses.replace(recipe, run=RunConfig(output_dir="elsewhere", shard_size=8, storage_options={"k": 1}))
    assert synthesis_identity(moved) == synthesis_identity(recipe)
    # nor the scheduler, which never changes a row; the rounds do
    rescheduled = load_recipe(write(tmp_path, BASE), ["--synth.scheduling", "rounds"])
    assert synthesis_identity(rescheduled) == synthesis_identity(recipe)
    two_rounds = load_recipe(write(tmp_path, BASE), ["--synth.rounds", "2"])
    assert synthesis_identity(two_rounds) != synthesis_identity(recipe)


def synthesis_identity(recipe: RecipeConfig) -> dict:
    """What a resumed synthesis must match: the synthesize stage's identity."""
    from hf_ipt.stages import SynthesizeStage

    return SynthesizeStage.from_recipe(recipe).identity()


def test_every_key_has_help_text():
    rows = describe_fields(RecipeConfig)
    assert {row[0] for row in rows} == set(dotted_keys(RecipeConfig))
    missing = [row[0] for row in rows if not row[3].strip()]
    assert not missing, f"keys without help metadata: {missing}"


def test_bundled_source_loads_and_checks_its_text_column():
    dataset = SourceConfig(path="bundled:quickstart", max_rows=20).load()
    assert len(dataset) == 20 and all(len(t) >= 200 for t in dataset["text"])
    assert len(SourceConfig(path="bundled:quickstart").load()) == 300
    with pytest.raises(ConfigError, match=r"has no column 'body' \(source.text_column\); its columns are"):
        SourceConfig(path="bundled:quickstart", text_column="body").load()
    assert SourceConfig(path="x", split="train[:10%]").output_split == "train"


@pytest.mark.parametrize("name", ["quickstart", "continual_pretraining", "from_scratch"])
def test_shipped_recipes_are_valid(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml", [])
    assert recipe.run.shard_size % recipe.synth.batch_size == 0
    if name == "continual_pretraining":
        assert recipe.synth.rounds == 3
        assert recipe.mix.weights == {"augmented": 1, "general": 1}
        assert recipe.mix_sources["general"].kind == "general_instructions"
        assert recipe.mix_sources["general"].path == "Open-Orca/OpenOrca"
    if name == "from_scratch":
        assert recipe.synth.rounds == 2
        assert {s.kind for s in recipe.mix_sources.values()} == {"raw"}
    if name == "quickstart":
        assert recipe.build_tiny_model and recipe.source.path.startswith("bundled:")


def test_one_rule_for_python_and_recipes(tmp_path):
    from hf_ipt.synthesis import ChunkConfig, SynthesisConfig
    from hf_ipt.validation import ConfigTypeError, check_value, requirement

    # the same declared range refuses the value in Python and in a recipe, each naming its own key
    with pytest.raises(ConfigError, match=r"^synth.rounds must be an integer >= 1, got 0$"):
        SynthesisConfig(rounds=0)
    with pytest.raises(ConfigError, match=r"^synth.rounds \(in .*recipe.yaml\) must be an integer >= 1, got 0$"):
        load_recipe(write(tmp_path, BASE.replace("rounds: 3", "rounds: 0")), [])
    # a wrong type is a TypeError too, as the configs raised before
    with pytest.raises(ConfigTypeError, match=r"chunk.max_chunk_tokens must be an integer >= 1 or null, got '8'"):
        ChunkConfig(max_chunk_tokens="8")
    with pytest.raises(ConfigError, match=r"chunk.max_new_tokens \(400\) must be smaller than chunk.max_model_len"):
        ChunkConfig(max_model_len=400)
    assert requirement(float, {"min": 0, "max": 1}) == "a number between 0 and 1"
    assert requirement(float, {"gt": 0, "lt": 1}) == "a number in (0, 1)"
    assert requirement(int | None, {"min": 1}) == "an integer >= 1 or null"
    assert check_value(2, float | None, "k", build=lambda *args: None) == 2.0  # a recipe's 2 is a float there
    with pytest.raises(ConfigError, match=r"k\['b'\] must be a positive finite number, got nan"):
        check_value({"a": 1.0, "b": float("nan")}, dict[str, float], "k", {"gt": 0, "finite": True})
