"""Image preprocessing as a small, recordable value.

A :class:`Preprocess` is what turns a decoded RGB image into the model's input
tensor. It is plain data so that it can be written into the profile metadata
and rebuilt exactly for the explanation pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side), center-crop, scale to [0, 1], normalise.

    Args:
        resize: shorter-side size before cropping, or ``None`` for no resize.
        crop: side of the square center crop, or ``None`` for no crop.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (resize only).
        source: where this preprocessing came from (for the record).
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = field(default="imagenet-eval", compare=False)

    @classmethod
    def imagenet(cls, image_size: int = 224) -> Preprocess:
        """The ImageNet evaluation preset: resize 256, crop 224 (scaled with ``image_size``)."""
        return cls(resize=round(image_size * 256 / 224), crop=image_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as stored in ``profile.json``."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`."""
        return cls(
            resize=d.get("resize"),
            crop=d.get("crop"),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
            source=d.get("source", "recorded"),
        )

    def transform(self) -> Callable[[Any], Any]:
        """A torchvision transform taking a PIL RGB image to a float tensor."""
        from torchvision import transforms as T

        interp = {
            "bilinear": T.InterpolationMode.BILINEAR,
            "bicubic": T.InterpolationMode.BICUBIC,
        }[self.interpolation]
        steps: list[Any] = []
        if self.resize is not None:
            steps.append(T.Resize(self.resize, interpolation=interp, antialias=True))
        if self.crop is not None:
            steps.append(T.CenterCrop(self.crop))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)


def channel_stats(x: Any, mean: Sequence[float], std: Sequence[float]) -> tuple[Any, Any]:
    """``mean`` and ``std`` as ``[1, C, 1, 1]`` tensors of ``x``'s dtype and device, to undo
    (``x * s + m``: pixels in [0, 1]) or redo (``(p - m) / s``) the normalisation of a batch."""
    import torch

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return m, s
