"""An agent pipeline: any OpenAI client, pointed at ``dynasor-client proxy`` instead of the server.

    OPENAI_BASE_URL=http://gpu-box:8000/v1 python examples/agent_pipeline.py   # the upstream server
    python examples/agent_pipeline.py --quick   # fewer samples and tokens (or DYNASOR_EXAMPLE_QUICK=1)

The script starts the proxy in front of ``$OPENAI_BASE_URL`` (``dynasor-client proxy --upstream
URL --port 0``, as you would run it beside your agents), then talks to it with the ``openai`` SDK:

1. a plain request: passed through untouched;
2. self-consistency per request (``extra_body={"dynasor": {"algorithm": "sc", "n": N}}``): the
   answer of a vote, with what it cost and saved in ``response.dynasor`` and ``usage``;
3. the same chosen by a model-name suffix (``model+scN``), streamed: for clients that can set only
   ``model`` (progress chunks carry the certaindex as it rises, the last one the answer);
4. a deadline (``X-Dynasor-Deadline-S``): past it, the best answer so far, flagged partial, or
   an HTTP 504 when there was none yet.

The proxy is stopped with Ctrl-C (SIGINT) at the end, as in a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import openai

QUESTION = "Tom has 27 apples and buys 21 more. How many apples does he have now?"


@contextlib.contextmanager
def proxy(upstream: str) -> Iterator[str]:
    """``dynasor-client proxy`` in front of ``upstream``; yields the proxy's API root."""
    command = [sys.executable, "-m", "dynasor_client", "proxy", "--upstream", upstream, "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "dynasor proxy at http://127.0.0.1:PORT/v1 -> ..."
        if not line.startswith("dynasor proxy at "):
            raise RuntimeError(f"the proxy did not start (exit code {process.wait()}): {line!r}")
        yield line.split()[3]
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", default=os.environ.get("DYNASOR_EXAMPLE_QUICK") == "1"
    )
    args = parser.parse_args()
    upstream = os.environ.get("OPENAI_BASE_URL")
    if not upstream:
        parser.error("set OPENAI_BASE_URL to the upstream server's API root, e.g. http://127.0.0.1:8000/v1")
    n, max_tokens = (3, 24) if args.quick else (8, 256)
    messages = [{"role": "user", "content": QUESTION}]

    with proxy(upstream) as base_url:
        print("proxy at", base_url)
        # The proxy checks its own keys (--api-keys-file); without them, any key is accepted.
        client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"))
        model = client.models.list().data[0].id

        plain = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
        print(f"1. plain: {plain.choices[0].message.content!r} ({plain.usage.completion_tokens} tokens)")

        # with_raw_response: the X-Dynasor-* headers too, for clients that drop unknown body fields.
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            extra_body={"dynasor": {"algorithm": "sc", "n": n}},
        )
        voted, info = raw.parse(), raw.parse().model_extra["dynasor"]
        print(
            f"2. sc, n={n}: answer {info['answer']!r}, stopped {raw.headers['X-Dynasor-Stop-Reason']} after "
            f"{len(info['answers'])} samples; {voted.usage.completion_tokens} tokens, "
            f"{raw.headers['X-Dynasor-Saved-Tokens']} saved against all {n}"
        )

        stream = client.chat.completions.create(
            model=f"{model}+sc{n}", messages=messages, max_tokens=max_tokens, stream=True
        )
        text, info = "", {}
        for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            info = (chunk.model_extra or {}).get("dynasor") or info  # on the final chunk
        print(
            f"3. {model}+sc{n}, streamed: answer {info.get('answer')!r}, {len(text)} characters of its sample"
        )

        try:
            late = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                extra_body={"dynasor": {"algorithm": "sc", "n": 2 * n}},
                extra_headers={"X-Dynasor-Deadline-S": "1"},
            )
        except openai.APIStatusError as error:  # 504: the deadline passed before any answer
            print(f"4. deadline 1 s: {error.status_code}, no answer in time")
        else:
            info = late.model_extra["dynasor"]
            answer, partial, reason = info["answer"], info["partial"], info["stop_reason"]
            print(f"4. deadline 1 s: answer {answer!r}, partial {partial}, {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
