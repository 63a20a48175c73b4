"""The HTTP backend against a real server process on loopback: `llmslim budget serve` on a tiny
random model, started as a subprocess. Its answers must equal local generation on the same model."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from llmslim.budget import prompts as P
from llmslim.budget.backends import HTTPBackend, HTTPError, LocalBackend
from llmslim.budget.counting import Counter
from llmslim.budget.questions import Question
from llmslim.budget.run import Settings, run_mode

KEY_ENV = "LLMSLIM_TEST_API_KEY"


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", LLMSLIM_TEST_API_KEY="sekrit", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmslim", "budget", "serve", str(tiny_llama_dir), "--port", "0", "--name", "tiny",
         "--device", "cpu", "--dtype", "float32", "--api-key-env", KEY_ENV, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline and not line.startswith("serving"):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stderr.read()[-2000:]}")
        assert line.startswith("serving tiny on http://127.0.0.1:"), line
        yield line.split(" on ")[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def local(tiny_llama_dir):
    from llmslim.core.load import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    return loaded


def test_http_answers_equal_local_generation(server, local, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sekrit")
    prompts = [P.cot("w1 w2 w3 ?"), P.budgeted("w4 w5", 10), P.estimate("w6 w7 w8")]
    http = HTTPBackend(server, "tiny", api_key_env=KEY_ENV, concurrency=3, retries=0, timeout=30)
    got = http.complete(prompts, 12)
    want = LocalBackend(local.model, local.tokenizer, batch_size=1).complete(prompts, 12)
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.n_tokens for g in got] == [w.n_tokens for w in want]
    assert [g.finished for g in got] == [w.finished for w in want]
    assert all(g.prompt_tokens and g.prompt_tokens > 5 for g in got)


def test_http_backend_runs_a_mode_end_to_end(server, local, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sekrit")
    qs = [Question(str(i), f"w{i} w{i + 1}", str(i), "number") for i in range(4)]
    http = HTTPBackend(server, "tiny", api_key_env=KEY_ENV, concurrency=2, retries=1, timeout=30)
    summary, rows = run_mode(http, Counter(local.tokenizer), qs, "tale-ep", Settings(max_new_tokens=6, estimate_max_tokens=4, default_budget=33))
    assert summary["n"] == 4 and len(rows) == 4
    # a random model never writes [[N]]: every budget is the stated default, never -1
    assert all(r["budget"] == 33 and r["budget_parsed"] is False for r in rows)
    assert all("use less than 33 tokens" in r["prompt"] for r in rows)
    # the estimator's calls are paid for too: counted once each, on top of the answers
    assert all(r["estimate_out_tokens"] >= 1 for r in rows)
    assert summary["out_tokens_total"] == sum(r["out_tokens"] + r["estimate_out_tokens"] for r in rows)


def test_wrong_key_is_not_retried(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong")
    http = HTTPBackend(server, "tiny", api_key_env=KEY_ENV, retries=3, backoff=5.0)
    t0 = time.time()
    with pytest.raises(HTTPError, match="401"):
        http.complete(["hello"], 4)
    assert time.time() - t0 < 4  # 401 is final: no backoff sleeps


def test_models_route(server):
    req = urllib.request.Request(server + "/models", headers={"Authorization": "Bearer sekrit"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "tiny"


def test_unreachable_endpoint_retries_with_backoff_then_fails():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = HTTPBackend(f"http://127.0.0.1:{port}/v1", "x", retries=2, backoff=0.2, timeout=2)
    t0 = time.time()
    with pytest.raises(HTTPError, match="after 3 attempts"):
        http.complete(["hi"], 4)
    assert time.time() - t0 >= 0.2 * (0.5 + 1.0)  # two jittered sleeps: 0.2*[.5,1] + 0.4*[.5,1]


def test_timeout_is_enforced(server, monkeypatch):
    # a server that accepts but never answers: the request must give up after `timeout`
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        http = HTTPBackend(f"http://127.0.0.1:{port}/v1", "x", retries=0, timeout=0.5)
        t0 = time.time()
        with pytest.raises(HTTPError, match=r"did not answer within --timeout 0.5s \(after 1 attempts\)"):
            http.complete(["hi"], 4)
        assert time.time() - t0 < 5
