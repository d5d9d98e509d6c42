"""The dry run that finds measure points runs on a shrunk copy of the example, and falls
back to the full size for models that need it."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from filtag_kg.measure import DRY_RUN_SIDE, _find_points, find_measure_points
from filtag_kg.models import select_layers


def _sizes_seen(model: nn.Module) -> tuple[list[tuple[int, int]], object]:
    seen: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    return seen, handle


def test_points_from_the_shrunk_dry_run_equal_the_full_ones() -> None:
    torch.manual_seed(0)
    for model in (torchvision.models.resnet18(), torchvision.models.vgg11()):
        model.eval()
        layers = select_layers(model, None)
        example = torch.rand(1, 3, 160, 200)
        seen, handle = _sizes_seen(model)
        try:
            points = find_measure_points(model, layers, example)
        finally:
            handle.remove()
        assert seen == [(DRY_RUN_SIDE, 80)]  # one pass, shorter side shrunk to 64, aspect kept
        full = _find_points(model, layers, example, "activation")
        assert [p.record() for p in points] == [p.record() for p in full]
        assert any(p.calls_per_forward > 1 for p in points) == isinstance(model, torchvision.models.ResNet)


class _NeedsFullSize(nn.Module):
    """A flatten + linear head sized for 96 px inputs, and a conv that runs only on large
    inputs: both fail or differ at the dry run's small size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.big = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(8)
        self.head = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        if x.shape[-1] > DRY_RUN_SIDE:
            x = torch.relu(self.big(x))
        return self.head(torch.flatten(self.pool(x), 1))


def test_models_that_need_their_size_get_the_full_dry_run() -> None:
    model = _NeedsFullSize().eval()
    example = torch.rand(1, 3, 96, 96)
    seen, handle = _sizes_seen(model)
    try:
        points = find_measure_points(model, ["conv", "big"], example)
    finally:
        handle.remove()
    assert seen == [(64, 64), (96, 96)]
    assert [(p.hook_module, p.kind, p.activation) for p in points] == [
        ("act", "activation", "ReLU"), ("big", "activation", "relu")]
    small_enough = torch.rand(1, 3, 48, 48)  # no larger than the dry run's size: used as it is
    seen, handle = _sizes_seen(model)
    try:
        find_measure_points(model, ["conv"], small_enough)
    except RuntimeError:
        pass  # the head needs 96 px; only the size the dry run tried matters here
    finally:
        handle.remove()
    assert seen == [(48, 48)]
