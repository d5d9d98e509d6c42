"""Bring your own CNN: a factory that filtag-kg loads with ``--model FILE.py:build``.

Any callable that returns a ``torch.nn.Module`` works, in a file (as here) or
in an installed or local module (``--model mypackage.nets:build``). Weights
come from your own training run as a state dict (``--weights-file``, loaded
strictly: a key that does not fit is an error naming it). Where each filter
is measured is found from the forward pass, so write ``forward`` as usual::

    filtag-kg layers examples/custom_model.py:build
    filtag-kg run --model examples/custom_model.py:build --weights-file runs/my_training/weights.pt \\
        --data my_images/ --k 1 --k 3 --out runs/mine

``layers`` prints, per conv layer, where it is measured here: ``stem.0``
after its BatchNorm and ReLU modules, ``conv1`` after the functional
``F.relu`` that follows its BatchNorm, and ``conv2`` at its output, since the
residual sum comes before any nonlinearity.

The class list comes from ``--classes FILE`` or the data folders (named by
WordNet ids such as ``n02084071`` to link the tags to WordNet). The
preprocessing may travel with the model as ``filtag_preprocess`` (else the
ImageNet evaluation preset is used, with ``--image-size`` for the crop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallResNet(nn.Module):
    """A stem, one residual block, global average pooling and a linear classifier."""

    #: read by filtag-kg when no preprocessing is given: resize, center crop, normalise
    filtag_preprocess = {
        "resize": 72,
        "crop": 64,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.conv2(y))
        return self.head(x.mean(dim=(2, 3)))


def build(num_classes: int = 10) -> nn.Module:
    """The factory ``--model examples/custom_model.py:build`` calls (with no arguments)."""
    return SmallResNet(num_classes)
