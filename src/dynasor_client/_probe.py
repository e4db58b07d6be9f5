"""The probe of Dynasor-CoT: constants shared by the algorithm, the proxy, the recorder and the replay engine.

A probe asks a reasoning model for its answer so far: the prompt is the question, the partial chain
of thought, then :data:`PROBE_SUFFIX`; the model writes a short answer and closes the box. The probe's
text is discarded afterwards; only the answer is kept.
"""

from __future__ import annotations

PROBE_SUFFIX = "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
#: How a probe reply ends: the answer, then the closing of the box opened by the suffix.
PROBE_CLOSE = "}\n\\]"
#: Enough tokens for a short answer and the closing brace.
PROBE_MAX_TOKENS = 20
#: Closes a chain of thought that is still inside ``<think>`` before its forced answer.
CLOSE_THINK = "\n</think>\n\n"


def in_thinking(text: str, prompt: str = "") -> bool:
    """Whether ``text`` (after ``prompt``) is inside an unclosed ``<think>``."""
    opened, closed = text.rfind("<think>"), text.rfind("</think>")
    if opened < 0 and closed < 0:
        return prompt.rstrip().endswith("<think>")  # templates that open the thinking themselves
    return opened > closed


def probe_answer(reply: str) -> str | None:
    """The answer in a probe reply: the text before the brace that closes the suffix's ``\\boxed{``."""
    depth = 0
    for i, ch in enumerate(reply):
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                answer = reply[:i].strip()
                return answer or None
            depth -= 1
    return None
