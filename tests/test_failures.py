"""Failure is never silent: rows the engine failed on are retried by the next run and hold the release back, one
writer per run folder, no credential of an engine's settings in any file, a refused release found before anything is
rewritten. Against real parts: an OpenAI-compatible server on loopback started here, real files, real processes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_server_engine import LocalServer, QuietHandler

from hf_ipt.cli import main
from hf_ipt.execution.runner import MARKER_DIR, assemble_shards
from hf_ipt.testing import tiny_recipe

pytest_plugins = ["hub_server"]

ROWS, BATCH = 12, 4  # three shards of one batch each, M = 2 chains


class SynthServer(LocalServer):
    """An OpenAI-compatible completions server that answers each prompt with one pair derived from the prompt (the
    same prompt, the same answer: runs are comparable), or fails with a 503: every request while `down`, and each
    whose prompt holds `poison`. It records the headers of every request."""

    def __init__(self):
        self.down = False
        self.delay = 0.0  # seconds each answer takes
        self.echo_auth = False  # refuse every request with a 401 that repeats the Authorization header it got
        self.poison: str | None = None
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                server.headers.append({name.lower(): value for name, value in self.headers.items()})
                time.sleep(server.delay)
                prompt = json.dumps(body["prompt"])
                if server.echo_auth:
                    message = f"invalid credentials: {self.headers.get('Authorization')}"
                    self.reply(401, json.dumps({"error": {"message": message}}).encode())
                    return
                if server.down or (server.poison is not None and server.poison in prompt):
                    self.reply(503, b'{"error": {"message": "the model is loading", "type": "unavailable"}}')
                    return
                tag = hashlib.sha256(prompt.encode()).hexdigest()[:8]
                text = f" <QUE> What does {tag} name? <ANS> It names {tag}. </END>"
                answer = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"]}
                answer["choices"] = [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}]
                answer["usage"] = {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}
                self.reply(200, json.dumps(answer).encode())

        self.serve(Handler)


@pytest.fixture
def server():
    running = SynthServer()
    yield running
    running.close()


def recipe_for(tmp_path: Path, model: str, server: SynthServer, name: str, **engine) -> Path:
    """A small run (12 bundled paragraphs, templify, mix, local release) synthesized through `server`."""
    settings = {"endpoints": [server.url], "max_retries": 0, "prompt_format": "text", **engine}
    recipe = tiny_recipe(
        model,
        tmp_path / name,
        rows=ROWS,
        batch_size=BATCH,
        release=name,
        changes={"synth.engine": "server", "synth.engine_kwargs": settings, "templify.seed": 0, "mix.seed": 0},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def rows_of(run: Path) -> list[dict]:
    return assemble_shards(str(run / "synthesized"))["train"].to_list()


def attempts(run: Path) -> list[str]:
    """The attempt id of each committed shard, in shard order (a redone shard gets a new one)."""
    markers = sorted((run / "synthesized" / MARKER_DIR).glob("shard-*.json"))
    return [json.loads(path.read_text())["attempt"] for path in markers]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path):
    """The rows and release of an uninterrupted run against a healthy server."""
    healthy = SynthServer()
    try:
        tmp_path = tmp_path_factory.mktemp("uninterrupted")
        assert main(["run", str(recipe_for(tmp_path, tiny_model_path, healthy, "ref")), "-q"]) == 0
    finally:
        healthy.close()
    run = tmp_path / "ref"
    return rows_of(run), released_bytes(run)


def released_bytes(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((run / "release" / "data").glob("*.parquet"))}


def test_rows_failed_while_the_server_was_down_hold_the_release_back_and_are_retried(
    tmp_path, tiny_model_path, server, reference, capsys
):
    server.down = True
    recipe = recipe_for(tmp_path, tiny_model_path, server, "down")
    assert main(["run", str(recipe), "-q"]) == 4
    err = capsys.readouterr().err
    assert "12 of 12 synthesized rows (100.0 %) failed in the engine (engine_error)" in err
    assert "release.max_engine_error_share=0.01" in err and "HTTP 503: the model is loading" in err
    assert f"run `hf-ipt run {recipe} -q` again" in err
    assert not (tmp_path / "down" / "release" / ".hf_ipt" / "stage.json").exists()

    # the server answers again: the same command retries every row and releases what an uninterrupted run releases
    server.down = False
    assert main(["run", str(recipe), "-q"]) == 0
    out = capsys.readouterr().out
    assert "3 (3 computed now, 0 reused, 3 of them again for failed rows)" in out
    expected_rows, expected_release = reference
    assert rows_of(tmp_path / "down") == expected_rows
    assert released_bytes(tmp_path / "down") == expected_release
    # and a run after that reuses everything
    assert main(["run", str(recipe), "-q"]) == 0
    assert capsys.readouterr().out.count("already done, reused") == 4


def test_only_shards_holding_failed_rows_are_redone_and_a_released_version_is_never_replaced(
    tmp_path, tiny_model_path, server, reference, capsys
):
    from hf_ipt.config import SourceConfig

    victim = SourceConfig(path="bundled:quickstart", max_rows=ROWS).load()["text"][5]  # shard 1 (rows 4-7)
    server.poison = victim[:40]
    assert json.dumps(server.poison)[1:-1] == server.poison  # found as is in the JSON body
    recipe = recipe_for(tmp_path, tiny_model_path, server, "partial")
    run = tmp_path / "partial"
    # 1 failed row of 12 is more than the default 1 %: allowed here
    assert main(["run", str(recipe), "-q", "--release.max_engine_error_share", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "engine_error 1" in out and "1 row(s) failed in the engine" in out
    assert [row["synth_status"] == "engine_error" for row in rows_of(run)].count(True) == 1
    before = attempts(run)
    folders = ("synthesized", "templified", "mixed", "release")
    markers = {name: (run / name / ".hf_ipt" / "stage.json").read_bytes() for name in folders}

    # the server is healthy again; retrying the row would change the data of release v0.1: refused before any stage
    # rewrites its output
    server.poison = None
    assert main(["run", str(recipe), "-q"]) == 2
    err = capsys.readouterr().err
    assert "already holds version v0.1 of local/partial" in err and "1 row(s) failed in the engine" in err
    assert {name: (run / name / ".hf_ipt" / "stage.json").read_bytes() for name in folders} == markers
    assert attempts(run) == before

    # a new version: only shard 1 is synthesized again, and the rows are those of an uninterrupted run
    assert main(["run", str(recipe), "-q", "--release.version", "v0.2"]) == 0
    out = capsys.readouterr().out
    assert "3 (1 computed now, 2 reused, 1 of them again for failed rows)" in out
    after = attempts(run)
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    expected_rows, _ = reference
    assert rows_of(run) == expected_rows


def test_a_refused_local_release_is_found_before_any_stage_rewrites_its_output(
    tmp_path, tiny_model_path, server, capsys
):
    recipe = recipe_for(tmp_path, tiny_model_path, server, "seeded")
    run = tmp_path / "seeded"
    assert main(["run", str(recipe), "-q"]) == 0
    folders = ("synthesized", "templified", "mixed", "release")
    markers = {name: (run / name / ".hf_ipt" / "stage.json").read_bytes() for name in folders}
    capsys.readouterr()
    # other templify settings make other data for the same version: refused before templify runs
    assert main(["run", str(recipe), "-q", "--templify.seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "release.version:" in err and "already holds version v0.1 of local/seeded" in err
    assert "this command would replace it: templified/ is made again first (other settings: templify.seed)" in err
    assert {name: (run / name / ".hf_ipt" / "stage.json").read_bytes() for name in folders} == markers
    # `hf-ipt check` says so too, and --overwrite replaces the version
    assert main(["check", str(recipe), "--templify.seed", "1"]) == 2
    assert "already holds version v0.1" in capsys.readouterr().out
    assert main(["run", str(recipe), "-q", "--templify.seed", "1", "--overwrite"]) == 0


def test_a_version_already_on_the_hub_is_refused_before_any_stage_rewrites_its_output(
    tmp_path, tiny_model_path, server, local_hub, capsys
):
    import uuid

    recipe = recipe_for(tmp_path, tiny_model_path, server, "hub")
    repo = f"hf-ipt-tester/failures-{uuid.uuid4().hex[:8]}"
    hub = ["--release_to", "hub", "--release.repo_id", repo, "--release.retry_base_delay", "0.01"]
    assert main(["run", str(recipe), "-q", *hub]) == 0
    templified = tmp_path / "hub" / "templified" / ".hf_ipt" / "stage.json"
    before = templified.read_bytes()
    capsys.readouterr()
    assert main(["run", str(recipe), "-q", *hub, "--templify.seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"version v0.1 of {repo} already exists on the Hub" in err and "release.force" in err
    assert templified.read_bytes() == before
    assert main(["run", str(recipe), "-q", *hub, "--templify.seed", "1", "--release.version", "v0.2"]) == 0


# --- one writer per run folder --------------------------------------------------------------------------------------


def hf_ipt(*args: str) -> subprocess.Popen:
    """`hf-ipt ARGS` in a process of its own."""
    code = f"import sys; from hf_ipt.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_command_on_a_run_folder_is_refused_naming_the_first(tmp_path, tiny_model_path, server):
    server.delay = 0.3  # 24 requests: the first command holds the folder for several seconds
    recipe = recipe_for(tmp_path, tiny_model_path, server, "busy")
    lease = tmp_path / "busy" / ".hf_ipt" / "lease.json"
    first = hf_ipt("run", str(recipe), "-q")
    deadline = time.monotonic() + 120
    while not lease.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.exists(), first.communicate()
    second = hf_ipt("run", str(recipe), "-q", "--templify.seed", "1")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    holder = json.loads(lease.read_text())
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
    assert f"is being written by `hf-ipt run {recipe} -q` (host {holder['host']}, pid {first.pid}, since " in err
    assert first.wait(timeout=300) == 0, first.communicate()
    assert not lease.exists()  # released at the end
    assert (tmp_path / "busy" / "release" / ".hf_ipt" / "stage.json").exists()


def test_a_stale_lease_is_taken_over_and_a_live_one_of_another_host_is_not(tmp_path, caplog):
    from hf_ipt.config import RunConfig
    from hf_ipt.stages import TemplifyStage
    from hf_ipt.store import LeaseHeldError, RunFolder

    folder = RunFolder(str(tmp_path / "run"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"command": "hf-ipt run old.yaml", "host": socket.gethostname(), "pid": int(gone.stdout)}
    lease = tmp_path / "run" / ".hf_ipt" / "lease.json"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({**dead, "started_at": "then", "renewed_at": time.time(), "token": "x"}))
    with folder.lease("hf-ipt templify r.yaml") as held:
        assert json.loads(lease.read_text())["token"] == held.record["token"]
    assert f"its process {gone.stdout.strip()} no longer runs on this host" in caplog.text
    assert not lease.exists()

    other = {"command": "hf-ipt run r.yaml", "host": "gpu-node-7", "pid": 1, "started_at": "2025-05-01T10:00:00Z"}
    lease.write_text(json.dumps({**other, "renewed_at": time.time() - 30, "token": "y"}))
    # from Python too: a stage run on a folder another host writes is refused, naming the holder
    with pytest.raises(LeaseHeldError, match=r"`hf-ipt run r.yaml` \(host gpu-node-7, pid 1, since 2025-05-01"):
        TemplifyStage().run(RunConfig(output_dir=str(tmp_path / "run")))
    lease.write_text(json.dumps({**other, "renewed_at": time.time() - 3600, "token": "y"}))
    with folder.lease("hf-ipt templify r.yaml"):
        pass
    assert "it was not renewed for more than 600 s" in caplog.text


def test_on_an_object_store_the_lease_is_a_conditional_write_a_late_checker_cannot_overwrite(monkeypatch):
    import uuid

    from hf_ipt.store import LEASE_PATH, LeaseHeldError, RunFolder

    url = f"memory://leases-{uuid.uuid4().hex[:8]}/run"
    first = RunFolder(url).acquire_lease("hf-ipt run first.yaml")
    try:
        # the second command looked for a lease before the first one's landed (the window of a check, then a write):
        # its write must still fail, not replace the first's lease
        late = RunFolder(url)
        monkeypatch.setattr(late, "exists", lambda relative: False)
        with pytest.raises(LeaseHeldError, match=r"is being written by `hf-ipt run first.yaml` \(host "):
            late.acquire_lease("hf-ipt run second.yaml")
        assert RunFolder(url).read_json(LEASE_PATH)["token"] == first.record["token"]
        assert first.is_mine()
    finally:
        first.release()
    second = RunFolder(url).acquire_lease("hf-ipt run second.yaml")  # free again
    second.release()


def test_workers_started_by_hand_share_the_folder_with_each_other_only(tmp_path):
    from hf_ipt.store import LeaseHeldError, RunFolder

    folder = RunFolder(str(tmp_path / "run"))
    worker = {"command": "hf-ipt synthesize r.yaml --worker-index 1 --num-workers 2", "host": "gpu-node-2", "pid": 9}
    workers = tmp_path / "run" / ".hf_ipt" / "workers"
    workers.mkdir(parents=True)
    (workers / "gpu-node-2-9.json").write_text(json.dumps({**worker, "started_at": "now", "renewed_at": time.time()}))
    with folder.lease("hf-ipt synthesize r.yaml --worker-index 0 --num-workers 2", shared=True):
        pass  # another worker: fine
    with pytest.raises(LeaseHeldError, match="is being written by `hf-ipt synthesize r.yaml --worker-index 1"):
        with folder.lease("hf-ipt templify r.yaml"):
            pass
    assert not (tmp_path / "run" / ".hf_ipt" / "lease.json").exists()  # the refused command left no lease behind
    (workers / "gpu-node-2-9.json").unlink()  # that worker ended
    with folder.lease("hf-ipt run r.yaml"):  # a live exclusive holder keeps workers out
        pid = os.fork()
        if pid == 0:  # a child process: not the holder
            try:
                with RunFolder(str(tmp_path / "run")).lease("worker", shared=True):
                    os._exit(0)
            except LeaseHeldError:
                os._exit(7)
        assert os.waitpid(pid, 0)[1] >> 8 == 7


# --- credentials in the engine's settings ----------------------------------------------------------------------------


def test_engine_credentials_reach_no_file_and_adding_or_rotating_them_resumes(
    tmp_path, tiny_model_path, server, capsys, monkeypatch
):
    first, second, token = "canary-api-key-one-7731", "canary-api-key-two-8842", "canary-extra-token-9953"
    monkeypatch.setenv("OPENAI_API_KEY", first)  # the first worker's key comes from the environment
    recipe = recipe_for(tmp_path, tiny_model_path, server, "keys", extra_body={"auth_token": token})
    run = tmp_path / "keys"
    assert main(["synthesize", str(recipe), "-q", "--worker-index", "0", "--num-workers", "2"]) == 3
    assert {h["authorization"] for h in server.headers} == {f"Bearer {first}"}
    done = attempts(run)
    # the key now in the recipe (added, and another one): the same synthesis, resumed, not refused
    assert main(["synthesize", str(recipe), "-q", "--synth.engine_kwargs.api_key", second]) == 0
    assert server.headers[-1]["authorization"] == f"Bearer {second}"
    assert [attempts(run)[i] for i in (0, 2)] == [done[0], done[1]]
    assert main(["run", str(recipe), "-q", "--synth.engine_kwargs.api_key", second]) == 0
    # a server that repeats the key in its error: the error is stored with the row, without the key
    server.echo_auth = True
    assert main(["synthesize", str(recipe), "-q", "--run.output_dir", str(tmp_path / "echo")]) == 0
    errors = {row["synth_error"] for row in rows_of(tmp_path / "echo")}
    assert errors == {f"{server.url}/v1/completions: HTTP 401: invalid credentials: Bearer <redacted>"}
    written = [path for folder in (run, tmp_path / "echo") for path in folder.rglob("*") if path.is_file()]
    assert len(written) > 20
    for path in written:
        for canary in (first, second, token):
            assert canary.encode() not in path.read_bytes(), f"{canary} in {path}"
    out = capsys.readouterr()
    assert all(canary not in out.out + out.err for canary in (first, second, token))

    # a manifest written by an older hf-ipt, with the key in clear: never a reason to refuse, never printed
    manifest = run / "synthesized" / ".hf_ipt" / "manifest.json"
    recorded = json.loads(manifest.read_text())
    recorded["config"]["synth"]["engine_kwargs"]["api_key"] = "canary-old-key-in-clear-1164"
    manifest.write_text(json.dumps(recorded))
    assert main(["synthesize", str(recipe), "-q", "--synth.rounds", "3"]) == 2
    err = capsys.readouterr().err
    assert "synth.rounds: 2 -> 3" in err and "canary-old-key-in-clear-1164" not in err and "api_key" not in err


# --- a Ray node that dies -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_dead_ray_node_ends_the_command_with_one_line_and_exit_5_and_the_run_resumes(
    tmp_path, tiny_model_path, server, reference
):
    pytest.importorskip("ray", reason="ray is not installed: pip install 'hf-ipt[ray]'")
    from ray.cluster_utils import Cluster

    server.delay = 0.5  # the workers are busy when their node dies
    recipe = recipe_for(tmp_path, tiny_model_path, server, "node")
    # a local cluster of two nodes: the head (where the command's driver joins) runs no task, the other runs both
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        node = cluster.add_node(num_cpus=2)
        ray_args = ["--run.executor", "ray", "--run.num_workers", "2", "--run.ray_address", cluster.address]
        command = hf_ipt("synthesize", str(recipe), "-q", *ray_args, "--run.max_retries", "0")
        try:
            deadline = time.monotonic() + 400
            while not server.headers and command.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.headers, command.poll()
            cluster.remove_node(node)  # the node dies: its raylet and the task processes on it
            _, err = command.communicate(timeout=300)
        finally:
            if command.poll() is None:
                command.kill()
    finally:
        cluster.shutdown()
    assert_lost_then_resumed(command.returncode, err, "a Ray node running a worker died", recipe, reference)


def assert_lost_then_resumed(status: int, err: str, what_died: str, recipe: Path, reference) -> None:
    """A synthesis ended with exit 5 and one line of hf-ipt's own among what Ray's processes print (their progress
    bars may come after it), saying `what_died` and how to resume, and no traceback; the same command (here without
    Ray) then makes the rows of an uninterrupted run."""
    assert status == 5, err[-3000:]
    [line] = [line for line in err.splitlines() if line.startswith("hf-ipt synthesize:")]
    assert line.startswith(f"hf-ipt synthesize: error: {what_died}"), line
    assert "run the same command again to resume" in line and "Traceback" not in err
    assert main(["synthesize", str(recipe), "-q"]) == 0
    expected_rows, _ = reference
    assert rows_of(recipe.parent / recipe.stem) == expected_rows


def descendants(pid: int) -> list:
    """The processes below process `pid` (its children, theirs, ...)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def process_name(process) -> str:
    """A process's name ("" once it is gone)."""
    import psutil

    try:
        return process.name()
    except psutil.NoSuchProcess:
        return ""


def named(processes: list, name: str) -> list:
    return [process for process in processes if process_name(process) == name]


@pytest.mark.slow
def test_the_death_of_the_commands_own_ray_node_ends_it_with_exit_5_and_one_line(
    tmp_path, tiny_model_path, server, reference
):
    pytest.importorskip("ray", reason="ray is not installed: pip install 'hf-ipt[ray]'")
    import psutil

    server.delay = 0.5  # the workers are busy when the node dies
    recipe = recipe_for(tmp_path, tiny_model_path, server, "own")
    # no run.ray_address: the command starts a local Ray node of its own, and that node dies under it
    ray_args = ["--run.executor", "ray", "--run.num_workers", "2", "--run.max_retries", "0"]
    # the kill comes at a fixed point (the first request to the engine); whichever way Ray then ends its driver (an
    # answer naming the node, or `_exit(1)` first: 1 run of 5 before, the command's own status), the command's is 5
    command = hf_ipt("synthesize", str(recipe), "-q", *ray_args)
    try:
        deadline = time.monotonic() + 300
        while not server.headers and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.headers, command.communicate()
        started = descendants(command.pid)
        # the node dies at once, as a machine does: its raylet and the task processes on it (Ray names them
        # "ray::<task>"); the command's processes and the rest of the node are left to notice
        node = named(started, "raylet") + [process for process in started if process_name(process)[:5] == "ray::"]
        assert len(node) >= 3, [process_name(process) for process in started]
        for process in node:
            process.kill()
        _, err = command.communicate(timeout=180)
    finally:
        if command.poll() is None:
            command.kill()
    # the node's processes went with it
    psutil.wait_procs(started, timeout=30)
    assert not [process for process in started if process.is_running() and process.status() != "zombie"]
    # and the command's line is its last
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("hf-ipt synthesize: error:"), err[-3000:]
    assert_lost_then_resumed(command.returncode, err, "the Ray node this command runs on died", recipe, reference)


class DriverDouble:
    """An executor's stand-in in the Ray driver's process: `drive` prints `line`, then answers `answer`, raises
    `error`, or ends the process the way Ray's core worker ends a driver whose raylet died (`_exit(1)`)."""

    def __init__(self, line: str, answer=None, error: BaseException | None = None):
        self.line, self.answer, self.error = line, answer, error

    def drive(self, runner, dataset):
        print(self.line, file=sys.stderr, flush=True)
        if self.error is not None:
            raise self.error
        if self.answer is None:
            os._exit(1)
        return [self.answer, runner, dataset]


def test_the_ray_driver_process_answers_raises_or_dies_and_the_command_says_which(capsys):
    pytest.importorskip("ray", reason="ray is not installed: pip install 'hf-ipt[ray]'")
    from ray import cloudpickle

    from hf_ipt.execution import WorkersLostError
    from hf_ipt.execution.ray_driver import run_driver_process
    from hf_ipt.redaction import register_secrets

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the driver's process cannot import the tests folder
    register_secrets(["canary-driver-secret-4471"])
    assert run_driver_process(DriverDouble("hello", answer="done"), "runner", [1]) == ["done", "runner", [1]]
    with pytest.raises(ValueError, match="run.gpus_per_worker=2 but"):
        run_driver_process(DriverDouble("no", error=ValueError("run.gpus_per_worker=2 but ...")), None, None)
    dying = DriverDouble("[core_worker.cc] Raylet died. Exiting: canary-driver-secret-4471")
    with pytest.raises(WorkersLostError) as lost:
        run_driver_process(dying, None, None)
    assert str(lost.value).startswith("the Ray node this command runs on died, or the head of its cluster (Ray ended")
    assert "with exit status 1); the shards committed so far are kept: run the same command again" in str(lost.value)
    err = capsys.readouterr().err
    assert "hello" in err and "Raylet died. Exiting: <redacted>" in err and "canary" not in err
