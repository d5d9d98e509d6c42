"""One named graph per structured attention graph (``filtag-kg sag``), from ``saliency/saliency.json``.

For an image with SHA-256 ``h`` explained by ``sag``, the graph ``G = R/sag/{h[:16]}``::

    G a fk:StructuredAttentionGraph ; fk:sagImage I ; fk:sagConcept C ; fk:gridSize 7 ;
      fk:fullProbability 0.97 ; fk:baselineProbability 0.12 ; fk:minimalExplanationCount 4 ;
      fk:hasRoot G/region/3-10 ; fk:hasRegionSet G/region/3-10, G/region/10 … ;
      fk:hasRegionRemoval G/region/3-10/minus/3 … ; fk:relatedExplanation E … ; fk:hasSaliencyMap G/igos .
    I a fk:Image ; fk:sha256 "h" .
    G/region/3-10 a fk:RegionSet, fk:MinimalSufficientExplanation ; fk:patch 3, 10 ; fk:patchCount 2 ;
      fk:regionProbability 0.93 ; fk:childRegionSet G/region/10 ;
      fk:regionFilter F … ; fk:hasRegionVote G/region/3-10/vote/{class} .
    G/region/3-10/vote/{class} a fk:RegionVote ; fk:regionVoteConcept C1 ; fk:regionVoteCount 2 .
    G/region/3-10/minus/3 a fk:RegionRemoval ; fk:removalParent G/region/3-10 ;
      fk:removalChild G/region/10 ; fk:removedPatch 3 .
    G/igos a fk:SaliencyMap ; fk:maskSize 28 ; fk:saliencyValues "0.0 0.12 …" .

``fk:relatedExplanation`` links every unperturbed FilTag explanation of the same image
(same bytes) in the run. Lines are unique and sorted within the graph, like the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import terms as T
from .rundata import iter_explanation_records
from .tag_graph import Context, _p
from .vocab import FK, RDF

__all__ = ["iter_saliency_graphs", "saliency_graph_lines"]


def _related(ctx: Context, shas: set[str]) -> dict[str, list[str]]:
    """sha256 -> IRIs of the run's unperturbed explanations of that image."""
    out: dict[str, list[str]] = {}
    if not shas or ctx.data.explanations_path is None:
        return out
    for _n, rec in iter_explanation_records(ctx.data):
        sha = str(rec.get("sha256") or "").lower()
        if sha in shas and not rec.get("perturbation"):
            param = rec.get("param")
            out.setdefault(sha, []).append(
                ctx.mint.explanation(
                    ctx.run_iri,
                    rec["index"],
                    str(rec["method"]),
                    "" if param is None else str(param),
                    None,
                    rec.get("weighting") or None,
                )
            )
    return out


def saliency_graph_lines(
    ctx: Context, rec: dict[str, Any], related: list[str]
) -> tuple[str, list[tuple[str, str, str]]]:
    """The SAG graph of one ``saliency.json`` image record as ``(graph IRI, triples)``."""
    mint = ctx.mint
    sha = str(rec["sha256"]).lower()
    g_iri = mint.sag(ctx.run_iri, sha)
    g = T.iri(g_iri)
    sag = rec["sag"]
    triples: list[tuple[str, str, str]] = []
    add = triples.append
    a = _p(RDF.type)
    img = T.iri(mint.image(sha))
    add((g, a, _p(FK.StructuredAttentionGraph)))
    add((g, _p(FK.sagImage), img))
    add((img, a, _p(FK.Image)))
    add((img, _p(FK.sha256), T.string(sha)))
    add((g, _p(FK.sagConcept), ctx.concept(str(rec["class_id"]), str(rec.get("label") or rec["class_id"]))))
    add((g, _p(FK.gridSize), T.integer(int(sag["grid"]))))
    for prop, key in ((FK.fullProbability, "probability"), (FK.baselineProbability, "baseline_probability")):
        lit = T.double(min(1.0, max(0.0, float(sag[key]))))
        if lit:
            add((g, _p(prop), lit))
    add((g, _p(FK.minimalExplanationCount), T.integer(len(sag.get("minimal") or []))))
    nodes = sag.get("nodes") or []
    iris = [T.iri(mint.region_set(g_iri, n["patches"])) for n in nodes]
    roots = set(sag.get("roots") or [])
    for k, (node, r) in enumerate(zip(nodes, iris)):
        add((g, _p(FK.hasRegionSet), r))
        add((r, a, _p(FK.RegionSet)))
        if k in roots:
            add((g, _p(FK.hasRoot), r))
            add((r, a, _p(FK.MinimalSufficientExplanation)))
        for patch in node["patches"]:
            add((r, _p(FK.patch), T.integer(int(patch))))
        add((r, _p(FK.patchCount), T.integer(len(node["patches"]))))
        lit = T.double(min(1.0, max(0.0, float(node["probability"]))))
        if lit:
            add((r, _p(FK.regionProbability), lit))
    for e in sag.get("edges") or []:
        parent, child = nodes[e["parent"]], e["child"]
        edge = T.iri(mint.region_removal(g_iri, parent["patches"], int(e["removed"])))
        add((g, _p(FK.hasRegionRemoval), edge))
        add((edge, a, _p(FK.RegionRemoval)))
        add((edge, _p(FK.removalParent), iris[e["parent"]]))
        add((edge, _p(FK.removalChild), iris[child]))
        add((edge, _p(FK.removedPatch), T.integer(int(e["removed"]))))
        add((iris[e["parent"]], _p(FK.childRegionSet), iris[child]))
    for region in rec.get("regions") or []:
        r_iri = mint.region_set(g_iri, nodes[region["node"]]["patches"])
        r = T.iri(r_iri)
        for layer in region.get("layers") or []:
            for f in layer.get("active") or []:
                if f.get("tags"):  # the tagged filters: those that vote
                    ctx.filter_seen(layer["layer"], int(f["filter"]))
                    add(
                        (
                            r,
                            _p(FK.regionFilter),
                            T.iri(mint.filter(ctx.model_iri, layer["layer"], int(f["filter"]))),
                        )
                    )
        for v in region.get("votes") or []:
            vote = T.iri(mint.region_vote(r_iri, str(v["class_id"])))
            add((r, _p(FK.hasRegionVote), vote))
            add((vote, a, _p(FK.RegionVote)))
            add(
                (
                    vote,
                    _p(FK.regionVoteConcept),
                    ctx.concept(str(v["class_id"]), str(v.get("label") or v["class_id"])),
                )
            )
            add((vote, _p(FK.regionVoteCount), T.integer(int(v["count"]))))
    for e_iri in related:
        add((g, _p(FK.relatedExplanation), T.iri(e_iri)))
    igos = rec.get("igos")
    if igos:
        h = T.iri(mint.saliency_map(g_iri))
        add((g, _p(FK.hasSaliencyMap), h))
        add((h, a, _p(FK.SaliencyMap)))
        add((h, _p(FK.maskSize), T.integer(int(igos["size"]))))
        values = " ".join(f"{min(1.0, max(0.0, float(v))):.4f}" for row in igos["heatmap"] for v in row)
        add((h, _p(FK.saliencyValues), T.string(values)))
    return g_iri, sorted(set(triples))


def iter_saliency_graphs(ctx: Context, *, graphs: bool = True) -> Iterator[tuple[str, str, int]]:
    """The run's SAG graphs (none without ``saliency/saliency.json``) as ``(graph IRI, text, count)``,
    one per image (the first record of an image wins when it was given twice)."""
    from ..saliency_io import read_saliency

    doc = read_saliency(ctx.data.run_dir)
    if not doc:
        return
    records = doc.get("images") or []
    related = _related(ctx, {str(r["sha256"]).lower() for r in records})
    seen: set[str] = set()
    for rec in records:
        sha = str(rec["sha256"]).lower()
        if sha in seen:
            continue
        seen.add(sha)
        g_iri, triples = saliency_graph_lines(ctx, rec, related.get(sha, []))
        end = f" {T.iri(g_iri)} .\n" if graphs else " .\n"
        yield g_iri, "".join(f"{s} {p} {o}{end}" for s, p, o in triples), len(triples)
