"""Recorded real-model samples (traces): the format, loading and the train/test split.

See :mod:`._format` for the format. ``dynasor-client record`` writes it; the replay engine serves it;
calibration and the benchmarks replay it.
"""

from ._datasets import DatasetError, DatasetItem, load_dataset
from ._format import (
    TEST_FRACTION,
    Split,
    TraceQuestion,
    TraceSample,
    append_question,
    file_sha256,
    fold_of,
    load_traces,
    question_from_json,
    question_to_json,
    select_split,
    split_of,
)
from ._recorder import DEFAULT_SYSTEM_PROMPT, RecordError, RecordOptions, RecordSummary, record
from ._sampling import question_seed

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "TEST_FRACTION",
    "DatasetError",
    "DatasetItem",
    "RecordError",
    "RecordOptions",
    "RecordSummary",
    "Split",
    "TraceQuestion",
    "TraceSample",
    "append_question",
    "file_sha256",
    "fold_of",
    "load_dataset",
    "load_traces",
    "question_from_json",
    "question_seed",
    "question_to_json",
    "record",
    "select_split",
    "split_of",
]
