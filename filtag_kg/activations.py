"""The hook engine: per-image filter values, reduced on the device.

For each measured layer and image the method needs the per-filter spatial
mean and the layer-wide min and max; the min-max scaled filter value is then
``(mean_f - m) / (M - m)`` (0 when ``M == m``), so the scaled tensor is never
built. Hooks reduce each layer's output as soon as it is produced: nothing
per-pixel is kept or copied to the host.

Hooks exist only inside :class:`FilterProbe`'s ``with`` block, which removes
them and restores ``model.training`` in ``finally`` even when the forward pass
raises.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType

import torch
from torch import nn

from .measure import MeasurePoint


def scaled_filter_values(x: torch.Tensor) -> torch.Tensor:
    """Min-max scaled per-filter values of a [B, F, H, W] activation batch.

    Each image's whole layer tensor is scaled to [0, 1] by its own min and max,
    then averaged over positions per filter. Reductions run in float32 (also
    under bf16/fp16 autocast), the final affine step in float64.

    Returns:
        [B, F] float64 tensor on ``x``'s device.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a [B, F, H, W] activation, got shape {tuple(x.shape)}")
    mean = x.mean(dim=(2, 3), dtype=torch.float32)
    # amin/amax over several dims parallelise well in any memory layout; torch.aminmax over
    # one flattened dim measured about 10x slower on CPU
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    m = lo.to(torch.float64).unsqueeze(1)
    span = hi.to(torch.float64).unsqueeze(1) - m
    scaled = (mean.to(torch.float64) - m) / torch.where(span > 0, span, 1.0)
    return torch.where(span > 0, scaled, 0.0)


class FilterProbe:
    """Context manager that measures filter values at the given points.

    After each forward pass inside the block, :meth:`take` returns one
    [B, F] float64 tensor per measure point (in the points' order).

    >>> with FilterProbe(model, points) as probe:   # doctest: +SKIP
    ...     logits = model(images)
    ...     values = probe.take()
    """

    def __init__(
        self, model: nn.Module, points: Sequence[MeasurePoint], *, keep_outputs: bool = False
    ) -> None:
        self.model = model
        self.points = list(points)
        self.keep_outputs = keep_outputs
        #: with ``keep_outputs``: each point's hooked output of the last pass, still
        #: attached to the autograd graph (for gradient-based weighting)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.points)
        self._values: list[torch.Tensor | None] = [None] * len(self.points)
        # one hook per module; a module that runs several times per pass (a shared
        # ReLU) serves each of its measure points on the call the dry run found
        self._by_module: dict[str, dict[int, list[int]]] = {}
        self._expected: dict[str, int] = {}
        for i, p in enumerate(self.points):
            self._by_module.setdefault(p.hook_module, {}).setdefault(p.call_index, []).append(i)
            self._expected[p.hook_module] = p.calls_per_forward
        self._calls = dict.fromkeys(self._by_module, 0)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._training = model.training

    def _hook(self, name: str, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        call = self._calls[name]
        self._calls[name] = call + 1
        for i in self._by_module[name].get(call, ()):
            apply = self.points[i].apply
            x = output.detach()
            self._values[i] = scaled_filter_values(x if apply is None else apply(x))
            if self.keep_outputs:
                self.outputs[i] = output

    def record(self, index: int, output: torch.Tensor) -> None:
        """Record measure point ``index`` (called by graph probes of TorchScript models)."""
        self._hook(self.points[index].hook_module, self.model, None, output)

    def __enter__(self) -> FilterProbe:
        modules = dict(self.model.named_modules())
        self._training = self.model.training
        if getattr(self.model, "filtag_graph_probes", False):
            from .torchscript import _ACTIVE

            _ACTIVE.append(self)
            return self
        try:
            for name in self._by_module:
                self._handles.append(
                    modules[name].register_forward_hook(functools.partial(self._hook, name))
                )
            self.model.eval()
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if getattr(self.model, "filtag_graph_probes", False):
            from .torchscript import _ACTIVE

            _ACTIVE.remove(self)  # an exported graph is always in eval mode
            return
        try:
            self._remove()
        finally:
            self.model.train(self._training)

    def take(self) -> list[torch.Tensor]:
        """The values of the last forward pass; resets for the next one.

        Raises:
            RuntimeError: a hooked module ran a different number of times than in
                the dry run (the forward pass is not static), so values could be
                attributed to the wrong layer.
        """
        bad = [n for n, c in self._calls.items() if c != self._expected[n]]
        if bad or any(v is None for v in self._values):
            raise RuntimeError(
                f"hooked modules ran a different number of times than in the dry run: {bad}; "
                "FilTag needs a forward pass whose module calls do not depend on the input"
            )
        out: list[torch.Tensor] = self._values  # type: ignore[assignment]
        self._values = [None] * len(self.points)
        self._calls = dict.fromkeys(self._calls, 0)
        return out
