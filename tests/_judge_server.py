"""A real OpenAI-compatible chat server on 127.0.0.1 for the LLM-judge tests: it answers pairwise judgments from the
embedded task's gold reward (so agreement with gold is known), over HTTP the official ``openai`` client talks to.

Knobs for the failure paths: ``key`` (401 unless the Bearer token matches), ``fail_first`` requests answered with
``fail_status`` before the real answers (retries), ``garbage`` (answers that name no response), ``first_bias``
(share of judgments answered "1" whatever the texts: a position-biased judge), ``delay_s`` (seconds before each
answer: a slow endpoint, so a judging stage can be killed part-way).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alignloop.core.synthetic import gold_reward

_PAIR = re.compile(r"## Instruction\n(.*?)\n\n## Response 1\n(.*?)\n\n## Response 2\n(.*?)\n\nWhich response", re.S)


class GoldJudgeServer:
    def __init__(self, *, model: str = "gold-judge", key: str | None = None, fail_first: int = 0,
                 fail_status: int = 429, garbage: bool = False, first_bias: float = 0.0, delay_s: float = 0.0):
        self.model, self.key, self.fail_first, self.fail_status = model, key, fail_first, fail_status
        self.delay_s = delay_s
        self.garbage, self.first_bias = garbage, first_bias
        self.requests = 0  # chat completion requests received, failed ones included
        self.answered = 0  # of them answered with a verdict
        self.authorization: set[str] = set()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "GoldJudgeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def verdict(self, content: str) -> str:
        if self.garbage:
            return "I cannot decide."
        m = _PAIR.search(content)
        if m is None:
            return "The message is not a pairwise judgment."
        instruction, r1, r2 = m.groups()
        if self.first_bias and int(hashlib.md5(content.encode()).hexdigest(), 16) % 1000 < self.first_bias * 1000:
            return "1"
        return "1" if gold_reward(instruction, r1) >= gold_reward(instruction, r2) else "2"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests += 1
                    n = server.requests
                    server.authorization.add(self.headers.get("Authorization", ""))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if server.key is not None and self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
                if body.get("model") != server.model:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist"}})
                if n <= server.fail_first:
                    return self._send(server.fail_status, {"error": {"message": "try again"}}, {"Retry-After": "0"})
                answer = server.verdict(body["messages"][-1]["content"])
                time.sleep(server.delay_s)
                with server._lock:
                    server.answered += 1
                self._send(200, {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": server.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        return Handler
