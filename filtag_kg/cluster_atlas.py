"""The cluster maps of one image variant in one PNG, an *atlas* (docs/cluster-method.md,
"Stored form"), and the references that name one cluster's region of it.

A pass with ``--clusters`` used to write one PNG per cluster map: 3 per layer, 159 files per
image variant on ResNet-50, where creating each file (its inode) cost more than all the
clustering; an atlas is one file per image variant. Its layout depends only on the layers'
map shapes and the number of map slots ``N`` (``--cluster-maps``), never on which slots have
a map, so a slot's region is the same in every atlas of a pass. A cluster refers to its map
as ``PATH#xywh=x,y,w,h`` (a spatial fragment of W3C Media Fragments URI 1.0, pixel units).

This module needs neither torch nor the RDF code: the pass, the export and the report all
read the references through it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Region", "atlas_layout", "cut_map", "load_grey", "load_map", "map_ref", "split_map_ref"]

#: the fragment of a map reference: a spatial media fragment in pixels, as the shapes check it
_FRAGMENT = re.compile(r"xywh=([0-9]+),([0-9]+),([0-9]+),([0-9]+)")


@dataclass(frozen=True)
class Region:
    """A rectangle of an atlas in pixels: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    @property
    def fragment(self) -> str:
        """``xywh=x,y,w,h``: the region as a Media Fragments spatial fragment."""
        return f"xywh={self.x},{self.y},{self.w},{self.h}"


def atlas_layout(sizes: Sequence[tuple[int, int]], slots: int) -> tuple[int, int, list[list[Region]]]:
    """The atlas of layers whose maps are ``sizes`` (``(H, W)`` per layer, profile order) with
    ``slots`` map slots per layer: ``(width, height, regions)``, ``regions[l][k]`` the region
    of rank slot ``k`` (0-based) of layer ``l``. One row per layer, as high as its maps; slot
    ``k`` at ``x = k W_l``; width ``slots * max W_l``, height ``sum H_l``."""
    width = slots * max((w for _, w in sizes), default=0)
    regions: list[list[Region]] = []
    y = 0
    for h, w in sizes:
        regions.append([Region(k * w, y, w, h) for k in range(slots)])
        y += h
    return width, y, regions


def map_ref(path: str, region: Region) -> str:
    """The stored reference to one cluster's map: ``path#xywh=x,y,w,h``."""
    return f"{path}#{region.fragment}"


def split_map_ref(ref: str) -> tuple[str, Region | None]:
    """A stored map reference as ``(file path, region)``; ``region`` is ``None`` for a
    reference without a fragment (runs before the atlas: one file per map). A fragment
    that is not a spatial ``xywh=`` fragment in pixels stays part of the path (no such
    file is written, so it names nothing)."""
    path, sep, fragment = ref.rpartition("#")
    if sep:
        m = _FRAGMENT.fullmatch(fragment)
        if m:
            return path, Region(*(int(v) for v in m.groups()))
    return ref, None


def load_map(file: str | os.PathLike[str], region: Region | None = None) -> Any:
    """A stored cluster map as a ``[H, W]`` uint8 array (255 = the map's maximum): ``region``
    of the atlas ``file``, or the whole file (``None``: a map of a run before the atlas).

    Raises:
        OSError, PIL.UnidentifiedImageError: the file cannot be read as an image.
        ValueError: the region is empty or reaches outside the image.
    """
    return cut_map(load_grey(file), region, file)


def load_grey(file: str | os.PathLike[str]) -> Any:
    """An image file as a ``[H, W]`` uint8 grey array (an atlas, decoded once for all of
    its maps)."""
    import numpy as np
    from PIL import Image

    with Image.open(file) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def cut_map(grey: Any, region: Region | None, file: str | os.PathLike[str] = "the atlas") -> Any:
    """``region`` of a decoded atlas (``None``: all of it).

    Raises:
        ValueError: the region is empty or reaches outside the image (``file`` names it).
    """
    if region is None:
        return grey
    height, width = grey.shape
    if region.w <= 0 or region.h <= 0 or region.x + region.w > width or region.y + region.h > height:
        raise ValueError(f"region {region.fragment} is not inside the {width}x{height} image {file}")
    return grey[region.y:region.y + region.h, region.x:region.x + region.w]
