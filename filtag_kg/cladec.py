"""ClaDec: see what a layer keeps by decoding its activations back into an image.

ClaDec (Schneider and Vlachos, "Explaining classifiers by constructing familiar
concepts", Machine Learning 2023) explains a layer of a trained classifier by a
decoder that turns the layer's activations back into an input image. The
classifier stays frozen, so the decoder can only draw what the layer kept. A
*reference* autoencoder of the same size (an encoder with the classifier's
architecture up to that layer but fresh weights, trained for reconstruction
only, and a decoder of the same shape) shows what a layer of that size could
keep. The comparison is the explanation: what ClaDec reconstructs poorly but the
reference well, the classifier threw away.

The paper's trade-off between comprehensibility and fidelity adds the
classifier's loss on the reconstruction to ClaDec's loss:
``loss = (1 - alpha) * reconstruction + alpha * classification`` (mean squared
error in the model's normalised input space; cross-entropy of the classifier on
the reconstruction against the image's true class, or the classifier's own
top-1 on the original where the class is not one of the model's).

Layout, under ``RUN/cladec/<layer>[-alpha<A>]/``:

* ``decoders.pt``: the state dicts of the ClaDec decoder and of the reference
  encoder (only the modules it runs) and decoder;
* ``training.json``: the training record (options, shapes, losses per epoch,
  the model's weights SHA-256, the data, versions, times);
* ``checkpoint.pt`` + ``state.json`` while training: what ``--resume`` continues
  (written every ``checkpoint_every`` steps, atomically);
* ``evaluation.json`` and ``reconstructions/NNNN.png`` (original | ClaDec |
  reference) from :func:`evaluate_cladec`.

Training is deterministic for a seed: the decoders' initial weights come from
the seed, each epoch's image order from the seed and the epoch, so an
interrupted run resumed from its checkpoint ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_open, ensure_writable_dir, write_json, write_png
from .activations import PointHooks
from .data import ImageDataset, ImageSet, make_loader
from .errors import FiltagError, ProfileError, UnknownLayerError
from .measure import MeasurePoint
from .models import LoadedModel, conv_layer_names, load_recorded_model
from .preprocess import channel_stats
from .profile import Engine, Interrupted, first_good_image, resolve_device, software_versions
from .runfolder import fingerprint_diff, json_object_or_none, read_json_object, read_profile_meta

#: the run folder's subfolder holding one folder per decoded layer (and alpha)
CLADEC_DIR = "cladec"
DECODERS = "decoders.pt"
TRAINING = "training.json"
STATE = "state.json"
CHECKPOINT = "checkpoint.pt"
EVALUATION = "evaluation.json"
RECONSTRUCTIONS = "reconstructions"


class CladecError(FiltagError):
    """A ClaDec option is invalid (alpha, epochs, ...) or a decoder is missing."""


@dataclass
class CladecOptions:
    """How the decoders are trained and evaluated.

    Attributes:
        alpha: weight of the classifier's loss in ClaDec's loss, in [0, 1) (0: reconstruction only).
        epochs: passes over the training images.
        batch_size: images per step.
        lr: Adam's learning rate (both decoders and the reference encoder).
        seed: seeds the decoders' initial weights and each epoch's image order.
        holdout: share of the ``--data`` images held out for evaluation when no
            separate evaluation set is given (chosen by the seed).
        reconstructions: how many held-out images get a stored reconstruction PNG.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: image decoding processes.
        checkpoint_every: save resumable state every N steps (0: only at the end of an epoch).
        resume: continue an interrupted training run.
        restart: discard an interrupted training run.
        progress: show progress bars.
    """

    alpha: float = 0.0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    holdout: float = 0.2
    reconstructions: int = 8
    device: str = "auto"
    workers: int = 0
    checkpoint_every: int = 50
    resume: bool = False
    restart: bool = False
    progress: bool = True

    def check(self) -> None:
        """Raise :class:`CladecError` naming the first invalid option."""
        if not (0.0 <= self.alpha < 1.0) or math.isnan(self.alpha):
            raise CladecError(f"--alpha {self.alpha} is outside [0, 1); 0 trains for reconstruction "
                              "only, 0.5 weighs both losses alike")
        for name, low in (("epochs", 1), ("batch_size", 1), ("checkpoint_every", 0),
                          ("reconstructions", 0), ("workers", 0)):
            if getattr(self, name) < low:
                raise CladecError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least {low}")
        if not (0.0 < self.holdout < 1.0):
            raise CladecError(f"--holdout {self.holdout} must be between 0 and 1 (a share of --data)")
        if not self.lr > 0:
            raise CladecError(f"--lr {self.lr} must be positive")


def layer_folder(run_dir: str | os.PathLike[str], layer: str, alpha: float = 0.0) -> Path:
    """``RUN/cladec/<layer>`` (alpha 0) or ``RUN/cladec/<layer>-alpha<A>``."""
    name = layer if alpha == 0 else f"{layer}-alpha{alpha:g}"
    return Path(run_dir) / CLADEC_DIR / name


# --------------------------------------------------------------------------- networks


class _Stop(Exception):
    """Raised by a tap once it has its layer's output: the rest of the network is not run."""


class _Tap(PointHooks):
    """Takes one measure point's output (with its activation applied) and stops the pass."""

    def __init__(self, model: nn.Module, point: MeasurePoint) -> None:
        super().__init__(model, [point])
        self.output: torch.Tensor | None = None

    def capture(self, index: int, output: torch.Tensor) -> None:
        apply = self.points[index].apply
        self.output = output if apply is None else apply(output)
        raise _Stop


class LayerEncoder(nn.Module):
    """A network run up to one measure point: its output is that layer's activation.

    Args:
        net: the whole network (only the part before the point runs).
        point: where the layer is measured (see :mod:`filtag_kg.measure`).
    """

    def __init__(self, net: nn.Module, point: MeasurePoint) -> None:
        super().__init__()
        self.net = net
        self.point = point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's activation [B, C, h, w] for a batch of preprocessed images."""
        tap = _Tap(self.net, self.point)
        with tap:
            self.net.train(self.training)  # the tap restores the net's mode on exit
            with contextlib.suppress(_Stop):
                self.net(x)
        if tap.output is None:
            raise RuntimeError(f"{self.point.hook_module} did not run in the forward pass")
        return tap.output


class Decoder(nn.Module):
    """An up-sampling convolutional decoder from a layer's activation to an image.

    Sized by the layer's shape ``(C, h, w)`` and the image's ``(3, H, W)``: a 3x3
    convolution to ``min(max(C, 32), 256)`` channels, then ``ceil(log2(H / h))``
    blocks of (nearest 2x up-sampling, 3x3 convolution halving the channels down to
    16), each convolution followed by batch normalisation and a ReLU (without it, a
    decoder of the demo's sparse activations fell to a constant image within an epoch),
    a resize to exactly ``H x W`` where the factors are not powers of
    two, and a 3x3 convolution to the image's channels (in the model's
    normalised input space).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        oc, oh, ow = (int(v) for v in out_shape)
        self.out_size = (oh, ow)
        steps = max(0, math.ceil(math.log2(max(oh / h, ow / w))))
        width = min(max(c, 32), 256)
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        for _ in range(steps):
            nxt = max(16, width // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, nxt, 3, padding=1),
                       nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            width = nxt
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, oc, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction [B, 3, H, W] of activations ``z`` [B, C, h, w]."""
        y = self.body(z)
        if tuple(y.shape[-2:]) != self.out_size:
            y = F.interpolate(y, size=self.out_size, mode="bilinear", align_corners=False)
        return self.head(y)


def _seeded(seed: int) -> contextlib.AbstractContextManager[Any]:
    """A block whose torch random numbers come from ``seed``, leaving the global state as it was."""
    @contextlib.contextmanager
    def block() -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    return block()


@contextlib.contextmanager
def _deterministic_cudnn(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN's deterministic algorithms (no autotuning) for the block; flags restored after."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def fresh_copy(net: nn.Module, seed: int) -> nn.Module:
    """A copy of ``net`` with fresh weights (each module's ``reset_parameters``, seeded)."""
    out = copy.deepcopy(net)
    with _seeded(seed):
        for m in out.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
    for p in out.parameters():
        p.requires_grad_(True)
    return out


@dataclass
class Networks:
    """The three trained networks of one layer, and the frozen classifier they explain."""

    classifier: nn.Module
    encoder: LayerEncoder  # the classifier up to the layer (frozen)
    cladec: Decoder
    ref_encoder: LayerEncoder
    ref_decoder: Decoder
    in_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]
    #: module paths of the reference encoder that run before the layer (what is saved of it)
    ref_used: list[str] = field(default_factory=list)

    def trained(self) -> list[nn.Module]:
        return [self.cladec, self.ref_encoder, self.ref_decoder]

    def train(self, mode: bool = True) -> None:
        for m in self.trained():
            m.train(mode)

    def state(self) -> dict[str, Any]:
        """The trained weights: both decoders, and the reference encoder's modules before the layer."""
        enc = {k: v for k, v in self.ref_encoder.net.state_dict().items()
               if any(k.startswith(u + ".") for u in self.ref_used)}
        return {"cladec": self.cladec.state_dict(), "reference_encoder": enc,
                "reference_decoder": self.ref_decoder.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.cladec.load_state_dict(state["cladec"])
        self.ref_encoder.net.load_state_dict(state["reference_encoder"], strict=False)
        self.ref_decoder.load_state_dict(state["reference_decoder"])


def _used_prefixes(encoder: LayerEncoder, image_shape: tuple[int, int, int]) -> list[str]:
    """Module paths of the leaf modules an encoder's forward pass runs."""
    ran: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, inp, name=name: ran.append(name))
               for name, m in encoder.net.named_modules() if name and not list(m.children())]
    device = next(encoder.net.parameters()).device
    mode = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(torch.zeros(1, *image_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        encoder.train(mode)
    return sorted(set(ran))


def build_networks(engine: Engine, example: torch.Tensor, seed: int) -> Networks:
    """The frozen classifier's layer encoder, and freshly initialised decoders and reference encoder.

    Initial weights depend only on ``seed`` (and the layer's and image's shapes).
    """
    classifier = engine.module
    classifier.eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    point = engine.points[0]
    encoder = LayerEncoder(classifier, point).eval()
    x = example.to(engine.device)
    with torch.no_grad():
        z = encoder(x)
    in_shape = (int(z.shape[1]), int(z.shape[2]), int(z.shape[3]))
    image_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    with _seeded(seed):
        cladec = Decoder(in_shape, image_shape)
    with _seeded(seed + 1):
        ref_decoder = Decoder(in_shape, image_shape)
    ref_encoder = LayerEncoder(fresh_copy(classifier, seed + 2), point)
    nets = Networks(classifier, encoder, cladec, ref_encoder, ref_decoder, in_shape, image_shape)
    for m in nets.trained():
        m.to(engine.device)
    nets.ref_used = _used_prefixes(ref_encoder, image_shape)
    return nets


# --------------------------------------------------------------------------- data


def _model_targets(imageset: ImageSet, loaded: LoadedModel) -> list[int]:
    """Per dataset class, the model's output index of that class (-1 where the model lacks it)."""
    ids = [c.id for c in loaded.classes or []]
    labels = [c.label for c in loaded.classes or []]
    out = []
    for c in imageset.classes:
        if c.id in ids:
            out.append(ids.index(c.id))
        elif c.label in labels:
            out.append(labels.index(c.label))
        else:
            out.append(-1)
    return out


def _targets(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's class index of each dataset label (-1: unknown to the model, or unlabelled)."""
    if not len(table):
        return torch.full_like(labels, -1)
    return torch.where(labels >= 0, table[labels.clamp(min=0)], -1)


def split_indices(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(n)`` into (training, held-out) indices, each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, round(n * holdout)) if n > 1 else 0
    return sorted(perm[k:]), sorted(perm[:k])


def _epoch_batches(train: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: the training indices in an order fixed by seed and epoch."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 1)
    order = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------- training


@dataclass
class CladecResult:
    """One trained layer: its folder, training record and (after evaluation) figures."""

    layer: str
    folder: Path
    training: dict[str, Any]
    networks: Networks = field(repr=False)
    #: the held-out images evaluation uses: a separate set, or these indices of the training set
    eval_set: ImageSet = field(repr=False)
    eval_indices: list[int] | None = None
    evaluation: dict[str, Any] | None = None


def _check_layer(loaded: LoadedModel, layer: str) -> None:
    """Raise :class:`UnknownLayerError` unless ``layer`` names one conv layer exactly."""
    convs = conv_layer_names(loaded.module)
    if layer in convs:
        return
    close = difflib.get_close_matches(layer, convs, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownLayerError(
        f"--layer {layer!r} is not a conv layer of {loaded.spec}{hint}; name one layer exactly, "
        "as `filtag-kg layers MODEL` lists them"
    )


def _run_meta(run_dir: str | os.PathLike[str], opts: CladecOptions) -> tuple[Path, dict[str, Any]]:
    """Check the options and the run folder; the folder and its ``profile.json``."""
    opts.check()
    run = Path(run_dir)
    if not (run / "profile.json").is_file():
        raise ProfileError(f"{run} holds no profile.json; train ClaDec in a run folder "
                           "(`filtag-kg run` writes one)")
    return run, read_profile_meta(run)


def _measure_kind(meta: dict[str, Any]) -> str:
    layers = meta.get("layers") or []
    return "conv" if layers and all((lp.get("measure") or {}).get("kind") == "conv" for lp in layers) \
        else "activation"


def _save_torch(path: Path, obj: Any) -> None:
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def _losses(nets: Networks, x: torch.Tensor, target: torch.Tensor, alpha: float) -> tuple[torch.Tensor, ...]:
    """ClaDec's loss (with its reconstruction and classification parts) and the reference's loss."""
    with torch.no_grad():
        z = nets.encoder(x)
    rec = nets.cladec(z)
    rec_loss = F.mse_loss(rec, x)
    if alpha > 0:
        cls_loss = F.cross_entropy(nets.classifier(rec), target)
        loss = (1 - alpha) * rec_loss + alpha * cls_loss
    else:
        cls_loss = torch.zeros((), device=x.device)
        loss = rec_loss
    ref_loss = F.mse_loss(nets.ref_decoder(nets.ref_encoder(x)), x)
    return loss, rec_loss, cls_loss, ref_loss


def train_cladec(
    run_dir: str | os.PathLike[str],
    layer: str,
    imageset: ImageSet,
    options: CladecOptions | None = None,
    *,
    eval_imageset: ImageSet | None = None,
    loaded: LoadedModel | None = None,
    echo: Callable[[str], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> CladecResult:
    """Train the ClaDec decoder and the reference autoencoder of one layer of a run's model.

    Args:
        run_dir: a run folder with ``profile.json`` (the model is rebuilt from it).
        layer: the conv layer's module path (as ``filtag-kg layers`` lists it).
        imageset: training images (``--data``); without ``eval_imageset`` a seeded
            share (``options.holdout``) of them is held out for evaluation.
        options: see :class:`CladecOptions`.
        eval_imageset: separate held-out images.
        loaded: the run's model (rebuilt from ``profile.json`` when omitted).
        echo: where a one-line summary per epoch goes (``None``: nowhere).
        on_step: called with the global step number after each step's checkpoint (for tests and UIs).

    Returns:
        The layer's folder and training record; ``networks`` holds the trained networks.

    Raises:
        UnknownLayerError: ``layer`` names no conv layer.
        CladecError: an invalid option.
        ProfileError: no profile, or an interrupted training run without ``resume``/``restart``.
        Interrupted: Ctrl-C (the last checkpoint stays for ``--resume``).
    """
    opts = options or CladecOptions()
    run, meta = _run_meta(run_dir, opts)
    loaded = loaded or load_recorded_model(meta)
    _check_layer(loaded, layer)
    folder = ensure_writable_dir(layer_folder(run, layer, opts.alpha))
    device = resolve_device(opts.device)
    dataset = ImageDataset(imageset.samples, loaded.preprocess.transform(), max_pixels=imageset.max_pixels)
    example = first_good_image(imageset, dataset)
    engine = Engine.build(loaded, example, layers=[layer], measure=_measure_kind(meta), device=device)
    targets = torch.tensor(_model_targets(imageset, loaded), dtype=torch.long)
    if eval_imageset is None:
        train_idx, held_idx = split_indices(len(dataset), opts.holdout, opts.seed)
    else:
        train_idx, held_idx = list(range(len(dataset))), []
    held = (eval_imageset, None) if eval_imageset is not None else (imageset, held_idx)
    if not train_idx:
        raise CladecError(f"{imageset.root} holds too few images to train on; give more with --data")
    fingerprint = {
        "weights_sha256": loaded.weights_sha256, "layer": layer, "measured_at": engine.points[0].describe(),
        "data": imageset.fingerprint(), "train_images": len(train_idx),
        "train_sha256": hashlib.sha256(",".join(map(str, train_idx)).encode()).hexdigest(),
        **{k: getattr(opts, k) for k in ("alpha", "epochs", "batch_size", "lr", "seed")},
    }
    nets = build_networks(engine, example, opts.seed)
    record_path, state_path, ckpt_path = folder / TRAINING, folder / STATE, folder / CHECKPOINT
    if opts.restart:
        state_path.unlink(missing_ok=True)
        ckpt_path.unlink(missing_ok=True)
    if not state_path.exists() and record_path.is_file() and (folder / DECODERS).is_file():
        record = json_object_or_none(record_path) or {}  # a damaged record: trained again
        if record.get("fingerprint") == fingerprint and not opts.restart:  # trained already
            nets.load_state(torch.load(folder / DECODERS, map_location=device, weights_only=True))
            return CladecResult(layer, folder, record, nets, *held)
    opt_cladec = torch.optim.Adam(nets.cladec.parameters(), lr=opts.lr)
    opt_ref = torch.optim.Adam([*nets.ref_encoder.parameters(), *nets.ref_decoder.parameters()], lr=opts.lr)
    epoch, step_in_epoch, step, history, sums = 0, 0, 0, [], [0.0, 0.0, 0.0, 0.0, 0]
    started, seconds_before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), 0.0
    if state_path.exists():
        if not opts.resume:
            raise ProfileError(f"{folder} holds an interrupted ClaDec training ({STATE}); rerun with "
                               "--resume to finish it, or --restart to discard it")
        state = read_json_object(state_path, "discard the interrupted training with --restart")
        if state.get("fingerprint") != fingerprint:
            diff = fingerprint_diff(state.get("fingerprint"), fingerprint)
            raise ProfileError(f"the interrupted ClaDec training in {folder} used a different "
                               f"{', '.join(diff)}; rerun with the same options, or --restart")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        nets.load_state(ckpt["networks"])
        # the reference encoder's unused modules (after the layer) are not saved: they keep their
        # seeded initial weights, which take no part in training
        opt_cladec.load_state_dict(ckpt["opt_cladec"])
        opt_ref.load_state_dict(ckpt["opt_ref"])
        epoch, step_in_epoch, step = state["epoch"], state["step_in_epoch"], state["step"]
        history, sums, started = state["history"], state["sums"], state["started_at"]
        seconds_before = state["seconds"]

    t0 = time.perf_counter()

    def save_checkpoint() -> None:
        _save_torch(ckpt_path, {"networks": nets.state(), "opt_cladec": opt_cladec.state_dict(),
                                "opt_ref": opt_ref.state_dict()})
        write_json(state_path, {
            "format": "filtag-kg cladec state", "fingerprint": fingerprint, "epoch": epoch,
            "step_in_epoch": step_in_epoch, "step": step, "history": history, "sums": sums,
            "started_at": started, "seconds": seconds_before + time.perf_counter() - t0,
        })

    from ._progress import progress

    batches_per_epoch = math.ceil(len(train_idx) / opts.batch_size)
    bar = progress(total=opts.epochs * batches_per_epoch, initial=step, unit="step",
                   desc=f"cladec {layer}", enabled=opts.progress, leave=False)
    workers = opts.workers
    cudnn = contextlib.ExitStack()
    cudnn.enter_context(_deterministic_cudnn(device))
    try:
        nets.train(True)
        while epoch < opts.epochs:
            batches = _epoch_batches(train_idx, opts.batch_size, opts.seed, epoch)[step_in_epoch:]
            loader = make_loader(dataset, batch_sampler=batches, workers=workers,
                                 pin_memory=device.type == "cuda")
            for batch in loader:
                if batch.images is not None:
                    x = batch.images.to(device, non_blocking=True)
                    target = _targets(targets, batch.labels).to(device)
                    if opts.alpha > 0 and bool((target < 0).any()):
                        with torch.no_grad():  # the model's own decision where it lacks the class
                            own = nets.classifier(x).argmax(1)
                        target = torch.where(target < 0, own, target)
                    loss, rec_loss, cls_loss, ref_loss = _losses(nets, x, target, opts.alpha)
                    opt_cladec.zero_grad(set_to_none=True)
                    opt_ref.zero_grad(set_to_none=True)
                    (loss + ref_loss).backward()  # the two networks share no weights
                    opt_cladec.step()
                    opt_ref.step()
                    b = int(x.shape[0])
                    for i, v in enumerate((loss, rec_loss, cls_loss, ref_loss)):
                        sums[i] += float(v.detach()) * b
                    sums[4] += b
                step_in_epoch += 1
                step += 1
                bar.update(1)
                if step_in_epoch == batches_per_epoch:
                    n = max(1, sums[4])
                    history.append({"epoch": epoch + 1, "images": sums[4], "cladec_loss": sums[0] / n,
                                    "cladec_reconstruction_mse": sums[1] / n,
                                    "cladec_classification_loss": sums[2] / n,
                                    "reference_mse": sums[3] / n})
                    if echo is not None:
                        h = history[-1]
                        echo(f"  {layer} epoch {h['epoch']}/{opts.epochs}: ClaDec loss "
                             f"{h['cladec_loss']:.4f} (MSE {h['cladec_reconstruction_mse']:.4f}), "
                             f"reference MSE {h['reference_mse']:.4f}")
                    epoch, step_in_epoch, sums = epoch + 1, 0, [0.0, 0.0, 0.0, 0.0, 0]
                    save_checkpoint()
                elif opts.checkpoint_every and step % opts.checkpoint_every == 0:
                    save_checkpoint()
                if on_step is not None:
                    on_step(step)
    except KeyboardInterrupt:
        bar.close()
        what = "its last checkpoint" if state_path.exists() else "nothing (no checkpoint yet)"
        raise Interrupted(f"ClaDec training of {layer} interrupted at step {step}; {what} is kept: "
                          "rerun the same command with --resume") from None
    finally:
        cudnn.close()
    bar.close()
    nets.train(False)
    record = {
        "format": "filtag-kg cladec training", "format_version": 1, "layer": layer,
        "measured_at": engine.points[0].describe(), "alpha": opts.alpha,
        "loss": "(1 - alpha) * MSE(reconstruction, image) + alpha * "
                "cross-entropy(classifier(reconstruction), class)" if opts.alpha > 0
                else "MSE(reconstruction, image)",
        "activation_shape": list(nets.in_shape), "image_shape": list(nets.image_shape),
        "options": asdict(opts) | {"resume": None, "restart": None, "progress": None},
        "fingerprint": fingerprint, "history": history, "steps": step,
        "model": loaded.record(), "dataset": imageset.record(),
        "heldout": {"source": "held-out share of --data" if eval_imageset is None else "--eval-data"},
        "decoder": {"cladec": repr(nets.cladec), "parameters": _count(nets.cladec),
                    "reference_encoder_modules": nets.ref_used},
        "started_at": started, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": seconds_before + time.perf_counter() - t0, "software": software_versions(),
    }
    _save_torch(folder / DECODERS, nets.state())
    write_json(record_path, record)
    ckpt_path.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    return CladecResult(layer, folder, record, nets, *held)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- evaluation


def _explained_paths(run: Path) -> set[str]:
    """The image paths the run's explanations cover (empty when it has none)."""
    from .explanations_io import iter_explanations

    try:
        return {str(r.get("image")) for r in iter_explanations(run)}
    except FiltagError:
        return set()


def _to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised model inputs back to [0, 1] pixels (clamped)."""
    m, s = channel_stats(x, mean, std)
    return (x * s + m).clamp(0, 1)


def _write_triptych(path: Path, images: Sequence[torch.Tensor], min_height: int = 128) -> None:
    """One PNG of images [3, H, W] in [0, 1] side by side (original | ClaDec | reference),
    enlarged by a whole factor (nearest) to at least ``min_height`` pixels, 2 white pixels apart."""
    from PIL import Image

    arrs = [(t.detach().cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for t in images]
    h, w = arrs[0].shape[:2]
    f = max(1, math.ceil(min_height / h))
    gap = 2 * f
    canvas = np.full((h * f, len(arrs) * w * f + gap * (len(arrs) - 1), 3), 255, dtype=np.uint8)
    for i, a in enumerate(arrs):
        big = a.repeat(f, axis=0).repeat(f, axis=1)
        canvas[:, i * (w * f + gap): i * (w * f + gap) + w * f] = big
    write_png(path, Image.fromarray(canvas))


def evaluate_cladec(
    run_dir: str | os.PathLike[str],
    result: CladecResult,
    options: CladecOptions | None = None,
    *,
    loaded: LoadedModel | None = None,
) -> dict[str, Any]:
    """Compare ClaDec's and the reference's reconstructions on the held-out images.

    Per layer: the classifier's top-1 accuracy on the originals, on the ClaDec and
    on the reference reconstructions (against the true class, over the images whose
    class the model has), how often its top-1 on a reconstruction equals its top-1 on
    the original (agreement), and both reconstructions' mean squared error in [0, 1]
    pixels. The paper's claim is that ClaDec's reconstructions keep more of what the
    classifier uses (higher accuracy) although the reference keeps more pixels (lower
    error). Writes ``evaluation.json`` in the layer's folder, the ``cladec`` section of
    the run's ``evaluation.json``, and ``reconstructions/NNNN.png`` (original | ClaDec |
    reference) for up to ``options.reconstructions`` held-out images, explained ones first.

    Returns:
        The layer's evaluation (also written).
    """
    opts = options or CladecOptions()
    run = Path(run_dir)
    nets = result.networks
    eval_set = result.eval_set
    loaded = loaded or load_recorded_model(read_profile_meta(run))
    pre = loaded.preprocess
    dataset = ImageDataset(eval_set.samples, pre.transform(), with_sha256=True,
                           max_pixels=eval_set.max_pixels)
    indices = result.eval_indices if result.eval_indices is not None else list(range(len(dataset)))
    if not indices:
        raise CladecError("no held-out images to evaluate on; give --eval-data DIR or a larger --holdout")
    targets = torch.tensor(_model_targets(eval_set, loaded), dtype=torch.long)
    explained = _explained_paths(run)
    chosen = [i for i in indices if eval_set.samples[i].path in explained]
    chosen = (chosen + [i for i in indices if i not in set(chosen)])[:opts.reconstructions]
    keep = set(chosen)
    device = next(nets.cladec.parameters()).device
    nets.train(False)
    correct = {"original": 0, "cladec": 0, "reference": 0}
    agree = {"cladec": 0, "reference": 0}
    sq = {"cladec": 0.0, "reference": 0.0}
    labelled = images = 0
    pixels = int(np.prod(nets.image_shape))
    rec_dir = result.folder / RECONSTRUCTIONS
    if rec_dir.is_dir():
        for old in rec_dir.glob("*.png"):
            old.unlink()
    rec_dir.mkdir(exist_ok=True)
    rows: dict[int, dict[str, Any]] = {}
    batches = [indices[i:i + opts.batch_size] for i in range(0, len(indices), opts.batch_size)]
    model_ids = [c.id for c in loaded.classes or []]
    with torch.no_grad():
        for batch in make_loader(dataset, batch_sampler=batches, workers=opts.workers):
            if batch.images is None:
                continue
            x = batch.images.to(device)
            rec = {"cladec": nets.cladec(nets.encoder(x)), "reference": nets.ref_decoder(nets.ref_encoder(x))}
            top = {"original": nets.classifier(x).argmax(1)}
            top.update({k: nets.classifier(v).argmax(1) for k, v in rec.items()})
            px = _to_pixels(x, pre.mean, pre.std)
            rpx = {k: _to_pixels(v, pre.mean, pre.std) for k, v in rec.items()}
            err = {k: ((v - px) ** 2).flatten(1).mean(1) for k, v in rpx.items()}
            t = _targets(targets, batch.labels).to(device)
            has = t >= 0
            labelled += int(has.sum())
            images += int(x.shape[0])
            for k in correct:
                correct[k] += int(((top[k] == t) & has).sum())
            for k in agree:
                agree[k] += int((top[k] == top["original"]).sum())
                sq[k] += float(err[k].sum())
            for j, i in enumerate(batch.indices.tolist()):
                if i not in keep:
                    continue
                name = f"{chosen.index(i):04d}.png"
                _write_triptych(rec_dir / name, [px[j], rpx["cladec"][j], rpx["reference"][j]])
                s = eval_set.samples[i]
                rows[chosen.index(i)] = {
                    "file": f"{RECONSTRUCTIONS}/{name}", "image": s.path,
                    "sha256": batch.sha256[j] if batch.sha256 else None,
                    "true_class": eval_set.classes[s.label].id if s.label >= 0 else None,
                    "explained": s.path in explained,
                    "prediction": {k: model_ids[int(v[j])] if int(v[j]) < len(model_ids) else int(v[j])
                                   for k, v in top.items()},
                    "mse": {k: float(v[j]) for k, v in err.items()},
                }

    def share(n: int, d: int) -> float | None:
        return n / d if d else None

    doc = {
        "format": "filtag-kg cladec evaluation", "format_version": 1, "layer": result.layer,
        "alpha": result.training["alpha"], "folder": result.folder.relative_to(run).as_posix(),
        "images": images, "labelled_images": labelled, "pixels_per_image": pixels,
        "heldout": result.training["heldout"]["source"],
        "accuracy": {k: share(v, labelled) for k, v in correct.items()},
        "agreement_with_original": {k: share(v, images) for k, v in agree.items()},
        "mse": {k: share(v, images) for k, v in sq.items()},  # type: ignore[arg-type]
        "reconstructions": [rows[k] for k in sorted(rows)],
    }
    write_json(result.folder / EVALUATION, doc)
    result.evaluation = doc
    from .cladec_files import update_run_evaluation

    update_run_evaluation(run)
    return doc


def format_evaluation(docs: Sequence[dict[str, Any]]) -> str:
    """A table of the layers' evaluations: accuracies and reconstruction errors."""
    def pct(x: float | None) -> str:
        return "    -" if x is None else f"{100 * x:5.1f}%"

    lines = ["layer             alpha  images  acc original  acc ClaDec  acc reference  "
             "MSE ClaDec  MSE reference"]
    for d in docs:
        a, m = d["accuracy"], d["mse"]
        lines.append(f"{d['layer']:<17} {d['alpha']:<5g} {d['images']:>7}  {pct(a['original']):>12}  "
                     f"{pct(a['cladec']):>10}  {pct(a['reference']):>13}  {m['cladec']:>10.4f}  "
                     f"{m['reference']:>13.4f}")
    return "\n".join(lines)


def claim_line(doc: dict[str, Any]) -> str:
    """One line saying whether a layer's evaluation bears out the paper's claim (see
    :func:`~filtag_kg.cladec_files.claim_holds`), with the figures it rests on."""
    from .cladec_files import claim_holds

    acc, mse = doc["accuracy"], doc["mse"]
    holds = claim_holds(doc)
    if holds is None:
        return f"  {doc['layer']}: no labelled held-out images, the claim cannot be checked"
    more, fewer = acc["cladec"] > acc["reference"], mse["reference"] < mse["cladec"]
    return (f"  {doc['layer']}: the paper's claim {'holds' if holds else 'does not hold'}: accuracy on "
            f"ClaDec {100 * acc['cladec']:.1f}% vs reference {100 * acc['reference']:.1f}% "
            f"({'higher' if more else 'not higher'}), pixel MSE reference {mse['reference']:.4f} vs ClaDec "
            f"{mse['cladec']:.4f} ({'lower' if fewer else 'not lower'})")


def run_cladec(
    run_dir: str | os.PathLike[str],
    layers: Sequence[str],
    *,
    data: str | os.PathLike[str] | None = None,
    file_list: str | os.PathLike[str] | None = None,
    eval_data: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    options: CladecOptions | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[CladecResult]:
    """``filtag-kg cladec``: train and evaluate ClaDec and its reference for each layer.

    Args:
        run_dir: a run folder with ``profile.json``.
        layers: conv layer names (each exactly one layer).
        data / file_list: the training images (exactly one).
        eval_data: held-out images (default: a seeded share of the training images).
        max_pixels: skip images of more pixels (``None``: the default cap; 0: no cap).
        options: see :class:`CladecOptions`.
        echo: where progress lines go.

    Returns:
        One result per layer, each with its evaluation.

    Raises:
        UnknownLayerError, CladecError, DataError, ProfileError: see :func:`train_cladec`.
    """
    from .pipeline import load_images

    opts = options or CladecOptions()
    run, meta = _run_meta(run_dir, opts)
    if not layers:
        raise CladecError("name a layer to decode with --layer NAME (`filtag-kg layers MODEL` lists them)")
    loaded = load_recorded_model(meta)
    for layer in layers:  # every name is checked before the first (long) training
        _check_layer(loaded, layer)
    images = load_images(data=data, file_list_path=file_list, known=loaded.classes)
    held = load_images(data=eval_data, known=loaded.classes) if eval_data is not None else None
    if max_pixels is not None:
        for s in (images, held):
            if s is not None:
                s.max_pixels = max_pixels or None
    out = []
    for layer in dict.fromkeys(layers):
        res = train_cladec(run, layer, images, opts, eval_imageset=held, loaded=loaded, echo=echo)
        evaluate_cladec(run, res, opts, loaded=loaded)
        out.append(res)
    return out


__all__ = [
    "CLADEC_DIR", "CladecError", "CladecOptions", "CladecResult", "Decoder", "LayerEncoder", "Networks",
    "build_networks", "claim_line", "evaluate_cladec", "format_evaluation", "fresh_copy", "layer_folder",
    "run_cladec", "split_indices", "train_cladec",
]
