"""The graphs of a run as a stream, and the streaming N-Quads / N-Triples writer.

:class:`RunGraphs` yields the export's named graphs one at a time:

1. one graph per explanation record, in file order, each preceded (the
   first time its image occurs) by the image's classification graph (the file
   is read line by line; of an explanation only its classification's name is
   kept once it is written);
2. the ClaDec graph ``R/kg/cladec``, when the run has ClaDec decoders (see :mod:`.cladec_graph`);
3. the tag graph ``R/kg/tags`` (it also describes every concept, filter and
   setting the explanations referenced, so it comes after them);
4. the VoID graph ``R/kg/void`` with the counts of the graphs before it.

Within a graph, triples are deduplicated and sorted, so writing the same run
twice gives byte-identical N-Quads and N-Triples. Memory holds one
explanation graph at a time plus the tag graph, whatever the number of images.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .cladec_graph import iter_cladec_graphs
from .explanation_graph import iter_explanation_graphs
from .mint import DEFAULT_BASE_IRI
from .rundata import RunData, read_run
from .tag_graph import Context, GraphStats, tag_graph_triples, void_triples

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = ["ExportStats", "RunGraphs", "write_nquads"]


class RunGraphs:
    """The named graphs of one run's export, generated lazily.

    Iterating yields ``(graph IRI, text, count)``: the graph's triples as
    N-Quads text (unique lines ending in ``" <graph> .\\n"``, sorted; see
    :mod:`.terms`), or N-Triples text with ``graphs=False``, and how many
    lines there are. Iterate once: the counts of the
    VoID graph are those of the graphs yielded before it.

    Args:
        run: a run folder, or its content read by :func:`~.rundata.read_run`.
        base_iri: base IRI of the minted IRIs (default :data:`~.mint.DEFAULT_BASE_IRI`).
        wordnet: WordNet 3.0 source; ``None`` loads the default.
        ili_map: CILI's ``ili-map-pwn30.tab`` (or a wnid -> ILI id mapping)
            for ``skos:exactMatch`` links to the Interlingual Index.
        explanations: include the explanation graphs (when the run has them).
        absolute_paths, materialize, license: see :class:`~.tag_graph.Context`.
        graphs: end each line with its graph's name (N-Quads text); ``False``
            gives N-Triples text.

    Raises:
        RunFolderError: the folder has no ``tags.tsv`` or a file is unreadable.
        BaseIriError: the base IRI is unusable.
    """

    def __init__(
        self,
        run: str | os.PathLike[str] | RunData,
        *,
        base_iri: str = DEFAULT_BASE_IRI,
        wordnet: WordNet | None = None,
        ili_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
        explanations: bool = True,
        graphs: bool = True,
        absolute_paths: bool = False,
        materialize: bool = False,
        license: str | None = None,
    ) -> None:
        from .mint import check_base_iri

        check_base_iri(base_iri)  # fail before reading anything
        data = run if isinstance(run, RunData) else read_run(run)
        if not explanations and data.explanations_path is not None:
            data = replace(data, explanations_path=None)
        self.ctx = Context(
            data, base_iri=base_iri, wordnet=wordnet, ili_map=ili_map, absolute_paths=absolute_paths,
            materialize=materialize, license=license,
        )
        self.stats = GraphStats()
        self.graphs = graphs

    def __iter__(self) -> Iterator[tuple[str, str, int]]:
        stats = self.stats
        for graph, text, count, is_explanation in iter_explanation_graphs(self.ctx, graphs=self.graphs):
            if is_explanation:
                stats.explanations += 1
            else:
                stats.classifications += 1
            stats.explanation_triples += count
            yield graph, text, count
        for g, triples in iter_cladec_graphs(self.ctx):  # before the tag graph: it names layers, concepts
            stats.cladec_triples += len(triples)
            yield g, _text(triples, g if self.graphs else None), len(triples)
        tags = tag_graph_triples(self.ctx)
        stats.count_tag_graph(tags)
        g = self.ctx.tag_graph_iri
        yield g, _text(tags, g if self.graphs else None), len(tags)
        void = void_triples(self.ctx, stats)
        g = self.ctx.void_graph_iri
        yield g, _text(void, g if self.graphs else None), len(void)


def _text(triples: list[tuple[str, str, str]], graph: str | None) -> str:
    end = f" <{graph}> .\n" if graph else " .\n"
    return "".join([f"{s} {p} {o}{end}" for s, p, o in triples])


@dataclass(frozen=True)
class ExportStats:
    """What an export wrote.

    Attributes:
        path: the file written (``None`` for a stream).
        format: the format name.
        quads: lines written (all graphs, VoID included).
        tag_triples: triples of the tag graph.
        explanation_triples: triples of all explanation graphs.
        explanations: explanation graphs.
        run_iri: the run's IRI (root resource of the export).
        tag_graph: the tag graph's name.
        explanations_pending: images done by an unfinished explanation pass whose
            partial results were exported (``None``: no pass was unfinished).
    """

    path: Path | None
    format: str
    quads: int
    tag_triples: int
    explanation_triples: int
    explanations: int
    run_iri: str
    tag_graph: str
    explanations_pending: int | None = None


def write_nquads(
    run: str | os.PathLike[str] | RunData,
    out: IO[bytes] | IO[str],
    *,
    base_iri: str = DEFAULT_BASE_IRI,
    wordnet: WordNet | None = None,
    ili_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
    explanations: bool = True,
    graphs: bool = True,
    absolute_paths: bool = False,
    materialize: bool = False,
    license: str | None = None,
) -> ExportStats:
    """Stream a run's export as N-Quads (or N-Triples) into a file.

    The streaming route for any number of explanations: one explanation
    graph is in memory at a time. Lines are sorted within each graph;
    graphs come in a fixed order (explanations in file order, then the tag
    graph, then the VoID graph), so the same input gives the same bytes.

    Args:
        run: a run folder or its :class:`~.rundata.RunData`.
        out: a binary file, or a text file (written through its binary
            buffer when it has one), opened for writing.
        base_iri, wordnet, ili_map, explanations, absolute_paths, materialize, license:
            see :class:`RunGraphs`.
        graphs: ``True`` writes N-Quads; ``False`` writes N-Triples (all
            graphs merged; a triple found in several explanation graphs,
            such as an image's SHA-256, then appears once per graph).

    Returns:
        The counts written.

    Example:
        >>> with open("kg.nq", "wb") as fh:  # doctest: +SKIP
        ...     write_nquads("runs/vgg16", fh, base_iri="https://example.org/kg/")
    """
    stream = RunGraphs(
        run, base_iri=base_iri, wordnet=wordnet, ili_map=ili_map, explanations=explanations, graphs=graphs,
        absolute_paths=absolute_paths, materialize=materialize, license=license,
    )
    write = _binary_writer(out)
    lines = 0
    for _graph, text, count in stream:
        write(text)
        lines += count
    s = stream.stats
    return ExportStats(
        path=None,
        format="nq" if graphs else "nt",
        quads=lines,
        tag_triples=s.tag_triples,
        explanation_triples=s.explanation_triples,
        explanations=s.explanations,
        run_iri=stream.ctx.run_iri,
        tag_graph=stream.ctx.tag_graph_iri,
    )


def _binary_writer(out: IO[bytes] | IO[str]) -> Callable[[str], object]:
    """A function writing text as UTF-8 to ``out`` (through the binary buffer of a text file)."""
    if isinstance(out, io.TextIOBase):
        buffer = getattr(out, "buffer", None)
        if buffer is None:  # e.g. io.StringIO
            return out.write
        out.flush()
        raw = buffer.write
    else:
        raw = out.write  # type: ignore[assignment]

    def write(text: str) -> object:
        return raw(text.encode("utf-8"))

    return write
