"""Images for the report: the model's view of an image, and filter activation maps over it.

The *view* is what the model saw: the image decoded as RGB, resized and
center-cropped by the run's recorded preprocessing (without normalisation).
Thumbnails and heatmaps are drawn on the view, so a map lines up with the
pixels it was computed from.

A filter's *map* is its activation at the layer's measure point (after the
nonlinearity, as profiled), min-max scaled by the whole layer tensor of that
image as the method scales it, ``S = (A - min) / (max - min)``. For display a
map is divided by its own maximum and drawn over a grey copy of the view with
an opacity that grows with the activation, so inactive regions show the image.

The model is loaded only when a map is first asked for (:class:`MapEngine`),
maps are computed in batches, and hooks live only inside :class:`~filtag_kg.report.map_probe.MapProbe`'s
``with`` block, which removes them and restores ``model.training`` in
``finally``. Each hook copies just the channels asked for, at once, so a later
in-place operation of the model (``out += identity``) cannot change them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FiltagError

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..preprocess import Preprocess

__all__ = [
    "HeatmapError",
    "ImageViews",
    "LayerMaps",
    "MapEngine",
    "heat_of",
    "overlay",
    "save_jpeg",
    "thumbnail",
]


class HeatmapError(FiltagError):
    """The run's model cannot be rebuilt or probed for activation maps."""


class ImageViews:
    """Decodes images and applies the run's resize and crop (the model's view).

    Args:
        preprocess: the run's preprocessing; ``None`` (imported tags) shows images as they are.
    """

    def __init__(self, preprocess: Preprocess | None) -> None:
        self.preprocess = preprocess
        self._geometry: Any = None
        self._normalise: Any = None

    def view(self, path: str) -> Image:
        """The model's view of an image file.

        Raises:
            OSError, ValueError, ...: the file is missing or not a decodable image.
        """
        from ..data import load_rgb

        img = load_rgb(path)
        if self.preprocess is None:
            return img
        if self._geometry is None:
            from torchvision import transforms as T

            p = self.preprocess
            interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
            steps: list[Any] = []
            if p.resize is not None:
                steps.append(
                    T.Resize(
                        p.resize,
                        interpolation=interp.get(p.interpolation, T.InterpolationMode.BILINEAR),
                        antialias=True,
                    )
                )
            if p.crop is not None:
                steps.append(T.CenterCrop(p.crop))
            self._geometry = T.Compose(steps)
        return self._geometry(img)

    def tensor(self, view: Image) -> Any:
        """The model input of a view ([3, H, W], normalised as recorded)."""
        from torchvision import transforms as T

        if self.preprocess is None:
            raise HeatmapError("the run records no preprocessing; cannot rebuild the model input")
        if self._normalise is None:
            self._normalise = T.Compose(
                [T.ToTensor(), T.Normalize(self.preprocess.mean, self.preprocess.std)]
            )
        return self._normalise(view)


def thumbnail(view: Image, size: int) -> Image:
    """The view scaled so that its longer side is ``size`` pixels (up or down)."""
    from PIL import Image as PILImage

    w, h = view.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == (w, h):
        return view.copy()
    modes = getattr(PILImage, "Resampling", PILImage)  # Pillow >= 9.1 has the enum, older the constants
    method = modes.LANCZOS if scale < 1 else modes.BICUBIC
    return view.resize(new, method)


def heat_of(maps: Sequence[np.ndarray]) -> np.ndarray:
    """One display map from scaled filter maps: their mean, divided by its maximum (0 if flat)."""
    m = np.mean(np.stack(maps), axis=0) if len(maps) > 1 else np.asarray(maps[0], dtype=np.float32)
    top = float(m.max()) if m.size else 0.0
    return (m / top).astype(np.float32) if top > 0 else np.zeros_like(m, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _colours() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)


def overlay(thumb: Image, heat: np.ndarray) -> Image:
    """``heat`` ([h, w] in [0, 1]) upsampled onto ``thumb``, coloured, opacity growing with heat."""
    from PIL import Image as PILImage

    small = PILImage.fromarray(np.clip(heat * 255, 0, 255).astype(np.uint8), "L")
    modes = getattr(PILImage, "Resampling", PILImage)
    big = np.asarray(small.resize(thumb.size, modes.BILINEAR), dtype=np.float32) / 255.0
    colour = _colours()[np.clip((big * 255).astype(np.int64), 0, 255)]
    alpha = (0.85 * np.sqrt(big))[..., None]
    # a dimmed grey base, so the colours of the heat stand out on any image
    base = np.asarray(thumb.convert("L").convert("RGB"), dtype=np.float32) * 0.7 + 30
    out = base * (1 - alpha) + colour * alpha
    return PILImage.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def save_jpeg(img: Image, path: Path) -> None:
    """Write an RGB image as a JPEG (quality 88), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path, "JPEG", quality=88)


@dataclass
class LayerMaps:
    """Some filters' scaled maps of one layer for one image: ``maps[i]`` is filter ``filters[i]``."""

    filters: list[int]
    maps: np.ndarray  # [k, H, W] float32, S = (A - min) / (max - min) over the layer

    def get(self, f: int) -> np.ndarray:
        """The scaled map of filter ``f`` (which must have been asked for)."""
        return self.maps[self.filters.index(f)]


class MapEngine:
    """The run's model, rebuilt from ``profile.json`` on first use, giving filter maps.

    Args:
        profile_meta: the run's ``profile.json``.
        views: the image decoder (its preprocessing builds the model input).
        device: ``"cpu"`` (default), ``"cuda"``, ``"auto"``, ...
        batch_size: images per forward pass.
    """

    def __init__(
        self, profile_meta: dict[str, Any], views: ImageViews, *, device: str = "cpu", batch_size: int = 16
    ) -> None:
        self.meta = profile_meta
        self.views = views
        self.device_spec = device
        self.batch_size = max(1, int(batch_size))
        self.layers = [str(d["name"]) for d in profile_meta.get("layers") or []]
        self._engine: Any = None
        self.forward_passes = 0

    def _build(self, example: Any) -> Any:
        from ..models import load_recorded_model
        from ..profile import Engine, resolve_device

        try:
            loaded = load_recorded_model(self.meta)
        except FiltagError as exc:
            raise HeatmapError(f"cannot rebuild the run's model for heatmaps: {exc}") from None
        except (KeyError, TypeError) as exc:
            raise HeatmapError(f"profile.json lacks {exc} to rebuild the model for heatmaps") from None
        device = resolve_device(self.device_spec)
        recorded = [d.get("measured_at") for d in self.meta.get("layers") or []]
        kinds = [d.get("kind") for d in self.meta.get("layers") or []]
        measure = "conv" if kinds and all(k == "conv" for k in kinds) else "activation"
        try:
            engine = Engine.build(
                loaded, example.unsqueeze(0), layers=self.layers, measure=measure, device=device
            )
        except FiltagError as exc:
            raise HeatmapError(f"cannot probe the run's model for heatmaps: {exc}") from None
        if [p.describe() for p in engine.points] != recorded:
            raise HeatmapError("the model's measure points differ from the profile's; profile again")
        return engine

    def maps(
        self, views: Sequence[Image], wanted: Sequence[dict[int, set[int]]]
    ) -> list[dict[int, LayerMaps]]:
        """Scaled maps of the wanted filters for each view.

        Args:
            views: model views (from :meth:`ImageViews.view`).
            wanted: per view, layer index -> filters whose maps are needed.

        Returns:
            Per view, layer index -> :class:`LayerMaps` of the filters asked for.

        Raises:
            HeatmapError: the model cannot be rebuilt or does not match the profile.
        """
        import torch

        out: list[dict[int, LayerMaps]] = [{} for _ in views]
        if not views:
            return out
        tensors = [self.views.tensor(v) for v in views]
        if self._engine is None:
            self._engine = self._build(tensors[0])
        engine = self._engine
        from .map_probe import MapProbe

        probe = MapProbe(engine.module, engine.points)
        with probe, torch.inference_mode():
            for start in range(0, len(views), self.batch_size):
                part = range(start, min(len(views), start + self.batch_size))
                # images differ in size only without a crop: each size is a batch of its own
                groups: dict[tuple[int, ...], list[int]] = {}
                for i in part:
                    groups.setdefault(tuple(tensors[i].shape), []).append(i)
                for idx in groups.values():
                    layers = sorted({li for i in idx for li in wanted[i]})
                    channels = {li: sorted({f for i in idx for f in wanted[i].get(li, ())}) for li in layers}
                    probe.reset()
                    for li in range(len(engine.points)):
                        probe.wanted[li] = (
                            torch.tensor(channels[li], dtype=torch.long) if channels.get(li) else None
                        )
                    engine.module(engine.to_device(torch.stack([tensors[i] for i in idx])))
                    self.forward_passes += 1
                    for li in layers:
                        got = probe.taken[li]
                        if got is None or not channels[li]:
                            continue
                        sub, lo, hi = got
                        span = (hi - lo).clamp(min=0)
                        scaled = (sub - lo.view(-1, 1, 1, 1)) / torch.where(span > 0, span, 1.0).view(
                            -1, 1, 1, 1
                        )
                        scaled = torch.where(span.view(-1, 1, 1, 1) > 0, scaled, 0.0).numpy()
                        for b, i in enumerate(idx):
                            out[i][li] = LayerMaps(channels[li], scaled[b])
        return out
