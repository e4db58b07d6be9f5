"""What a newcomer meets first: OPENAI_BASE_URL read by Endpoint and the CLI, help texts that name
no private module, the package's licence metadata."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dynasor_client import Endpoint
from tests.support.faulty_server import FaultyServer

ROOT = Path(__file__).resolve().parents[1]


async def test_endpoint_reads_openai_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8123/v1/")
    async with Endpoint() as endpoint:
        assert endpoint.base_url == "http://127.0.0.1:8123/v1"
    async with Endpoint("http://127.0.0.1:9/v1") as endpoint:  # an explicit URL wins
        assert endpoint.base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        Endpoint()
    monkeypatch.setenv("OPENAI_BASE_URL", "gpu-box:8000")
    with pytest.raises(ValueError, match="http:// or https://"):
        Endpoint()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynasor_client", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_endpoint_defaults_to_openai_base_url(faulty_server: FaultyServer) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    missing = _cli("capabilities", env=env)
    assert missing.returncode == 2 and "--endpoint" in missing.stderr
    found = _cli("capabilities", env={**env, "OPENAI_BASE_URL": faulty_server.base_url("ok")})
    assert found.returncode == 0, found.stderr
    assert '"model"' in found.stdout or "faulty-model" in found.stdout


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_help_texts_name_no_private_module() -> None:
    from dynasor_client.cli import build_parser

    private = re.compile(r"(^|[\s(`'\"/.])_[a-z]\w*(\.py)?|\.\_[a-z]")
    texts = []
    for parser in _parsers(build_parser()):
        texts += [parser.description or "", parser.epilog or ""]
        texts += [action.help or "" for action in parser._actions if action.help is not argparse.SUPPRESS]
    offending = [t for t in texts if private.search(t)]
    assert not offending, offending
    assert len(texts) > 100  # every command's options were read


def test_licence_is_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"] and (ROOT / "LICENSE").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])
