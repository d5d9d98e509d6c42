"""Turn a model spec into a module, its preprocessing and its class list.

A spec is one of:

* a torchvision classification model name (``vgg16``, ``resnet50``), with
  weights given as an enum name (``--weights DEFAULT``) or a state-dict file
  (``--weights-file``);
* ``package.module:factory``, a callable returning an ``nn.Module``;
* a path to a TorchScript file (``model.pt``).

Layers are named by their ``named_modules()`` path everywhere; the discovery
verb is :func:`conv_layer_names` (CLI: ``filtag-kg layers MODEL``).
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError, UnknownLayerError, UnknownModelError, WeightsError
from .preprocess import Preprocess

WNID_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ClassInfo:
    """A class: ``id`` is a wnid where known (else the folder or label), ``label`` is readable."""

    id: str
    label: str


@dataclass
class LoadedModel:
    """A model ready for profiling, with what is needed to record and reload it.

    Attributes:
        module: the network, in eval mode, on the CPU.
        spec: the model spec as given (name, ``module:factory`` or file).
        kind: ``"torchvision"``, ``"factory"`` or ``"torchscript"``.
        weights: the torchvision weights enum name used, if any.
        weights_file: the state-dict file loaded, if any.
        weights_sha256: SHA-256 of the state dict's names, dtypes, shapes and bytes,
            so two runs can tell whether they used the same weights whatever the file.
        classes: the model's output classes in index order, when known.
        preprocess: the input preprocessing.
    """

    module: nn.Module
    spec: str
    kind: str
    weights: str | None = None
    weights_file: str | None = None
    weights_sha256: str = ""
    classes: list[ClassInfo] | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    num_classes_option: int | None = None

    def record(self) -> dict[str, Any]:
        """Plain-JSON description stored in artifacts."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "architecture": type(self.module).__name__
            if self.kind != "torchscript"
            else getattr(self.module, "original_name", "ScriptModule"),
            "weights": self.weights,
            "weights_file": self.weights_file,
            "weights_sha256": self.weights_sha256,
            "num_classes": len(self.classes) if self.classes is not None else None,
            "num_classes_option": self.num_classes_option,
        }


def torchvision_model_names() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the state dict (keys sorted; name, dtype, shape and raw bytes of each)."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _imagenet_classes() -> list[ClassInfo]:
    from .imagenet import imagenet1k_classes

    return [ClassInfo(c.wnid, c.label) for c in imagenet1k_classes()]


def read_class_file(path: str | Path) -> list[ClassInfo]:
    """Read ``--classes FILE``: one class per line in output-index order.

    A line is ``wnid``, ``wnid<TAB>label``, ``id<TAB>label`` or a bare label;
    blank lines and ``#`` comments are ignored. Lines end at ``\n`` (``\r\n``
    too) and nowhere else: a label may hold any other character (U+2028, U+2029,
    form feeds, ...), except a tab, which separates the id from the label.

    Raises:
        DataError: the file is missing, not UTF-8, holds no class, or a line has
            more than one tab.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read class list {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line_no = exc.object[: exc.start].count(b"\n") + 1
        raise DataError(f"{p}:{line_no}: not UTF-8 (byte {exc.object[exc.start]:#04x}); save the "
                        "class list as UTF-8") from None
    out: list[ClassInfo] = []
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        if line.count("\t") > 1:
            raise DataError(
                f"{p}:{n}: {line.count(chr(9))} tabs in {line!r}; a class line is 'wnid', 'wnid<TAB>label' "
                "or a label, and a label cannot hold a tab (the outputs are tab-separated)"
            )
        if "\t" in line:
            cid, label = (part.strip(" ") for part in line.split("\t"))
        elif " " in line and WNID_RE.match(line.split(" ", 1)[0]):  # 'wnid label'
            cid, label = (part.strip(" ") for part in line.split(" ", 1))
        else:  # a bare id or label, spaces and all
            cid = label = line
        out.append(ClassInfo(cid, label or cid))
    if not out:
        raise DataError(f"class list {p} holds no class (one class per line expected)")
    return out


_EXPECTED_WEIGHTS = "--weights-file expects a state dict, as saved by torch.save(model.state_dict(), PATH)"
_DATA_GLOBALS = ("collections ", "torch._utils ", "torch ", "builtins ", "__builtin__ ", "_codecs ", "numpy")
"""Pickle globals a state dict may name (containers, tensor rebuilders, storages, dtypes)."""
_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x89HDF", "an HDF5 file (Keras?)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x80", "a pickle (a legacy torch.save or a plain pickle) that is not a plain state dict"),
)


def _describe_weights_file(path: Path) -> str | None:
    """What a file that is not a loadable state dict holds, found without unpickling it.

    A ``torch.save`` zip holds its pickle in ``*/data.pkl``: the classes it names
    (read from the pickle's opcodes, never executed) tell a whole pickled model
    from a state dict; a TorchScript archive holds ``*/constants.pkl`` and code.
    Returns ``None`` for a ``torch.save`` file that names only data classes.
    """
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                    return "a TorchScript archive (pass it as --model FILE, without --weights-file)"
                pkl = next((n for n in names if n.endswith("/data.pkl")), None)
                if pkl is None:
                    return "a zip archive that is no PyTorch file"
                classes = [
                    str(arg).replace(" ", ".")
                    for op, arg, _ in pickletools.genops(zf.read(pkl))
                    if op.name == "GLOBAL" and not str(arg).startswith(_DATA_GLOBALS)
                ]
            if classes:
                return (f"a whole pickled object ({classes[0]}), not a state dict (where that model is "
                        "built, save model.state_dict() instead)")
            return None
        with open(path, "rb") as fh:
            head = fh.read(8)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"unreadable ({type(exc).__name__})"
    if not head:
        return "empty"
    return next((what for magic, what in _MAGIC if head.startswith(magic)), "not a PyTorch file")


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    what = _describe_weights_file(path)
    if what is not None and what.startswith("a TorchScript"):  # torch.load would hand it to torch.jit
        raise WeightsError(f"weights file {path} is {what}; {_EXPECTED_WEIGHTS}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure is a bad file
        what = what or "a torch.save file that cannot be read as tensors"
        raise WeightsError(f"weights file {path} is {what}; {_EXPECTED_WEIGHTS}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors; {_EXPECTED_WEIGHTS}")
    # checkpoints saved from DataParallel / DDP prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_dict_into(module: nn.Module, path: str | Path) -> None:
    """Load a state-dict file into ``module``, strictly.

    Raises:
        WeightsError: the file is unreadable, or its keys or shapes do not fit
            the model (the message names the first offending keys).
    """
    path = Path(path)
    sd = _load_state_dict_file(path)
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) e.g. {'; '.join(mismatched[:2])}")
    if problems:
        raise WeightsError(
            f"weights file {path} does not fit the model: {'; '.join(problems)}; "
            "check --model (and --num-classes) match the file"
        )
    module.load_state_dict(sd, strict=True)


def _torchvision_model(
    name: str, weights: str | None, weights_file: str | None, num_classes: int | None
) -> tuple[nn.Module, Any]:
    import torchvision

    names = torchvision_model_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}: {hint}use a torchvision classification model name "
            "(e.g. vgg16, resnet50), package.module:factory, file.py:factory, or a TorchScript file"
        )
    enum = None
    if weights is not None:
        enum_cls = torchvision.models.get_model_weights(name)
        try:
            enum = enum_cls[weights]
        except KeyError:
            valid = ", ".join(enum_cls.__members__)
            raise WeightsError(
                f"unknown weights {weights!r} for {name}; valid: {valid}"
            ) from None
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        if enum is not None and num_classes != len(enum.meta.get("categories", [])):
            raise WeightsError(f"--num-classes {num_classes} does not fit the weights {enum}")
        kwargs["num_classes"] = num_classes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torchvision.models.get_model(name, weights=enum, **kwargs)
    except (OSError, RuntimeError) as exc:
        if enum is None:
            raise
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"cannot download weights {enum} ({enum.url}): {reason}; offline, fetch that file "
            f"elsewhere and pass --weights-file PATH"
        ) from None
    if weights_file is not None:
        load_state_dict_into(module, weights_file)
    return module, enum


def _import_error(mod_name: str, spec: str, exc: BaseException) -> UnknownModelError:
    return UnknownModelError(
        f"cannot import {mod_name!r} for model {spec!r}: {exc}; is the package installed "
        "and on PYTHONPATH? A file works too: --model path/to/file.py:factory"
    )


def _import_file(file: Path, spec: str) -> Any:
    """A ``.py`` file (an absolute path) as a module, imported once per process."""
    import sys
    from importlib.util import module_from_spec, spec_from_file_location

    name = f"filtag_user_model_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))  # so the file can import its siblings
    loader_spec = spec_from_file_location(name, file)
    if loader_spec is None or loader_spec.loader is None:
        raise UnknownModelError(f"cannot load {file} as a Python module (model {spec!r})")
    mod = module_from_spec(loader_spec)
    sys.modules[name] = mod
    try:
        loader_spec.loader.exec_module(mod)
    except Exception as exc:
        del sys.modules[name]
        raise UnknownModelError(f"{file} failed to import: {type(exc).__name__}: {exc}") from None
    return mod


def _import_factory_module(mod_name: str, spec: str) -> tuple[Any, str]:
    """The module of a ``module:factory`` spec, and the spec to record.

    ``mod_name`` is a dotted module name, importable as installed or, like a
    script's sibling module, from the current folder; or a ``.py`` file path
    (recorded as an absolute path, so later commands find it from anywhere).
    """
    import sys

    if mod_name.endswith(".py") or "/" in mod_name or "\\" in mod_name:
        file = Path(mod_name).expanduser()
        if not file.is_file():
            raise UnknownModelError(f"model file {mod_name} does not exist (model {spec!r})")
        file = file.resolve()
        return _import_file(file, spec), f"{file}:{spec.rpartition(':')[2]}"
    try:
        return importlib.import_module(mod_name), spec
    except ModuleNotFoundError as exc:
        top = mod_name.split(".")[0]
        here = str(Path.cwd())
        if exc.name != top or here in sys.path or "" in sys.path:
            raise _import_error(mod_name, spec, exc) from None
    # like `python -m`, find a module in the current folder
    sys.path.insert(0, here)
    try:
        return importlib.import_module(mod_name), spec
    except ImportError as exc:
        sys.path.remove(here)
        raise _import_error(mod_name, spec, exc) from None


def _factory_model(spec: str, weights_file: str | None) -> tuple[nn.Module, str]:
    """The module a ``module:factory`` or ``file.py:factory`` spec builds, and the spec to record."""
    mod_name, _, attr = spec.rpartition(":")
    try:
        mod, spec = _import_factory_module(mod_name, spec)
    except UnknownModelError:
        raise
    except ImportError as exc:
        raise _import_error(mod_name, spec, exc) from None
    except Exception as exc:  # the user's module raised while being imported
        raise UnknownModelError(f"{mod_name} failed to import: {type(exc).__name__}: {exc}") from None
    factory = mod
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UnknownModelError(f"module {mod_name!r} has no attribute {attr!r} (model {spec!r})")
    module = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(module, nn.Module):
        raise UnknownModelError(f"{spec!r} did not return a torch.nn.Module (got {type(module).__name__})")
    if weights_file is not None:
        load_state_dict_into(module, weights_file)
    return module, spec


def _torchscript_model(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any load failure means not TorchScript
        raise UnknownModelError(
            f"cannot load {path} as TorchScript ({str(exc).splitlines()[0][:160]}); for a state "
            "dict use --model NAME --weights-file PATH"
        ) from None


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    weights_file: str | Path | None = None,
    classes_file: str | Path | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    resize: int | None | str = "auto",
    preprocess: Preprocess | None = None,
    classes: Sequence[ClassInfo] | None = None,
) -> LoadedModel:
    """Build the model a spec names, with its preprocessing and class list.

    Args:
        spec: torchvision model name, ``package.module:factory`` or a TorchScript path.
        weights: torchvision weights enum member (``DEFAULT``, ``IMAGENET1K_V1``).
        weights_file: a state-dict file to load (strictly).
        classes_file: the output classes, one per line (see :func:`read_class_file`).
        num_classes: output size for a torchvision architecture without enum weights.
        image_size: center-crop size (default: the weights' own, else 224).
        resize: shorter-side resize; ``"auto"`` scales 256/224 with the crop, ``None`` none.
        preprocess: use exactly this preprocessing (overrides the above).
        classes: the output classes (overrides ``classes_file`` and the weights' metadata).

    Raises:
        UnknownModelError, WeightsError, DataError: as the messages say.
    """
    if weights is not None and weights_file is not None:
        raise WeightsError("give either --weights or --weights-file, not both")
    wf = str(weights_file) if weights_file is not None else None
    path = Path(spec)
    enum = None
    if spec.endswith((".pt", ".pth", ".ts", ".torchscript")) or (path.suffix and path.exists()):
        if not path.exists():
            raise UnknownModelError(f"model file {spec} does not exist")
        if weights is not None or wf is not None:
            raise WeightsError("a TorchScript model carries its weights; drop --weights/--weights-file")
        module, kind = _torchscript_model(path), "torchscript"
    elif ":" in spec:
        if weights is not None:
            raise WeightsError("--weights names torchvision weights; use --weights-file for a factory model")
        (module, spec), kind = _factory_model(spec, wf), "factory"
    else:
        module, enum = _torchvision_model(spec, weights, wf, num_classes)
        kind = "torchvision"
    module.eval()

    if classes is not None:
        classes = list(classes)
    elif classes_file is not None:
        classes = read_class_file(classes_file)
    elif enum is not None:
        cats = list(enum.meta.get("categories") or [])
        classes = _imagenet_classes() if len(cats) == 1000 else [ClassInfo(c, c) for c in cats]
    elif kind == "torchvision" and (num_classes is None or num_classes == 1000):
        classes = _imagenet_classes()

    if preprocess is None:
        preprocess = getattr(module, "filtag_preprocess", None)
        if isinstance(preprocess, dict):
            preprocess = Preprocess.from_dict(preprocess)
    if preprocess is None:
        if enum is not None and image_size is None:
            t = enum.transforms()
            preprocess = Preprocess(
                resize=int(t.resize_size[0]),
                crop=int(t.crop_size[0]),
                mean=tuple(float(x) for x in t.mean),
                std=tuple(float(x) for x in t.std),
                interpolation=t.interpolation.value,
                source=f"{enum} transforms",
            )
        else:
            size = image_size or 224
            if resize == "auto":
                resize = round(size * 256 / 224)
            preprocess = Preprocess(resize=resize, crop=size)  # type: ignore[arg-type]
    elif image_size is not None:
        preprocess = Preprocess(
            resize=preprocess.resize if resize == "auto" else resize,  # type: ignore[arg-type]
            crop=image_size,
            mean=preprocess.mean,
            std=preprocess.std,
            interpolation=preprocess.interpolation,
            source=preprocess.source,
        )

    return LoadedModel(
        module=module,
        spec=spec,
        kind=kind,
        weights=str(enum).split(".")[-1] if enum is not None else None,
        weights_file=wf,
        weights_sha256=state_dict_sha256(module),
        classes=list(classes) if classes is not None else None,
        preprocess=preprocess,
        num_classes_option=num_classes,
    )


def load_recorded_model(meta: dict[str, Any]) -> LoadedModel:
    """Rebuild the model a profile was made with, from ``profile.json``'s record.

    The same spec, weights, preprocessing and class list; the weights' SHA-256
    must match, so an explanation never silently uses other weights.

    Raises:
        WeightsError: the weights differ from the profiled ones.
        UnknownModelError: the spec no longer loads.
    """
    rec = meta["model"]
    classes = meta.get("model_classes")
    wf = rec.get("weights_file")
    if wf and not Path(wf).is_file():
        raise WeightsError(
            f"the run's weights file {wf} (model.weights_file in profile.json) does not exist; put "
            "the file back at that path, or set model.weights_file in profile.json to where it is now"
        )
    loaded = load_model(
        rec["spec"],
        weights=rec.get("weights"),
        weights_file=rec.get("weights_file"),
        num_classes=rec.get("num_classes_option"),
        preprocess=Preprocess.from_dict(meta["preprocess"]),
        classes=[ClassInfo(c["id"], c["label"]) for c in classes] if classes is not None else None,
    )
    if rec.get("weights_sha256") and loaded.weights_sha256 != rec["weights_sha256"]:
        raise WeightsError(
            f"the weights of {rec['spec']} ({rec.get('weights_file') or rec.get('weights') or 'as built'}) "
            "differ from those the profile was made with; profile again or restore the weights"
        )
    return loaded


def conv_layer_names(module: nn.Module) -> list[str]:
    """Names (``named_modules()`` paths) of every ``Conv2d`` in forward-definition order.

    TorchScript modules are recognised by their original class name.
    """
    out = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) or (
            isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", "") == "Conv2d"
        ):
            out.append(name)
    return out


def select_layers(module: nn.Module, patterns: Sequence[str] | None) -> list[str]:
    """Conv layers matching names or glob patterns (``features.28``, ``layer4.*``).

    Args:
        module: the model.
        patterns: names/patterns; ``None`` or empty selects every ``Conv2d``.

    Returns:
        Matching conv layer names, in model order.

    Raises:
        UnknownLayerError: a pattern matches no conv layer (with suggestions and
            a pointer to ``filtag-kg layers``).
    """
    convs = conv_layer_names(module)
    if not convs:
        raise UnknownLayerError("the model has no Conv2d layer; FilTag tags convolutional filters")
    if not patterns:
        return convs
    chosen: set[str] = set()
    for pat in patterns:
        hits = [n for n in convs if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            all_names = [n for n, _ in module.named_modules()]
            if pat in all_names:
                under = [n for n in convs if n.startswith(pat + ".")]
                hint = f"; its conv layers match {pat}.*" if under else ""
                raise UnknownLayerError(
                    f"layer {pat!r} is not a Conv2d{hint}; list conv layers with "
                    "`filtag-kg layers MODEL`"
                )
            close = difflib.get_close_matches(pat, convs, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownLayerError(
                f"layer pattern {pat!r} matches no conv layer{hint}; list them with "
                "`filtag-kg layers MODEL`"
            )
        chosen.update(hits)
    return [n for n in convs if n in chosen]
