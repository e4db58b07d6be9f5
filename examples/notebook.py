"""Notebook-style: certaindex against uniform self-consistency, cell by cell.

The ``# %%`` cells open as a notebook in VS Code, PyCharm or Jupyter (jupytext);
``python examples/notebook.py`` runs them all. In a notebook, write ``await x`` for ``asyncio.run(x)``.

- On recorded traces (``--traces FILE``; default ``../shared/data/traces/svamp-codex-sc30.jsonl``):
  real models' recorded samples served by the replay engine, an OpenAI-compatible server timed
  like a GPU (no GPU, no model). Accuracy figures mean something here.
- ``--live`` (or no traces): live against ``$OPENAI_BASE_URL``, e.g. the embedded model
  (``dynasor-client serve-local --port 8000``), on generated word problems. A 135M model
  demonstrates the mechanics, not accuracy.

``--quick`` (or ``DYNASOR_EXAMPLE_QUICK=1``): fewer questions and samples.
"""

# %% Settings
from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from dynasor_client import Endpoint, ProgramResult, Runtime, SamplingParams, as_program
from dynasor_client.algorithms import Prompting, self_consistency
from dynasor_client.certainty import StopRule, cap, cluster_answers, default_rule, hopeless

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description="certaindex against uniform self-consistency")
parser.add_argument("--traces", type=Path, default=ROOT.parent / "shared/data/traces/svamp-codex-sc30.jsonl")
parser.add_argument("--live", action="store_true", help="against $OPENAI_BASE_URL, not recorded traces")
parser.add_argument("--quick", action="store_true", default=os.environ.get("DYNASOR_EXAMPLE_QUICK") == "1")
args, _ = parser.parse_known_args()  # known: a notebook kernel passes its own arguments
LIVE = args.live or not args.traces.exists()
print("live against", os.environ.get("OPENAI_BASE_URL") if LIVE else f"replaying {args.traces}")

# %% The questions: (question, gold answer, the chat that asks it)
if LIVE:
    from dynasor_client.demo import generate_questions

    # Asked after two solved examples, a 135M model answers briefly; it mostly disagrees with
    # itself, so certaindex also cuts questions whose first 4 samples scatter (hopeless).
    N, SAMPLING = 4 if args.quick else 8, SamplingParams(temperature=0.7, max_tokens=32)
    RULE = default_rule() | hopeless(4, below=0.3)
    generated = generate_questions(3 if args.quick else 12, seed=0)
    questions = [(q.text, q.gold, q.messages) for q in generated]
else:
    from dynasor_client.traces import load_traces, select_split

    N, SAMPLING, RULE = 30, SamplingParams(temperature=0.7), default_rule()  # the calibrated rule
    recorded = select_split(load_traces(args.traces), "test")[: 20 if args.quick else None]
    questions = [(q.question, q.gold, None) for q in recorded]
print(f"{len(questions)} questions, e.g. {questions[0][0]!r} (gold {questions[0][1]})")


# %% Both methods on the same questions
def program(question: str, messages: tuple[dict[str, str], ...] | None, rule: StopRule):
    prompting = Prompting(messages=messages) if messages else Prompting()
    return as_program(self_consistency, question, n=N, rule=rule, params=SAMPLING, prompting=prompting)


async def run(rule: StopRule) -> list[ProgramResult | None]:
    async with Runtime(endpoint) as runtime:
        batch = await runtime.run_batch([program(q, m, rule) for q, _, m in questions], progress=False)
    return list(batch)


async def compare() -> dict[str, list[ProgramResult | None]]:
    return {"uniform": await run(cap(N)), "certaindex": await run(RULE)}


async def main() -> dict[str, list[ProgramResult | None]]:
    global endpoint
    if LIVE:
        async with Endpoint() as endpoint:
            return await compare()
    from dynasor_client.replay import ReplayServer

    async with (
        ReplayServer(recorded, profile="llama3-8b-h100-80gb", time_scale=0.0, seed=0) as server,
        Endpoint(server.base_url, capabilities=server.capabilities) as endpoint,
    ):
        return await compare()


results = asyncio.run(main())


# %% Accuracy, tokens, samples, why programs stopped
def right(answer: str | None, gold: str) -> bool:
    """Graded as calibration grades: the answer falls in the gold answer's class."""
    return answer is not None and len(set(cluster_answers([gold, answer]))) == 1


for method, outcome in results.items():
    done = [(r, gold) for r, (_, gold, _) in zip(outcome, questions, strict=True) if r is not None]
    correct = sum(right(r.answer, gold) for r, gold in done)
    tokens = sum(r.tokens.generated for r, _ in done)
    reasons: dict[str, int] = {}
    for r, _ in done:
        reasons[r.stop_reason.value] = reasons.get(r.stop_reason.value, 0) + 1
    samples = sum(len(r.answers) for r, _ in done) / max(len(done), 1)
    print(
        f"{method:10s} {correct}/{len(questions)} right, {tokens:6d} tokens, "
        f"{samples:4.1f} samples/question, stopped: {reasons}"
    )
uniform_tokens = sum(r.tokens.generated for r in results["uniform"] if r)
certain_tokens = sum(r.tokens.generated for r in results["certaindex"] if r)
print(f"certaindex saved {1 - certain_tokens / max(uniform_tokens, 1):.0%} of the generated tokens")

# %% One program's certaindex, check by check
first = results["certaindex"][0]
for point in first.certaindex:
    print(f"after {point.observations:2d} samples: certaindex {point.value:.2f}, answer {point.answer}")
print(f"stopped: {first.stop_reason.value}, answer {first.answer} (gold {questions[0][1]})")
