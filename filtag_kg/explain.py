"""FilTag step 3: explain single classifications by the tags of active filters.

For an image, each layer's filter values give its active filters, chosen with
the same method and parameter as the tagging; every tag of every active filter
is one vote for its class. The explanation's prediction is the class with
most votes over all layers (ties: the class that comes first in the profile),
and, as in the reference, also over the last layer alone. The model's own
top-5 is recorded beside it.

The pass streams ``explanations.jsonl`` (one JSON object per image and
setting, perturbed copies after their clean image), so memory does not grow
with the number of images, and resumes exactly like the profile pass: a state
file records how many images and bytes are final; on ``--resume`` the file is
cut back to that point and the pass continues.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from ._io import ensure_writable_dir, read_json, write_json
from .activations import FilterProbe
from .data import ImageDataset, ImageSet, make_loader
from .distributed import RoundSampler
from .errors import FiltagError, ProfileError
from .profile import Engine, Interrupted, Profile, _now, first_good_image, resolve_device, software_versions
from .tagging import TagSetting, active_filters, order_filters, tag_layer

EXPLANATIONS = "explanations.jsonl"
EXPLANATIONS_META = "explanations.json"
STATE = "explanations.state.json"
PERTURBATIONS = ("gaussian", "salt-and-pepper", "blur")
WEIGHTINGS = ("gradcam",)


@dataclass(frozen=True)
class Perturbation:
    """A deterministic input perturbation, applied in pixel space ([0, 1]).

    Kinds: ``gaussian:SIGMA`` (additive noise of standard deviation SIGMA),
    ``salt-and-pepper:P`` (a share P of pixels set to black or white) and
    ``blur:SIGMA`` (Gaussian blur, kernel ``2*ceil(3*SIGMA)+1``). Noise for an
    image depends only on the seed and the image's index, never on the batch.
    """

    kind: str
    param: float
    seed: int = 0

    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> Perturbation:
        """Parse ``KIND:VALUE`` (``gaussian:0.1``, ``salt-and-pepper:0.05``, ``blur:2``).

        Raises:
            FiltagError: unknown kind or invalid value.
        """
        kind, _, value = text.partition(":")
        if kind not in PERTURBATIONS:
            raise FiltagError(
                f"unknown perturbation {text!r}; use {', '.join(k + ':VALUE' for k in PERTURBATIONS)}"
            )
        try:
            param = float(value)
        except ValueError:
            raise FiltagError(
                f"perturbation {text!r} needs a number after the colon, e.g. {kind}:0.1"
            ) from None
        if not math.isfinite(param) or param <= 0 or (kind == "salt-and-pepper" and param > 1):
            raise FiltagError(
                f"invalid perturbation strength in {text!r}: must be > 0"
                + (" and <= 1" if kind == "salt-and-pepper" else "")
            )
        return cls(kind, param, seed)

    def record(self) -> dict[str, Any]:
        """Plain-JSON form written into each perturbed explanation."""
        return {"kind": self.kind, "param": self.param, "seed": self.seed}

    def apply(
        self, x: torch.Tensor, indices: Sequence[int], mean: Sequence[float], std: Sequence[float]
    ) -> torch.Tensor:
        """Perturb a normalised batch ``x`` ([B, 3, H, W]) of dataset ``indices``."""
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        pix = x * s + m
        if self.kind == "blur":
            from torchvision.transforms.functional import gaussian_blur

            k = 2 * math.ceil(3 * self.param) + 1
            out = gaussian_blur(pix, [k, k], [self.param, self.param])
        else:
            noise = []
            for idx in indices:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(idx))
                if self.kind == "gaussian":
                    noise.append(torch.randn(pix.shape[1:], generator=g) * self.param)
                else:
                    u = torch.rand(pix.shape[2:], generator=g)
                    salt = torch.rand(pix.shape[2:], generator=g) < 0.5
                    noise.append(torch.stack([u < self.param, salt]))
            stacked = torch.stack(noise).to(x.device)
            if self.kind == "gaussian":
                out = pix + stacked.to(x.dtype)
            else:
                hit, white = stacked[:, 0:1], stacked[:, 1:2]
                out = torch.where(hit, white.to(x.dtype).expand_as(pix), pix)
        return (out.clamp(0.0, 1.0) - m) / s


@dataclass
class ExplainOptions:
    """Options of the explanation pass (``filtag-kg explain``).

    Attributes:
        settings: tagging settings to explain with; default: those in ``tags.json``.
        perturb: perturbations (``gaussian:0.1``, ...); each image is also
            explained under each one.
        seed: seed of the perturbations.
        weighting: ``None`` or ``"gradcam"`` (votes weighted by each active
            filter's gradient-based contribution to the model's prediction).
        device, batch_size, workers, amp, checkpoint_every, resume, restart,
            progress: as for the profile pass.
    """

    settings: list[TagSetting] | None = None
    perturb: list[str] = field(default_factory=list)
    seed: int = 0
    weighting: str | None = None
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    amp: str = "off"
    checkpoint_every: int = 50
    resume: bool = False
    restart: bool = False
    progress: bool = True


def recorded_settings(run_dir: str | os.PathLike[str]) -> list[TagSetting]:
    """The settings ``tags.json`` was written with (``[]`` when there is none)."""
    path = Path(run_dir) / "tags.json"
    if not path.is_file():
        return []
    return [TagSetting(s["method"], s["param"]) for s in read_json(path)["settings"]]


@dataclass
class TagIndex:
    """Which classes tag each filter, per setting and layer: ``incidence[s][l]`` is [F, C]."""

    settings: list[TagSetting]
    incidence: list[list[np.ndarray]]

    @classmethod
    def build(cls, profile: Profile, settings: Sequence[TagSetting]) -> TagIndex:
        """Tag the profile with each setting (the same tags ``filtag-kg tag`` writes)."""
        col = {c: i for i, c in enumerate(profile.class_ids)}
        inc = []
        for s in settings:
            per_layer = []
            for lp in profile.layers:
                m = np.zeros((lp.width, len(profile.class_ids)))
                for t in tag_layer(lp.name, lp.means, profile.counts, profile.class_ids, profile.labels, s):
                    m[t.filter, col[t.class_id]] = 1.0
                per_layer.append(m)
            inc.append(per_layer)
        return cls(list(settings), inc)


def _ranked_votes(votes: np.ndarray) -> np.ndarray:
    """Class indices by votes, most first; ties by class order."""
    return np.argsort(-votes, kind="stable")


def explain_batch(
    values: Sequence[np.ndarray],
    incidence: Sequence[np.ndarray],
    setting: TagSetting,
    layer_names: Sequence[str],
    *,
    weights: Sequence[np.ndarray] | None = None,
    orders: Sequence[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """The explanations of a batch of images from their per-layer filter values.

    Votes are counted for the whole batch at once, per layer: the rows of the
    layer's [F, C] tag matrix that belong to each image's active filters,
    summed per image (weighted when ``weights`` are given). Counts are sums of
    ones, so they are exact whatever the order of summation.

    Args:
        values: per layer, the [B, F] filter values of the batch.
        incidence: per layer, the [F, C] tag matrix of ``setting``.
        setting: the selection rule (the same as the tagging's).
        layer_names: names of the layers, for messages.
        weights: per layer, an optional [B, F] weight for each filter's votes.
        orders: per layer, ``order_filters`` of ``values`` when already computed.

    Returns:
        Per image: ``active`` (per layer: indices in rank order), ``votes`` /
        ``counts`` ([C] arrays over all layers), ``votes_last`` /
        ``counts_last`` (last layer alone).
    """
    n_images = values[0].shape[0] if values else 0
    n_classes = incidence[0].shape[1] if incidence else 0
    active: list[list[np.ndarray]] = [[] for _ in range(n_images)]
    votes, counts = np.zeros((n_images, n_classes)), np.zeros((n_images, n_classes))
    last_v = last_c = votes
    for li, (v, inc, name) in enumerate(zip(values, incidence, layer_names)):
        chosen = [
            active_filters(v[b], setting, name, None if orders is None else orders[li][b])
            for b in range(n_images)
        ]
        lengths = np.array([len(c) for c in chosen], dtype=np.int64)
        rows = np.repeat(np.arange(n_images), lengths)
        cols = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
        w = None if weights is None else weights[li][rows, cols]
        c = _segment_votes(inc, rows, cols, lengths, None)
        lv = c if w is None else _segment_votes(inc, rows, cols, lengths, w)
        votes, counts = votes + lv, counts + c
        for b in range(n_images):
            active[b].append(chosen[b])
        if li == len(values) - 1:
            last_v, last_c = lv, c
    return [
        {"active": active[b], "votes": votes[b], "counts": counts[b],
         "votes_last": last_v[b], "counts_last": last_c[b]}
        for b in range(n_images)
    ]


def _segment_votes(
    inc: np.ndarray, rows: np.ndarray, cols: np.ndarray, lengths: np.ndarray, weight: np.ndarray | None
) -> np.ndarray:
    """[B, C] votes: per image, the (weighted) sum of its active filters' rows of ``inc``.

    Few active filters (top-k): gather those rows and sum each image's run of
    them. Many (above-average): one [B, F] x [F, C] product is cheaper than
    gathering half the matrix per image.
    """
    n_images, (n_filters, n_classes) = len(lengths), inc.shape
    if len(cols) * 4 >= n_images * n_filters:
        mark = np.zeros((n_images, n_filters))
        mark[rows, cols] = 1.0 if weight is None else weight
        return mark @ inc
    out = np.zeros((n_images, n_classes))
    if len(cols):
        picked = inc[cols] if weight is None else inc[cols] * weight[:, None]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        some = lengths > 0
        out[some] = np.add.reduceat(picked, starts[some], axis=0)
    return out


def explain_values(
    values: Sequence[np.ndarray],
    incidence: Sequence[np.ndarray],
    setting: TagSetting,
    layer_names: Sequence[str],
    *,
    weights: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """One image's explanation from its per-layer [F] filter values (see :func:`explain_batch`)."""
    return explain_batch(
        [np.asarray(v)[None] for v in values], incidence, setting, layer_names,
        weights=None if weights is None else [np.asarray(w)[None] for w in weights],
    )[0]


def _prediction(votes: np.ndarray, class_ids: Sequence[str]) -> str | None:
    if votes.size == 0 or votes.max() <= 0:
        return None
    return class_ids[int(_ranked_votes(votes)[0])]


def _vote_dict(votes: np.ndarray, class_ids: Sequence[str], *, integer: bool = False) -> dict[str, Any]:
    return {class_ids[i]: (int(votes[i]) if integer else float(votes[i])) for i in np.flatnonzero(votes)}


class _JsonlWriter:
    """Appends lines; remembers how many bytes are final for resume."""

    def __init__(self, path: Path, offset: int) -> None:
        mode = "r+b" if path.exists() else "wb"
        self.fh = open(path, mode)  # noqa: SIM115 - closed in close()
        self.fh.truncate(offset)
        self.fh.seek(offset)

    def write(self, obj: dict[str, Any]) -> None:
        self.fh.write(json.dumps(obj, ensure_ascii=False, allow_nan=False).encode() + b"\n")

    def sync(self) -> int:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


class _Sink:
    """Where explanation lines go: the run's file alone, or, under ``torchrun``, one
    part file per rank that rank 0 merges into the run's file, in dataset order, at
    every synchronisation (so the run's file always holds a finished prefix)."""

    def __init__(self, run: Path, offset: int, dist: distributed.Dist) -> None:
        self.run, self.dist = run, dist
        self.main = _JsonlWriter(run / EXPLANATIONS, offset) if dist.main else None
        self.part = _JsonlWriter(self._part_path(dist.rank), 0) if dist.active else None

    def _part_path(self, rank: int) -> Path:
        return self.run / f"explanations.part{rank:04d}.jsonl"

    def write(self, obj: dict[str, Any]) -> None:
        (self.part or self.main).write(obj)  # type: ignore[union-attr]

    def synchronise(self) -> int | None:
        """Make every line written so far final; rank 0 gets the run file's size."""
        if self.part is not None:
            self.part.sync()
            self.dist.barrier()
            if self.main is not None:
                lines = []
                for rank in range(self.dist.world):
                    with open(self._part_path(rank), "rb") as fh:
                        for seq, line in enumerate(fh):
                            lines.append((json.loads(line)["index"], rank, seq, line))
                for *_, line in sorted(lines, key=lambda x: x[:3]):
                    self.main.fh.write(line)
            self.dist.barrier()
            self.part.fh.truncate(0)
            self.part.fh.seek(0)
        return self.main.sync() if self.main is not None else None

    def close(self, *, remove_part: bool = False) -> None:
        for w in (self.main, self.part):
            if w is not None:
                w.close()
        if remove_part and self.part is not None:
            self._part_path(self.dist.rank).unlink(missing_ok=True)


@contextlib.contextmanager
def _no_inplace(module: torch.nn.Module) -> Iterator[None]:
    """Turn off ``inplace`` on every submodule (gradients need the originals)."""
    changed = [m for m in module.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


def _gradcam_weights(
    outputs: Sequence[torch.Tensor], points: Sequence[Any], logits: torch.Tensor
) -> list[np.ndarray]:
    """Per layer [B, F]: relu(spatial mean of d score / d map * spatial mean of the map)."""
    score = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
    try:
        grads = torch.autograd.grad(score, list(outputs), allow_unused=True)
    except RuntimeError as exc:
        raise FiltagError(
            f"gradcam weighting failed on this model ({str(exc).splitlines()[0][:160]}); explain "
            "without --weighting"
        ) from None
    out = []
    for o, g, p in zip(outputs, grads, points):
        act = o.detach() if p.apply is None else p.apply(o.detach())
        if g is None:
            out.append(np.zeros(tuple(o.shape[:2])))
            continue
        w = (g.float().mean(dim=(2, 3)) * act.float().mean(dim=(2, 3))).clamp(min=0)
        out.append(w.double().cpu().numpy())
    return out


def explain_dataset(
    run_dir: str | os.PathLike[str],
    imageset: ImageSet,
    options: ExplainOptions | None = None,
    *,
    profile: Profile | None = None,
    loaded: Any = None,
) -> dict[str, Any]:
    """Explain every image of ``imageset`` with the run's tags; write ``explanations.jsonl``.

    Args:
        run_dir: a run folder with a profile.
        imageset: the images (folder, list or single files).
        options: see :class:`ExplainOptions`.
        profile: the run's profile (read from ``run_dir`` when omitted).
        loaded: the model (rebuilt from ``profile.json`` when omitted).

    Returns:
        The metadata also written to ``explanations.json``.

    Raises:
        ProfileError: no profile, or a state file without resume/restart.
        Interrupted: Ctrl-C (state saved for ``--resume``).
    """
    from .models import load_recorded_model

    opts = options or ExplainOptions()
    dist = distributed.current()
    run = ensure_writable_dir(run_dir)
    profile = profile or Profile.load(run)
    settings = list(dict.fromkeys(opts.settings or recorded_settings(run) or [TagSetting("top-k", 1)]))
    perturbs = [Perturbation.parse(p, seed=opts.seed) for p in opts.perturb]
    if opts.weighting not in (None, *WEIGHTINGS):
        raise FiltagError(f"unknown --weighting {opts.weighting!r}; use gradcam")
    loaded = loaded or load_recorded_model(profile.meta)
    device = resolve_device(opts.device, dist)
    names = [lp.name for lp in profile.layers]
    measure = "conv" if all(lp.measure.get("kind") == "conv" for lp in profile.layers) else "activation"
    dataset = ImageDataset(imageset.samples, loaded.preprocess.transform(), with_sha256=True)
    engine = Engine.build(
        loaded,
        first_good_image(imageset, dataset),
        layers=names,
        measure=measure,
        device=device,
        amp=opts.amp,
    )
    recorded = [lp.measured_at for lp in profile.layers]
    if [p.describe() for p in engine.points] != recorded:
        raise ProfileError("the model's measure points differ from the profile's; profile again")
    index = TagIndex.build(profile, settings)
    model_ids = [c["id"] for c in profile.meta.get("model_classes") or []]
    model_labels = [c["label"] for c in profile.meta.get("model_classes") or []]
    pre = loaded.preprocess

    fingerprint = {
        "profile": profile.meta.get("fingerprint"),
        "data": imageset.fingerprint(),
        "settings": [str(s) for s in settings],
        "perturb": [p.record() for p in perturbs],
        "weighting": opts.weighting,
    }
    out_path, state_path = run / EXPLANATIONS, run / STATE
    dist.barrier()
    if opts.restart and dist.main:
        for p in (state_path, out_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    dist.barrier()
    done, offset, skipped, started = 0, 0, [], _now()
    if state_path.exists():
        if not opts.resume:
            raise ProfileError(
                f"{run} holds an interrupted explanation pass ({STATE}); rerun with --resume to "
                "finish it, or --restart to discard it"
            )
        state = read_json(state_path)
        if state["fingerprint"] != fingerprint:
            diff = [k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k]]
            raise ProfileError(
                f"the interrupted explanation pass in {run} used a different "
                f"{', '.join(diff)}; rerun with the same options, or --restart"
            )
        done, offset, skipped, started = state["done"], state["offset"], state["skipped"], state["started_at"]
    elif opts.resume and (run / EXPLANATIONS_META).exists():
        meta = read_json(run / EXPLANATIONS_META)
        if meta.get("fingerprint") == fingerprint:
            return meta  # already finished

    n = len(dataset)
    first = done
    workers = (
        opts.workers if opts.workers is not None else (0 if n - done < 512 else min(8, os.cpu_count() or 1))
    )
    sampler = RoundSampler(done, n, opts.batch_size, dist)
    loader = make_loader(dataset, batch_sampler=sampler, workers=workers, pin_memory=device.type == "cuda")
    sink = _Sink(run, offset, dist)
    local_skipped: list[tuple[int, dict[str, str]]] = []
    from ._progress import progress

    bar = progress(total=n, initial=done, unit="img", desc="explain", enabled=opts.progress and dist.main,
                   leave=True)
    module = engine.module
    variants: list[Perturbation | None] = [None, *perturbs]
    t0 = time.perf_counter()

    def synchronise(save: bool) -> None:
        """Make lines and skipped files final on rank 0 (collective under torchrun)."""
        offset = sink.synchronise()
        gathered = [x for part in dist.gather_objects(local_skipped) for x in part]
        skipped.extend(entry for _, entry in sorted(gathered, key=lambda e: e[0]))
        local_skipped.clear()
        if save and dist.main:
            write_json(
                state_path,
                {"fingerprint": fingerprint, "done": done, "offset": offset, "skipped": skipped,
                 "started_at": started},
            )

    def forward(
        x: torch.Tensor, probe: FilterProbe
    ) -> tuple[list[np.ndarray], torch.Tensor, list[np.ndarray] | None]:
        if opts.weighting == "gradcam":
            with torch.enable_grad(), engine.autocast():
                x = x.detach().requires_grad_(True)
                logits = module(x)
                values = probe.take_flat()
                weights = _gradcam_weights(probe.outputs, engine.points, logits.float())
            return np.split(values.cpu().numpy(), splits, axis=1), logits.detach().float(), weights
        with torch.inference_mode(), engine.autocast():
            logits = module(x)
            values = probe.take_flat()
        # one copy to the host per batch, then per-layer views
        return np.split(values.cpu().numpy(), splits, axis=1), logits.float(), None

    splits = np.cumsum([p.width for p in engine.points])[:-1]
    rounds = 0
    try:
        ctx = (
            _no_inplace(module)
            if opts.weighting == "gradcam" and not hasattr(module, "filtag_graph_probes")
            else contextlib.nullcontext()
        )
        with ctx, FilterProbe(module, engine.points, keep_outputs=opts.weighting == "gradcam") as probe:
            for batch in loader:
                local_skipped += [
                    (i, {"path": imageset.samples[i].path, "reason": why}) for i, why in batch.bad
                ]
                if batch.images is not None:
                    x = engine.to_device(batch.images)
                    idx = batch.indices.tolist()
                    results = []
                    for var in variants:
                        xv = x if var is None else var.apply(x, idx, pre.mean, pre.std)
                        values, logits, weights = forward(xv, probe)
                        k = min(5, logits.shape[1])
                        probs, top = torch.softmax(logits, dim=1).topk(k, dim=1)
                        # one sort per layer for the whole batch, shared by every setting
                        orders = [order_filters(v) for v in values]
                        explained = [
                            explain_batch(values, inc, s, names, weights=weights, orders=orders)
                            for s, inc in zip(settings, index.incidence)
                        ]
                        results.append(
                            (var, values, weights, explained, probs.cpu().numpy(), top.cpu().numpy())
                        )
                    for b, i in enumerate(idx):
                        sample = imageset.samples[i]
                        true = imageset.classes[sample.label].id if sample.label >= 0 else None
                        for var, values, weights, explained, probs, top in results:
                            model_top = [
                                {
                                    "class_id": model_ids[j] if j < len(model_ids) else str(j),
                                    "label": model_labels[j] if j < len(model_labels) else str(j),
                                    "prob": float(p),
                                }
                                for j, p in zip(top[b].tolist(), probs[b].tolist())
                            ]
                            for s, per_image in zip(settings, explained):
                                ex = per_image[b]
                                active = {}
                                for li, (name, a) in enumerate(zip(names, ex["active"])):
                                    vals = values[li][b, a].tolist()
                                    if weights is None:
                                        active[name] = [
                                            {"filter": f, "value": x, "rank": r}
                                            for r, (f, x) in enumerate(zip(a.tolist(), vals), 1)
                                        ]
                                    else:
                                        active[name] = [
                                            {"filter": f, "value": x, "rank": r, "weight": w}
                                            for r, (f, x, w) in enumerate(
                                                zip(a.tolist(), vals, weights[li][b, a].tolist()), 1
                                            )
                                        ]
                                sink.write(
                                    {
                                        "index": i,
                                        "image": sample.path,
                                        "sha256": batch.sha256[b] if batch.sha256 else None,
                                        "true_class": true,
                                        "model_top": model_top,
                                        "method": s.method,
                                        "param": s.param_text,
                                        "active_filters": active,
                                        "votes": _vote_dict(ex["votes"], profile.class_ids),
                                        "vote_counts": _vote_dict(
                                            ex["counts"], profile.class_ids, integer=True
                                        ),
                                        "votes_last_layer": _vote_dict(ex["votes_last"], profile.class_ids),
                                        "prediction": _prediction(ex["votes"], profile.class_ids),
                                        "prediction_last_layer": _prediction(
                                            ex["votes_last"], profile.class_ids
                                        ),
                                        "perturbation": var.record() if var is not None else None,
                                        "weighting": opts.weighting,
                                    }
                                )
                rounds += 1
                new_done = sampler.done_after(rounds)
                bar.update(new_done - done)
                done = new_done
                if opts.checkpoint_every and rounds % opts.checkpoint_every == 0 and done < n:
                    synchronise(save=True)
    except KeyboardInterrupt:
        bar.close()
        if not dist.active:  # alone, the lines so far are consistent: keep them
            synchronise(save=True)
        sink.close()
        raise Interrupted(f"interrupted after {done} of {n} images; rerun with --resume to finish") from None
    except BaseException:
        sink.close()
        raise
    bar.close()
    synchronise(save=False)
    sink.close(remove_part=True)
    dist.barrier()
    if dist.main:  # parts left by a killed run with more processes
        for stale in run.glob("explanations.part*.jsonl"):
            stale.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    meta = {
        "format": "filtag-kg explanations",
        "format_version": 1,
        "file": EXPLANATIONS,
        "settings": [{"method": s.method, "param": s.param} for s in settings],
        "perturbations": [p.record() for p in perturbs],
        "weighting": opts.weighting,
        "model": profile.meta.get("model"),
        "layers": names,
        "dataset": {**imageset.record(), "skipped_count": len(skipped), "skipped": skipped},
        "images": n - len(skipped),
        "processes": dist.world,
        "fingerprint": fingerprint,
        "software": software_versions(),
        "started_at": started,
        "finished_at": _now(),
        "images_per_second": round((n - first) / seconds, 3) if seconds > 0 else None,
    }
    if dist.main:
        write_json(run / EXPLANATIONS_META, meta)
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
    dist.barrier()
    return meta


def read_explanations(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream the explanations of a run, one dict per line.

    Raises:
        ProfileError: the run has no explanations.
    """
    path = Path(run_dir) / EXPLANATIONS
    if not path.is_file():
        raise ProfileError(f"{run_dir} holds no {EXPLANATIONS}; create it with `filtag-kg explain`")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


__all__ = [
    "EXPLANATIONS",
    "ExplainOptions",
    "Perturbation",
    "TagIndex",
    "explain_dataset",
    "explain_batch",
    "explain_values",
    "read_explanations",
    "recorded_settings",
]
