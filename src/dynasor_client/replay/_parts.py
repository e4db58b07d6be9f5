"""What the replay server and the in-process replay share (no web framework imported here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..endpoints import Capabilities

if TYPE_CHECKING:
    from ._engine import ReplayEngine
    from ._profiles import GPUProfile
    from ._server import ReplayApp
    from ._service import ReplayService
    from ._timing_drivers import RealtimeDriver

#: What the replay server supports: what an Endpoint's probes detect (:mod:`._capability_probes`), or
#: pass ``Endpoint(..., capabilities=REPLAY_CAPABILITIES)`` to skip them.
REPLAY_CAPABILITIES = Capabilities(
    max_n=None,
    token_id_prompts=True,
    generated_token_ids="return_token_ids",
    tokenize=True,
    chat_template=None,
    assistant_prefill=True,
    prefill_echoes=False,
    max_top_logprobs=20,
    streaming_usage=True,
    seeded_n_distinct=True,
)


class ReplayParts:
    """The engine, timing driver, service and ASGI application of a replay, and what they answer."""

    service: ReplayService
    engine: ReplayEngine
    driver: RealtimeDriver
    profile: GPUProfile
    app: ReplayApp

    def _serve(self, service: ReplayService) -> None:
        from ._server import create_app  # needs the [server] extra

        self.service = service
        self.engine = service.engine
        self.driver = service.driver
        self.profile = service.driver.model.profile
        self.app = create_app(service)

    @property
    def model(self) -> str:
        return self.service.model

    @property
    def capabilities(self) -> Capabilities:
        """What the replay server supports (pass to ``Endpoint(capabilities=...)``)."""
        return REPLAY_CAPABILITIES

    def metrics(self) -> dict[str, Any]:
        """The figures of ``/metrics?format=json`` (timing model and server counters), read directly."""
        return self.service.metrics()
