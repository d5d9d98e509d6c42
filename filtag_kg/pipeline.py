"""The pipeline verbs shared by the API and the CLI: load data, run, summarise.

``filtag-kg run`` is :func:`run`: profile (step 1) then tag (step 2) into one
run folder. Each stage can also run alone from its input artifact.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import distributed
from .data import ImageSet, file_list, image_folder
from .errors import DataError
from .models import ClassInfo, LoadedModel, select_layers
from .profile import Profile, ProfileOptions, profile_dataset
from .tagging import Tag, TagSetting, tag_profile, write_tags


def load_images(
    *,
    data: str | os.PathLike[str] | None = None,
    file_list_path: str | os.PathLike[str] | None = None,
    known: Sequence[ClassInfo] | None = None,
) -> ImageSet:
    """The image set of ``--data DIR`` or ``--file-list FILE`` (exactly one).

    Args:
        data: an ImageFolder root (class folders named by wnid or label).
        file_list_path: a ``PATH<TAB>CLASS`` list.
        known: the model's classes, to label wnid folders and map label folders.

    Raises:
        DataError: neither or both are given, or the data is missing/empty.
    """
    if (data is None) == (file_list_path is None):
        raise DataError("give the images with exactly one of --data DIR or --file-list FILE")
    if data is not None:
        return image_folder(data, known)
    return file_list(file_list_path, known)  # type: ignore[arg-type]


@dataclass
class RunResult:
    """What :func:`run` produced: the profile and the tags, both also on disk."""

    run_dir: Path
    profile: Profile
    tags: list[Tag]


def run(
    loaded: LoadedModel,
    imageset: ImageSet,
    run_dir: str | os.PathLike[str],
    *,
    settings: Sequence[TagSetting],
    options: ProfileOptions | None = None,
) -> RunResult:
    """Profile ``loaded`` over ``imageset`` and tag with every setting, into ``run_dir``.

    Tag settings are validated before the (expensive) profile pass.
    """
    settings = list(settings) or [TagSetting("top-k", 1)]
    modules = dict(loaded.module.named_modules())
    for name in select_layers(loaded.module, options.layers if options else None):
        for s in settings:  # a k wider than a layer fails now, not after hours of profiling
            s.count(int(getattr(modules[name], "out_channels", 0)), name)
    profile = profile_dataset(loaded, imageset, run_dir, options)
    if distributed.current().main:
        tags = write_tags(run_dir, profile, settings)
    else:  # under torchrun, rank 0 alone writes
        tags = tag_profile(profile, list(dict.fromkeys(settings)))
    return RunResult(Path(run_dir), profile, tags)


def summarize(profile: Profile, tags: Sequence[Tag], *, max_filters: int = 12) -> str:
    """A readable summary: per layer and setting, how many filters are tagged, and
    the most strongly tagged filters with their tags."""
    meta = profile.meta
    ds = meta.get("dataset", {})
    lines = [
        f"model {meta.get('model', {}).get('spec', '?')}: {len(profile.layers)} conv layers, "
        f"{len(profile.class_ids)} classes, {ds.get('images_used', int(profile.counts.sum()))} "
        f"images profiled, {ds.get('skipped_count', 0)} skipped"
    ]
    if meta.get("images_per_second"):
        lines[0] += f", {meta['images_per_second']:.1f} images/s"
    if meta.get("data_wait_share") is not None:
        lines[0] += f" ({100 * meta['data_wait_share']:.0f}% waiting for images)"
    for path in [s["path"] for s in ds.get("skipped", [])][:10]:
        lines.append(f"  skipped: {path}")
    by: dict[tuple[str, str, str], list[Tag]] = defaultdict(list)
    for t in tags:
        by[(t.layer, t.method, t.param)].append(t)
    settings = list(dict.fromkeys((t.method, t.param) for t in tags))
    for lp in profile.layers:
        lines.append(f"layer {lp.name}: {lp.width} filters, measured at {lp.measured_at}")
        for method, param in settings:
            rows = by.get((lp.name, method, param), [])
            per_filter: dict[int, list[Tag]] = defaultdict(list)
            for t in rows:
                per_filter[t.filter].append(t)
            name = f"{method} {param}".strip()
            lines.append(
                f"  {name}: {len(rows)} tags on {len(per_filter)} filters, "
                f"{lp.width - len(per_filter)} untagged"
            )
            ranked = sorted(per_filter.items(), key=lambda kv: -max(t.score for t in kv[1]))
            for f, ts in ranked[:max_filters]:
                labels = ", ".join(
                    f"{t.label} ({t.score:.3f})" for t in sorted(ts, key=lambda t: -t.score)
                )
                lines.append(f"    filter {f}: {labels}")
            if len(ranked) > max_filters:
                lines.append(f"    ... {len(ranked) - max_filters} more in tags.tsv")
    return "\n".join(lines)
