"""The generated sentences of a run (:mod:`filtag_kg.sentences`) as triples of its export.

Kept apart from the encoders of the explanation and tag graphs, and called from one place
(:class:`~.nquads.RunGraphs`, when the export is asked for sentences), so the encoders need
not know about sentences:

* in each explanation's own graph: ``E fk:sentence "…"@en ; fk:sentenceTemplate "image-v1" ;
  fk:sentenceGeneratedBy R/sentences``;
* in the tag graph: the same three triples on each tagged filter (template ``filter-v1``,
  its class distribution) and on each class explanation of the first setting (template
  ``class-v1``, the concepts its images vote for), and the generation itself:
  ``R/sentences a fk:SentenceGeneration, prov:Activity ; fk:generatorVersion "1" ;
  prov:used R``.

:class:`~.nquads.RunGraphs` hands each explanation graph's record over with the graph (one
read of the records). The export writes sentences only when asked: they are generated on
the graph-by-graph route, so ``--jobs`` does not parallelise an export with sentences.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..sentences import (
    GENERATOR_VERSION,
    SentenceContext,
    class_sentences,
    filter_sentences,
    image_sentence,
)
from . import terms as T
from .tag_graph import Context
from .vocab import FK, PROV, RDF, RDFS

__all__ = ["SentenceTriples"]

Triple = tuple[str, str, str]
_A = T.iri(str(RDF.type))
_SENTENCE, _TEMPLATE = T.iri(str(FK.sentence)), T.iri(str(FK.sentenceTemplate))
_BY = T.iri(str(FK.sentenceGeneratedBy))

#: What the class sentences need of a record (kept while the explanation graphs stream by).
_CLASS_FIELDS = ("true_class", "votes", "vote_counts", "method", "param", "perturbation")


class SentenceTriples:
    """Sentence triples of one export; feed it the explanation graphs in order.

    Raises:
        SentenceError: the run has no ``profile.json`` (an imported run): sentences need
            the run's classes and layers.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sentences = SentenceContext.from_run(ctx.data.run_dir, wordnet=ctx.wordnet)
        self.activity = T.iri(ctx.mint.sentence_generation(ctx.run_iri))
        self._kept: list[dict[str, Any]] = []

    def _lines(self, subject: str, text: str, template: str) -> list[Triple]:
        return [
            (subject, _SENTENCE, T.lang_string(text)),
            (subject, _TEMPLATE, T.string(template)),
            (subject, _BY, self.activity),
        ]

    def explanation(self, graph: str, rec: dict[str, Any], *, graphs: bool = True) -> tuple[str, int]:
        """The sentence lines of the explanation graph ``graph`` (its IRI, also the
        explanation's) of the record ``rec``, as N-Quads (``graphs``) or N-Triples text, and
        their count."""
        top = rec.get("model_top") or []
        self._kept.append({**{k: rec.get(k) for k in _CLASS_FIELDS}, "model_top": top[:1]})
        s = image_sentence(self.sentences, rec)
        end = f" <{graph}> .\n" if graphs else " .\n"
        lines = self._lines(T.iri(graph), s.text, s.template)
        return "".join(f"{a} {b} {c}{end}" for a, b, c in lines), len(lines)

    def tag_graph_triples(self) -> list[Triple]:
        """The generation, and the filter and class-explanation sentences (for the tag graph)."""
        ctx, mint = self.ctx, self.ctx.mint
        out: list[Triple] = [
            (self.activity, _A, T.iri(str(FK.SentenceGeneration))),
            (self.activity, _A, T.iri(str(PROV.Activity))),
            (self.activity, T.iri(str(RDFS.label)), T.string("sentences generated from the graph")),
            (self.activity, T.iri(str(FK.generatorVersion)), T.string(GENERATOR_VERSION)),
            (self.activity, T.iri(str(PROV.used)), T.iri(ctx.run_iri)),
        ]
        for s in filter_sentences(self.sentences):
            f = T.iri(mint.filter(ctx.model_iri, s.subject["layer"], s.subject["filter"]))
            out += self._lines(f, s.text, s.template)
        tagged = _tagged_classes(self.sentences.tags)
        for s in class_sentences(self.sentences, self._kept):
            method, param = str(s.subject["method"]), s.subject["param"]
            param = "" if param is None else str(param)
            if s.subject["class_id"] not in tagged.get((method, param), ()):
                continue  # no class explanation to describe: the class tags no filter there
            ce = T.iri(mint.class_explanation(ctx.run_iri, method, param, s.subject["class_id"]))
            out += self._lines(ce, s.text, s.template)
        return out


def _tagged_classes(tags: Mapping[tuple[str, str, str, int], list[str]]) -> dict[tuple[str, str], set[str]]:
    """Per setting ``(method, param)``, the classes that tag at least one filter."""
    out: dict[tuple[str, str], set[str]] = {}
    for (method, param, _, _), classes in tags.items():
        out.setdefault((method, param), set()).update(classes)
    return out
