"""``filtag-kg export``: write a run's knowledge graph in an RDF format, atomically.

N-Quads and N-Triples are written by the streaming writer directly. The
other formats are converted from that N-Quads stream by Oxigraph (a Rust
parser and serializer, also streaming), so every format carries the same
graphs with the same literal forms and no format needs the whole graph in
Python objects. Formats without named graphs (Turtle, N-Triples, RDF/XML)
get every graph merged into one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .._io import atomic_open, make_temp
from .errors import ExportFormatError, LicenseIriError, RdfExportError, UnrepresentableLiteralError
from .mint import DEFAULT_BASE_IRI, check_base_iri
from .nquads import ExportStats, write_nquads
from .rundata import read_run
from .vocab import PREFIXES

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = [
    "FORMATS",
    "ExportFormat",
    "ExportJobsError",
    "check_license_iri",
    "export_run",
    "export_run_stats",
    "format_of",
    "is_local_base_iri",
]


class ExportJobsError(RdfExportError, ValueError):
    """``export --jobs`` is not a positive number of processes."""


def check_jobs(jobs: int) -> int:
    """Validate the number of processes of ``export --jobs``.

    Raises:
        ExportJobsError: it is not an integer >= 1.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ExportJobsError(f"bad number of processes {jobs!r}; give --jobs 1 or more (--jobs)")
    return jobs


@dataclass(frozen=True)
class ExportFormat:
    """An export format: its name, file extension, media type, and whether it has named graphs."""

    name: str
    extension: str
    media_type: str
    named_graphs: bool
    description: str


#: The formats of ``filtag-kg export --format``.
FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("trig", "trig", "application/trig", True, "TriG: Turtle with named graphs (default)"),
        ExportFormat("nq", "nq", "application/n-quads", True, "N-Quads, streamed, sorted within each graph"),
        ExportFormat("nt", "nt", "application/n-triples", False, "N-Triples, streamed, all graphs merged"),
        ExportFormat("ttl", "ttl", "text/turtle", False, "Turtle, all graphs merged"),
        ExportFormat("jsonld", "jsonld", "application/ld+json", True, "JSON-LD with named graphs"),
        ExportFormat("xml", "rdf", "application/rdf+xml", False, "RDF/XML, all graphs merged"),
    )
}

# characters XML 1.0 cannot carry, not even escaped; and CR, which Oxigraph's RDF/XML writer
# leaves raw, so that every conforming XML parser reads it back as LF
_NOT_XML = re.compile("[\x00-\x08\x0b-\x1f\ufffe\uffff]")


def check_license_iri(iri: str) -> str:
    """Validate the IRI given to ``export --license``.

    Raises:
        LicenseIriError: it is not an absolute IRI.

    Example:
        >>> check_license_iri("https://creativecommons.org/licenses/by/4.0/")
        'https://creativecommons.org/licenses/by/4.0/'
    """
    if not isinstance(iri, str) or not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:\S", iri) or re.search(
        r"[\x00-\x20<>\"{}|\\^`]", iri
    ):
        raise LicenseIriError(
            f"bad licence IRI {iri!r}; give an absolute IRI such as "
            "https://creativecommons.org/licenses/by/4.0/ (--license)"
        )
    return iri


def is_local_base_iri(base_iri: str) -> bool:
    """Whether an IRI names this machine (``localhost``, a loopback or unspecified address,
    ``127.x``, ``[::1]``): such IRIs are not persistent and mean nothing in a public store.

    Example:
        >>> is_local_base_iri("http://localhost:8000/filtag-kg/"), is_local_base_iri("https://example.org/kg/")
        (True, False)
    """
    try:
        host = (urllib.parse.urlsplit(base_iri).hostname or "").lower()
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def format_of(fmt: str) -> ExportFormat:
    """The :class:`ExportFormat` of a name.

    Raises:
        ExportFormatError: the name is unknown (the message lists the valid ones).
    """
    got = FORMATS.get(str(fmt).lower().lstrip("."))
    if got is None:
        raise ExportFormatError(
            f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)} (--format)"
        )
    return got


def export_run(
    run_dir: str | os.PathLike[str],
    *,
    fmt: str = "trig",
    out: str | os.PathLike[str] | None = None,
    base_iri: str = DEFAULT_BASE_IRI,
    wordnet: WordNet | None = None,
    ili_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
    explanations: bool = True,
    absolute_paths: bool = False,
    materialize: bool = False,
    license: str | None = None,
    sentences: bool = False,
    jobs: int = 1,
) -> Path:
    """Export a run folder's knowledge graph to one RDF file, atomically.

    Args:
        run_dir: the run folder (needs ``tags.tsv``; uses ``profile.json``,
            ``import.json``, ``abstract_tags.tsv``, ``class_links.tsv`` and
            ``explanations.jsonl`` when present).
        fmt: ``trig`` (default), ``nq``, ``nt``, ``ttl``, ``jsonld`` or ``xml``.
        out: the file to write; default ``RUN_DIR/kg.<ext>`` (``kg.rdf`` for xml).
        base_iri: base IRI of the minted IRIs (your domain when publishing).
        wordnet: WordNet 3.0 source; ``None`` loads the default.
        ili_map: CILI's ``ili-map-pwn30.tab`` for links to the Interlingual Index.
        explanations: include the explanation graphs (when the run has them).
        absolute_paths: publish dataset roots and image paths as given (machine-local);
            by default images are named by content hash and path relative to the dataset root.
        materialize: also write the ``fk:represents`` triples an OWL RL reasoner would
            infer with ``ontology/filtag.ttl`` (for stores that do not reason).
        license: IRI of the licence of the data (``dcterms:license`` in the VoID).
        sentences: also write the generated sentences (``fk:sentence``, :mod:`filtag_kg.sentences`)
            on the explanations, filters and class explanations (needs ``profile.json``).
        jobs: processes encoding the explanation graphs; the file is byte-identical for any
            number (see :func:`~.nquads.write_nquads`).

    Returns:
        The path written.

    Raises:
        ExportFormatError: unknown format.
        ExportJobsError: ``jobs`` < 1.
        BaseIriError: unusable base IRI.
        RunFolderError: no ``tags.tsv``, or an unreadable file in the run.
        UnrepresentableLiteralError: RDF/XML asked for text with control characters.
        OutputError: the output cannot be written.

    Example:
        >>> export_run("runs/vgg16", fmt="nq", base_iri="https://example.org/kg/")  # doctest: +SKIP
        PosixPath('runs/vgg16/kg.nq')
    """
    return export_run_stats(
        run_dir, fmt=fmt, out=out, base_iri=base_iri, wordnet=wordnet, ili_map=ili_map,
        explanations=explanations, absolute_paths=absolute_paths, materialize=materialize, license=license,
        sentences=sentences, jobs=jobs,
    ).path  # type: ignore[return-value]


def export_run_stats(
    run_dir: str | os.PathLike[str],
    *,
    fmt: str = "trig",
    out: str | os.PathLike[str] | None = None,
    base_iri: str = DEFAULT_BASE_IRI,
    wordnet: WordNet | None = None,
    ili_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
    explanations: bool = True,
    absolute_paths: bool = False,
    materialize: bool = False,
    license: str | None = None,
    sentences: bool = False,
    jobs: int = 1,
) -> ExportStats:
    """Like :func:`export_run`, returning the counts written (for the CLI's summary)."""
    f = format_of(fmt)
    check_jobs(jobs)
    check_base_iri(base_iri)
    if license is not None:
        check_license_iri(license)
    data = read_run(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / f"kg.{f.extension}"
    kwargs = {
        "base_iri": base_iri, "wordnet": wordnet, "ili_map": ili_map, "explanations": explanations,
        "absolute_paths": absolute_paths, "materialize": materialize, "license": license,
        "sentences": sentences, "jobs": jobs,
    }
    if f.name in ("nq", "nt"):
        with atomic_open(path, "wb") as fh:
            stats = write_nquads(data, fh, graphs=f.name == "nq", **kwargs)
        return replace(stats, path=path, explanations_pending=data.explanations_pending)
    # everything else: stream N-Quads to a temporary file, let Oxigraph convert it
    fd, tmp = make_temp(path, suffix=".nq")  # recognisable: the next export removes a killed one's
    try:
        with os.fdopen(fd, "wb") as fh:
            stats = write_nquads(data, fh, graphs=True, **kwargs)
        with atomic_open(path, "wb") as fh:
            _convert(Path(tmp), fh, f)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return replace(stats, path=path, format=f.name, explanations_pending=data.explanations_pending)


def _convert(src: Path, out: IO[bytes], f: ExportFormat) -> None:
    """Convert an N-Quads file with Oxigraph, streaming."""
    import pyoxigraph as ox

    target = {
        "trig": ox.RdfFormat.TRIG,
        "ttl": ox.RdfFormat.TURTLE,
        "jsonld": ox.RdfFormat.JSON_LD,
        "xml": ox.RdfFormat.RDF_XML,
    }[f.name]
    quads = ox.parse(path=str(src), format=ox.RdfFormat.N_QUADS)
    prefixes = dict(PREFIXES) if f.name in ("trig", "ttl", "xml") else None
    if f.named_graphs:
        ox.serialize(quads, out, target, prefixes=prefixes)
        return
    triples = (q.triple for q in quads)
    if f.name == "xml":
        triples = _xml_safe(triples)
    ox.serialize(triples, out, target, prefixes=prefixes)


def _xml_safe(triples: Iterable[Any]) -> Iterator[Any]:
    """Pass triples on; raise on a literal that RDF/XML cannot carry exactly."""
    import pyoxigraph as ox

    for t in triples:
        o = t.object
        if isinstance(o, ox.Literal):
            bad = _NOT_XML.search(o.value)
            if bad:
                raise UnrepresentableLiteralError(
                    f"the text {o.value[:40]!r} (of {t.subject.value}) contains the control character "
                    f"U+{ord(bad.group()):04X}, which RDF/XML cannot carry exactly; export as trig, ttl, "
                    f"nq, nt or jsonld instead"
                )
        yield t
