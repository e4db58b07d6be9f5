"""Datasets to record: JSON lines files of questions and reference answers in the shapes of GSM8K,
MATH500/AIME/AMC, SVAMP, ASDiv or a traces file, read into :class:`DatasetItem` s by
:func:`load_dataset`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import DynasorError

__all__ = ["DatasetError", "DatasetItem", "load_dataset"]

_GENERIC_STEMS = frozenset({"test", "train", "validation", "val", "dev", "data", "eval"})


class DatasetError(DynasorError, ValueError):
    """A dataset file that cannot be read: missing, not JSON lines, or of an unknown shape."""


@dataclass(frozen=True, slots=True)
class DatasetItem:
    """One question of a dataset: a stable id, the text the model sees, and the reference answer."""

    id: str
    question: str
    gold: str


def _number_text(value: Any) -> str:
    """``145.0`` -> ``"145"``; other values as written."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def _gsm8k_gold(answer: str) -> str:
    if "####" not in answer:
        return answer.strip()
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _join(body: str, question: str) -> str:
    body, question = body.strip(), question.strip()
    if not body:
        return question
    return f"{body} {question}" if body[-1] in ".?!:" else f"{body}. {question}"


_UNIT = re.compile(r"\s*\([^()]*\)\s*$")

#: (required fields, what the model sees, gold) in detection order; the first shape that fits wins.
_SHAPES: tuple[tuple[str, tuple[str, ...], Callable[[dict[str, Any]], tuple[str, str]]], ...] = (
    (
        "svamp",
        ("Body", "Question", "Answer"),
        lambda r: (_join(r["Body"], r["Question"]), _number_text(r["Answer"])),
    ),
    (
        "asdiv",
        ("body", "question", "answer"),
        # "9 (apples)" -> "9"; answers that are words ("Mrs. Hilt") stay as they are
        lambda r: (
            _join(r["body"], r["question"]),
            _UNIT.sub("", _number_text(r["answer"])) or str(r["answer"]),
        ),
    ),
    ("math", ("problem", "answer"), lambda r: (str(r["problem"]), _number_text(r["answer"]))),
    ("gsm8k", ("question", "answer"), lambda r: (str(r["question"]), _gsm8k_gold(_number_text(r["answer"])))),
    ("traces", ("question", "gold"), lambda r: (str(r["question"]), _number_text(r["gold"]))),
)
_ID_FIELDS = ("id", "unique_id", "ID")


def _dataset_name(path: Path) -> str:
    stem = path.name.split(".", 1)[0]
    folder = path.resolve().parent.name
    return folder if stem.lower() in _GENERIC_STEMS and folder else stem


def _row_id(row: dict[str, Any], name: str, index: int) -> str:
    for key in _ID_FIELDS:
        value = row.get(key)
        if isinstance(value, bool) or value is None or value == "":
            continue
        if isinstance(value, int | float):
            return f"{name}-{_number_text(value)}"
        return str(value)
    return f"{name}-{index}"


def load_dataset(path: str | Path) -> list[DatasetItem]:
    """Read a dataset file (JSON lines) into :class:`DatasetItem` s, in file order.

    Known shapes, detected per row by their fields: GSM8K (``question``, ``answer`` ending in
    ``#### N``: the gold is N without thousands separators), MATH500/AIME/AMC (``problem``,
    ``answer``), SVAMP (``Body``, ``Question``, ``Answer``), ASDiv (``body``, ``question``,
    ``answer`` like ``9 (apples)``: the gold is ``9``) and traces files (``question``, ``gold``).
    Numeric golds are written without a trailing ``.0``.

    Ids: the row's ``id``/``unique_id``/``ID`` field (a number is prefixed with the dataset name,
    ``aime24-60``), else ``{name}-{row index}`` (``gsm8k-0``, as in ``shared/data/traces``), where the
    name is the file's stem, or its folder's name for a stem like ``test``.

    Raises:
        DatasetError: the file is missing or unreadable, a line is not a JSON object, a row has an
            unknown shape (the message lists the known ones), ids repeat, or there is no row.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"dataset {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset {str(path)!r}: {exc}") from exc
    name = _dataset_name(path)
    items: list[DatasetItem] = []
    index = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not a JSON line ({exc.msg}); datasets are JSON lines") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for _shape, fields, read in _SHAPES:
            if all(row.get(f) is not None for f in fields):
                question, gold = read(row)
                break
        else:
            known = "; ".join(f"{shape}: {', '.join(fields)}" for shape, fields, _ in _SHAPES)
            raise DatasetError(
                f"{where}: unknown dataset shape (fields {sorted(row)}); known shapes: {known}"
            )
        if not question.strip():
            raise DatasetError(f"{where}: the question is empty")
        items.append(DatasetItem(_row_id(row, name, index), question, gold))
        index += 1
    if not items:
        raise DatasetError(f"dataset {str(path)!r} has no rows")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DatasetError(f"{path}: question id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    return items
