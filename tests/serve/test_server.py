"""``marft serve`` for real: a server process on loopback, the ``openai`` client against it,
refused requests, streaming, a client that leaves, SIGTERM while a request is in flight."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import httpx
import openai
import pytest

from marft.serve import load_team
from marft.serve.app import create_app
from marft.serve.openai_api import ServeLimits
from tests.conftest import cli_in_process
from tests.serve.conftest import QUICK


def test_openai_client_reply_stream_and_models(demo_run, serve):
    server = serve(str(demo_run), "--set", "run.progress=false")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    name = demo_run.resolve().name
    assert [m.id for m in client.models.list()] == [name, f"{name}/speaker", f"{name}/listener"]
    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "secret red"}])
    extra = reply.model_extra["marft"]
    assert [m["role"] for m in extra["messages"]] == ["speaker", "listener"]
    assert reply.choices[0].message.content == extra["messages"][-1]["text"]
    assert reply.usage.completion_tokens == sum(extra["tokens"].values())
    assert reply.usage.prompt_tokens == sum(m["prompt_tokens"] for m in extra["messages"])
    chunks = list(
        client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "secret blue"}], stream=True
        )
    )
    events = [c.model_extra["marft"] for c in chunks]
    assert [e["event"] for e in events] == ["message", "message", "done"]
    assert [e["role"] for e in events[:2]] == ["speaker", "listener"]
    assert chunks[-1].choices[0].delta.content == events[1]["text"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    solo = client.chat.completions.create(
        model=f"{name}/listener", messages=[{"role": "user", "content": "secret red"}]
    )
    assert [m["role"] for m in solo.model_extra["marft"]["messages"]] == ["listener"]


BAD = [
    (b"not json", 400),
    (b"[1, 2]", 400),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400),  # no model
    (json.dumps({"model": "TEAM/ghost", "messages": [{"role": "user", "content": "x"}]}).encode(), 404),
    (json.dumps({"model": "other", "messages": [{"role": "user", "content": "x"}]}).encode(), 404),
    (json.dumps({"model": "TEAM", "messages": []}).encode(), 400),
    (json.dumps({"model": "TEAM", "messages": [{"role": "system", "content": "x"}]}).encode(), 400),
    (json.dumps({"model": "TEAM", "messages": [{"role": "user", "content": "x" * 300}]}).encode(), 400),
    (
        json.dumps(
            {"model": "TEAM", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}
        ).encode(),
        400,
    ),
    (
        json.dumps(
            {"model": "TEAM", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}
        ).encode(),
        400,
    ),
    (json.dumps({"model": "TEAM", "messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), 400),
    (
        json.dumps(
            {"model": "TEAM", "messages": [{"role": "user", "content": "x"}], "temperature": 0.2}
        ).encode(),
        400,
    ),
    (
        json.dumps(
            {"model": "TEAM", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}
        ).encode(),
        400,
    ),
    (
        json.dumps(
            {"model": "TEAM", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
        ).encode(),
        400,
    ),
    (b"{" + b" " * 5000 + b"}", 413),
]


def test_bad_requests_get_4xx_and_the_server_goes_on(serve):
    server = serve("demo", "--base", "--max-input-chars", "200", "--max-body-bytes", "4096")
    for body, status in BAD:
        r = httpx.post(server.url + "/v1/chat/completions", content=body.replace(b"TEAM", b"demo"))
        assert r.status_code == status, (body[:80], r.text)
        error = r.json()["error"]
        assert error["message"] and error["type"]
    assert httpx.get(server.url + "/v1/nothing").status_code == 404
    good = {"model": "demo", "messages": [{"role": "user", "content": "secret red"}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=good, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
    assert server.health()["failures"] == 0


def test_other_hosts_need_an_api_key(capsys):
    proc = cli_in_process(capsys, "serve", "demo", "--base", "--host", "0.0.0.0")
    assert proc.returncode == 2 and "--api-key" in proc.stderr


def test_api_key_is_checked():
    from fastapi.testclient import TestClient

    team = load_team("demo", base=True, overrides=QUICK)
    with TestClient(create_app(team, ServeLimits(), api_key="sekret")) as client:
        body = {"model": "demo", "messages": [{"role": "user", "content": "secret red"}]}
        assert client.post("/v1/chat/completions", json=body).status_code == 401
        assert client.get("/v1/models").status_code == 401
        ok = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        assert client.get("/").status_code == 200  # the page asks for the key itself


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_frees_its_place(serve, stream):
    """The client gives up during the speaker's 1 s call: its task leaves the batch before the
    next call, so the listener's row is never generated."""
    server = serve("--delay", "1.0", script="slow_server.py")
    body = {"model": "demo", "stream": stream, "messages": [{"role": "user", "content": "secret red"}]}
    url = server.url + "/v1/chat/completions"
    with pytest.raises(httpx.ReadTimeout), httpx.stream("POST", url, json=body, timeout=0.5) as r:
        r.read()
    deadline = time.monotonic() + 20
    while server.health()["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # a listener call, had one started, would have ended by now
    health = server.health()
    assert health["pending"] == 0 and health["calls"] == 1 and health["rows"] == 1, health


def test_sigterm_drains_the_request_in_flight(serve):
    server = serve("--delay", "1.0", script="slow_server.py")
    result = {}

    def ask():
        body = {"model": "demo", "messages": [{"role": "user", "content": "secret red"}]}
        result["r"] = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)

    client = threading.Thread(target=ask)
    client.start()
    deadline = time.monotonic() + 20
    while not server.health()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    code = server.stop()  # SIGTERM with the request in flight (two 1 s generation calls)
    client.join(30)
    # uvicorn re-raises the signal once it has drained: the process ends by SIGTERM, not by a crash
    assert code in (0, -signal.SIGTERM)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert [m["role"] for m in r.json()["marft"]["messages"]] == ["speaker", "listener"]


def test_serve_without_the_extra_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    proc = cli_in_process(capsys, "serve", "demo", "--base")
    assert proc.returncode == 2 and "marft[serve]" in proc.stderr
