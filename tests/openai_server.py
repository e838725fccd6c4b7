"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks (stdlib only).

`POST /v1/chat/completions` (and `/chat/completions`) answers deterministically from the last user
message: `expected(content)` says what. Faults are injected by configuration, on a body's first
arrival only (so retries succeed), chosen by a hash of the body: 429 with Retry-After, 500,
slow replies (past a client timeout), dropped connections and malformed bodies. "Unparseable"
answers are a property of the content (always the same reply), so they are cached like any other.

    with FakeOpenAI(faults=Faults(rate_limit=0.1)) as server:
        server.url            # http://127.0.0.1:PORT/v1
        server.requests       # [{"body", "t", "path", "authorization", "fault"}]
        server.max_in_flight

`answer_batch(server.url, "requests.jsonl", "results.jsonl")` plays the OpenAI Batch API /
`vllm run-batch`: it POSTs each request line's body to the server and writes the results file.

Run standalone (benchmarks): `python tests/openai_server.py` prints the URL and serves until killed.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    """Fractions of bodies (by hash) that get each fault on their first arrival."""

    rate_limit: float = 0.0
    retry_after: str = "0.2"  # value of the Retry-After header on 429s (seconds)
    server_error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 1.5
    drop: float = 0.0
    malformed: float = 0.0
    unparseable: float = 0.0  # fraction of contents always answered without a parseable tag
    delay: float = 0.0  # every reply waits this long (seconds)
    delay_per_token: float = 0.0  # and this long per prompt token (a server's prefill time)
    context: int | None = None  # prompt + max_tokens over this many tokens: 400 with OpenAI's message


def _unit(text: str, salt: str) -> float:
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:8], 16) / 0x100000000


def expected(content: str, unparseable: float = 0.0) -> tuple[str, object]:
    """(kind, value) the server answers for a user message: kind count/rating/domain/unparseable."""
    if unparseable and _unit(content, "unparseable") < unparseable:
        return "unparseable", None
    h = int(hashlib.sha256(content.encode()).hexdigest()[:8], 16)
    if "<count>" in content:
        return "count", h % 7
    if "[[" in content:
        return "rating", h % 10 + 1
    if "<domain>" in content:
        return "domain", "code" if re.search(r"\bdef |```", content) else "math"
    return "text", None


def reply_text(content: str, unparseable: float = 0.0) -> str:
    kind, value = expected(content, unparseable)
    if kind == "count":
        # Extra text and a decoy tag before the real (last) one, with loose spacing.
        return f"## Thoughts\nSeen a few places; <count>99</count> was a first guess.\n## Count\n<count> {value} </count>"
    if kind == "rating":
        return f"Standard technique [[1]] at first glance; on reflection\n[[ {value} ]]"
    if kind == "domain":
        return f"It asks for {value}. <domain>{value}</domain>"
    return "I cannot answer that in the requested format."


class FakeOpenAI:
    """The server, started in a daemon thread on a random free port (context manager)."""

    def __init__(self, faults: Faults | None = None, host: str = "127.0.0.1", port: int = 0,
                 count_tokens=None, record: bool = True) -> None:
        """`count_tokens(text) -> int` counts a prompt's tokens (usage, context, delays, `/tokenize`);
        default len(text) // 4. `record=False` keeps no request (`requests` stays empty, for
        benchmarks of millions of requests); `served` counts them either way (also GET /stats)."""
        self.faults = faults or Faults()
        self.count_tokens = count_tokens or (lambda text: len(text) // 4)
        self.record = record
        self.served = 0
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: dict[bytes, int] = {}  # sha1 of a body -> times it arrived
        self.tokenize = False  # serve POST /tokenize
        self.advertise = True  # say the context (max_model_len) in GET /v1/models
        self.structured = "ignore"  # response_format: ignore it, "refuse" it (400), or answer "json"
        self.models = ["fake"]  # ids listed by GET /v1/models
        # respond(body) -> (content, completion tokens, finish_reason) replaces the canned answers,
        # e.g. a model generating through transformers (`generating_server` in the tests).
        self.respond = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as real servers (uvicorn, vLLM) set it: otherwise a keep-alive reply
            # written in two pieces waits for the client's delayed ACK, ~15 ms per request here.
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":  # vLLM's readiness probe
                    return self._send(200, {})
                if self.path.rstrip("/") == "/stats":  # this server's own: chat requests that arrived
                    return self._send(200, {"requests": server.served})
                if self.path.rstrip("/") == "/v1/models":  # vLLM's shape: the context as max_model_len
                    models = [{"id": m, "object": "model", "owned_by": "curate-tests"} for m in server.models]
                    if server.faults.context is not None and server.advertise:
                        for model in models:
                            model["max_model_len"] = server.faults.context
                    return self._send(200, {"object": "list", "data": models})
                return self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") == "/tokenize" and server.tokenize:  # llama.cpp's and vLLM's
                    text = json.loads(raw).get("content") or json.loads(raw).get("prompt") or ""
                    n = server.count_tokens(text)
                    return self._send(200, {"tokens": list(range(n)), "count": n})
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._handle(raw)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _handle(self, raw: bytes) -> None:
                f = server.faults
                text = raw.decode("utf-8", "replace")
                digest = hashlib.sha1(raw).digest()
                with server.lock:
                    first = server.arrivals.get(digest, 0) == 0
                    server.arrivals[digest] = server.arrivals.get(digest, 0) + 1
                    server.served += 1
                fault = None
                if first:
                    u = _unit(text, "fault")
                    for name in ("rate_limit", "server_error", "slow", "drop", "malformed"):
                        p = getattr(f, name)
                        if u < p:
                            fault = name
                            break
                        u -= p
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                record = {"body": body, "raw": text, "t": time.monotonic(), "path": self.path,
                          "authorization": self.headers.get("Authorization"), "fault": fault}
                if server.record:
                    with server.lock:
                        server.requests.append(record)
                if body is None:
                    return self._send(400, {"error": {"message": "body is not JSON"}})
                content = body["messages"][-1]["content"]
                prompt_tokens = server.count_tokens(content)
                if f.context is not None and prompt_tokens + int(body.get("max_tokens") or 0) > f.context:
                    return self._send(400, {"error": {"message": (
                        f"This model's maximum context length is {f.context} tokens. However, you requested "
                        f"{prompt_tokens + int(body.get('max_tokens') or 0)} tokens ({prompt_tokens} in the messages, "
                        f"{int(body.get('max_tokens') or 0)} in the completion). Please reduce the length of the "
                        "messages or completion."), "type": "invalid_request_error", "code": "context_length_exceeded"}})
                if f.delay or f.delay_per_token:
                    time.sleep(f.delay + f.delay_per_token * prompt_tokens)
                if fault == "rate_limit":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": f.retry_after})
                if fault == "server_error":
                    return self._send(500, {"error": {"message": "boom"}})
                if fault == "slow":
                    time.sleep(f.slow_seconds)
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "malformed":
                    return self._send_raw(200, b'{"id": "x", "choices": [', "application/json")
                if server.respond is not None:
                    answer, out_tokens, finish = server.respond(body)
                    return self._send(200, {
                        "id": "chatcmpl-" + hashlib.sha1(raw).hexdigest()[:12], "object": "chat.completion",
                        "created": int(time.time()), "model": body.get("model", ""),
                        "choices": [{"index": 0, "finish_reason": finish,
                                     "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                                  "total_tokens": prompt_tokens + out_tokens}})
                answer = reply_text(content, f.unparseable)
                if "response_format" in body and server.structured == "refuse":
                    return self._send(400, {"error": {"message": "response_format is not supported by this server",
                                                      "type": "invalid_request_error"}})
                if "response_format" in body and server.structured == "json":
                    key = body["response_format"]["json_schema"]["name"]
                    found = re.findall(r"(?:<count>\s*|\[\[\s*|<domain>)([A-Za-z0-9]+)", answer)
                    value = found[-1] if found else None
                    answer = json.dumps({key: int(value) if value and value.isdigit() else value})
                self._send(200, {
                    "id": "chatcmpl-" + hashlib.sha1(raw).hexdigest()[:12], "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer) // 4,
                              "total_tokens": prompt_tokens + len(answer) // 4},
                })

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(self, status: int, data: bytes, ctype: str, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # the default 5 drops connections under 256 concurrent clients

            def handle_error(self, request, client_address) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away is normal here
                    super().handle_error(request, client_address)

        self.httpd = Server((host, port), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def bodies(self) -> list[str]:
        """The user message of every request that arrived, in order."""
        return [r["body"]["messages"][-1]["content"] for r in self.requests if r["body"]]


def generating_server(model, tokenizer, delay: float = 0.0, model_ids=("tiny",), **kwargs) -> FakeOpenAI:
    """The server answering with `model` through transformers (greedy, one prompt at a time),
    listing `model_ids` in /v1/models: a real OpenAI-compatible endpoint over a real model."""
    from curate.evaluation.generate import generate

    lock = threading.Lock()  # one generation at a time: the handler threads share the model

    def respond(body: dict) -> tuple[str, int, str]:
        time.sleep(delay)
        with lock:
            g = generate(model, tokenizer, [body["messages"][-1]["content"]], max_new_tokens=body["max_tokens"],
                         batch_size=1)[0][0]
        return g.text, g.n_tokens, "length" if g.truncated else "stop"

    server = FakeOpenAI(**kwargs)
    server.respond, server.models = respond, list(model_ids)
    return server


def answer_batch(url: str, requests_path, results_path, fail: frozenset[str] | set[str] = frozenset()) -> int:
    """Answer a Batch request file (`{"custom_id", "method", "url", "body"}` lines) by POSTing each
    body to the server at `url` (…/v1), writing the Batch output format
    (`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`). Custom ids in
    `fail` get an error line instead (as a batch whose request expired). Returns the line count."""
    import urllib.error
    import urllib.request
    from pathlib import Path
    from urllib.parse import urlsplit

    root = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    out = []
    for n, line in enumerate(Path(requests_path).read_text(encoding="utf-8").splitlines()):
        request = json.loads(line)
        cid = request["custom_id"]
        if cid in fail:
            out.append({"id": f"batch_req_{n}", "custom_id": cid, "response": None,
                        "error": {"code": "batch_expired", "message": "This request could not be executed."}})
            continue
        post = urllib.request.Request(root + request["url"], data=json.dumps(request["body"]).encode(),
                                      headers={"Content-Type": "application/json"}, method=request["method"])
        try:
            with urllib.request.urlopen(post, timeout=30) as reply:
                status, body = reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            status, body = err.code, json.loads(err.read() or b"{}")
        out.append({"id": f"batch_req_{n}", "custom_id": cid,
                    "response": {"status_code": status, "request_id": f"req_{n}", "body": body}, "error": None})
    Path(results_path).write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return len(out)


if __name__ == "__main__":
    # python tests/openai_server.py [PORT] [--generate MODEL_DIR --model-id ID ...]
    args = sys.argv[1:]
    port = int(args[0]) if args and args[0].isdigit() else 0
    if "--generate" in args:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        from curate.models import load_model

        ids = [args[i + 1] for i, a in enumerate(args) if a == "--model-id"]
        srv = generating_server(*load_model(args[args.index("--generate") + 1]), model_ids=ids or ("tiny",), port=port)
    else:
        srv = FakeOpenAI(port=port, record=False)
    with srv:
        print(srv.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
