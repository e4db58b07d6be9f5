"""Dynasor-CoT's agreement window on recorded probes: how early each window stops, and how often
the answer it stops with is the one the whole chain ends with.

    python examples/dynasor_cot_window.py                       # the fixture recorded in tests/data
    python examples/dynasor_cot_window.py traces.jsonl --windows 1 2 3 4 5

Every sample of the traces file must carry ``probes`` (``dynasor-client record --probe-every T``)
and its ``tokens`` (recorded by default), so that each probe's chunk can be checked for hesitation
words as the algorithm does. For each window ``w`` the library's own stop rule
(``probe_consistency_at_least(1.0, w)``: the last ``w`` probes answer the same, none hesitant) is
replayed over each sample's probes in order. A sample stops at the first probe where the rule fires
(its answer: that probe's); otherwise it runs to its end, as the full chain does.

Columns: samples stopped early; generated tokens (to the firing probe, else the whole sample) and
probes, as a share of the full chains' tokens; among samples that finished on their own with an
answer, how many stopped with an answer other than that final answer ("changed"); among all stops,
how many stopped on an answer that no later probe and not the final answer repeats ("never again");
correct against the gold answer, early stops and full chains.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynasor_client.algorithms import Prompting
from dynasor_client.certainty import Observations, probe_consistency_at_least
from dynasor_client.certainty.signals import is_hesitant
from dynasor_client.traces import TraceSample, load_traces

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm8k-smollm2-135m-sc4-top5-probe32.jsonl"


def probes_of(sample: TraceSample, every: int) -> list[tuple[int, str | None]]:
    """The sample's recorded probes at multiples of ``every`` tokens (a multiple of the recorded T)."""
    return [(offset, answer) for offset, answer in sample.probes or () if offset % every == 0]


def stop_at(sample: TraceSample, window: int, every: int) -> int | None:
    """The index of the probe where the rule fires for ``sample``, or None (it runs to its end)."""
    rule = probe_consistency_at_least(1.0, window)
    clusters = Prompting().clusters()
    tokens = sample.tokens or ()
    labels: list[int] = []
    hesitant: list[bool] = []
    previous = 0
    for i, (offset, answer) in enumerate(probes_of(sample, every)):
        labels.append(clusters.add(answer))
        hesitant.append(is_hesitant("".join(tokens[previous:offset])))
        previous = offset
        if rule.fired(Observations.single(labels, hesitant=hesitant)) is not None:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("traces", nargs="?", default=str(FIXTURE))
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "--every", type=int, default=32, help="probes every T tokens (T: a multiple of the file's)"
    )
    args = parser.parse_args()
    questions = load_traces(args.traces)
    samples = [(q, s) for q in questions for s in q.samples if s.probes is not None]
    if not samples or not all(s.tokens for _, s in samples):
        raise SystemExit(f"{args.traces}: the samples need recorded probes and tokens")
    same = Prompting().clusters()
    full_tokens = sum(s.num_tokens for _, s in samples)
    finished = [(q, s) for q, s in samples if s.finish_reason == "stop" and s.answer is not None]
    print(f"{args.traces}: {len(questions)} questions, {len(samples)} samples, {full_tokens} tokens; "
          f"{len(finished)} samples finished with an answer; full chains correct: "
          f"{sum(bool(s.correct) for _, s in samples)}/{len(samples)}")  # fmt: skip
    print(f"probes every {args.every} tokens")
    print("window | stopped early | tokens (share) | probes | stops that changed a finished chain's answer "
          "| stops on an answer never seen again | correct")  # fmt: skip
    for w in args.windows:
        stopped = changed = never = correct = tokens = probes = 0
        for q, s in samples:
            at = stop_at(s, w, args.every)
            recorded = probes_of(s, args.every)
            if at is None:
                tokens += s.num_tokens
                probes += len(recorded)
                correct += bool(s.correct)
                continue
            offset, answer = recorded[at]
            stopped, tokens, probes = stopped + 1, tokens + offset, probes + at + 1
            later = [a for _, a in recorded[at + 1 :]] + [s.answer]
            never += not any(a is not None and same.add(a) == same.add(answer) for a in later)
            correct += answer is not None and same.add(answer) == same.add(q.gold)
            if s.finish_reason == "stop" and s.answer is not None:
                changed += same.add(answer) != same.add(s.answer)
        early_finished = sum(stop_at(s, w, args.every) is not None for _, s in finished)
        share = f"{tokens:6d} ({tokens / full_tokens:.0%})"
        print(f"{w:6d} | {stopped:3d}/{len(samples)} | {share} | {probes:4d} | "
              f"{changed}/{early_finished} | {never}/{stopped} | "
              f"{correct}/{len(samples)}")  # fmt: skip


if __name__ == "__main__":
    main()
