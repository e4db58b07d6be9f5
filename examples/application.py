"""An application: answer a list of questions under one token budget, each result saved as it finishes.

    OPENAI_BASE_URL=http://gpu-box:8000/v1 python examples/application.py questions.txt --out results.jsonl
    python examples/application.py --local           # starts the embedded SmolLM2-135M model itself
    python examples/application.py --local --quick   # 3 questions, 4 samples each

One question per line in the file (default: a few built-in word problems). Every question is one
self-consistency program that stops when its certaindex says the answer is settled; all of them
share one token budget (``--token-budget``) and one client-side scheduler. Below ``--min-confidence``
a result says "no answer" rather than pass off the majority of scattered samples as one.

Ctrl-C returns the results finished so far; they are also in ``--out``, one JSON line each, written
as programs finish. ``--quick`` (or ``DYNASOR_EXAMPLE_QUICK=1``): fewer questions, samples and tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from dynasor_client import (
    Endpoint,
    LocalLlamaServer,
    ProgramResult,
    SamplingParams,
    as_program,
    run_batch_sync,
)
from dynasor_client.algorithms import self_consistency
from dynasor_client.certainty import default_rule, hopeless

BUILT_IN = [
    "Tom has 27 apples and buys 21 more. How many apples does he have now?",
    "Sara had 15 pencils and gave 6 of them to a friend. How many pencils does she have left?",
    "Ali buys 3 bags with 4 marbles in each bag. How many marbles does he have?",
    "There are 12 books on a shelf and Mia puts 9 more on it. How many books are on the shelf now?",
    "Omar had 30 cards and lost 13 of them. How many cards are left?",
    "Lena has 8 shells and finds 7 more. How many shells does she have now?",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="?", type=Path, help="a text file, one question per line")
    parser.add_argument("--local", action="store_true", help="start the embedded model (no OPENAI_BASE_URL)")
    parser.add_argument(
        "--quick", action="store_true", default=os.environ.get("DYNASOR_EXAMPLE_QUICK") == "1"
    )
    parser.add_argument("--out", type=Path, default=Path("results.jsonl"), help="JSON lines, appended")
    parser.add_argument("-n", type=int, default=None, help="samples per question at most (default 8)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per sample (default 96)")
    parser.add_argument("--token-budget", type=int, default=200_000, help="tokens all questions may spend")
    parser.add_argument("--deadline", type=float, default=None, help="seconds each question may take")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="below it: no answer")
    args = parser.parse_args(argv)
    args.n = args.n or (4 if args.quick else 8)
    args.max_tokens = args.max_tokens or (32 if args.quick else 96)
    return args


def describe(result: ProgramResult | None, error: BaseException | None) -> str:
    if result is None:
        return f"failed: {type(error).__name__}: {error}" if error else "not run (interrupted)"
    answer = "no answer" if result.answer is None else result.answer
    flags = [
        result.stop_reason.value,
        f"confidence {result.confidence:.2f}",
        f"{len(result.answers)} samples",
    ]
    if result.partial:
        flags.append("partial")
    if result.abstained:
        vote = str(result.details["unconfident_answer"])
        flags.append(f"its vote was {vote if len(vote) <= 30 else vote[:27] + '...'}")
    return f"{answer}  ({', '.join(flags)}; {result.tokens.total} tokens)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    questions = args.questions.read_text().splitlines() if args.questions else BUILT_IN
    questions = [q.strip() for q in questions if q.strip()][: 3 if args.quick else None]
    params = SamplingParams(temperature=0.7, max_tokens=args.max_tokens)
    # Stop once the answer is settled (the default rule), cut after 4 samples that scatter.
    rule = default_rule() | hopeless(4, below=0.3)
    programs = [
        as_program(
            self_consistency, q, n=args.n, rule=rule, params=params, min_confidence=args.min_confidence
        )
        for q in questions
    ]
    local = LocalLlamaServer(n_parallel=4, n_ctx_per_slot=512 + args.max_tokens) if args.local else None
    with local or contextlib.nullcontext():
        endpoint = Endpoint(local.base_url if local else None)  # None: $OPENAI_BASE_URL
        batch = run_batch_sync(
            endpoint, programs, token_budget=args.token_budget, deadline_s=args.deadline,
            save_to=args.out, progress=not args.quick,
        )  # fmt: skip
    for index, (question, result) in enumerate(zip(questions, batch, strict=True)):
        print(f"{question}\n    {describe(result, batch.errors.get(index))}")
    print(batch.summary)
    state = "interrupted: " if batch.interrupted else ""
    print(f"{state}{batch.finished} of {len(batch)} finished in {batch.elapsed_s:.1f} s; saved to {args.out}")
    return 1 if batch.errors else 0


if __name__ == "__main__":
    sys.exit(main())
