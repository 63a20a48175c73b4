"""The MT-Bench judge: FastChat's prompts and [[rating]] parsing, against a local stub server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from llmslim.core.errors import LlmslimError
from llmslim.shorten.evaluate import Judge, Question, judge_answers, judge_messages, parse_rating, reference_number, checkable_accuracy
from llmslim.core.generate import Generation

PROMPTS = {
    "single-v1": {"system_prompt": "You are a helpful assistant.", "prompt_template": "[Q]{question}[A]{answer}"},
    "single-math-v1": {"system_prompt": "You are a helpful assistant.", "prompt_template": "[Q]{question}[R]{ref_answer_1}[A]{answer}"},
}


def test_parse_rating_like_mt_bench():
    assert parse_rating("good answer. Rating: [[7]]") == 7.0
    assert parse_rating("Rating: [[8.5]] then [[2]]") == 8.5
    assert parse_rating("Rating: [6]") == 6.0  # FastChat's backup pattern
    assert parse_rating("no score here") == -1.0


def test_math_questions_use_the_reference():
    m = judge_messages(Question("1+1?", 1, "math", "2"), "it is 2", PROMPTS)
    assert m[1]["content"] == "[Q]1+1?[R]2[A]it is 2"
    w = judge_messages(Question("a poem", 2, "writing"), "roses", PROMPTS)
    assert w[1]["content"] == "[Q]a poem[A]roses" and w[0]["role"] == "system"


def test_checkable_accuracy():
    assert reference_number("so the answer is\nThe total is 1,200.") == "1200"
    qs = [Question("q", 1, "math", "x = 4"), Question("q", 2, "writing", "7")]
    assert checkable_accuracy(qs, ["I get 4.", "7"]) == {"n": 1, "accuracy": 1.0}


@pytest.fixture
def stub_judge():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            answer = body["messages"][1]["content"].split("[A]")[-1]
            reply = {"choices": [{"message": {"content": f"fine. [[{min(len(answer), 10)}]]"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", seen
    server.shutdown()


def test_judge_against_stub(stub_judge):
    url, seen = stub_judge
    judge = Judge(url, "stub", prompts=PROMPTS)
    qs = [Question("q1", 1, "writing"), Question("q2", 2, "math", "42")]
    out = judge_answers(judge, qs, [Generation("q1", "abc", 3, True), Generation("q2", "fortytwo!", 5, True)])
    assert out["scores"] == [3.0, 9.0] and out["mean"] == 6.0 and out["unparsed"] == 0
    assert seen[0][0] == "/v1/chat/completions" and seen[0][1]["temperature"] == 0 and seen[0][1]["model"] == "stub"


def test_unreachable_judge_is_a_clean_error():
    judge = Judge("http://127.0.0.1:9/v1", "stub", prompts=PROMPTS, timeout=2, retries=1, backoff=0.01)
    with pytest.raises(LlmslimError, match="judge at"):
        judge.score(Question("q"), "a")


def test_judge_retries_then_resumes_from_its_journal(stub_judge, monkeypatch, tmp_path):
    """A transient failure is retried (with backoff); a run that fails for good keeps the
    judgments it got, and running it again asks only for the missing ones."""
    import urllib.error
    import urllib.request

    url, seen = stub_judge
    real = urllib.request.urlopen
    failures = {"left": 1}

    def flaky(req, timeout=None):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise urllib.error.URLError("connection reset")
        return real(req, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    judge = Judge(url, "stub", prompts=PROMPTS, retries=2, backoff=0.01)
    qs = [Question("q1", 1, "writing"), Question("q2", 2, "writing"), Question("q3", 3, "writing")]
    gens = [Generation(f"q{i}", "x" * i, i, True) for i in (1, 2, 3)]
    journal = tmp_path / "judgments.jsonl"
    assert judge_answers(judge, qs[:2], gens[:2], journal=journal)["scores"] == [1.0, 2.0]  # the first try failed
    assert len(seen) == 2 and len(journal.read_text().splitlines()) == 2
    failures["left"] = 10  # the endpoint is down: the third answer cannot be judged
    with pytest.raises(LlmslimError, match="after 3 tries"):
        judge_answers(judge, qs, gens, journal=journal)
    failures["left"] = 0
    out = judge_answers(judge, qs, gens, journal=journal)
    assert out["scores"] == [1.0, 2.0, 3.0] and len(seen) == 3  # only the third was asked again
