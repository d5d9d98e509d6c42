"""A run folder holds one consistent run, and its graph is never older than what it describes.

* :func:`check_same_run` refuses to write a different run (other model, weights,
  layers, data or preprocessing) over an existing one unless asked to overwrite;
  :func:`clear_run` then removes every artifact of the old run, so no explanation,
  evaluation, report or graph of it survives under the new run's name.
* :func:`record_export` notes how ``RUN/kg.*`` was exported (format, base IRI,
  WordNet folder, ...), so :func:`refresh_exports` can write it again the same way
  after ``explain`` changed what it describes; :func:`stale_reason` tells any
  reader of an export in a run folder that it is older than the run's files, and
  how to refresh it.
* :func:`partial_explanations` says when an explanation pass was cut off.
* :func:`read_profile_meta` and :func:`load_profile_arrays` read the profile, a damaged
  file being a one-line error that names it and the command that writes it again.
* :func:`untagged_explanation_settings` says when the explanations vote with a
  tagging setting that ``tags.json`` no longer holds (a ``tag`` after ``explain``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ._io import read_json, write_json
from .errors import ProfileError

#: how the run folder's export was made (see :func:`record_export`)
EXPORT_RECORD = "export.json"
#: how a damaged profile is made again
REPROFILE = "profile the images again with `filtag-kg profile` (or `filtag-kg run`)"
#: how a damaged ``tags.json`` is made again
RETAG = "tag the profile again with `filtag-kg tag`"
#: what NumPy raises for an ``.npz`` archive cut short or overwritten
NPZ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
#: the artifacts of a run, as glob patterns in the run folder (what ``--overwrite`` removes)
RUN_ARTIFACTS = (
    "profile.json", "profile.npz", "profile.ckpt.npz",
    "tags.tsv", "tags.json", "abstract_tags.tsv", "abstract_tags.json", "hypernym_histogram.tsv",
    "class_links.tsv", "import.json",
    "explanations*",  # .jsonl, .json, .state.json, parts and any other storage of the pass
    "evaluation.json", "perturbation_effects.jsonl",
    "human_labels.tsv", "label_sheet.csv",  # people's labels of the old run's filters
    "cladec",  # ClaDec decoders, their records and reconstructions (filtag_kg.cladec)
    "kg.*", EXPORT_RECORD,
    "report",
)
#: the files an export reads: an export older than one of them is stale
EXPORT_INPUTS = (
    "profile.json", "tags.tsv", "tags.json", "abstract_tags.tsv", "class_links.tsv", "import.json",
    "explanations*", "human_labels.tsv",
)


class RunMismatchError(ProfileError):
    """A run folder holds a different run than the one about to be written into it."""


def fingerprint_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two pass fingerprints, in ``new``'s order and then
    the keys only ``old`` has (an option given only to the interrupted pass, such as
    ``--clusters``, is a difference too)."""
    old = old or {}
    return [k for k in new if k not in old or old[k] != new[k]] + [k for k in old if k not in new]


def check_same_run(
    run_dir: str | os.PathLike[str], fingerprint: dict[str, Any], *, overwrite: bool = False
) -> list[Path]:
    """Make sure writing the run of ``fingerprint`` into ``run_dir`` mixes no two runs.

    A folder with a finished profile of the same fingerprint, or with no run at all,
    is fine. A folder with another run's profile (or run files without a profile)
    is refused, unless ``overwrite``, which removes that run's artifacts first.

    Returns:
        The paths removed (empty unless overwriting).

    Raises:
        RunMismatchError: the folder holds another run and ``overwrite`` is false.
    """
    run = Path(run_dir)
    profile = run / "profile.json"
    old: dict[str, Any] | None = None
    if profile.is_file():
        old = (json_object_or_none(profile) or {}).get("fingerprint")  # damaged: another run
        if old == fingerprint:
            return []
        diff = fingerprint_diff(old, fingerprint) if old else ["run"]
        what = f"a run with a different {', '.join(diff)}"
    else:
        present = artifacts(run, exclude=("profile.ckpt.npz",))
        if not present:
            return []
        what = f"files of another run ({', '.join(p.name for p in present[:4])})"
    if not overwrite:
        raise RunMismatchError(
            f"{run} already holds {what}; choose another --out, or pass --overwrite to replace that "
            "run and everything made from it (explanations, evaluation, report, kg.*)"
        )
    return clear_run(run)


def artifacts(run_dir: str | os.PathLike[str], *, exclude: tuple[str, ...] = ()) -> list[Path]:
    """The run artifacts present in ``run_dir`` (see :data:`RUN_ARTIFACTS`), sorted."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = {p for pat in RUN_ARTIFACTS for p in run.glob(pat)}
    return sorted(p for p in found if p.name not in exclude)


def clear_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove every artifact of the run in ``run_dir``; other files stay.

    Returns:
        The paths removed.
    """
    removed = artifacts(run_dir)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return removed


def record_export(
    run_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    fmt: str,
    base_iri: str,
    wordnet_dir: str | None = None,
    ili_map: str | None = None,
    explanations: bool = True,
    absolute_paths: bool = False,
    materialize: bool = False,
    license: str | None = None,
    sentences: bool = False,
) -> None:
    """Note how an export in the run folder (``RUN/kg.<ext>``) was made, to refresh it alike.

    One record per file; exports written elsewhere (``export --out FILE`` outside the
    folder) are not recorded.
    """
    run, out = Path(run_dir).absolute(), Path(path).absolute()
    if out.parent != run:
        return
    doc = {"format": "filtag-kg export record", "format_version": 1, "exports": {}}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        doc["exports"] = dict(read_json(run / EXPORT_RECORD).get("exports") or {})
    doc["exports"][out.name] = {
        "file": out.name, "export_format": fmt, "base_iri": base_iri,
        "wordnet_dir": str(Path(wordnet_dir).absolute()) if wordnet_dir else None,
        "ili_map": str(Path(ili_map).absolute()) if ili_map else None,
        "explanations": explanations, "absolute_paths": absolute_paths,
        "materialize": materialize, "license": license, "sentences": sentences,
    }
    write_json(run / EXPORT_RECORD, doc)


def export_records(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The run folder's recorded exports that still exist, by file name."""
    try:
        recs = read_json(Path(run_dir) / EXPORT_RECORD).get("exports") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: r for name, r in sorted(recs.items())
            if isinstance(r, dict) and (Path(run_dir) / name).is_file()}


def refresh_command(run_dir: str | os.PathLike[str], rec: dict[str, Any] | None = None) -> str:
    """The ``filtag-kg export`` command that writes an export of the run again, alike."""
    rec = rec or {}
    cmd = f"filtag-kg export {run_dir}"
    fmt = rec.get("export_format")
    if fmt not in (None, "trig"):
        cmd += f" --format {fmt}"
    if rec.get("file") and fmt:
        from .rdf.export import format_of

        if rec["file"] != f"kg.{format_of(fmt).extension}":
            cmd += f" --out {Path(run_dir) / rec['file']}"
    if rec.get("base_iri"):
        cmd += f" --base-iri {rec['base_iri']}"
    for opt, key in (("--wordnet-dir", "wordnet_dir"), ("--ili-map", "ili_map")):
        if rec.get(key):
            cmd += f" {opt} {rec[key]}"
    if rec.get("explanations") is False:
        cmd += " --no-explanations"
    for opt, key in (("--absolute-paths", "absolute_paths"), ("--materialize", "materialize"),
                     ("--sentences", "sentences")):
        if rec.get(key):
            cmd += f" {opt}"
    if rec.get("license"):
        cmd += f" --license {rec['license']}"
    return cmd


def refresh_exports(run_dir: str | os.PathLike[str]) -> list[Any]:
    """Write the run folder's recorded exports again, each with the options it was made with.

    Returns:
        Each export's :class:`~filtag_kg.rdf.nquads.ExportStats` (none when the folder
        has no recorded export: nothing to refresh).
    """
    recs = export_records(run_dir)
    if not recs:
        return []
    from .rdf import export_run_stats
    from .wordnet import load_wordnet

    return [
        export_run_stats(
            run_dir, fmt=r["export_format"], out=Path(run_dir) / name, base_iri=r["base_iri"],
            wordnet=load_wordnet(wordnet_dir=r.get("wordnet_dir")), ili_map=r.get("ili_map"),
            explanations=r.get("explanations", True), absolute_paths=bool(r.get("absolute_paths")),
            materialize=bool(r.get("materialize")), license=r.get("license"),
            sentences=bool(r.get("sentences")),
        )
        for name, r in recs.items()
    ]


def stale_reason(path: str | os.PathLike[str]) -> str | None:
    """Why an export file is stale, or ``None``.

    An export lying in a run folder (beside ``tags.tsv`` or ``profile.json``) is
    stale when one of the run's files it is made from (:data:`EXPORT_INPUTS`) was
    written after it. The answer names that file and the command that refreshes it.
    """
    p = Path(path)
    run = p.parent
    if not ((run / "tags.tsv").is_file() or (run / "profile.json").is_file()):
        return None
    try:
        made = p.stat().st_mtime
    except OSError:
        return None
    newer = []
    for pat in EXPORT_INPUTS:
        for f in run.glob(pat):
            # a folder artifact (explanations.parquet/) counts by its files and itself
            files = [f, *f.rglob("*")] if f.is_dir() else [f]
            with contextlib.suppress(OSError):
                if any(x.stat().st_mtime > made for x in files):
                    newer.append(f.name)
    if not newer:
        return None
    cmd = refresh_command(run, export_records(run).get(p.name))
    return (f"{p} is older than {', '.join(sorted(newer)[:3])} of its run, so it does not show "
            f"the latest results; refresh it with `{cmd}`")


def partial_explanations(run_dir: str | os.PathLike[str]) -> dict[str, int] | None:
    """``{"done": N, "total": M}`` when the run's explanation pass was cut off, else ``None``.

    An interrupted pass leaves ``explanations.state.json`` (what ``--resume`` continues).
    """
    run = Path(run_dir)
    state_path = run / "explanations.state.json"
    if not state_path.is_file():
        return None
    try:
        state = read_json(state_path)
    except (OSError, ValueError):
        state = None
    out = {"done": 0, "total": 0}
    for key in out:  # an unreadable or odd state file still says that the pass was cut off
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            out[key] = int(state.get(key) or 0)  # type: ignore[union-attr]
    return out


def untagged_explanation_settings(run_dir: str | os.PathLike[str]) -> str | None:
    """Why the run's explanations no longer fit its tags, or ``None``.

    An explanation votes with the tags of the setting it was made with (recorded in
    ``explanations.json``). After ``tag`` rewrote ``tags.json`` without that setting,
    the graph would show those votes beside other tags, and the evaluation would
    describe a tagging that is gone. The answer names the settings and the command
    that explains again with the current ones.
    """
    run = Path(run_dir)
    meta_path, tags_path = run / "explanations.json", run / "tags.json"
    if not (meta_path.is_file() and tags_path.is_file()):
        return None
    try:
        made = [str(s) for s in read_json(meta_path)["fingerprint"]["settings"]]
        tagged = [s["method"] if s.get("param") is None else f"{s['method']} {s['param']:g}"
                  for s in read_json(tags_path)["settings"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    gone = [s for s in made if s not in tagged]
    if not gone:
        return None
    opts = " ".join(_setting_option(s) for s in tagged)
    return (f"the explanations in {run} vote with {', '.join(gone)} tags, which tags.json no longer "
            f"holds (it has {', '.join(tagged) or 'none'}); explain again with "
            f"`filtag-kg explain {run} --data DIR {opts}`, or tag with that setting too")


def _setting_option(setting: str) -> str:
    """The ``filtag-kg`` option that selects a setting written as ``str(TagSetting)``."""
    method, _, param = setting.partition(" ")
    flag = {"top-k": "--k", "top-percent": "--percent", "above-average": "--above-average"}
    return f"{flag.get(method, '--' + method)} {param}".strip()




def read_json_object(path: str | os.PathLike[str], fix: str) -> dict[str, Any]:
    """A JSON object file of a run folder (a profile, state or metadata file).

    Raises:
        ProfileError: the file cannot be read, is not JSON (cut short, overwritten) or not an
            object; the message names it and ends with ``fix`` (how to write it again).
        FileNotFoundError: it does not exist (callers say what is missing in their terms).
    """
    try:
        doc = read_json(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProfileError(f"cannot read {path}: {exc}; {fix}") from None
    if not isinstance(doc, dict):
        raise ProfileError(f"cannot read {path}: it holds a JSON {type(doc).__name__}, not an object; {fix}")
    return doc


def json_object_or_none(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing, damaged or not an object
    (for files whose damage only means "not done yet": the work is done again)."""
    with contextlib.suppress(ProfileError, FileNotFoundError):
        return read_json_object(path, "")
    return None


def read_profile_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``profile.json``, checked to be a profile: an object whose ``classes`` are
    objects with an ``id`` and whose ``layers`` are objects with a ``name``.

    Raises:
        ProfileError: the file is missing, not JSON (cut short, overwritten) or not a profile.
    """
    path = Path(run_dir) / "profile.json"
    try:
        meta = read_json_object(path, REPROFILE)
    except FileNotFoundError:
        raise ProfileError(f"{run_dir} holds no profile.json; create one with `filtag-kg profile` "
                           "or `filtag-kg run`") from None
    classes, layers = meta.get("classes"), meta.get("layers")
    if not (isinstance(classes, list) and all(isinstance(c, dict) and "id" in c for c in classes)
            and isinstance(layers, list) and all(isinstance(la, dict) and "name" in la for la in layers)):
        raise ProfileError(f"cannot read {path}: it is not a filtag-kg profile (no list of classes with "
                           f"ids and of layers with names); {REPROFILE}")
    return meta


def load_profile_arrays(
    run_dir: str | os.PathLike[str], prefix: str | tuple[str, ...] = ""
) -> dict[str, Any]:
    """The arrays of the run's ``profile.npz`` whose names start with ``prefix`` (or one of
    several; default: all), read into memory.

    Raises:
        ProfileError: the file is not a NumPy ``.npz`` archive or a member does not read
            (cut short, overwritten).
    """
    import numpy as np

    path = Path(run_dir) / "profile.npz"
    try:
        if not zipfile.is_zipfile(path):  # np.load would try it as a pickle
            raise ProfileError(f"cannot read {path}: it is not a NumPy .npz archive (cut short or "
                               f"overwritten?); {REPROFILE}")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if k.startswith(prefix)}
    except NPZ_ERRORS as exc:
        raise ProfileError(f"cannot read {path}: {type(exc).__name__}: {exc}; {REPROFILE}") from None


__all__ = [
    "EXPORT_RECORD", "NPZ_ERRORS", "REPROFILE", "RETAG", "RUN_ARTIFACTS", "RunMismatchError",
    "artifacts", "check_same_run", "clear_run", "export_records", "json_object_or_none",
    "load_profile_arrays", "partial_explanations", "read_json_object", "read_profile_meta",
    "record_export", "refresh_command", "refresh_exports", "stale_reason",
    "untagged_explanation_settings",
]
