"""A small OpenAI-compatible server over the project's own model layer (stdlib http.server):
`POST /v1/chat/completions`, `GET /v1/models`, `GET /health`. For trying the HTTP backend
locally and for its tests; one generation at a time (a lock), greedy unless temperature > 0.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


def _prompt_text(tokenizer, messages: list[dict]) -> tuple[str, bool]:
    """(text, already rendered?) for a message list: one user turn goes through `generate`'s
    own rendering; longer conversations through the chat template (or joined as plain text)."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return str(messages[0].get("content", "")), False
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    return "\n".join(str(m.get("content", "")) for m in messages), True


def make_handler(model, tokenizer, model_name: str, api_key: str | None = None, max_tokens_cap: int = 2048):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # route the stdlib's stderr prints through logging
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error" if code < 500 else "server_error"}})

        def _authorized(self) -> bool:
            if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                self._error(401, "missing or wrong API key")
                return False
            return True

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", ""):
                return self._send(200, {"status": "ok"})
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                if not self._authorized():
                    return None
                return self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "llmslim"}]})
            return self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}")
            if not self._authorized():
                return None
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                messages = body["messages"]
                if not isinstance(messages, list) or not messages:
                    raise ValueError("'messages' must be a non-empty list")
                max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
                temperature = float(body.get("temperature", 0.0) or 0.0)
                seed = int(body.get("seed", 0) or 0)
            except (ValueError, KeyError, TypeError) as err:
                return self._error(400, f"bad request: {err}")
            if max_tokens < 1:
                return self._error(400, "max_tokens must be >= 1")
            from llmslim.core.generate import generate

            text, rendered = _prompt_text(tokenizer, messages)
            with lock:
                g = generate(model, tokenizer, [text], max_new_tokens=min(max_tokens, max_tokens_cap), batch_size=1,
                             chat=False if rendered else None, do_sample=temperature > 0,
                             temperature=temperature or 1.0, seed=seed)[0]
                n_prompt = len(tokenizer(text if rendered else _render(tokenizer, text), add_special_tokens=False).input_ids)
            return self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                             "finish_reason": "stop" if g.finished else "length"}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": g.n_tokens, "total_tokens": n_prompt + g.n_tokens},
            })

    return Handler


def _render(tokenizer, text: str) -> str:
    from llmslim.core.generate import render_prompt

    return render_prompt(tokenizer, text)


def make_server(model, tokenizer, model_name: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> ThreadingHTTPServer:
    """A bound server (port 0 picks a free port: read `server.server_address[1]`)."""
    server = ThreadingHTTPServer((host, port), make_handler(model, tokenizer, model_name, api_key))
    server.daemon_threads = True
    return server
