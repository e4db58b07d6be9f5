"""What clients of the proxy see: no secret in any byte, forwarded headers, who may read stats.

Real HTTP on 127.0.0.1: the fault-injection server's ``echo-key-{code}`` scenario echoes the
``Authorization`` header it got in its error text (as OpenAI's "Incorrect API key provided: ..."
does), and every response path of the proxy is driven against it; every client-visible byte (status
line aside: headers and body) is checked for the proxy's secrets.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from dynasor_client import Capabilities, RetryPolicy
from dynasor_client.proxy import KeyStore, ProxyConfig, ProxyServer
from dynasor_client.proxy._config import mask_credentials
from dynasor_client.proxy._errors import Redactor
from tests.support.faulty_server import FaultyServer

UPSTREAM_KEY = "sk-proxy-upstream-7c1d9e3b"
URL_USER, URL_PASSWORD = "proxy-user", "url-pass-5f8a2c"
TENANT_A, TENANT_B, ADMIN = "sk-tenant-a-11aa22", "sk-tenant-b-33bb44", "sk-admin-55cc66"
MESSAGES = [{"role": "user", "content": "Tom has 27 apples and buys 21 more. How many?"}]


@pytest.fixture
def faulty(faulty_server: FaultyServer) -> FaultyServer:
    faulty_server.reset()
    return faulty_server


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _visible(response: httpx.Response, body: bytes) -> bytes:
    """Everything a client receives but the status line: header names and values, and the body."""
    headers = b"".join(k + b": " + v + b"\r\n" for k, v in response.headers.raw)
    return headers + b"\r\n" + body


def _assert_clean(seen: bytes, secrets: list[str], what: str) -> None:
    for secret in secrets:
        for form in {secret, base64.b64encode(secret.encode()).decode()}:
            assert form.encode() not in seen, f"{what}: {form!r} reached the client: {seen[-600:]!r}"


async def _request(http: httpx.AsyncClient, url: str, body: dict[str, Any], key: str = "none") -> bytes:
    headers = {"authorization": f"Bearer {key}"}
    async with http.stream("POST", url, json=body, headers=headers) as response:
        content = await response.aread()
    return _visible(response, content)


def _bodies(route: str) -> list[tuple[str, dict[str, Any]]]:
    """Each response path: pass-through and a technique, non-streaming and streaming."""
    base: dict[str, Any] = (
        {"messages": MESSAGES} if route == "chat/completions" else {"prompt": "Tom has 27 apples."}
    )
    cases = []
    for model in ("faulty-model", "faulty-model+sc2"):
        for stream in (False, True):
            cases.append((f"{route} {model} stream={stream}", {**base, "model": model, "stream": stream}))
    return cases


async def _every_path(proxy: ProxyServer, http: httpx.AsyncClient) -> dict[str, bytes]:
    seen: dict[str, bytes] = {}
    for route in ("chat/completions", "completions"):
        for what, body in _bodies(route):
            seen[what] = await _request(http, f"{proxy.base_url}/{route}", body)
    models = await http.get(f"{proxy.base_url}/models", headers={"authorization": "Bearer none"})
    seen["models"] = _visible(models, models.content)
    return seen


# ---------------------------------------------------------------------------------------- redaction


def test_redactor_catches_plain_and_json_escaped_secrets_only() -> None:
    redactor = Redactor(["sk-long-secret-1", 'quote"secret-2', "short", None])
    assert redactor.too_short == 1 and bool(redactor)
    assert redactor.text("a sk-long-secret-1 b") == "a *** b"
    assert redactor.bytes(b'{"m": "quote\\"secret-2 and sk-long-secret-1"}') == b'{"m": "*** and ***"}'
    assert redactor.bytes(b"short stays") == b"short stays"  # too short: would mangle ordinary text
    assert not Redactor([None, ""])
    assert mask_credentials("http://u:p%40ss@host:8/v1") == "http://***@host:8/v1"
    assert mask_credentials("https://host/v1") == "https://host/v1"


@pytest.mark.parametrize("scenario", ["echo-key-401", "echo-key-400", "echo-key-500", "echo-key-200"])
async def test_an_echoed_upstream_key_reaches_no_client(faulty: FaultyServer, scenario: str) -> None:
    config = ProxyConfig(
        upstream=faulty.base_url(scenario), upstream_api_key=UPSTREAM_KEY, capabilities=Capabilities()
    )
    async with (
        ProxyServer(config, retry=RetryPolicy(max_attempts=1)) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        seen = await _every_path(proxy, http)
        stats = await http.get(f"{proxy.root_url}/dynasor/stats")
        seen["stats"] = _visible(stats, stats.content)
    generation = [r for r in faulty.requests(scenario) if r.path.endswith("completions")]
    assert generation and all(r.headers["authorization"] == f"Bearer {UPSTREAM_KEY}" for r in generation)
    for what, visible in seen.items():
        _assert_clean(visible, [UPSTREAM_KEY], f"{scenario} {what}")
    # The echo did reach the proxy and was relayed, redacted, on the paths that relay upstream text.
    relayed = [what for what, visible in seen.items() if b"Incorrect API key provided: Bearer ***" in visible]
    generation = {what for what, _ in _bodies("chat/completions") + _bodies("completions")}
    assert set(relayed) == generation | (set() if scenario == "echo-key-200" else {"models"}), relayed


async def test_upstream_url_credentials_show_nowhere(faulty: FaultyServer) -> None:
    port = faulty.port
    upstream = f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{port}/echo-key-400/v1"
    secrets = [URL_PASSWORD, f"{URL_USER}:{URL_PASSWORD}"]
    config = ProxyConfig(upstream=upstream, capabilities=Capabilities())
    assert config.upstream_display == f"http://***@127.0.0.1:{port}/echo-key-400/v1"
    async with (
        ProxyServer(config, retry=RetryPolicy(max_attempts=1)) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        seen = await _every_path(proxy, http)
        stats = await http.get(f"{proxy.root_url}/dynasor/stats")
        assert stats.json()["upstream"] == config.upstream_display
        seen["stats"] = _visible(stats, stats.content)
    basic = [
        r for r in faulty.requests("echo-key-400") if r.headers.get("authorization", "").startswith("Basic")
    ]
    assert basic  # the credentials went upstream (HTTP Basic), and the upstream echoed them
    for what, visible in seen.items():
        _assert_clean(visible, secrets, what)

    down = f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{_free_port()}/v1"
    config = ProxyConfig(upstream=down, upstream_api_key=UPSTREAM_KEY, capabilities=Capabilities())
    async with (
        ProxyServer(config, retry=RetryPolicy(max_attempts=1)) as proxy,
        httpx.AsyncClient(timeout=30) as http,
    ):
        seen = await _every_path(proxy, http)
        stats = await http.get(f"{proxy.root_url}/dynasor/stats")
        seen["stats"] = _visible(stats, stats.content)
    for what, visible in seen.items():
        if what != "stats":
            assert config.upstream_display.encode() in visible, what  # the 502 names the masked URL
        _assert_clean(visible, [*secrets, UPSTREAM_KEY], f"upstream down: {what}")


def test_the_startup_line_masks_url_credentials(faulty: FaultyServer) -> None:
    upstream = f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:{faulty.port}/ok/v1"
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "dynasor_client", "proxy", "--upstream", upstream, "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"-> http://***@127.0.0.1:{faulty.port}/ok/v1" in line, line
        proc.send_signal(signal.SIGTERM)  # perhaps before its handler is installed: any exit will do
        proc.wait(timeout=15)
        output = line + proc.stdout.read() + (proc.stderr.read() if proc.stderr else "")
        assert URL_PASSWORD not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------- stats


async def _raw_get(host: str, port: int, path: str, key: str) -> tuple[int, bytes]:
    """A GET with ``path`` exactly as written (no client-side ``..`` normalisation)."""
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_stats_show_a_key_only_its_own_spending_unless_admin(
    faulty: FaultyServer, tmp_path: Any
) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{TENANT_A} 100000\n{TENANT_B}\n{ADMIN} admin\n", encoding="utf-8")
    with_admin = KeyStore.from_file(keys_file)
    assert [a.admin for a in with_admin.accounts()] == [False, False, True] and with_admin.has_admin
    without_admin = KeyStore({TENANT_A: 100_000, TENANT_B: None})
    fp = {k: with_admin.authenticate(k).fingerprint for k in (TENANT_A, TENANT_B, ADMIN)}  # type: ignore[union-attr]
    for store in (with_admin, without_admin):
        config = ProxyConfig(upstream=faulty.base_url("ok"), keys=store, upstream_api_key=UPSTREAM_KEY)
        async with ProxyServer(config) as proxy, httpx.AsyncClient(timeout=30) as http:
            for key in (TENANT_A, TENANT_B):
                answer = await http.post(
                    f"{proxy.base_url}/chat/completions",
                    json={"model": "faulty-model", "messages": MESSAGES},
                    headers={"authorization": f"Bearer {key}"},
                )
                assert answer.status_code == 200
            for key, other in ((TENANT_A, TENANT_B), (TENANT_B, TENANT_A)):
                auth = {"authorization": f"Bearer {key}"}
                # httpx resolves the dot segments, as the openai SDK and curl do: the same route.
                for url in (
                    f"{proxy.root_url}/dynasor/stats",
                    f"{proxy.base_url}/models/../../dynasor/stats",
                ):
                    own = await http.get(url, headers=auth)
                    assert own.status_code == 200
                    assert own.json() == {"keys": {fp[key]: own.json()["keys"][fp[key]]}}
                    assert own.json()["keys"][fp[key]]["requests"] == 1
                    assert fp[other].encode() not in own.content and b"upstream" not in own.content
                status, body = await _raw_get(proxy.host, proxy.port, "/v1/models/../../dynasor/stats", key)
                assert fp[other].encode() not in body and b"upstream" not in body, (status, body)
            if store is with_admin:
                full = await http.get(
                    f"{proxy.root_url}/dynasor/stats", headers={"authorization": f"Bearer {ADMIN}"}
                )
                assert set(full.json()["keys"]) == set(fp.values())
                assert full.json()["requests"] == 2
            assert (await http.get(f"{proxy.root_url}/dynasor/stats")).status_code == 401


# ---------------------------------------------------------------------------------------- headers


async def test_only_allow_listed_headers_go_upstream(faulty: FaultyServer) -> None:
    sent = {
        "OpenAI-Organization": "org-of-the-proxy",
        "OpenAI-Project": "proj-of-the-proxy",
        "X-Request-Id": "req-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "User-Agent": "tests/1.0",
        "Cookie": "session=1",
        "X-Custom": "nope",
        "X-Stainless-Lang": "python",
        "X-Dynasor-Deadline-S": "30",
        "authorization": "Bearer good-key",
    }
    body = {"model": "faulty-model", "messages": MESSAGES}
    for auth, scenario in (("own", "ok"), ("forward", "auth")):
        config = ProxyConfig(
            upstream=faulty.base_url(scenario),
            upstream_api_key=UPSTREAM_KEY,
            upstream_auth=auth,  # type: ignore[arg-type]
        )
        async with ProxyServer(config) as proxy, httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(f"{proxy.base_url}/chat/completions", json=body, headers=sent)
            assert answer.status_code == 200
            models = await http.get(f"{proxy.base_url}/models", headers=sent)
            assert models.status_code == 200
        for seen in faulty.requests(scenario):
            assert seen.headers["x-request-id"] == "req-1" and seen.headers["user-agent"] == "tests/1.0"
            assert seen.headers["traceparent"].startswith("00-")
            for dropped in ("cookie", "x-custom", "x-stainless-lang", "x-dynasor-deadline-s"):
                assert dropped not in seen.headers, (auth, dropped)
            if auth == "own":  # the proxy's key: its organisation and project are not the client's to pick
                assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
                assert "openai-organization" not in seen.headers and "openai-project" not in seen.headers
            else:  # the client's own key: its own organisation and project
                assert seen.headers["authorization"] == "Bearer good-key"
                assert seen.headers["openai-organization"] == "org-of-the-proxy"
                assert seen.headers["openai-project"] == "proj-of-the-proxy"


# ---------------------------------------------------------------------------------------- logs


async def test_log_records_carry_no_echoed_key(
    faulty: FaultyServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that echoes the key it got makes the library log it (the retry warning quotes the
    error); while the proxy runs, every record is redacted: message, arguments and traceback."""
    config = ProxyConfig(
        upstream=faulty.base_url("echo-key-500"), upstream_api_key=UPSTREAM_KEY, capabilities=Capabilities()
    )
    retry = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01, jitter_s=0.0)
    caplog.set_level(logging.DEBUG)
    async with ProxyServer(config, retry=retry) as proxy, httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            f"{proxy.base_url}/chat/completions", json={"model": "faulty-model+sc2", "messages": MESSAGES}
        )
        assert answer.status_code == 500
        logging.getLogger("dynasor_client.test").error(
            "by hand: %s", UPSTREAM_KEY, exc_info=ValueError(UPSTREAM_KEY)
        )
    retried = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retried and all("Incorrect API key provided: Bearer ***" in r.getMessage() for r in retried)
    assert UPSTREAM_KEY not in caplog.text and "by hand: ***" in caplog.text
    for record in caplog.records:
        assert UPSTREAM_KEY not in record.getMessage() and UPSTREAM_KEY not in (record.exc_text or "")
    # Once the proxy is closed, its secrets are no longer redacted (nothing global stays behind).
    caplog.clear()
    logging.getLogger("dynasor_client.test").warning("after: %s", UPSTREAM_KEY)
    assert f"after: {UPSTREAM_KEY}" in caplog.text


# ---------------------------------------------------------------------------------------- --admin-key


async def test_admin_key_option_makes_a_key_admin(faulty: FaultyServer) -> None:
    from dynasor_client.cli import build_parser
    from dynasor_client.cli._proxy import build_config

    upstream = ["proxy", "--upstream", faulty.base_url("ok")]
    # Alone: the admin key is the only key. With --api-key: it is marked (its budget kept) or added.
    alone = build_config(build_parser().parse_args([*upstream, "--admin-key", ADMIN])).keys
    assert alone is not None and len(alone) == 1 and alone.authenticate(ADMIN).admin  # type: ignore[union-attr]
    args = build_parser().parse_args(
        [*upstream, "--api-key", TENANT_A, "--api-key", TENANT_B, "--key-token-budget", "500",
         "--admin-key", TENANT_B, "--admin-key", ADMIN]
    )  # fmt: skip
    keys = build_config(args).keys
    assert keys is not None and len(keys) == 3
    a, b, admin = (keys.authenticate(k) for k in (TENANT_A, TENANT_B, ADMIN))
    assert a is not None and b is not None and admin is not None
    assert (a.admin, b.admin, admin.admin) == (False, True, True)
    assert (a.budget.limit, b.budget.limit, admin.budget.limit) == (500, 500, None)
    with pytest.raises(ValueError, match="whitespace"):
        build_config(build_parser().parse_args([*upstream, "--admin-key", "two words"]))
    config = build_config(args)
    async with ProxyServer(config) as proxy, httpx.AsyncClient(timeout=30) as http:
        full = await http.get(f"{proxy.root_url}/dynasor/stats", headers={"authorization": f"Bearer {ADMIN}"})
        assert full.status_code == 200 and len(full.json()["keys"]) == 3 and "upstream" in full.json()
        own = await http.get(
            f"{proxy.root_url}/dynasor/stats", headers={"authorization": f"Bearer {TENANT_A}"}
        )
        assert own.status_code == 200 and list(own.json()) == ["keys"] and len(own.json()["keys"]) == 1
