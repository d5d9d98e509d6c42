"""The graphs of a run as a stream, and the streaming N-Quads / N-Triples writer.

:class:`RunGraphs` yields the export's named graphs one at a time:

1. one graph per explanation record, in file order, each preceded (the
   first time its image occurs) by the image's classification graph (the rows
   are read a batch at a time; of an image variant only one bit, "its
   classification was written", is kept: :class:`~.explanation_graph.SeenVariants`);
2. the structured attention graphs ``R/sag/{sha256}`` (``filtag-kg sag``) and the
   ClaDec graph ``R/kg/cladec`` (``filtag-kg cladec``) and the class-level cluster aggregates
   ``R/kg/clusters`` (``explain --clusters``), when the run has them;
3. the tag graph ``R/kg/tags`` (it also describes every concept, filter and
   setting the explanations referenced, so it comes after them);
4. the human labels' graph (when there are labels), then the VoID graph
   ``R/kg/void`` with the counts of the graphs before it.

Within a graph, triples are deduplicated and sorted, so writing the same run
twice gives byte-identical N-Quads and N-Triples. Memory holds a few batches of
explanation graphs at a time plus the tag graph, whatever the number of images.
:func:`write_nquads` with ``jobs`` > 1 has worker processes encode the batches
(:func:`~.explanation_graph.iter_encoded_batches`) and appends their text in row
order, so the bytes do not depend on ``jobs``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .cladec_graph import iter_cladec_graphs
from .cluster_graph import iter_cluster_graphs
from .explanation_graph import BatchMerger, iter_encoded_batches, iter_explanation_graphs
from .mint import DEFAULT_BASE_IRI
from .rundata import RunData, read_run
from .saliency_graph import iter_saliency_graphs
from .tag_graph import Context, GraphStats, tag_graph_triples, void_triples

if TYPE_CHECKING:
    from ..wordnet import WordNet
    from .sentence_graph import SentenceTriples

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
        sentences: also write the generated sentences (:mod:`.sentence_graph`).
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
        sentences: bool = False,
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
        self.sentences = sentences

    def __iter__(self) -> Iterator[tuple[str, str, int]]:
        stats = self.stats
        sentences = None
        if self.sentences:
            from .sentence_graph import SentenceTriples

            sentences = SentenceTriples(self.ctx)
        for graph, text, count, is_explanation, rec in iter_explanation_graphs(self.ctx, graphs=self.graphs):
            if is_explanation:
                if sentences is not None:  # E's sentence lines follow E's own (E's lines come last)
                    more, k = sentences.explanation(graph, rec, graphs=self.graphs)
                    text, count = text + more, count + k
                stats.explanations += 1
            else:
                stats.classifications += 1
            stats.explanation_triples += count
            yield graph, text, count
        yield from self._closing(sentences)

    def blocks(self, *, jobs: int = 1) -> Iterator[tuple[bytes | str, list[tuple[int, int]], int]]:
        """The same lines as iterating, as UTF-8 byte ranges to write, a batch of explanations at a time.

        The export's route: ``jobs`` processes encode the explanations
        (:func:`~.explanation_graph.iter_encoded_batches`); the bytes are the
        same for every ``jobs``. Yields ``(source, ranges, line count)``:
        write the ``(start, end)`` byte ranges of ``source``, bytes or a
        file a worker wrote (deleted once the next block is asked for).
        With sentences, the explanations are encoded in this process, graph by
        graph (the sentences are added in step with the records).
        """
        if self.sentences:
            for _graph, text, count in self:
                data = text.encode("utf-8")
                yield data, [(0, len(data))], count
            return
        stats = self.stats
        merger = BatchMerger(self.ctx)
        with contextlib.closing(iter_encoded_batches(self.ctx, graphs=self.graphs, jobs=jobs)) as batches:
            for batch in batches:
                ranges, lines, kept = merger.merge(batch)
                stats.explanations += batch.explanations
                stats.classifications += kept
                stats.explanation_triples += lines
                try:
                    yield (batch.spill or batch.data), ranges, lines
                finally:
                    if batch.spill:
                        with contextlib.suppress(OSError):
                            os.unlink(batch.spill)
        for _graph, text, count in self._closing():
            data = text.encode("utf-8")
            yield data, [(0, len(data))], count

    def _closing(self, sentences: SentenceTriples | None = None) -> Iterator[tuple[str, str, int]]:
        """The structured attention graphs (``filtag-kg sag``), the tag graph (with the
        sentences' part of it), the human labels' graph when there are labels, then the
        VoID graph (with the counts of everything before it)."""
        stats = self.stats
        # the SAG graphs of the run's saliency pass: before the tag graph, which describes their filters
        for graph, text, count in iter_saliency_graphs(self.ctx, graphs=self.graphs):
            stats.explanation_triples += count
            yield graph, text, count
        for g, triples in iter_cladec_graphs(self.ctx):  # before the tag graph: it names layers, concepts
            stats.cladec_triples += len(triples)
            yield g, _text(triples, g if self.graphs else None), len(triples)
        for g, triples in iter_cluster_graphs(self.ctx):  # the class-level cluster aggregates, likewise
            stats.cluster_triples += len(triples)
            yield g, _text(triples, g if self.graphs else None), len(triples)
        tags = tag_graph_triples(self.ctx)
        if sentences is not None:
            tags = sorted(set(tags).union(sentences.tag_graph_triples()))
        stats.count_tag_graph(tags)
        g = self.ctx.tag_graph_iri
        yield g, _text(tags, g if self.graphs else None), len(tags)
        from .label_graph import label_graph_triples

        labels = label_graph_triples(self.ctx)  # people's labels: their own graph, never tags
        if labels:
            stats.label_triples = len(labels)
            g = self.ctx.mint.labels_graph(self.ctx.run_iri)
            yield g, _text(labels, g if self.graphs else None), len(labels)
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
    sentences: bool = False,
    jobs: int = 1,
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
        base_iri, wordnet, ili_map, explanations, absolute_paths, materialize, license,
            sentences: see :class:`RunGraphs`.
        graphs: ``True`` writes N-Quads; ``False`` writes N-Triples (all
            graphs merged; a triple found in several explanation graphs,
            such as an image's SHA-256, then appears once per graph).
        jobs: processes encoding the explanation graphs (forked workers; this
            process reads and writes). The bytes written are the same for any ``jobs``.

    Returns:
        The counts written.

    Example:
        >>> with open("kg.nq", "wb") as fh:  # doctest: +SKIP
        ...     write_nquads("runs/vgg16", fh, base_iri="https://example.org/kg/")
    """
    stream = RunGraphs(
        run, base_iri=base_iri, wordnet=wordnet, ili_map=ili_map, explanations=explanations, graphs=graphs,
        absolute_paths=absolute_paths, materialize=materialize, license=license, sentences=sentences,
    )
    write = _binary_writer(out)
    copy = _file_copier(out, write)
    lines = 0
    for source, ranges, count in stream.blocks(jobs=jobs):
        if isinstance(source, bytes):
            view = memoryview(source)
            for start, end in ranges:
                write(view[start:end])
        else:
            copy(source, ranges)
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


def _file_copier(
    out: IO[bytes] | IO[str], write: Callable[[bytes | memoryview], object]
) -> Callable[[str, list[tuple[int, int]]], None]:
    """A function appending byte ranges of a file to ``out``: copied in the kernel
    (``sendfile``) when ``out`` is a regular file, else read and written."""
    target: Any = getattr(out, "buffer", out) if isinstance(out, io.TextIOBase) else out
    try:
        fd = target.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode) and hasattr(os, "sendfile")
    except (AttributeError, OSError, ValueError):
        regular = False

    def copy(path: str, ranges: list[tuple[int, int]]) -> None:
        with open(path, "rb") as src:
            if not regular:
                for start, end in ranges:
                    src.seek(start)
                    write(src.read(end - start))
                return
            target.flush()  # what was written through the buffer goes first
            for start, end in ranges:
                while start < end:
                    n = os.sendfile(fd, src.fileno(), start, end - start)
                    if n <= 0:
                        raise OSError(f"{path} ended early; the export is incomplete")
                    start += n

    return copy


def _binary_writer(out: IO[bytes] | IO[str]) -> Callable[[bytes | memoryview], object]:
    """A function writing UTF-8 bytes to ``out`` (through the binary buffer of a text file)."""
    if isinstance(out, io.TextIOBase):
        buffer = getattr(out, "buffer", None)
        if buffer is None:  # e.g. io.StringIO

            def write_text(data: bytes | memoryview) -> object:
                return out.write(bytes(data).decode("utf-8"))

            return write_text
        out.flush()
        return buffer.write
    return out.write  # type: ignore[return-value]
