"""Client-side cost of the server engine: requests per second one process sends through the `openai` client, against
a local stub server that answers at once (no model), so only the client's own work is measured.

Figures, all measured in this run, side by side:
- `ServerEngine` as it sends token-id prompts: the ids go in `extra_body`, which the client sends as given;
- the same engine with the ids given as the client's `prompt` argument, which the client walks id by id in Python
  before sending (the reason the engine does not do that).

The stub runs in a process of its own (a `ThreadingHTTPServer`), so it does not share the client's interpreter lock.

Usage: .venv/bin/python bench/bench_server_client.py [--requests 300] [--prompt-ids 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import http.server
import json
import multiprocessing
import statistics
import time

from hf_ipt.engines import Request
from hf_ipt.engines.server import ServerEngine

ANSWER = json.dumps(
    {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": "stub",
        "choices": [{"index": 0, "text": " <QUE> q <ANS> a </END>", "finish_reason": "stop", "logprobs": None}],
    }
).encode()


class _Stub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        assert isinstance(body["prompt"], list), "the stub expects token-id prompts"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)


def _serve(port_queue) -> None:
    http.server.ThreadingHTTPServer.request_queue_size = 256  # the default backlog of 5 resets new connections
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    port_queue.put(server.server_address[1])
    server.serve_forever()


class IdsAsPromptArgument(ServerEngine):
    """The server engine with the token ids given as the client's `prompt` argument instead of in `extra_body`."""

    def _body(self, request: Request, max_new_tokens: int) -> dict:
        arguments = super()._body(request, max_new_tokens)
        arguments["prompt"] = arguments["extra_body"].pop("prompt")
        return arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--prompt-ids", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ports = multiprocessing.get_context("spawn").Queue()
    stub = multiprocessing.get_context("spawn").Process(target=_serve, args=(ports,), daemon=True)
    stub.start()
    url = f"http://127.0.0.1:{ports.get(timeout=60)}"
    requests = [Request("<s> x", list(range(1, args.prompt_ids + 1))) for _ in range(args.requests)]
    settings = {"endpoints": [url], "max_concurrency": args.concurrency, "max_retries": 0}
    engines = {"ids in extra_body": ServerEngine("stub", engine_kwargs=settings)}
    engines["ids as prompt="] = IdsAsPromptArgument("stub", engine_kwargs=settings)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():
            warm = engine.generate(requests[: args.concurrency * 2], 8)  # threads and connections up
            assert all(c.error is None for c in warm), warm[0].error
        for _ in range(args.repeats):
            for name, engine in engines.items():  # interleaved: both see the same machine load
                started = time.perf_counter()
                completions = engine.generate(requests, 8)
                elapsed = time.perf_counter() - started
                assert all(c.error is None for c in completions), completions[0].error
                rates[name].append(len(requests) / elapsed)
    finally:
        stub.terminate()
    print(
        f"{args.requests} requests of {args.prompt_ids} token ids, {args.concurrency} in flight, "
        f"median of {args.repeats}:"
    )
    for name, values in rates.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:18s} {statistics.median(values):7.0f} requests/s   (runs: {runs})")
    ratio = statistics.median(rates["ids in extra_body"]) / statistics.median(rates["ids as prompt="])
    print(f"  ratio extra_body / prompt=: {ratio:.1f}x")


if __name__ == "__main__":
    main()
