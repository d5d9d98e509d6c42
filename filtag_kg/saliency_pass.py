"""iGOS++ heatmaps and SAGs for a run's images, with each SAG root named by concepts.

``filtag-kg sag RUN IMAGE...`` calls :func:`explain_saliency`, which writes
``RUN/saliency/saliency.json`` (every number of the method page: heatmaps at mask
resolution, the SAG's nodes, edges and probabilities, and per root the active
tagged filters and the concepts they vote for) and small PNGs beside it
(``saliency/NNNN/igos.png``, ``saliency/NNNN/node-MM.png``: the heatmap over the
model's view, and each SAG node's masked image). ``docs/saliency-method.md``
states the methods; this module only runs them on a run's model and tags.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import ensure_writable_dir, sha256_file, write_json, write_png
from .errors import check_whole
from .saliency import IgosOptions, SagOptions, SaliencyError, region_positions
from .saliency_io import SALIENCY_DIR, SALIENCY_JSON, read_saliency
from .tagging import TagSetting

__all__ = [
    "SALIENCY_DIR",
    "SALIENCY_JSON",
    "SaliencyOptions",
    "explain_saliency",
    "read_saliency",
    "region_concepts",
]



@dataclass
class SaliencyOptions:
    """What ``filtag-kg sag`` computes.

    Attributes:
        sag: SAG parameters.
        igos: iGOS++ parameters, or ``None`` for no heatmaps.
        setting: the tagging setting that names regions (default: the first in ``tags.json``).
        region_layers: how many of the last measured layers name the regions.
        device: ``auto``, ``cpu``, ``cuda``, ...
        batch_size: images per iGOS++ batch.
        thumbnail: side of the PNGs in pixels.
    """

    sag: SagOptions = field(default_factory=SagOptions)
    igos: IgosOptions | None = field(default_factory=IgosOptions)
    setting: TagSetting | None = None
    region_layers: int = 1
    device: str = "auto"
    batch_size: int = 8
    thumbnail: int = 160


def region_concepts(
    maps: Sequence[np.ndarray],
    regions: Sequence[Sequence[int]],
    *,
    grid: int,
    hw: tuple[int, int],
    incidence: Sequence[np.ndarray],
    setting: TagSetting,
    layer_names: Sequence[str],
    class_ids: Sequence[str],
    labels: Sequence[str],
) -> list[dict[str, Any]]:
    """Per region: the active tagged filters inside it and the concepts they vote for.

    Args:
        maps: per layer, the image's scaled maps of every filter [F, h, w].
        regions: patch sets (row-major patch numbers on a ``grid x grid`` grid).
        grid, hw: the patch grid and the model input's size (H, W).
        incidence: per layer, the [F, C] tag matrix of ``setting``.
        setting, layer_names: the selection rule and the layers' names.
        class_ids, labels: the tag classes, in the incidence's column order.

    Returns:
        Per region ``{"layers": [{"layer", "active": [{"filter", "value", "tags": [class ids]}]}],
        "votes": [{"class_id", "label", "count"}]}`` (votes by count desc, then class order).
    """
    from .explain import explain_batch

    if not regions:
        return []
    values = []
    for m in maps:
        inside = [region_positions(r, grid, hw, (int(m.shape[-2]), int(m.shape[-1]))) for r in regions]
        values.append(np.stack([m[:, ins].mean(axis=1) for ins in inside]).astype(np.float64))
    rows = explain_batch(values, incidence, setting, layer_names)
    out = []
    for ri, row in enumerate(rows):
        layers = []
        for li, active in enumerate(row["active"]):
            layers.append(
                {
                    "layer": layer_names[li],
                    "active": [
                        {
                            "filter": int(f),
                            "value": float(values[li][ri, f]),
                            "tags": [class_ids[c] for c in np.flatnonzero(incidence[li][f])],
                        }
                        for f in active
                    ],
                }
            )
        counts = row["counts"]
        voted = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
        out.append(
            {
                "layers": layers,
                "votes": [
                    {"class_id": class_ids[c], "label": labels[c], "count": int(counts[c])} for c in voted
                ],
            }
        )
    return out


def explain_saliency(
    run_dir: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    options: SaliencyOptions | None = None,
) -> dict[str, Any]:
    """Compute iGOS++ heatmaps and SAGs of ``images`` with the run's model; write ``saliency/``.

    Args:
        run_dir: a run folder with a profile (and tags, to name regions).
        images: image files.
        options: see :class:`SaliencyOptions`.

    Returns:
        The document written to ``RUN/saliency/saliency.json``.

    Raises:
        SaliencyError: an invalid parameter or an unreadable image.
        ProfileError: no profile in ``run_dir``.
    """
    import torch

    from .explain import TagIndex, recorded_settings
    from .models import load_recorded_model
    from .profile import Profile, resolve_device
    from .report.heatmaps import ImageViews, MapEngine, overlay, thumbnail
    from .saliency import blur_baseline, class_probability, compose, igos, patch_masks, sag

    opts = options or SaliencyOptions()
    opts.sag.check()
    if opts.igos is not None:
        opts.igos.check()
    check_whole("--batch-size", opts.batch_size, 1)
    if not isinstance(opts.region_layers, int) or opts.region_layers < 1:
        raise SaliencyError(f"invalid --region-layers {opts.region_layers!r}: use a whole number >= 1")
    run = Path(run_dir)
    profile = Profile.load(run)
    settings = recorded_settings(run)
    setting = opts.setting or (settings[0] if settings else TagSetting("top-k", 1))
    out_dir = ensure_writable_dir(run / SALIENCY_DIR)
    loaded = load_recorded_model(profile.meta)
    device = resolve_device(opts.device)
    module = loaded.module.to(device).eval()
    views = ImageViews(loaded.preprocess)
    score = class_probability(module)
    model_classes = profile.meta.get("model_classes") or [
        {"id": c, "label": lab} for c, lab in zip(profile.class_ids, profile.labels)
    ]
    started = time.perf_counter()

    shown, tensors = [], []
    for path in images:
        try:
            view = views.view(str(path))
        except (OSError, ValueError) as exc:
            raise SaliencyError(f"cannot read image {path}: {exc}; give a readable image file") from None
        shown.append(view)
        tensors.append(views.tensor(view))
    small = min((min(t.shape[-2:]) for t in tensors), default=opts.sag.grid)
    if opts.sag.grid > small:  # before any work: the SAG would refuse it after the heatmaps
        raise SaliencyError(
            f"SAG grid {opts.sag.grid} is finer than the {small}x{small} image; use a smaller --grid"
        )
    n = len(tensors)
    records: list[dict[str, Any]] = [{} for _ in range(n)]
    heats: list[np.ndarray | None] = [None] * n
    targets = [0] * n
    with torch.no_grad():
        for i, t in enumerate(tensors):
            p = torch.softmax(module(t.unsqueeze(0).to(device)).float(), dim=1)[0]
            targets[i] = int(p.argmax())
            top = torch.topk(p, min(5, p.numel()))
            records[i]["model_top"] = [
                {
                    "class_id": model_classes[j]["id"] if j < len(model_classes) else str(j),
                    "label": model_classes[j]["label"] if j < len(model_classes) else str(j),
                    "probability": float(q),
                }
                for q, j in zip(top.values.tolist(), top.indices.tolist())
            ]
    if opts.igos is not None:  # batched: same-size inputs together
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), max(1, opts.batch_size)):
                part = idx[s : s + max(1, opts.batch_size)]
                x = torch.stack([tensors[i] for i in part]).to(device)
                tg = torch.tensor([targets[i] for i in part], device=device)
                h = igos(score, x, tg, opts.igos).cpu().numpy()
                for k, i in enumerate(part):
                    heats[i] = h[k]
    graphs = [sag(score, tensors[i].to(device), targets[i], opts.sag) for i in range(n)]

    # regions named by concepts: the unmasked image's scaled maps of the last layers
    layers = profile.layers[-opts.region_layers :]
    first = len(profile.layers) - len(layers)
    index = TagIndex.build(profile, [setting])
    engine = MapEngine(profile.meta, views, device=opts.device, batch_size=opts.batch_size)
    wanted = [{first + k: set(range(lp.width)) for k, lp in enumerate(layers)} for _ in range(n)]
    maps = engine.maps(shown, wanted) if any(g.roots for g in graphs) else [{} for _ in range(n)]

    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    for i, path in enumerate(images):
        g = graphs[i]
        folder = f"{i:04d}"
        hw = (int(tensors[i].shape[-2]), int(tensors[i].shape[-1]))
        rec = records[i]
        rec.update(
            {
                "index": i,
                "image": str(path),
                "sha256": sha256_file(path),
                "target": targets[i],
                "class_id": model_classes[targets[i]]["id"]
                if targets[i] < len(model_classes)
                else str(targets[i]),
                "label": model_classes[targets[i]]["label"]
                if targets[i] < len(model_classes)
                else str(targets[i]),
            }
        )
        thumb = thumbnail(shown[i], opts.thumbnail)
        if heats[i] is not None:
            write_png(out_dir / folder / "igos.png", overlay(thumb, heats[i]).convert("RGB"), optimize=True)
            rec["igos"] = {
                "size": int(heats[i].shape[0]),
                "heatmap": np.round(heats[i].astype(np.float64), 4).tolist(),
                "png": f"{folder}/igos.png",
            }
        else:
            rec["igos"] = None
        sag_rec = g.record()
        pix = to_tensor(shown[i]).unsqueeze(0)
        blurred = blur_baseline(pix)
        for k, node in enumerate(sag_rec["nodes"]):
            u = patch_masks([tuple(node["patches"])], g.grid, tuple(pix.shape[-2:]))
            img = compose(pix, blurred, u)[0].clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
            write_png(out_dir / folder / f"node-{k:02d}.png",
                      thumbnail(Image.fromarray(img), opts.thumbnail).convert("RGB"), optimize=True)
            node["png"] = f"{folder}/node-{k:02d}.png"
        rec["sag"] = sag_rec
        roots = [g.nodes[r][0] for r in g.roots]
        per_layer = [maps[i][first + k].maps for k in range(len(layers))] if roots else []
        named = (
            region_concepts(
                per_layer,
                roots,
                grid=g.grid,
                hw=hw,
                incidence=index.incidence[0][first:],
                setting=setting,
                layer_names=[lp.name for lp in layers],
                class_ids=list(profile.class_ids),
                labels=list(profile.labels),
            )
            if roots
            else []
        )
        rec["regions"] = [{"node": r, **named[k]} for k, r in enumerate(g.roots)]
    doc = {
        "method": "docs/saliency-method.md",
        "options": {
            "sag": asdict(opts.sag),
            "igos": asdict(opts.igos) if opts.igos is not None else None,
            "setting": {"method": setting.method, "param": setting.param},
            "region_layers": [lp.name for lp in layers],
            "baseline": "gaussian blur (docs/saliency-method.md)",
        },
        "profile": profile.meta.get("fingerprint"),
        "seconds": round(time.perf_counter() - started, 3),
        "images": records,
    }
    write_json(out_dir / SALIENCY_JSON, doc)
    return doc
