"""Per-slot non-finite flags on their way from the device to the host, without a sync."""
from __future__ import annotations

from collections import deque

import torch

from .handles import EngineJob


class NonFiniteFlags:
    """The non-finite flags of recent steps on their way to the host: each step's are copied
    into pinned host memory without blocking, and read once the copy is done (a step or more
    later), never by waiting for the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pending: deque[tuple[torch.cuda.Event | None, torch.Tensor, list[EngineJob]]] = deque()

    def record(self, flags: torch.Tensor, owners: list[EngineJob]) -> None:
        """Start copying `flags` (`[n]` bool, one per owner) to the host."""
        if self.device.type != "cuda":
            self.pending.append((None, flags.clone(), owners))
            return
        host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((event, host, owners))

    def ready(self) -> list[EngineJob]:
        """Jobs flagged by every copy that has completed (oldest first)."""
        flagged: list[EngineJob] = []
        while self.pending and (self.pending[0][0] is None or self.pending[0][0].query()):
            _, host, owners = self.pending.popleft()
            flagged.extend(job for job, bad in zip(owners, host.numpy(), strict=True) if bad)
        return flagged
