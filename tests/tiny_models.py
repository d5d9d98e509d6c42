"""Small CPU models for the tests, importable as ``tiny_models:FACTORY`` when the
tests folder is on the path (the CLI tests put it on PYTHONPATH)."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """Three conv layers covering the three measure cases.

    * ``conv1`` is followed by its own ``nn.ReLU`` module ``act1``;
    * ``conv2`` is followed by ``bn2`` and a functional ``F.relu``;
    * ``conv3`` is followed by max pooling only (measured at the conv output).
    """

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 5, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.pool(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


def build_tiny(seed: int = 0) -> nn.Module:
    """A TinyNet with deterministic weights and non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        net.bn2.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
        net.bn2.running_var.copy_(torch.rand(8, generator=g) + 0.5)
    return net.eval()


class SlowTiny(TinyNet):
    """TinyNet that sleeps in every forward pass, so a test can kill it mid-run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get("TINY_SLEEP", "0.3")))
        return super().forward(x)


def build_slow() -> nn.Module:
    """A SlowTiny with the same weights as ``build_tiny()``."""
    net = SlowTiny()
    net.load_state_dict(build_tiny().state_dict())
    return net.eval()


class SharedReLUBlock(nn.Module):
    """A ResNet-style block: one ReLU module used twice and an in-place residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        out += x
        return self.relu(out)


class SharedNet(nn.Module):
    """A stem conv + a SharedReLUBlock + a conv with a LeakyReLU applied as a method call."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = SharedReLUBlock()
        self.head = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.tanh(self.stem(x)))
        x = F.leaky_relu(self.head(x), 0.2)
        return self.fc(x.mean(dim=(2, 3)))


def build_shared(seed: int = 1) -> nn.Module:
    """A SharedNet with deterministic weights."""
    torch.manual_seed(seed)
    return SharedNet().eval()


class ModuleActNet(nn.Module):
    """Activations as modules only (as in torchvision's VGG and ResNet), so a profile's
    records rebuild every measure point: ``conv1`` -> ``relu1``, a
    :class:`SharedReLUBlock`, ``conv3`` measured at its output.

    ``scaled=True`` multiplies ``conv1``'s output by 1 before ``relu1``: the same values
    and the same module calls, but the ReLU no longer follows the conv directly, so
    ``conv1`` is measured at its output.
    """

    def __init__(self, scaled: bool = False) -> None:
        super().__init__()
        self.scaled = scaled
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.block = SharedReLUBlock()
        self.conv3 = nn.Conv2d(4, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        x = self.block(self.relu1(y * 1.0 if self.scaled else y))
        return self.fc(torch.flatten(self.pool(self.conv3(x)), 1))


def build_module_act(scaled: bool = False) -> nn.Module:
    """A ModuleActNet with deterministic weights (the same for both forms)."""
    torch.manual_seed(2)
    net = ModuleActNet(scaled)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()
