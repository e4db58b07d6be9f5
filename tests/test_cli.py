"""The ``dynasor-client`` command, run as a real subprocess against real servers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dynasor_client import Capabilities, LocalLlamaServer
from dynasor_client.cli import build_parser, main
from dynasor_client.cli._proxy import build_config
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


# --- proxy start-up validation: refused before serving, with a message and no traceback ------------

UPSTREAM = ["proxy", "--upstream", "http://127.0.0.1:1/v1"]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*UPSTREAM, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_proxy_refuses_a_timeout_that_is_not_positive(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "argument --timeout" in _refused([f"--timeout={timeout}"], capsys)


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_proxy_refuses_a_port_out_of_range(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "argument --port" in _refused([f"--port={port}"], capsys)


def test_proxy_port_out_of_range_exits_cleanly_as_a_command() -> None:
    done = subprocess.run(
        [*CLI, *UPSTREAM, "--port", "99999"], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert done.returncode == 2
    assert "0..65535" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"max_n": "abc"}', "'max_n' must be an integer or null"),
        ('{"max_n": 0}', "'max_n' must be >= 1"),
        ('{"chat_template": "jinja"}', "'chat_template' must be 'apply-template'"),
        ('{"assistant_prefill": "yes"}', "'assistant_prefill' must be true or false"),
        ('{"max_top_logprobs": true}', "'max_top_logprobs' must be an integer"),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "cannot read capabilities"),
    ],
)
def test_proxy_refuses_bad_capabilities(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "caps.json"
    path.write_text(content, encoding="utf-8")
    assert message in _refused(["--capabilities", str(path)], capsys)
    assert "argument --capabilities" in _refused(["--capabilities", str(tmp_path / "absent.json")], capsys)


def test_proxy_reads_a_capabilities_file_as_the_capabilities_command_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "caps.json"
    written = {"model": "m", **dataclasses.asdict(Capabilities(max_n=4, chat_template="apply-template"))}
    path.write_text("\ufeff" + json.dumps(written), encoding="utf-8")
    args = build_parser().parse_args([*UPSTREAM, "--capabilities", str(path)])
    assert build_config(args).capabilities == Capabilities(max_n=4, chat_template="apply-template")


def test_proxy_keys_file_with_a_bom_accepts_its_first_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("\ufeffsk-first-key 100\nsk-second-key\n", encoding="utf-8")
    args = build_parser().parse_args([*UPSTREAM, "--api-keys-file", str(path)])
    keys = build_config(args).keys
    assert keys is not None and len(keys) == 2
    first = keys.authenticate("sk-first-key")
    assert first is not None and first.budget.limit == 100
    assert keys.authenticate("\ufeffsk-first-key") is None


def test_proxy_refuses_a_key_listed_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# keys\nsk-dup-key-77 100\nsk-other\nsk-dup-key-77 5000\n", encoding="utf-8")
    assert main([*UPSTREAM, "--api-keys-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: duplicate key (first on line 2)" in err
    assert "sk-dup-key-77" not in err and "Traceback" not in err


def test_version_and_help_name_the_package_and_show_defaults() -> None:
    from dynasor_client import __version__

    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, env=_env(), check=True)
    assert version.stdout.strip() == f"dynasor-client {__version__}"
    top = subprocess.run([*CLI, "--help"], capture_output=True, text=True, env=_env(), check=True)
    assert "OpenAI-compatible server" in top.stdout
    assert "The ``dynasor-client`` command" not in top.stdout
    batch = subprocess.run(
        [*CLI, "bench", "batch", "--help"], capture_output=True, text=True, env=_env(), check=True
    )
    # Nested subcommands get the formatter too, and a default of 0 is shown (0 == False in Python).
    assert re.search(r"--seed SEED\s+.*\(default: 0\)", " ".join(batch.stdout.split()))
    assert "dynasor_client." not in batch.stdout, "help points users at private modules"
