"""JudgeAnnotator against a real local HTTP server speaking the OpenAI chat-completions protocol."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from safealign.config import load_settings
from safealign.data.annotators import make_annotator
from safealign.data.judge import JudgeAnnotator, parse_scores
from safealign.errors import ServiceError

ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]
GOOD = {"politeness": 0.9, "meaningfulness": 0.7, "actionability": 0.6, "safety": 1.0}


class JudgeServer:
    """Replies from a script: each entry is ('content', text) | ('status', code) | ('sleep', seconds)
    | ('raw', body). When the script runs out it answers GOOD. Records every request body and header."""

    def __init__(self) -> None:
        self.script: list[tuple[str, object]] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": "not found"})
                    return
                kind, value = server.script.pop(0) if server.script else ("content", json.dumps(GOOD))
                if kind == "sleep":
                    time.sleep(float(value))
                    kind, value = "content", json.dumps(GOOD)
                if kind == "status":
                    self._send(int(value), {"error": {"message": "scripted failure"}})
                elif kind == "raw":
                    self._send_bytes(200, str(value).encode())
                else:
                    self._send(200, {
                        "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": value}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    })

            def _send(self, code: int, payload: dict) -> None:
                self._send_bytes(code, json.dumps(payload).encode())

            def _send_bytes(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[JudgeServer]:
    srv = JudgeServer()
    yield srv
    srv.close()


def judge(server: JudgeServer, tmp_path, **kw) -> JudgeAnnotator:
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff_s", 0.01)
    return JudgeAnnotator(
        server.base_url, "test-judge", ASPECTS + ["humour"], cache_path=tmp_path / "c.jsonl", **kw
    )


def test_scores_parsed_and_request_is_chat_completions(server, tmp_path):
    j = judge(server, tmp_path, api_key="sekret")
    out = j.annotate("How do I boil an egg?", "benign", "Boil it for 6 minutes.")
    assert out == {**GOOD, "humour": None}  # an aspect without a rubric is not asked and stays None
    body = server.requests[0]
    assert body["model"] == "test-judge" and body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "How do I boil an egg?" in body["messages"][1]["content"]
    assert "humour" not in body["messages"][0]["content"]
    assert server.headers[0]["Authorization"] == "Bearer sekret"


def test_cache_avoids_second_request_and_survives_restart(server, tmp_path):
    j = judge(server, tmp_path)
    first = j.annotate("p", "benign", "r")
    assert j.annotate("p", "benign", "r") == first
    assert len(server.requests) == 1
    fresh = judge(server, tmp_path)  # a new process reads the on-disk cache
    assert fresh.annotate("p", "benign", "r") == first
    assert len(server.requests) == 1
    fresh.annotate("p", "benign", "another reply")  # different response -> different key
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "bad",
    [
        "Sure, the scores are high!",  # no JSON at all
        '{"politeness": 0.9, "meaningfulness": 0.7,',  # truncated JSON
        '{"politeness": 0.9, "meaningfulness": 0.7, "actionability": 0.6}',  # missing aspect
        '{"politeness": 1.5, "meaningfulness": 0.7, "actionability": 0.6, "safety": 1}',  # out of range
        '{"politeness": "high", "meaningfulness": 0.7, "actionability": 0.6, "safety": 1}',  # not a number
    ],
)
def test_malformed_reply_is_retried_then_succeeds(server, tmp_path, bad):
    server.script = [("content", bad)]
    j = judge(server, tmp_path)
    assert j.annotate("p", "adversarial", "r")["safety"] == 1.0
    assert len(server.requests) == 2


def test_persistently_malformed_reply_is_a_clear_error(server, tmp_path):
    missing = '{"politeness": 0.9, "meaningfulness": 0.7, "actionability": 0.6}'
    server.script = [("content", missing)] * 3
    j = judge(server, tmp_path, retries=2)
    with pytest.raises(ServiceError, match=r"after 3 attempt\(s\).*lacks aspect 'safety'"):
        j.annotate("p", "adversarial", "r")
    assert len(server.requests) == 3
    assert not (tmp_path / "c.jsonl").exists()  # failures are never cached


def test_fenced_json_with_prose_is_accepted(server, tmp_path):
    server.script = [("content", "Here you go:\n```json\n" + json.dumps(GOOD) + "\n```\nThanks")]
    assert judge(server, tmp_path).annotate("p", "benign", "r")["politeness"] == 0.9


def test_server_error_retried_client_error_not(server, tmp_path):
    server.script = [("status", 503), ("status", 429)]
    assert judge(server, tmp_path).annotate("p", "benign", "r")["meaningfulness"] == 0.7
    assert len(server.requests) == 3
    server.script = [("status", 401)]
    with pytest.raises(ServiceError, match="HTTP 401"):
        judge(server, tmp_path).annotate("p", "benign", "other")
    assert len(server.requests) == 4  # no retry on a client error


def test_non_chat_body_is_retried(server, tmp_path):
    server.script = [("raw", '{"unexpected": true}'), ("raw", "not json at all")]
    assert judge(server, tmp_path).annotate("p", "benign", "r")["safety"] == 1.0
    assert len(server.requests) == 3


def test_timeout_is_retried_then_raised(server, tmp_path):
    server.script = [("sleep", 1.0)] * 2
    j = judge(server, tmp_path, timeout_s=0.2, retries=1)
    with pytest.raises(ServiceError, match="within 0.2s"):
        j.annotate("p", "benign", "r")
    assert len(server.requests) == 2


def test_timeout_then_success(server, tmp_path):
    server.script = [("sleep", 1.0)]
    assert judge(server, tmp_path, timeout_s=0.2, retries=1).annotate("p", "benign", "r")["safety"] == 1.0


def test_unreachable_endpoint(tmp_path):
    j = JudgeAnnotator("http://127.0.0.1:9/v1", "m", ASPECTS, retries=0, timeout_s=1.0)
    with pytest.raises(ServiceError, match="cannot reach judge|within"):
        j.annotate("p", "benign", "r")


def test_parse_scores_rejects_nan_and_bool():
    with pytest.raises(ValueError, match="outside"):
        parse_scores('{"safety": NaN}', ["safety"])
    with pytest.raises(ValueError, match="not a number"):
        parse_scores('{"safety": true}', ["safety"])


def test_make_annotator_builds_judge_from_settings(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "k123")
    settings = load_settings(
        None,
        [
            "data.annotator.kind=judge",
            f"data.annotator.judge_base_url={server.base_url}",
            "data.annotator.judge_model=m7",
            "data.annotator.judge_api_key_env=MY_JUDGE_KEY",
            f"data.annotator.judge_cache={tmp_path / 'judge.jsonl'}",
        ],
    )
    ann = make_annotator(settings)
    assert isinstance(ann, JudgeAnnotator)
    assert ann.annotate("p", "benign", "r")["actionability"] == 0.6
    assert server.requests[0]["model"] == "m7"
    assert server.headers[0]["Authorization"] == "Bearer k123"
    assert (tmp_path / "judge.jsonl").exists()
