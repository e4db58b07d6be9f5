"""GPU timing profiles for the replay engine: the constants of the continuous-batching cost model.

One engine iteration of a continuous-batching server (vLLM, SGLang) prefills the prompts admitted in
it and advances every running request by one token. The replay engine charges it::

    seconds = a + b * running + c * kv_tokens + p * prefill_tokens

``a`` (:attr:`GPUProfile.decode_base_s`) is the fixed cost of one forward pass, ``b``
(:attr:`~GPUProfile.decode_per_seq_s`) the extra cost of each running sequence, ``c``
(:attr:`~GPUProfile.decode_per_kv_token_s`) the cost of reading one cached token's keys and values
in attention, and ``p`` (:attr:`~GPUProfile.prefill_per_token_s`) the cost of each prompt token that
is not already in the prefix cache. ``kv_tokens`` is the total context (prompt plus generated tokens)
of the running requests. :attr:`~GPUProfile.kv_capacity_tokens` is how many tokens of KV cache fit on
the GPU; it bounds the batch.

Roofline derivation (:meth:`GPUProfile.roofline`), from datasheet figures only:

* Decoding is memory-bound at small batch: every iteration streams all weights once, so
  ``a = n_params * bytes_per_param / (mem_bandwidth * bw_efficiency)``.
* Each running sequence costs one token's worth of matrix multiplies, ``2 * n_params`` FLOPs, so
  ``b = 2 * n_params / (peak_flops * mfu)``.
* Attention streams each cached token's K and V once per iteration, so
  ``c = kv_bytes_per_token / (mem_bandwidth * bw_efficiency)``, with
  ``kv_bytes_per_token = 2 (K and V) * layers * kv_heads * head_dim * bytes``.
* Prefill is compute-bound: ``p = 2 * n_params / (peak_flops * mfu)`` per prompt token (the quadratic
  attention term is ignored; it matters only for prompts much longer than reasoning prompts).
* KV capacity is what is left of the usable memory after the weights:
  ``(mem_bytes * mem_utilisation - weights) / kv_bytes_per_token`` (vLLM's ``gpu_memory_utilization``
  defaults to 0.9).

Adding the memory and compute terms (rather than taking their maximum, as a strict roofline would)
overestimates an iteration by at most 2x where both are equal and is exact where one dominates;
the additive form is linear in its unknowns, which is what lets :func:`fit_profile
<dynasor_client.replay._timing_fit.fit_profile>` fit it to a user's own timings by least squares.
``bw_efficiency = 0.8`` and ``mfu = 0.5`` are typical achieved fractions of the datasheet peaks for
bf16 inference kernels.

Built-in profiles (:data:`PROFILES`): Llama-3-8B (8.03e9 parameters, bf16, 32 layers, 8 KV heads of
dimension 128: 131,072 KV bytes per token) on one A100-SXM-80GB (2.039 TB/s, 312 TFLOP/s dense bf16)
and on one H100-SXM-80GB (3.35 TB/s, 989 TFLOP/s dense bf16), plus a small ``"test"`` profile whose
KV cache holds only 4,096 tokens, for tests that need memory pressure.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["PROFILES", "GPUProfile", "get_profile"]


@dataclass(frozen=True, slots=True)
class GPUProfile:
    """The constants of one (model, GPU) pair; see the module docstring for the cost model."""

    name: str
    description: str
    decode_base_s: float
    """``a``: seconds of one iteration regardless of batch (weights streamed once)."""
    decode_per_seq_s: float
    """``b``: seconds added per running sequence (its per-token FLOPs)."""
    decode_per_kv_token_s: float
    """``c``: seconds added per token held in the KV cache by running sequences (attention reads)."""
    prefill_per_token_s: float
    """``p``: seconds per prompt token not found in the prefix cache."""
    kv_capacity_tokens: int
    """Tokens of KV cache on the GPU; admission reserves prompt + output tokens against it."""
    block_size: int = 16
    """Tokens per KV block: the granularity of prefix caching."""
    max_batch: int = 256
    """Most requests running at once (vLLM's ``max_num_seqs``)."""

    def __post_init__(self) -> None:
        for field in ("decode_base_s", "decode_per_seq_s", "decode_per_kv_token_s", "prefill_per_token_s"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"GPUProfile.{field} must be a finite number >= 0, got {value!r}")
        if self.decode_base_s + self.decode_per_seq_s <= 0:
            raise ValueError("GPUProfile: an iteration must take time (decode_base_s + decode_per_seq_s > 0)")
        for field in ("kv_capacity_tokens", "block_size", "max_batch"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPUProfile.{field} must be a positive integer, got {value!r}")

    # ------------------------------------------------------------------ the cost model

    def iteration_seconds(self, running: int, kv_tokens: int, prefill_tokens: int = 0) -> float:
        """Duration of one engine iteration (the cost model of the module docstring)."""
        return (
            self.decode_base_s
            + self.decode_per_seq_s * running
            + self.decode_per_kv_token_s * kv_tokens
            + self.prefill_per_token_s * prefill_tokens
        )

    def decode_tokens_per_s(self, running: int, mean_context_tokens: float) -> float:
        """Steady decode throughput of ``running`` sequences of ``mean_context_tokens`` context each."""
        return running / self.iteration_seconds(running, round(running * mean_context_tokens))

    # ------------------------------------------------------------------ construction

    @classmethod
    def roofline(
        cls,
        name: str,
        *,
        n_params: float,
        bytes_per_param: float,
        kv_bytes_per_token: float,
        mem_bandwidth_Bps: float,
        peak_flops: float,
        mem_bytes: float,
        mem_utilisation: float = 0.9,
        mfu: float = 0.5,
        bw_efficiency: float = 0.8,
        block_size: int = 16,
        max_batch: int = 256,
        description: str = "",
    ) -> GPUProfile:
        """Derive a profile from datasheet figures (the roofline of the module docstring)."""
        positive = {
            "n_params": n_params,
            "bytes_per_param": bytes_per_param,
            "kv_bytes_per_token": kv_bytes_per_token,
            "mem_bandwidth_Bps": mem_bandwidth_Bps,
            "peak_flops": peak_flops,
            "mem_bytes": mem_bytes,
            "mfu": mfu,
            "bw_efficiency": bw_efficiency,
            "mem_utilisation": mem_utilisation,
        }
        for key, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"GPUProfile.roofline: {key} must be > 0, got {value!r}")
        if mfu > 1 or bw_efficiency > 1 or mem_utilisation > 1:
            raise ValueError("GPUProfile.roofline: mfu, bw_efficiency and mem_utilisation are fractions <= 1")
        weight_bytes = n_params * bytes_per_param
        bandwidth = mem_bandwidth_Bps * bw_efficiency
        flops = peak_flops * mfu
        kv_capacity = math.floor((mem_bytes * mem_utilisation - weight_bytes) / kv_bytes_per_token)
        if kv_capacity < block_size:
            raise ValueError(
                f"GPUProfile.roofline({name!r}): the weights ({weight_bytes / 1e9:.1f} GB) leave no room for "
                f"a KV cache in {mem_bytes * mem_utilisation / 1e9:.1f} GB of usable memory"
            )
        derivation = (
            f"roofline: {n_params / 1e9:.2f}B params x {bytes_per_param:g} B, "
            f"{kv_bytes_per_token:g} KV B/token, {mem_bandwidth_Bps / 1e12:.3g} TB/s x {bw_efficiency:g}, "
            f"{peak_flops / 1e12:.4g} TFLOP/s x {mfu:g} MFU, "
            f"{mem_bytes / 2**30:.0f} GiB x {mem_utilisation:g}"
        )
        return cls(
            name=name,
            description=f"{description}; {derivation}" if description else derivation,
            decode_base_s=weight_bytes / bandwidth,
            decode_per_seq_s=2 * n_params / flops,
            decode_per_kv_token_s=kv_bytes_per_token / bandwidth,
            prefill_per_token_s=2 * n_params / flops,
            kv_capacity_tokens=kv_capacity,
            block_size=block_size,
            max_batch=max_batch,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPUProfile:
        """The inverse of :meth:`to_dict`; unknown or missing keys are errors that name the fields."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"GPUProfile: unknown field(s) {unknown}; the fields are {sorted(names)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"GPUProfile: {exc}; the fields are {sorted(names)}") from None

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON (read back by :func:`get_profile` given the path)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


_GIB = 2**30


def _llama3_8b(name: str, gpu: str, *, mem_bandwidth_Bps: float, peak_flops: float) -> GPUProfile:
    """Llama-3-8B in bf16: 32 layers, 8 KV heads (GQA) of dimension 128, bf16 K and V."""
    return GPUProfile.roofline(
        name,
        n_params=8.03e9,
        bytes_per_param=2.0,
        kv_bytes_per_token=2 * 32 * 8 * 128 * 2,
        mem_bandwidth_Bps=mem_bandwidth_Bps,
        peak_flops=peak_flops,
        mem_bytes=80 * _GIB,
        description=f"Llama-3-8B bf16 on one {gpu}",
    )


PROFILES: dict[str, GPUProfile] = {
    profile.name: profile
    for profile in (
        _llama3_8b("llama3-8b-a100-80gb", "A100-SXM-80GB", mem_bandwidth_Bps=2.039e12, peak_flops=312e12),
        _llama3_8b("llama3-8b-h100-80gb", "H100-SXM-80GB", mem_bandwidth_Bps=3.35e12, peak_flops=989e12),
        GPUProfile(
            name="test",
            description="tiny profile for tests: 10 ms iterations, a 4,096-token KV cache, 64 sequences",
            decode_base_s=0.010,
            decode_per_seq_s=0.0002,
            decode_per_kv_token_s=1e-6,
            prefill_per_token_s=5e-5,
            kv_capacity_tokens=4096,
            block_size=16,
            max_batch=64,
        ),
    )
}
"""The built-in profiles by name."""


def get_profile(profile: str | GPUProfile) -> GPUProfile:
    """A built-in profile by name, a profile saved with :meth:`GPUProfile.save` by path, or ``profile``."""
    if isinstance(profile, GPUProfile):
        return profile
    if profile in PROFILES:
        return PROFILES[profile]
    if profile.endswith(".json"):
        path = Path(profile)
        if not path.is_file():
            raise ValueError(f"GPU profile file {profile!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"GPU profile file {profile!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"GPU profile file {profile!r} must hold a JSON object")
        return GPUProfile.from_dict(data)
    raise ValueError(
        f"unknown GPU profile {profile!r}; the built-in profiles are {sorted(PROFILES)} "
        "(or give the path of a .json file written by GPUProfile.save)"
    )
