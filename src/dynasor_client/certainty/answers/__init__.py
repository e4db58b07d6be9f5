"""Answers: extraction from generated text, normalisation, equivalence classes, majority vote.

The class labels that :class:`~dynasor_client.certainty.Observations` works on come from here::

    extract = get_extractor("math")
    labels = cluster_answers([extract(text) for text in samples])  # NONE (-1) where none found
    obs = Observations.single(labels)

- Extraction (:mod:`._extract`): ``\\boxed{}``, GSM8K ``#### N``, "The answer is ...", choice
  letters, the last number; :func:`first_of` chains them, :func:`get_extractor` names a task's chain.
- Normalisation (:mod:`._normalize`): :func:`normalize_answer` (units, currency, thousands
  separators, LaTeX spacing, degrees, percentages kept as percentages); an answer longer than
  :data:`MAX_ANSWER_CHARS` is kept as its text.
- Cost: extraction is linear in the text, normalisation bounded; neither raises for any ``str``.
- Equivalence (:mod:`._equivalence`): :class:`MathEquivalence` (exact, then numeric with tolerance,
  then symbolic through math-verify under a hard timeout), :class:`ExactEquivalence`,
  :class:`EmbeddingEquivalence` for free text (extra ``[text]``), or any ``(a, b) -> bool``.
- Classes (:mod:`._cluster`): :func:`cluster_answers`, :class:`AnswerClusters` (incremental),
  :func:`majority_vote`. Missing answers get ``NONE`` and never win a vote.
"""

from ._cluster import AnswerClusters, cluster_answers, majority_vote
from ._equivalence import Equivalence, ExactEquivalence, Keyed, MathEquivalence, default_equivalence
from ._extract import (
    Extractor,
    extract_answer_is,
    extract_boxed,
    extract_choice,
    extract_code_block,
    extract_gsm8k,
    extract_last_number,
    first_of,
    get_extractor,
)
from ._normalize import MAX_ANSWER_CHARS, Number, normalize_answer, parse_number
from ._symbolic import SYMBOLIC_AVAILABLE, SymbolicChecker
from ._text import EmbeddingEquivalence

__all__ = [
    "MAX_ANSWER_CHARS",
    "SYMBOLIC_AVAILABLE",
    "AnswerClusters",
    "EmbeddingEquivalence",
    "Equivalence",
    "ExactEquivalence",
    "Extractor",
    "Keyed",
    "MathEquivalence",
    "Number",
    "SymbolicChecker",
    "cluster_answers",
    "default_equivalence",
    "extract_answer_is",
    "extract_boxed",
    "extract_choice",
    "extract_code_block",
    "extract_gsm8k",
    "extract_last_number",
    "first_of",
    "get_extractor",
    "majority_vote",
    "normalize_answer",
    "parse_number",
]
