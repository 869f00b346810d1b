"""The scheduler's records besides the registry's entries: a Host as it sees it, and a migration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Move:
    """An agent on its way from one Host to another: unavailable until it is bound again."""

    src_host: str
    src_gpu: int
    since: float  # `now` when it stopped serving at src_host
    why: str
    off_gpu: bool  # memory pressure: it should land on another GPU


class HostSlot:
    """A warm Host as the scheduler sees it."""

    __slots__ = ("host_id", "gpu", "node", "agent", "call", "lost", "dead", "reviving",
                 "kv_tokens", "pressed", "fresh")

    def __init__(self, host_id: str, gpu: int, node: str = "") -> None:
        self.host_id, self.gpu, self.node = host_id, gpu, node
        self.agent: str | None = None
        self.call = ""  # the call in flight: bind, park, run, or stalled (a silent Host)
        self.lost = 0  # times this Host died under an agent
        self.dead = False  # its node is gone: the Host can never restart there
        self.reviving = False  # lost or stalled, not answering yet: no agent goes there
        self.kv_tokens = 0  # KV the engine holds for its agent, as the Host last reported
        self.pressed = False  # its GPU was over its limit when its park began
        self.fresh = False  # its agent was bound and has not run a batch yet

    @property
    def busy(self) -> bool:
        return bool(self.call)

    @property
    def empty(self) -> bool:
        """Alive, holding no agent and doing nothing: an agent can be bound here."""
        return self.agent is None and not self.busy and not self.dead and not self.reviving
