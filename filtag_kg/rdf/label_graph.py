"""The run's human labels (:mod:`filtag_kg.labels`) as their own named graph ``R/kg/labels``.

Each label is an ``fk:HumanLabel`` (a ``prov:Entity``) about one filter
(``fk:labelledFilter``), with the text typed (``fk:labelText``), whether it was linked to
WordNet (``fk:labelStatus``) and to which synset (``fk:labelConcept``), attributed to its
annotator (``prov:wasAttributedTo``, a ``prov:Agent`` named by ``rdfs:label``) at its time
(``prov:generatedAtTime``). Label concepts carry their wnid and label here, so a concept no
tag reaches is still named. Nothing here uses the tag properties: people's labels and the
machine's tags stay apart.
"""

from __future__ import annotations

from ..labels import read_labels
from . import terms as T
from .tag_graph import Context, _lemma_text, _p
from .vocab import FK, PROV, RDF, RDFS, SKOS

__all__ = ["label_graph_triples"]

Triple = tuple[str, str, str]


def label_graph_triples(ctx: Context) -> list[Triple]:
    """The labels graph's triples, sorted (empty when the run has no ``human_labels.tsv``)."""
    labels = read_labels(ctx.data.run_dir)
    mint, out = ctx.mint, set()
    for lab in labels:
        r = lab.resolution
        node = T.iri(mint.human_label(ctx.run_iri, lab.layer, lab.filter, lab.annotator, lab.label, lab.time))
        who = T.iri(mint.annotator(lab.annotator))
        out |= {
            (node, _p(RDF.type), _p(FK.HumanLabel)),
            (node, _p(RDF.type), _p(PROV.Entity)),
            (node, _p(FK.labelledFilter), T.iri(mint.filter(ctx.model_iri, lab.layer, lab.filter))),
            (node, _p(FK.labelText), T.string(lab.label)),
            (node, _p(FK.labelStatus), T.string("linked" if r.status == "linked" else
                                                "ambiguous" if r.status == "ambiguous" else "unknown")),
            (node, _p(PROV.wasAttributedTo), who),
            (who, _p(RDF.type), _p(PROV.Agent)),
            (who, _p(RDFS.label), T.string(lab.annotator)),
        }
        when = T.date_time(lab.time) if lab.time else None
        if when:
            out.add((node, _p(PROV.generatedAtTime), when))
        if r.status == "linked" and r.wnid:
            c = T.iri(mint.synset(r.wnid))
            out |= {
                (node, _p(FK.labelConcept), c),
                (c, _p(FK.wnid), T.string(r.wnid)),
                # as the tag graph names the synset, so the union holds one label
                (c, _p(SKOS.prefLabel), T.lang_string(_lemma_text(ctx.wordnet.synset(r.wnid).label))),
            }
    return sorted(out)
