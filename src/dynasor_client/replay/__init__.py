"""Replay engine: answers OpenAI-compatible requests from recorded model outputs with GPU-like timing.

- What a request gets back: :class:`ReplayEngine` (:mod:`._engine`; question matching in
  :mod:`._matching`, token pieces in :mod:`._pieces`). Every rule is documented there.
- When it gets it: the continuous-batching GPU model :class:`BatchingModel` (:mod:`._timing`) under a
  :class:`GPUProfile` (:mod:`._profiles`), run in real time by :class:`RealtimeDriver` or on a
  virtual clock by :class:`VirtualClockSimulator` (:mod:`._timing_drivers`); :func:`fit_profile`
  fits a profile to measured timings.
- Over HTTP: :class:`ReplayServer` (``dynasor-client serve-replay``; :mod:`._server`, needs the
  ``[server]`` extra, imported on first use); its benchmark is
  :func:`dynasor_client.benchmarks.bench_replay` (``dynasor-client bench replay``).
- In-process, on a virtual clock (:mod:`._virtual`): :class:`InProcessReplay` serves the same
  application to :class:`~dynasor_client.Endpoint` with no socket; on a :class:`VirtualTimeLoop`
  (:func:`run_virtual`) modelled GPU time is loop time, so minutes of it take seconds of CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from ._engine import NoMatch, RecordingEnds, ReplayEngine
from ._parts import REPLAY_CAPABILITIES
from ._profiles import PROFILES, GPUProfile, get_profile
from ._timing_drivers import VirtualClockSimulator
from ._timing_fit import TimingSample, fit_profile, load_timing_samples
from ._virtual import InProcessReplay, VirtualTimeDeadlock, VirtualTimeLoop, run_virtual

if TYPE_CHECKING:
    from ._server import ReplayServer, serve_replay

_LAZY = {
    "ReplayServer": "._server",
    "serve_replay": "._server",
}


# The server loads on first use (it needs the ``[server]`` extra).
__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = [
    "PROFILES",
    "REPLAY_CAPABILITIES",
    "GPUProfile",
    "InProcessReplay",
    "NoMatch",
    "RecordingEnds",
    "ReplayEngine",
    "ReplayServer",
    "TimingSample",
    "VirtualClockSimulator",
    "VirtualTimeDeadlock",
    "VirtualTimeLoop",
    "fit_profile",
    "get_profile",
    "load_timing_samples",
    "run_virtual",
    "serve_replay",
]
