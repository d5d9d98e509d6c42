"""FilTag step 1: the class profile, accumulated in one pass over a dataset.

For each measured layer the profile holds ``a[c, f]``, the mean over class
``c``'s images of filter ``f``'s min-max scaled value, plus per-class image
counts. Sums accumulate on the device in float64; memory does not grow with
the dataset. The pass checkpoints atomically every N batches and resumes at
the exact sample where the checkpoint was taken, so an interrupted run
(Ctrl-C or SIGKILL) finishes with the same profile as an uninterrupted one.

Artifacts in the run folder: ``profile.npz`` (arrays) and ``profile.json``
(everything else); while a pass runs, ``profile.ckpt.npz``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, distributed
from ._interrupt import held_interrupt
from ._io import atomic_open, ensure_writable_dir, write_json
from .activations import FilterProbe
from .data import ImageDataset, ImageSet, load_rgb, make_loader
from .distributed import RoundSampler
from .errors import DataError, FiltagError, ProfileError, check_whole
from .measure import MeasurePoint, plan_measurement
from .models import ClassInfo, LoadedModel, select_layers
from .runfolder import (
    NPZ_ERRORS,
    REPROFILE,
    check_same_run,
    fingerprint_diff,
    load_profile_arrays,
    read_profile_meta,
)

PROFILE_JSON = "profile.json"
PROFILE_NPZ = "profile.npz"
CHECKPOINT = "profile.ckpt.npz"


class Interrupted(FiltagError):
    """The pass was interrupted (Ctrl-C); a checkpoint was saved for ``--resume``."""


@dataclass
class LayerProfile:
    """One layer's class profile: ``means[c, f]`` (float64, [classes x filters]).

    With ``--top-images N``, ``top_index[r, f]`` / ``top_value[r, f]`` ([N x filters])
    are the images with the r-th highest value of filter f (an index into
    :attr:`Profile.top_image_paths`, -1 where fewer images exist) and that value.
    """

    name: str
    width: int
    measured_at: str
    means: np.ndarray
    measure: dict[str, Any] = field(default_factory=dict)
    top_index: np.ndarray | None = None
    top_value: np.ndarray | None = None


@dataclass
class Profile:
    """The class profile of a model over a dataset, with its metadata.

    Attributes:
        layers: per-layer class means, in model order.
        class_ids: dataset class ids (wnids where known), in dataset order.
        labels: readable class labels.
        counts: images per class that were profiled (bad files excluded).
        meta: the rest of ``profile.json`` (model, dataset, skipped files, ...).
    """

    layers: list[LayerProfile]
    class_ids: list[str]
    labels: list[str]
    counts: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    top_image_paths: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerProfile:
        """The profile of one layer by name."""
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(name)

    def top_images(self, layer: str, filter_index: int) -> list[tuple[str, float]]:
        """The images that activate a filter most (path, value), best first (``--top-images``)."""
        lp = self.layer(layer)
        if lp.top_index is None or lp.top_value is None:
            return []
        return [
            (self.top_image_paths[i], float(v))
            for i, v in zip(lp.top_index[:, filter_index], lp.top_value[:, filter_index])
            if i >= 0
        ]

    def save(self, run_dir: str | os.PathLike[str]) -> None:
        """Write ``profile.npz`` then ``profile.json`` (each atomically)."""
        run_dir = Path(run_dir)
        arrays = {"counts": self.counts.astype(np.int64)}
        for i, lp in enumerate(self.layers):
            arrays[f"means_{i:04d}"] = lp.means.astype(np.float64)
            if lp.top_index is not None and lp.top_value is not None:
                arrays[f"top_index_{i:04d}"] = lp.top_index.astype(np.int64)
                arrays[f"top_value_{i:04d}"] = lp.top_value.astype(np.float64)
        with atomic_open(run_dir / PROFILE_NPZ, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        meta = dict(self.meta)
        meta["classes"] = [
            {"id": c, "label": lab, "images": int(n)}
            for c, lab, n in zip(self.class_ids, self.labels, self.counts)
        ]
        meta["layers"] = [
            {"index": i, "name": lp.name, "width": lp.width, "measured_at": lp.measured_at,
             "array": f"means_{i:04d}", **{k: v for k, v in lp.measure.items()
                                           if k not in ("layer", "width", "description")}}
            for i, lp in enumerate(self.layers)
        ]
        if self.top_image_paths:
            meta["top_image_paths"] = self.top_image_paths
        write_json(run_dir / PROFILE_JSON, meta)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Profile:
        """Read a profile written by :meth:`save`.

        Raises:
            ProfileError: the files are missing or inconsistent.
        """
        run_dir = Path(run_dir)
        jp, npz = run_dir / PROFILE_JSON, run_dir / PROFILE_NPZ
        if not jp.is_file() or not npz.is_file():
            hint = " (an interrupted pass can be finished with --resume)" if (
                run_dir / CHECKPOINT).exists() else ""
            raise ProfileError(
                f"{run_dir} holds no profile ({PROFILE_JSON} + {PROFILE_NPZ}){hint}; create one "
                "with `filtag-kg profile` or `filtag-kg run`"
            )
        meta, arrays = read_profile_meta(run_dir), load_profile_arrays(run_dir)
        try:
            layers = [
                LayerProfile(d["name"], int(d["width"]), d["measured_at"], arrays[d["array"]], d,
                             arrays.get(f"top_index_{i:04d}"), arrays.get(f"top_value_{i:04d}"))
                for i, d in enumerate(meta["layers"])
            ]
            return cls(
                layers=layers,
                class_ids=[c["id"] for c in meta["classes"]],
                labels=[c["label"] for c in meta["classes"]],
                counts=arrays["counts"],
                meta=meta,
                top_image_paths=list(meta.get("top_image_paths", [])),
            )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ProfileError(f"profile in {run_dir} (profile.json and profile.npz) does not hold together: "
                               f"{exc!r}; {REPROFILE}") from None


@dataclass
class ProfileOptions:
    """How to run the profile pass (all CLI options of ``filtag-kg profile``).

    Attributes:
        layers: conv layer names or glob patterns; ``None`` = every Conv2d.
        measure: ``"activation"`` (after the nonlinearity) or ``"conv"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: images per forward pass.
        workers: DataLoader worker processes; ``None`` chooses by dataset size.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` autocast (reductions stay float32+).
        checkpoint_every: write a checkpoint every N batches (0: never).
        top_images: keep, per filter, the N images with the highest value (0: none).
        resume: continue an interrupted pass from its checkpoint.
        restart: discard an interrupted pass's checkpoint and start over.
        overwrite: replace another run already in the folder, removing all its artifacts
            (without it, such a folder is refused: see :func:`filtag_kg.runfolder.check_same_run`).
        progress: show a progress bar on stderr.
    """

    layers: list[str] | None = None
    measure: str = "activation"
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    amp: str = "off"
    checkpoint_every: int = 200
    top_images: int = 0
    resume: bool = False
    restart: bool = False
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        for option, value, minimum in (("--batch-size", self.batch_size, 1), ("--workers", self.workers, 0),
                                       ("--checkpoint-every", self.checkpoint_every, 0),
                                       ("--top-images", self.top_images, 0)):
            check_whole(option, value, minimum)


def resolve_device(spec: str, dist: distributed.Dist | None = None) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; others as given. Under
    ``torchrun``, ``auto`` and ``cuda`` mean this process's GPU (``LOCAL_RANK``).

    Raises:
        FiltagError: CUDA is asked for but not available.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and dist is not None and dist.active:
        spec = f"cuda:{dist.local_rank}"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise FiltagError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FiltagError(f"device {spec!r} asked for, but CUDA is not available; use --device cpu")
    return dev


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` value (``None`` for off)."""
    try:
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    except KeyError:
        raise FiltagError(f"unknown --amp {amp!r}; use off, bf16 or fp16") from None


def software_versions() -> dict[str, str]:
    """Versions recorded in every artifact."""
    import torchvision

    return {
        "filtag_kg": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def first_good_image(imageset: ImageSet, dataset: ImageDataset) -> torch.Tensor:
    """The first image of the set that decodes, as a [1, C, H, W] batch (for the dry run).

    Raises:
        ProfileError: no image in the set decodes.
    """
    for i in range(len(dataset)):
        x = dataset[i][1]
        if x is not None:
            return x.unsqueeze(0)
    where = f"no file in {imageset.root}" if imageset.root else \
        f"none of the {len(dataset)} image file(s) given"
    raise ProfileError(f"{where} could be decoded as an image")


class Engine:
    """A model on its device with probes at its measure points: the shared core of
    the profile and explanation passes."""

    def __init__(
        self,
        loaded: LoadedModel,
        points: list[MeasurePoint],
        device: torch.device,
        amp: str = "off",
        module: torch.nn.Module | None = None,
    ) -> None:
        self.loaded, self.points, self.device = loaded, points, device
        #: the module to run: the model itself, or its probed graph (TorchScript)
        self.module = module if module is not None else loaded.module
        self.amp_dtype = autocast_dtype(amp)
        #: the model's number of outputs, when the dry run saw it (``None``: unknown)
        self.output_width: int | None = None
        self.channels_last = device.type == "cuda"
        self.module.to(device)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)

    @classmethod
    def build(
        cls,
        loaded: LoadedModel,
        example: torch.Tensor,
        *,
        layers: list[str] | None,
        measure: str,
        device: torch.device,
        amp: str = "off",
    ) -> Engine:
        """Select layers, find their measure points with one dry run, place the model."""
        if measure not in ("activation", "conv"):
            raise FiltagError(f"unknown --measure {measure!r}; use activation or conv")
        names = select_layers(loaded.module, layers)
        loaded.module.to(device)
        widths: list[int] = []
        watch = None  # the dry run also tells the number of outputs (eager modules take hooks)
        if not isinstance(loaded.module, torch.jit.ScriptModule):
            watch = loaded.module.register_forward_hook(
                lambda m, i, out: widths.append(out.shape[-1]) if torch.is_tensor(out) else None
            )
        try:
            module, points = plan_measurement(loaded.module, names, example.to(device), measure=measure)
        finally:
            if watch is not None:
                watch.remove()
        engine = cls(loaded, points, device, amp, module)
        engine.output_width = widths[0] if widths else None
        return engine

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device (non-blocking from pinned memory; channels-last on CUDA)."""
        x = images.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of ``--amp`` (a null context when off)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def _fingerprint(
    loaded: LoadedModel, imageset: ImageSet, points: list[MeasurePoint], amp: str, top_images: int
) -> dict[str, Any]:
    return {
        "top_images": top_images,
        "model": loaded.spec,
        "weights_sha256": loaded.weights_sha256,
        "layers": [p.describe() for p in points],
        "data": imageset.fingerprint(),
        "preprocess": loaded.preprocess.to_dict(),
        "amp": amp,
    }


def _checkpoint_arrays(
    state: dict[str, Any], sums: list[torch.Tensor], counts: torch.Tensor,
    top: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, np.ndarray]:
    """Host copies of the running state (never views of tensors the pass keeps updating)."""

    def host(t: torch.Tensor) -> np.ndarray:
        t = t.detach()
        # from a device, .cpu() is already a fresh copy; on the CPU it would be the same memory
        return t.cpu().numpy() if t.device.type != "cpu" else t.numpy().copy()

    arrays = {f"sums_{i:04d}": host(s) for i, s in enumerate(sums)}
    arrays["counts"] = host(counts)
    for i, (val, idx) in enumerate(top or []):
        arrays[f"top_value_{i:04d}"] = host(val)
        arrays[f"top_index_{i:04d}"] = host(idx)
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    return arrays


def _write_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _save_checkpoint(
    path: Path, state: dict[str, Any], sums: list[torch.Tensor], counts: torch.Tensor,
    top: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    _write_checkpoint(path, _checkpoint_arrays(state, sums, counts, top))


class _CheckpointWriter:
    """Writes checkpoints on a background thread, one at a time, so the pass goes on.

    The state is copied to the host first (the only part the pass waits for);
    at ImageNet scale the file holds a [1000 x filters] float64 matrix, some
    200 MB for ResNet-50, whose write and fsync would otherwise stall every
    N-th batch. Each file is written atomically, so a crash mid-write leaves
    the previous checkpoint. A failed write is raised at the next call.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            _write_checkpoint(self.path, arrays)
        except BaseException as exc:  # reported by wait(), in the pass's thread
            self._error = exc

    def submit(self, arrays: dict[str, np.ndarray]) -> None:
        """Start writing ``arrays`` once the previous write has finished."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(arrays,), name="filtag-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the error of a failed one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _load_checkpoint(
    path: Path,
) -> tuple[dict[str, Any], list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    try:
        with np.load(path) as z:
            state = json.loads(z["state"].tobytes().decode())
            sums = [z[f"sums_{i:04d}"] for i in range(len(state["fingerprint"]["layers"]))]
            counts = z["counts"]
            top = {k: z[k] for k in z.files if k.startswith("top_")}
    except (*NPZ_ERRORS, KeyError, TypeError) as exc:
        raise ProfileError(f"checkpoint {path} is unreadable ({exc!r}); rerun with --restart") from None
    return state, sums, counts, top


def _merge_top(
    val: torch.Tensor, idx: torch.Tensor, batch_val: torch.Tensor, batch_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a batch into a running top-N ([N, F] values and dataset indices, best first).

    A stable descending sort keeps earlier (lower-index) images first among equal values.
    """
    n = val.shape[0]
    vals = torch.cat([val, batch_val.to(val.dtype)])
    idxs = torch.cat([idx, batch_idx.unsqueeze(1).expand(-1, val.shape[1])])
    order = torch.sort(vals, dim=0, descending=True, stable=True).indices[:n]
    return vals.gather(0, order), idxs.gather(0, order)


def _best_of(vals: torch.Tensor, idxs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``n`` rows per column of gathered candidates: value descending, ties by lower index.

    Every rank's candidates include the top it received at the last synchronisation,
    so an image can appear several times: repeats are dropped first.
    """
    by_index = torch.sort(idxs, dim=0, stable=True).indices
    vals, idxs = vals.gather(0, by_index), idxs.gather(0, by_index)
    repeat = torch.zeros_like(idxs, dtype=torch.bool)
    repeat[1:] = (idxs[1:] == idxs[:-1]) & (idxs[1:] >= 0)
    vals = vals.masked_fill(repeat, -math.inf)
    idxs = idxs.masked_fill(repeat, -1)
    order = torch.sort(vals, dim=0, descending=True, stable=True).indices[:n]
    return vals.gather(0, order), idxs.gather(0, order)


def profile_dataset(
    loaded: LoadedModel,
    imageset: ImageSet,
    run_dir: str | os.PathLike[str],
    options: ProfileOptions | None = None,
) -> Profile:
    """Run the profile pass and write ``profile.npz`` + ``profile.json`` into ``run_dir``.

    Args:
        loaded: the model (see :func:`filtag_kg.models.load_model`).
        imageset: the images (see :func:`filtag_kg.data.image_folder`).
        run_dir: output folder (created).
        options: pass options; defaults as in :class:`ProfileOptions`.

    Returns:
        The finished profile.

    Raises:
        ProfileError: a checkpoint exists without ``resume``/``restart``, or
            does not match this run.
        Interrupted: Ctrl-C; the checkpoint is saved first.
    """
    opts = options or ProfileOptions()
    dist = distributed.current()
    device = resolve_device(opts.device, dist)  # a missing device fails before any folder exists
    autocast_dtype(opts.amp)
    run = ensure_writable_dir(run_dir)
    ckpt = run / CHECKPOINT
    dataset = ImageDataset(imageset.samples, loaded.preprocess.transform(), max_pixels=imageset.max_pixels)
    example = first_good_image(imageset, dataset)
    engine = Engine.build(
        loaded, example, layers=opts.layers, measure=opts.measure, device=device, amp=opts.amp,
    )
    if engine.output_width is None:  # a TorchScript dry run does not report it
        with torch.inference_mode():
            out = loaded.module(example.to(device))
        engine.output_width = int(out.shape[-1]) if torch.is_tensor(out) else None
    if loaded.classes is None:
        # no class list from weights or --classes: the data's folders name the outputs,
        # when there are as many folders as outputs
        if engine.output_width == len(imageset.classes):
            loaded.classes = list(imageset.classes)
    elif engine.output_width is not None and len(loaded.classes) != engine.output_width:
        raise DataError(
            f"the model's class list has {len(loaded.classes)} classes but the model has "
            f"{engine.output_width} outputs; give one class per output, in output order "
            "(--classes FILE), or the model that fits the list"
        )
    points = engine.points
    fingerprint = _fingerprint(loaded, imageset, points, opts.amp, opts.top_images)
    # one run per folder: another run's profile, explanations, report or graph never mix with this one
    if opts.overwrite:
        dist.barrier()
        if dist.main:
            check_same_run(run, fingerprint, overwrite=True)
        dist.barrier()
    else:
        check_same_run(run, fingerprint)

    if opts.restart:
        dist.barrier()  # every rank has looked at the checkpoint before it goes
        if dist.main:
            with contextlib.suppress(FileNotFoundError):
                ckpt.unlink()
        dist.barrier()
    dist.barrier()  # no rank reads the checkpoint while rank 0 may still be removing it
    if opts.resume and not ckpt.exists() and (run / PROFILE_JSON).exists():
        done_profile = Profile.load(run)
        if done_profile.meta.get("fingerprint") == fingerprint:
            return done_profile  # already finished: nothing to redo
    n_classes = len(imageset.classes)
    widths = [p.width for p in points]
    # one [classes x all filters] buffer, so a batch is added with one index_add_; ``sums``
    # holds per-layer views of it
    flat_sums = torch.zeros(n_classes, sum(widths), dtype=torch.float64, device=device)
    sums = list(torch.split(flat_sums, widths, dim=1))
    counts = torch.zeros(n_classes, dtype=torch.int64, device=device)
    n_top = max(0, int(opts.top_images))
    # running top-N per filter: values (best first) and dataset indices, on the device
    top = [
        (torch.full((n_top, p.width), -math.inf, dtype=torch.float64, device=device),
         torch.full((n_top, p.width), -1, dtype=torch.int64, device=device))
        for p in points
    ] if n_top else []
    done, skipped, elapsed_before = 0, [], 0.0
    started = _now()
    if ckpt.exists():
        if not opts.resume:
            raise ProfileError(
                f"{run} holds an interrupted profile pass ({CHECKPOINT}); rerun with --resume to "
                "finish it, or --restart to discard it"
            )
        state, saved_sums, saved_counts, saved_top = _load_checkpoint(ckpt)
        if state["fingerprint"] != fingerprint:
            diff = fingerprint_diff(state["fingerprint"], fingerprint)
            raise ProfileError(
                f"checkpoint in {run} was made with a different {', '.join(diff)}; rerun with the "
                "same options, or --restart to discard it"
            )
        done, skipped = int(state["done"]), list(state["skipped"])
        started, elapsed_before = state["started_at"], float(state["seconds"])
        if dist.main:  # the saved sums are added once, by rank 0
            for s, arr in zip(sums, saved_sums):
                s.copy_(torch.from_numpy(arr))
            counts.copy_(torch.from_numpy(saved_counts))
            for i, (val, idx) in enumerate(top):
                val.copy_(torch.from_numpy(saved_top[f"top_value_{i:04d}"]))
                idx.copy_(torch.from_numpy(saved_top[f"top_index_{i:04d}"]))

    n = len(dataset)
    workers = opts.workers
    if workers is None:
        workers = 0 if n - done < 512 else min(8, os.cpu_count() or 1)
    sampler = RoundSampler(done, n, opts.batch_size, dist)
    loader = make_loader(dataset, batch_sampler=sampler, workers=workers, pin_memory=device.type == "cuda")
    # several ranks sum into local tensors between synchronisations; alone, directly
    local_flat = torch.zeros_like(flat_sums) if dist.active else flat_sums
    local_counts = torch.zeros_like(counts) if dist.active else counts
    local_skipped: list[tuple[int, dict[str, str]]] = []

    def synchronise() -> None:
        nonlocal counts
        if dist.active:
            dist.all_sum([local_flat, local_counts])
            flat_sums.add_(local_flat)
            local_flat.zero_()
            counts += local_counts
            local_counts.zero_()
            for li, (val, idx) in enumerate(top):
                top[li] = _best_of(torch.cat(dist.all_gather(val)), torch.cat(dist.all_gather(idx)), n_top)
            gathered = [x for part in dist.gather_objects(local_skipped) for x in part]
        else:
            gathered = local_skipped
        with held_interrupt():  # moved, not copied, even if Ctrl-C comes now
            skipped.extend(entry for _, entry in sorted(gathered, key=lambda e: e[0]))
            local_skipped.clear()

    from ._progress import progress

    t0 = time.perf_counter()
    bar = progress(total=n, initial=done, unit="img", desc="profile", enabled=opts.progress and dist.main,
                   leave=True)

    def state_now() -> dict[str, Any]:
        return {
            "fingerprint": fingerprint, "done": done, "skipped": skipped,
            "started_at": started, "seconds": elapsed_before + time.perf_counter() - t0,
        }

    module = engine.module
    wait = 0.0
    rounds = 0
    writer = _CheckpointWriter(ckpt)
    try:
        with FilterProbe(module, points) as probe, torch.inference_mode():
            batches = iter(loader)
            while True:
                tw = time.perf_counter()
                batch = next(batches, None)
                wait += time.perf_counter() - tw
                if batch is None:
                    break
                values = None
                if batch.images is not None:
                    x = engine.to_device(batch.images)
                    labels = batch.labels.to(device, non_blocking=True)
                    with engine.autocast():
                        module(x)
                    values = probe.take_flat()
                # the batch's sums, skipped files and count change together: Ctrl-C waits
                with held_interrupt():
                    local_skipped += [
                        (i, {"path": imageset.samples[i].path, "reason": why}) for i, why in batch.bad
                    ]
                    if values is not None:
                        local_flat.index_add_(0, labels, values)
                        local_counts.index_add_(0, labels, torch.ones_like(labels))
                        if top:
                            index = batch.indices.to(device, non_blocking=True)
                            for li, v in enumerate(torch.split(values, widths, dim=1)):
                                val, idx = top[li]
                                top[li] = _merge_top(val, idx, v, index)
                    rounds += 1
                    new_done = sampler.done_after(rounds)
                    bar.update(new_done - done)
                    done = new_done
                if local_skipped or skipped:
                    bar.set_postfix(skipped=len(skipped) + len(local_skipped), refresh=False)
                if opts.checkpoint_every and rounds % opts.checkpoint_every == 0 and done < n:
                    synchronise()
                    if dist.main:
                        writer.submit(_checkpoint_arrays(state_now(), sums, counts, top))
    except KeyboardInterrupt:
        bar.close()
        writer.wait()
        if dist.active:  # other ranks may be gone: keep the last consistent checkpoint
            raise Interrupted(
                f"interrupted; rerun with --resume to continue from the last checkpoint in {run}"
            ) from None
        synchronise()
        _save_checkpoint(ckpt, state_now(), sums, counts, top)
        raise Interrupted(
            f"interrupted after {done} of {n} images; checkpoint saved in {ckpt}, rerun with "
            "--resume to finish"
        ) from None
    except BaseException:
        with contextlib.suppress(Exception):
            writer.wait()  # no write may outlive the pass (it would race the next run)
        raise
    bar.close()
    writer.wait()
    synchronise()

    seconds = elapsed_before + time.perf_counter() - t0
    counts_np = counts.cpu().numpy()
    layers = []
    top_np = [(val.cpu().numpy(), idx.cpu().numpy()) for val, idx in top]
    referenced = sorted({int(i) for _, idx in top_np for i in idx.ravel() if i >= 0})
    remap = {d: j for j, d in enumerate(referenced)}
    for li, (p, s) in enumerate(zip(points, sums)):
        total = s.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts_np[:, None] > 0, total / np.maximum(counts_np, 1)[:, None], 0.0)
        lp = LayerProfile(p.layer, p.width, p.describe(), means, p.record())
        if top_np:
            val, idx = top_np[li]
            lp.top_index = np.vectorize(lambda d: remap.get(int(d), -1), otypes=[np.int64])(idx)
            lp.top_value = np.where(idx >= 0, val, np.nan)
        layers.append(lp)
    used = int(counts_np.sum())
    profile = Profile(
        layers=layers,
        class_ids=[c.id for c in imageset.classes],
        labels=[c.label for c in imageset.classes],
        counts=counts_np,
        top_image_paths=[imageset.samples[d].path for d in referenced],
        meta={
            "format": "filtag-kg profile",
            "format_version": 1,
            "model": _absolute_weights(loaded.record()),
            "model_classes": [{"id": c.id, "label": c.label} for c in loaded.classes]
            if loaded.classes is not None else None,
            "preprocess": loaded.preprocess.to_dict(),
            "dataset": {
                **imageset.record(),
                "images_used": used,
                "skipped_count": len(skipped),
                "skipped": skipped,
                "warnings": imageset.warnings,
            },
            "options": {
                "measure": opts.measure, "amp": opts.amp, "batch_size": opts.batch_size,
                "device": str(device), "workers": workers, "processes": dist.world,
            },
            "fingerprint": fingerprint,
            "software": software_versions(),
            "started_at": started,
            "finished_at": _now(),
            "seconds": round(seconds, 3),
            "images_per_second": round(n / seconds, 3) if seconds > 0 else None,
            # time the main loop spent waiting for decoded batches: a high share means the
            # model waited on data (more --workers helps)
            "data_wait_seconds": round(wait, 3),
            "data_wait_share": round(wait / (time.perf_counter() - t0), 4) if seconds > 0 else None,
        },
    )
    if dist.main:
        profile.save(run)
        with contextlib.suppress(FileNotFoundError):
            ckpt.unlink()
    # every rank continues (tagging, explaining) with rank 0's profile, which alone holds
    # the sums of a resumed checkpoint
    return dist.broadcast(profile if dist.main else None) if dist.active else profile


def _absolute_weights(record: dict[str, Any]) -> dict[str, Any]:
    """A model record whose weights file is absolute, so the run is rebuilt from any folder."""
    if record.get("weights_file"):
        record = {**record, "weights_file": os.path.abspath(os.path.expanduser(record["weights_file"]))}
    return record


def class_infos(profile: Profile) -> list[ClassInfo]:
    """The profile's dataset classes as :class:`ClassInfo` values."""
    return [ClassInfo(c, lab) for c, lab in zip(profile.class_ids, profile.labels)]


__all__ = [
    "CHECKPOINT", "Engine", "Interrupted", "LayerProfile", "Profile", "ProfileOptions",
    "class_infos", "load_rgb", "profile_dataset", "resolve_device",
]
