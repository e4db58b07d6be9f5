"""A symbolic-check worker process (run as a script by :mod:`._symbolic`, never imported).

Protocol on stdin/stdout, one line each way: the worker prints ``ready`` once math-verify is loaded
and warm, then reads ``[a, b]`` as JSON and answers ``1`` (equal) or ``0`` (not equal, unparsable,
or math-verify raised). It imports nothing from dynasor_client (a fresh worker starts in well under
a second) and exits when stdin closes or its parent process goes away. math-verify's own
signal-based timeouts are off: the parent enforces the timeout by killing the worker.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from functools import lru_cache
from importlib import import_module
from typing import Any


def _exit_when_orphaned(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main() -> None:
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing printed by sympy or math-verify can corrupt the protocol
    logging.disable(logging.CRITICAL)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()

    mv: Any = import_module("math_verify")
    normalization: Any = import_module("latex2sympy2_extended.latex2sympy2").NormalizationConfig
    # units=False: math-verify's unit stripping would turn "4t" into 4 (our normaliser strips units).
    config = [
        mv.LatexExtractionConfig(
            normalization_config=normalization(
                basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all"
            )
        ),
        mv.ExprExtractionConfig(),
    ]

    @lru_cache(maxsize=1024)
    def parse(answer: str) -> Any:
        return mv.parse(f"${answer}$", extraction_config=config, parsing_timeout=None)

    def equal(a: str, b: str) -> bool:
        parsed_a, parsed_b = parse(a), parse(b)
        return bool(
            parsed_a
            and parsed_b
            and mv.verify(parsed_a, parsed_b, timeout_seconds=None, raise_on_error=False)
        )

    equal("x+1", "1+x")  # warm the LaTeX parser and sympy before saying ready
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        try:
            a, b = json.loads(line)
            reply = "1" if equal(str(a), str(b)) else "0"
        except Exception:
            reply = "0"
        replies.write(reply + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
