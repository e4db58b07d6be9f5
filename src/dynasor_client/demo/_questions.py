"""The demo's questions (generated word problems, or recorded traces) and its stop rule."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..certainty import StopRule, cap, entropy_at_least, hopeless
from ..endpoints import Message

DEFAULT_QUESTIONS = 16
DEFAULT_N = 8
DEFAULT_TRACE_QUESTIONS = 200
DEFAULT_LOCAL_MAX_TOKENS = 32  # the few-shot answer "4 + 3 = 7. The answer is \boxed{7}." is ~17 tokens
DEFAULT_ENDPOINT_MAX_TOKENS = 256
DEFAULT_PLOT = "dynasor-demo.png"
CONFIDENT_AT_LEAST = 0.7  # the paper's threshold on the entropy certaindex H~
HOPELESS_BELOW = 0.3  # H~ below this at a check: cut (n=4: 2/1/1 or all different; n=5: 2/1/1/1)
LOCAL_PARALLEL = 16  # llama.cpp slots: on 1-2 CPU threads decoding is compute-bound from ~8 on
_REACH_TIMEOUT_S = 10.0

# --------------------------------------------------------------------------------------- questions

_NAMES = (("Tom", "he"), ("Sara", "she"), ("Ali", "he"), ("Mia", "she"), ("Omar", "he"), ("Lena", "she"))
_ITEMS = ("apples", "pencils", "stickers", "cookies", "marbles", "books", "shells", "cards")


@dataclass(frozen=True, slots=True)
class DemoQuestion:
    """A question, its gold answer and the chat it is asked with."""

    id: str
    text: str
    gold: str
    messages: tuple[Message, ...]


# Two solved examples (names and items outside the generated pool): a 135M model copies the format,
# so its answers are short and boxed, which makes the demo fast and the votes meaningful.
FEW_SHOT: tuple[Message, ...] = (
    {"role": "user", "content": "Ann has 4 cups and buys 3 more. How many cups does she have now?"},
    {"role": "assistant", "content": "4 + 3 = 7. The answer is \\boxed{7}."},
    {
        "role": "user",
        "content": "Ben had 9 stamps and gave 5 of them away. How many stamps does he have left?",
    },
    {"role": "assistant", "content": "9 - 5 = 4. The answer is \\boxed{4}."},
)


def _word_problem(rng: random.Random) -> tuple[str, int]:
    name, pronoun = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(3, 30), rng.randint(2, 20)
        return f"{name} has {a} {item} and buys {b} more. How many {item} does {pronoun} have now?", a + b
    if kind == 1:
        a = rng.randint(6, 30)
        b = rng.randint(2, a - 2)
        return (
            f"{name} had {a} {item} and gave {b} of them to a friend. "
            f"How many {item} does {pronoun} have left?",
            a - b,
        )
    if kind == 2:
        a, b = rng.randint(3, 25), rng.randint(2, 15)
        return (
            f"There are {a} {item} in a box and {name} puts in {b} more. How many {item} are in the box now?",
            a + b,
        )
    if kind == 3:
        a, b = rng.randint(2, 5), rng.randint(2, 6)
        return (
            f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {pronoun} have?",
            a * b,
        )
    a = rng.randint(8, 30)
    b = rng.randint(2, a - 3)
    return f"{name} had {a} {item} and lost {b} of them. How many {item} are left?", a - b


def generate_questions(count: int, seed: int = 0) -> list[DemoQuestion]:
    """``count`` distinct arithmetic word problems with their answers, the same for the same seed."""
    if count < 1:
        raise ValueError(f"--questions must be >= 1, got {count}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[DemoQuestion] = []
    while len(out) < count:
        text, answer = _word_problem(rng)
        if text in seen:
            continue
        seen.add(text)
        messages = (*FEW_SHOT, {"role": "user", "content": text})
        out.append(DemoQuestion(f"demo-{len(out)}", text, str(answer), messages))
    return out


def _trace_questions(path: str, count: int | None, seed: int, n: int | None) -> tuple[list[Any], int]:
    """The recorded questions to replay (a seeded sample of ``count``, in file order) and the ``n``."""
    from ..traces import load_traces

    if not Path(path).is_file():
        raise ValueError(f"traces file not found: {path}")
    try:
        traces = load_traces(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read traces file {path}: {exc}") from exc
    usable = [q for q in traces if q.question.strip() and q.samples]
    if not usable:
        raise ValueError(f"{path}: no question with text and recorded samples")
    if count is not None and count < 1:
        raise ValueError(f"--questions must be >= 1, got {count}")
    if count is None:
        count = DEFAULT_TRACE_QUESTIONS
    if count < len(usable):
        keep = set(random.Random(seed).sample(range(len(usable)), count))
        usable = [q for i, q in enumerate(usable) if i in keep]
    recorded = min(len(q.samples) for q in usable)
    if n is None:
        n = recorded
    elif n > recorded:
        raise ValueError(f"--n {n} is more than the {recorded} samples recorded per question in {path}")
    return usable, n


# --------------------------------------------------------------------------------------- the rule


def detect_round(n: int) -> int:
    """Samples before the certaindex run first consults its rule: the paper's 5, at most half of n."""
    return max(2, min(5, n // 2))


def demo_rule(n: int) -> tuple[StopRule, list[int]]:
    """The certaindex method's stop rule for ``n`` samples and its round sizes (summing to ``n``).

    ``cap(n) | entropy_at_least(0.7, at=[d]) | hopeless(after=d, below=0.3)`` with ``d`` the detect
    round, in rounds of ``d`` and ``n - d`` samples: at ``d`` it stops when the answers agree
    (n = 8: all four alike) and cuts the question when they scatter (2/1/1 or all different); else it
    samples to ``n``. A cut question still answers with its majority so far. One check only: the
    normalised entropy H~ grows with the sample count (a 9/8 split of two answers is H~ = 0.76 at 17
    samples), so the same threshold later would stop on coin flips.
    """
    if n < 2:
        raise ValueError(f"--n must be >= 2 (certaindex needs two samples to compare), got {n}")
    d = detect_round(n)
    rule = cap(n) | entropy_at_least(CONFIDENT_AT_LEAST, at=[d]) | hopeless(d, HOPELESS_BELOW)
    return rule, [d, n - d] if d < n else [n]


def describe_rule(n: int) -> str:
    return (
        f"stop when H~ >= {CONFIDENT_AT_LEAST} at {detect_round(n)} samples (confident); "
        f"cut when H~ < {HOPELESS_BELOW} there (hopeless); else all {n}"
    )
