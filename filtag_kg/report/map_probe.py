"""Hooks that copy chosen filters' activation maps, for the report's heatmaps.

Kept apart from :mod:`filtag_kg.report.heatmaps` so that building a report
imports torch only when a heatmap is actually drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..activations import PointHooks
from ..measure import MeasurePoint


class MapProbe(PointHooks):
    """Hooks that copy chosen channels of each measure point's output, per forward pass.

    The hook bookkeeping (shared modules, graph probes for TorchScript, clean-up)
    is :class:`~filtag_kg.activations.PointHooks`'; this class only decides what
    to keep: the point's ``apply`` (a functional activation) applied, then the
    wanted channels and the layer's min and max, copied to the CPU at once.
    """

    def __init__(self, module: Any, points: Sequence[MeasurePoint]) -> None:
        super().__init__(module, points)
        #: per point, the channels to keep in the next pass (a LongTensor) or None (skip the point)
        self.wanted: list[Any] = [None] * len(self.points)
        #: per point, after a pass: (kept channels [B, k, H, W], layer min [B], layer max [B]) on the CPU
        self.taken: list[tuple[Any, Any, Any] | None] = [None] * len(self.points)

    def capture(self, index: int, output: Any) -> None:
        """Keep the wanted channels of point ``index``'s output (and the layer's min and max)."""
        want = self.wanted[index]
        if want is None:
            return
        p = self.points[index]
        x = output.detach()
        if p.apply is not None:
            x = p.apply(x)
        x = x.float()
        b = x.shape[0]
        flat = x.reshape(b, -1)
        self.taken[index] = (
            x.index_select(1, want.to(x.device)).cpu(),
            flat.amin(dim=1).cpu(),
            flat.amax(dim=1).cpu(),
        )

    def reset(self) -> None:
        """Forget the last pass (call counts and kept maps)."""
        self.reset_calls()
        self.taken = [None] * len(self.points)
