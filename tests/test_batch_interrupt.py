"""Ctrl-C during ``run_batch_sync(..., save_to=...)``: the finished results come back and stay in the
file, the programs cut short are recorded as cancelled before the file closes, and nothing is
written to it afterwards (it used to print "ValueError: I/O operation on closed file" from the
cancelled programs' callbacks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

CHILD = textwrap.dedent("""
    import asyncio, sys
    from dynasor_client import Endpoint, StopReason, as_program, run_batch_sync
    from dynasor_client.program import algorithm

    @algorithm
    async def answers(i, *, context):
        context.report(1.0, 1, str(i))
        return context.result(str(i), StopReason.CONFIDENT)

    @algorithm
    async def never_finishes(*, context):
        await asyncio.Event().wait()

    programs = [as_program(answers, 0), as_program(never_finishes), as_program(never_finishes)]
    batch = run_batch_sync(Endpoint("http://127.0.0.1:9/v1"), programs, save_to=sys.argv[1], progress=False)
    print("RESULT", batch.interrupted, batch.finished, len(batch), batch.answers()[0], flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and FIFOs")
def test_ctrl_c_with_save_to(tmp_path: Path) -> None:
    # save_to is a FIFO: reading its first line is the observable event "a result was saved";
    # Ctrl-C is sent right then, while two programs are still running.
    fifo = tmp_path / "results.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []

    def read() -> None:
        with fifo.open(encoding="utf-8") as saved:  # blocks until the child opens it
            lines.append(saved.readline())
            os.kill(proc.pid, signal.SIGINT)
            lines.extend(saved)  # until the child closes it

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if reader.is_alive():  # the child died before opening the FIFO: release the reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
    assert "closed file" not in err and "Traceback" not in err, err[-3000:]
    assert "RESULT True 1 3 0" in out, (out, err[-3000:])
    records = sorted((json.loads(line) for line in lines), key=lambda r: r["index"])
    assert (records[0]["index"], records[0]["answer"], records[0]["stop_reason"]) == (0, "0", "confident")
    # The two cut short are recorded as cancelled before the file closed.
    assert [(r["index"], r["error"].split(":")[0]) for r in records[1:]] == [
        (1, "ProgramCancelled"),
        (2, "ProgramCancelled"),
    ]
