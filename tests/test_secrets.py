"""No secret is written anywhere: a canary Hub token and canary storage credentials, passed in every spelling (flag
with a space, flag with `=`, environment, YAML), appear in no file of a local release (nor of the run's other
stages), in no file of any revision of a Hub release, and in no line hf-ipt prints or logs.

The canaries are not shaped like Hub tokens (`hf_...`): only a scrubber that knows the secret keys and values catches
them, not the token-shape pattern.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
import yaml

from hf_ipt.cli import main
from hf_ipt.redaction import REDACTED, redact, scrub, scrub_command, secret_values
from hf_ipt.testing import tiny_recipe

pytest_plugins = ["hub_server"]

TOKENS = {  # one canary per spelling, so a leak names the spelling that leaked
    "flag": "canary-tok-flag-7f3e9a1b",
    "flag=": "canary-tok-eq-2c8d4e6f",
    "env": "canary-tok-env-9a0b1c2d",
    "yaml": "canary-tok-yaml-5e6f7a8b",
}
STORAGE = {  # storage credentials, by spelling
    "flag": ("CANARYKEYFLAG01", "canary-storage-secret-flag"),
    "flag=": ("CANARYKEYEQ0002", "canary-storage-secret-eq"),
    "yaml": ("CANARYKEYYAML03", "canary-storage-secret-yaml"),
}
URL_PASSWORD = "canary-url-password-31"
ALL_CANARIES = [*TOKENS.values(), *(v for pair in STORAGE.values() for v in pair), URL_PASSWORD]


def recipe_file(
    tmp_path: Path, model: str, output: Path, *, token: str | None, storage: tuple[str, str] | None, name: str
) -> Path:
    changes = {
        "source.license": "psf-2.0",
        "templify.seed": 0,
        "mix.tolerance": 0.3,
        "mix.seed": 0,
        # a credential inside a URL, written into the card's summary
        "card.summary": f"Mirrored at https://mirror-user:{URL_PASSWORD}@data.example.org/ipt.",
    }
    recipe = tiny_recipe(model, output, rows=12, batch_size=6, release="secrets", changes=changes)
    if token is not None:
        recipe["release"]["token"] = token
    if storage is not None:
        recipe["run"]["storage_options"] = {"key": storage[0], "secret": storage[1]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def storage_json(pair: tuple[str, str]) -> str:
    return json.dumps({"key": pair[0], "secret": pair[1]})


def assert_no_canary(where: str, body: bytes | str) -> None:
    data = body.encode() if isinstance(body, str) else body
    for canary in ALL_CANARIES:
        assert canary.encode() not in data, f"canary {canary!r} leaked into {where}"


def assert_tree_clean(root: Path) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert_no_canary(str(path), path.read_bytes())
    return len(files)


# ------------------------------------------------------------------------------------------------ the scrubber
@pytest.mark.parametrize(
    "argv",
    [
        ["push", "r.yaml", "--release.token", "SECRETVAL1"],
        ["push", "r.yaml", "--release.token=SECRETVAL1"],
        ["push", "r.yaml", "--run.storage_options", '{"key": "SECRETVAL1", "secret": "SECRETVAL2"}'],
        ["push", "r.yaml", '--run.storage_options={"key": "SECRETVAL1"}'],
        ["push", "r.yaml", "--source.path", "s3://SECRETVAL1:SECRETVAL2@bucket/corpus"],
        ["push", "r.yaml", "--card.summary", "see https://me:SECRETVAL1@host/x"],
    ],
)
def test_scrub_command_hides_every_spelling(argv):
    recorded = scrub_command(argv)
    assert "SECRETVAL" not in recorded and REDACTED in recorded and recorded.startswith("hf-ipt push r.yaml")
    # the same command recorded as text (a library caller's string) is scrubbed too
    assert "SECRETVAL" not in scrub(" ".join(argv))


def test_redact_hides_secret_keys_storage_options_and_known_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "env-token-value-xyz")
    recipe = {
        "release": {"token": "tok-abcdef", "repo_id": "me/x"},
        "run": {"storage_options": {"key": "AKIA1234", "client_kwargs": {"region_name": "eu"}}, "output_dir": "o"},
        "card": {"summary": "pushed with env-token-value-xyz from s3://AKIA1234:pw1234@b/x"},
    }
    # "eu" is too short to hunt everywhere (it would cut words); under storage_options it is hidden all the same
    assert secret_values(recipe) == ["tok-abcdef", "AKIA1234"]
    shown = redact(recipe)
    text = repr(shown)
    for secret in ("tok-abcdef", "AKIA1234", "env-token-value-xyz", "pw1234"):
        assert secret not in text
    assert shown["release"]["repo_id"] == "me/x" and shown["run"]["output_dir"] == "o"
    assert set(shown["run"]["storage_options"]) == {"key", "client_kwargs"}  # the keys stay, for reproducing


# ------------------------------------------------------------------------------------------------ whole runs
def test_canaries_in_every_spelling_reach_no_file_and_no_log_line(
    tmp_path, tiny_model_path, local_hub, monkeypatch, capfd, caplog
):
    """A local release made with the token and the storage credentials on the command line (space and `=`), in the
    environment and in the YAML, then Hub releases of the same data in each spelling: no canary anywhere."""
    caplog.set_level(logging.INFO)
    output = tmp_path / "run"
    yaml_recipe = recipe_file(
        tmp_path, tiny_model_path, output, token=TOKENS["yaml"], storage=STORAGE["yaml"], name="with-secrets"
    )
    monkeypatch.setenv("HF_TOKEN", TOKENS["env"])
    monkeypatch.chdir(tmp_path)

    # 1. the local release, every spelling at once (the command-line values win over the YAML's)
    argv = [
        "run",
        str(yaml_recipe),
        "--release.token",
        TOKENS["flag"],
        f"--release.token={TOKENS['flag=']}",
        "--run.storage_options",
        storage_json(STORAGE["flag"]),
        f"--run.storage_options={storage_json(STORAGE['flag='])}",
        "--verbose",
    ]
    assert main(argv) == 0
    assert main(["config", str(yaml_recipe), "--release.token", TOKENS["flag"]]) == 0  # printing the recipe
    release = output / "release"
    card = (release / "README.md").read_text()
    assert "hf-ipt run" in card and "--release.token <redacted>" in card and "--release.token=<redacted>" in card
    assert "https://<redacted>@data.example.org/ipt" in card
    recorded = yaml.safe_load((release / "release_info" / "m2" / "recipe.yaml").read_text())
    assert recorded["run"]["storage_options"] and recorded["release"]["token"] in (REDACTED, "<not recorded>")
    assert assert_tree_clean(output) > 10  # every stage's files, markers included

    # 2. Hub releases of the same run, the token in each spelling (the Hub double accepts only the canary)
    repo = f"hf-ipt-tester/secrets-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(local_hub, "token", TOKENS["flag"])
    hub_args = ["--release_to", "hub", "--release.repo_id", repo, "--release.retry_base_delay", "0.01"]
    pushes = [
        (TOKENS["flag"], ["--release.token", TOKENS["flag"], "--run.storage_options", storage_json(STORAGE["flag"])]),
        (TOKENS["flag="], [f"--release.token={TOKENS['flag=']}"]),
        (TOKENS["env"], []),
    ]
    monkeypatch.delenv("HF_TOKEN")
    for version, (token, extra) in enumerate(pushes, start=1):
        monkeypatch.setattr(local_hub, "token", token)
        if token == TOKENS["env"]:
            monkeypatch.setenv("HF_TOKEN", token)
        base = [
            "push",
            str(recipe_file(tmp_path, tiny_model_path, output, token=None, storage=None, name="plain")),
            *hub_args,
            "--release.version",
            f"v0.{version}",
        ]
        assert main([*base, *extra]) == 0, version
    # the token written in the YAML
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(local_hub, "token", TOKENS["yaml"])
    assert main(["push", str(yaml_recipe), *hub_args, "--release.version", "v0.4"]) == 0

    bodies = list(local_hub.all_file_bodies(repo))
    assert {path for _, path, _ in bodies} >= {
        "README.md",
        "release_info/m2/stats.json",
        "release_info/m2/recipe.yaml",
    }
    for commit, path, body in bodies:  # every file of every revision
        assert_no_canary(f"{path} at {commit}", body)
    captured = capfd.readouterr()
    assert "hf-ipt push: finished" in captured.out
    assert_no_canary("stdout", captured.out)
    assert_no_canary("stderr", captured.err)
    for record in caplog.records:
        assert_no_canary(f"log record {record.name}", record.getMessage())


def test_no_command_prints_the_credentials_of_an_output_url(tmp_path, tiny_model_path, capfd):
    """`s3://KEY:SECRET@bucket/run`-style credentials in run.output_dir: every command's every line is scrubbed
    (`hf-ipt check` printed them in the names of its checks)."""
    secret = "canary-url-secret-4f1d"
    url = f"memory://CANARYURLKEY9:{secret}@bucket-{uuid.uuid4().hex[:8]}/run"
    recipe = tmp_path / "url.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_model_path, url, rows=4, batch_size=4, release="url")))
    for command in ("check", "config", "status", "synthesize", "status"):
        code = main([command, str(recipe)])
        assert code == 0, command
        captured = capfd.readouterr()
        assert captured.out, command
        for where, text in (("stdout", captured.out), ("stderr", captured.err)):
            assert secret not in text and "CANARYURLKEY9" not in text, f"hf-ipt {command} printed it on {where}"
        assert "<redacted>@bucket" in captured.out, command
