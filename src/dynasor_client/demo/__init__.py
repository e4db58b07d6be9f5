"""``dynasor-client demo``: plain self-consistency against certaindex, end to end, in a few minutes.

The same questions are answered twice through the :class:`~dynasor_client.runtime.Runtime`
(``run_batch``, with a progress bar):

- **plain SC**: self-consistency with a fixed ``n`` samples per question (majority vote);
- **certaindex**: the same program under the stop rule ``entropy_at_least(0.7, at=...) | hopeless(...)``:
  it stops early where the answers agree (*confident*) and cuts questions whose answers still scatter
  after the detect round (*hopeless*): more samples would not settle them.

Backends:

- default: the embedded local model (llama.cpp with SmolLM2-135M-Instruct on 127.0.0.1) on short
  arithmetic word problems generated in code from ``--seed`` (known answers, no dataset). A 135M
  model is mostly wrong and its answers scatter, so few questions are certified and many are cut as
  hopeless: the point is the mechanics and the tokens, not the accuracy.
- ``--endpoint URL``: the same questions on any OpenAI-compatible server.

  On both, sample ``i`` of a question is drawn with seed ``--seed + i`` in both methods. On a server
  that numbers a seeded request's choices the same way (llama.cpp does), the two methods share
  their samples, as far as batching keeps the numerics, and differ only where certaindex stopped.
- ``--traces FILE``: recorded real-model samples (``shared/data/traces`` format) served by the replay
  engine (:class:`~dynasor_client.replay.ReplayServer` on loopback); the questions are the traces'
  questions with their gold answers, and the savings are those of a real model.

Accuracy compares each majority answer with the gold one under the library's answer normalisation
and equivalence (:func:`~dynasor_client.certainty.normalize_answer`, ``MathEquivalence``). Tokens
are generated (completion) tokens; ``saved`` is the certaindex run's saving over plain SC. ``--json``
writes every figure and each question's outcome; a plot is saved unless ``--no-plot``.
"""

from ._questions import (
    DEFAULT_ENDPOINT_MAX_TOKENS,
    DEFAULT_LOCAL_MAX_TOKENS,
    DEFAULT_N,
    DEFAULT_PLOT,
    DEFAULT_QUESTIONS,
    DEFAULT_TRACE_QUESTIONS,
    DemoQuestion,
    demo_rule,
    generate_questions,
)
from ._report import DemoReport, MethodFigures, format_table, is_correct, write_plot
from ._run import demo_command, run_demo

__all__ = [
    "DEFAULT_ENDPOINT_MAX_TOKENS",
    "DEFAULT_LOCAL_MAX_TOKENS",
    "DEFAULT_N",
    "DEFAULT_PLOT",
    "DEFAULT_QUESTIONS",
    "DEFAULT_TRACE_QUESTIONS",
    "DemoQuestion",
    "DemoReport",
    "MethodFigures",
    "demo_command",
    "demo_rule",
    "format_table",
    "generate_questions",
    "is_correct",
    "run_demo",
    "write_plot",
]
