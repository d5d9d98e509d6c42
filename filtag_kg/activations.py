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
from typing import TypeVar

import torch
from torch import nn

from .measure import MeasurePoint

_P = TypeVar("_P", bound="PointHooks")


def _reduce(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-filter spatial means (float32) and per-image layer min and max of [B, F, H, W]."""
    if x.dim() != 4:
        raise ValueError(f"expected a [B, F, H, W] activation, got shape {tuple(x.shape)}")
    # amin/amax over several dims parallelise well in any memory layout; torch.aminmax over
    # one flattened dim measured about 10x slower on CPU
    return x.mean(dim=(2, 3), dtype=torch.float32), x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))


def _scale(mean: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``(mean - lo) / (hi - lo)`` in float64, 0 where ``hi == lo``; ``lo``/``hi`` broadcast."""
    m = lo.to(torch.float64)
    span = hi.to(torch.float64) - m
    scaled = (mean.to(torch.float64) - m) / torch.where(span > 0, span, 1.0)
    return torch.where(span > 0, scaled, 0.0)


def scaled_filter_values(x: torch.Tensor) -> torch.Tensor:
    """Min-max scaled per-filter values of a [B, F, H, W] activation batch.

    Each image's whole layer tensor is scaled to [0, 1] by its own min and max,
    then averaged over positions per filter. Reductions run in float32 (also
    under bf16/fp16 autocast), the final affine step in float64.

    Returns:
        [B, F] float64 tensor on ``x``'s device.
    """
    mean, lo, hi = _reduce(x)
    return _scale(mean, lo.unsqueeze(1), hi.unsqueeze(1))


class PointHooks:
    """Context manager that hands each measure point's output to :meth:`capture`.

    The bookkeeping every probe shares: one forward hook per module; a module
    that runs several times per pass (a shared ReLU) serves each of its measure
    points on the call the dry run found; TorchScript graphs (which take no
    hooks) call :meth:`record` from their graph probes instead. Hooks exist
    only inside the ``with`` block, which removes them and restores
    ``model.training`` in ``finally``, even when the forward pass raises.
    Subclasses implement :meth:`capture`.
    """

    def __init__(self, model: nn.Module, points: Sequence[MeasurePoint]) -> None:
        self.model = model
        self.points = list(points)
        self._by_module: dict[str, dict[int, list[int]]] = {}
        self._expected: dict[str, int] = {}
        for i, p in enumerate(self.points):
            self._by_module.setdefault(p.hook_module, {}).setdefault(p.call_index, []).append(i)
            self._expected[p.hook_module] = p.calls_per_forward
        self._calls = dict.fromkeys(self._by_module, 0)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._training = bool(model.training)
        self._graph = bool(getattr(model, "filtag_graph_probes", False))

    def capture(self, index: int, output: torch.Tensor) -> None:
        """Take measure point ``index``'s output tensor (as the module returned it)."""
        raise NotImplementedError(f"{type(self).__name__} must define capture()")

    def _hook(self, name: str, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        call = self._calls[name]
        self._calls[name] = call + 1
        for i in self._by_module[name].get(call, ()):
            self.capture(i, output)

    def record(self, index: int, output: torch.Tensor) -> None:
        """Record measure point ``index`` (called by graph probes of TorchScript models)."""
        self._hook(self.points[index].hook_module, self.model, None, output)

    def check_calls(self) -> None:
        """Raise unless every hooked module ran as often as in the dry run; reset the counts.

        Raises:
            RuntimeError: a hooked module ran a different number of times than in
                the dry run (the forward pass is not static), so values could be
                attributed to the wrong layer.
        """
        bad = [n for n, c in self._calls.items() if c != self._expected[n]]
        self._calls = dict.fromkeys(self._calls, 0)
        if bad:
            raise RuntimeError(
                f"hooked modules ran a different number of times than in the dry run: {bad}; "
                "FilTag needs a forward pass whose module calls do not depend on the input"
            )

    def reset_calls(self) -> None:
        """Forget the call counts (before a pass whose results are not checked)."""
        self._calls = dict.fromkeys(self._calls, 0)

    def __enter__(self: _P) -> _P:
        self._training = bool(self.model.training)
        if self._graph:
            from .torchscript import _ACTIVE

            _ACTIVE.append(self)
            return self
        modules = dict(self.model.named_modules())
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
        if self._graph:
            from .torchscript import _ACTIVE

            if self in _ACTIVE:
                _ACTIVE.remove(self)  # an exported graph is always in eval mode
            return
        try:
            self._remove()
        finally:
            self.model.train(self._training)


class FilterProbe(PointHooks):
    """Context manager that measures filter values at the given points.

    After each forward pass inside the block, :meth:`take` returns one
    [B, F] float64 tensor per measure point (in the points' order), and
    :meth:`take_flat` the same values side by side as one [B, sum F] tensor.
    Hooks only reduce (three passes over each output); the scaling of all
    layers runs once per batch on the concatenated reductions, so a deep model
    pays a handful of small-tensor operations per batch rather than per layer.

    >>> with FilterProbe(model, points) as probe:   # doctest: +SKIP
    ...     logits = model(images)
    ...     values = probe.take()
    """

    def __init__(
        self, model: nn.Module, points: Sequence[MeasurePoint], *, keep_outputs: bool = False
    ) -> None:
        super().__init__(model, points)
        self.keep_outputs = keep_outputs
        #: with ``keep_outputs``: each point's hooked output of the last pass, still
        #: attached to the autograd graph (for gradient-based weighting)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.points)
        self._raw: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(self.points)
        self._widths = [p.width for p in self.points]
        self._column_layer: torch.Tensor | None = None  # layer index of each flat column

    def capture(self, index: int, output: torch.Tensor) -> None:
        """Reduce point ``index``'s output to per-filter means and the layer's min and max."""
        apply = self.points[index].apply
        x = output.detach()
        self._raw[index] = _reduce(x if apply is None else apply(x))
        if self.keep_outputs:
            self.outputs[index] = output

    def take_flat(self) -> torch.Tensor:
        """The values of the last forward pass as one [B, sum F] float64 tensor; resets.

        Columns follow the points' order, each point's filters in index order.

        Raises:
            RuntimeError: a hooked module ran a different number of times than in
                the dry run (the forward pass is not static), so values could be
                attributed to the wrong layer.
        """
        raw = self._raw
        self._raw = [None] * len(self.points)
        self.check_calls()
        if any(r is None for r in raw):
            missing = sorted({self.points[i].hook_module for i, r in enumerate(raw) if r is None})
            raise RuntimeError(
                f"no output was measured at {missing} in this forward pass; FilTag needs a "
                "forward pass whose module calls do not depend on the input"
            )
        mean = torch.cat([r[0] for r in raw], dim=1)  # type: ignore[index]
        # min/max come in the layers' dtypes (several under autocast): float64 holds each exactly
        lo = torch.stack([r[1].to(torch.float64) for r in raw], dim=1)  # type: ignore[index]
        hi = torch.stack([r[2].to(torch.float64) for r in raw], dim=1)  # type: ignore[index]
        if self._column_layer is None or self._column_layer.device != mean.device:
            self._column_layer = torch.repeat_interleave(
                torch.arange(len(raw), device=mean.device),
                torch.tensor(self._widths, device=mean.device),
            )
        cols = self._column_layer
        return _scale(mean, lo.index_select(1, cols), hi.index_select(1, cols))

    def take(self) -> list[torch.Tensor]:
        """The values of the last forward pass, one [B, F] tensor per point; resets.

        Raises:
            RuntimeError: as :meth:`take_flat`.
        """
        return list(torch.split(self.take_flat(), self._widths, dim=1))
