"""The ``dynasor-client`` command, run as a real subprocess against real servers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx

from dynasor_client import LocalLlamaServer
from dynasor_client.cli import main
from tests.support.faulty_server import FaultyServer

CLI = [sys.executable, "-m", "dynasor_client"]


def _env() -> dict[str, str]:
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_serve_local_serves_until_terminated() -> None:
    proc = subprocess.Popen(
        [*CLI, "serve-local", "--n-parallel", "2"], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
        assert match, f"no URL in {line!r}"
        base_url = match.group(1)
        models = httpx.get(f"{base_url}/models", timeout=5).json()
        assert models["data"][0]["id"] == "smollm2-135m-instruct"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        # The llama.cpp child went with it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base_url}/models", timeout=0.5)
            except httpx.TransportError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the server still answers after serve-local exited")
    finally:
        proc.kill()
        proc.wait()


def test_generate_and_capabilities_against_local_server(local_server: LocalLlamaServer) -> None:
    out = subprocess.run(
        [*CLI, "generate", "--endpoint", local_server.base_url, "-n", "2", "--max-tokens", "6", "Hello"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=True,
    ).stdout
    assert out.count("--- choice") == 2
    assert re.search(r"usage \d+ prompt \+ \d+ completion tokens", out)

    caps = subprocess.run(
        [*CLI, "capabilities", "--endpoint", local_server.base_url],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=True,
    ).stdout
    parsed = json.loads(caps)
    assert parsed["model"] == local_server.model
    assert parsed["max_n"] == local_server.n_parallel
    assert parsed["token_id_prompts"] is True


def test_errors_are_reported_not_raised(capsys: object) -> None:
    with FaultyServer() as server:
        code = main(["generate", "--endpoint", server.base_url("status-400-99"), "--model", "m", "Hi"])
    assert code == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "HTTP 400" in err and "Traceback" not in err
