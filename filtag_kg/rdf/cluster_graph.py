"""The class-level cluster aggregates of a run (``RUN/clusters.json``) as the graph ``R/kg/clusters``.

An explanation pass with ``--clusters`` clusters each image's feature maps per layer (the
clusters themselves are in each image variant's classification graph, their labels in each
explanation graph, see :class:`~.explanation_graph.ExplanationEncoder`) and aggregates, per tagging setting,
predicted class and layer, the concepts that label the images' top-weighted clusters. Each
entry of ``clusters.json`` becomes, with ``A = R/cluster-aggregate/{setting}/{class}/{layer}``::

    A a fk:ClusterAggregate, eo:GlobalExplanation ; rdfs:label "…" ; fk:setting S ;
      fk:aggregatedClass C ; fk:clusterLayer L ; fk:imageCount 17 ; fk:topClusters 3 ;
      prov:wasGeneratedBy R/explanations ; fk:hasAggregateConcept A/concept/{class} … .
    A/concept/{class} a fk:AggregateConcept ; fk:aggregateConcept C1 ; fk:rank 1 ;
      fk:conceptCount 15 ; fk:conceptWeight 6.2 .

The graph names settings, layers and concepts that the tag graph describes, so it is built
before the tag graph (:class:`~.nquads.RunGraphs`) and validated together with it. A run
without ``clusters.json`` has no such graph.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import terms as T
from .errors import RunFolderError
from .tag_graph import LABEL, A, Context, Triple, _p, param_text
from .vocab import EO, FK, PROV

__all__ = ["CLUSTERS_FILE", "cluster_aggregate_triples", "iter_cluster_graphs", "read_cluster_aggregates"]

#: The aggregates' file in the run folder (written by the explanation pass with ``--clusters``).
CLUSTERS_FILE = "clusters.json"


def read_cluster_aggregates(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/clusters.json`` as a dict, or ``None`` when the run has none; the one reader of the
    export and the report, so both reject a malformed entry alike.

    Raises:
        RunFolderError: the file is not a JSON object with a ``classes`` list, or an entry lacks
            a field or has one of the wrong type (one line, naming the entry).
    """
    path = Path(run_dir) / CLUSTERS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"cannot read {path}: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RunFolderError(
            f"{path} is not valid JSON ({exc}); rerun `filtag-kg explain --clusters` to rewrite it"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list):
        raise RunFolderError(
            f"{path} has no list of classes; rerun `filtag-kg explain --clusters` to rewrite it"
        )
    for n, entry in enumerate(doc["classes"], 1):
        try:
            _check_entry(entry)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad_entry(path, n, exc) from None
    return doc


def _check_entry(entry: Any) -> None:
    """Read every field of one aggregate the export and the report use (raises on a bad one)."""
    setting = entry["setting"]
    str(setting["method"]), param_text(setting.get("param"))
    str(entry["class_id"]), str(entry["layer"]), int(entry["images"])
    for row in entry.get("concepts") or ():
        str(row["class_id"]), int(row["count"]), float(row["weight"])


def _bad_entry(path: Path, n: int, exc: Exception) -> RunFolderError:
    what = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
    return RunFolderError(
        f"{path}: entry {n} of classes is not a cluster aggregate ({what}); "
        "rerun `filtag-kg explain --clusters` to rewrite it"
    )


def cluster_aggregate_triples(ctx: Context, doc: dict[str, Any]) -> list[Triple]:
    """The triples of the aggregates ``doc`` (``clusters.json``), deduplicated and sorted.

    Raises:
        RunFolderError: an entry lacks a field or has one of the wrong type.
    """
    out: set[Triple] = set()
    add = out.add
    mint = ctx.mint
    explained = ctx.data.explanations_path is not None
    x = T.iri(ctx.explanation_run_iri)
    top = doc.get("top_clusters")
    for n, entry in enumerate(doc["classes"], 1):
        try:
            setting = entry["setting"]
            method, param = str(setting["method"]), param_text(setting.get("param"))
            cid, layer = str(entry["class_id"]), str(entry["layer"])
            a_iri = mint.cluster_aggregate(ctx.run_iri, method, param, cid, layer)
            a = T.iri(a_iri)
            add((a, A, _p(FK.ClusterAggregate)))
            add((a, A, _p(EO.GlobalExplanation)))
            add((a, LABEL, T.string(f"clusters of {layer} for images predicted as {cid}")))
            add((a, _p(FK.setting), ctx.setting(method, param)))
            add((a, _p(FK.aggregatedClass), ctx.concept(cid)))
            add((a, _p(FK.clusterLayer), T.iri(mint.layer(ctx.model_iri, layer))))
            ctx.filters.setdefault(layer, set())  # the tag graph describes the layer
            add((a, _p(FK.imageCount), T.integer(int(entry["images"]))))
            if isinstance(top, int) and not isinstance(top, bool):
                add((a, _p(FK.topClusters), T.integer(top)))
            if explained:
                add((a, _p(PROV.wasGeneratedBy), x))
            for r, row in enumerate(entry.get("concepts") or (), 1):
                ccid = str(row["class_id"])
                c = T.iri(mint.aggregate_concept(a_iri, ccid))
                add((a, _p(FK.hasAggregateConcept), c))
                add((c, A, _p(FK.AggregateConcept)))
                add((c, _p(FK.aggregateConcept), ctx.concept(ccid)))
                add((c, _p(FK.rank), T.integer(r)))
                add((c, _p(FK.conceptCount), T.integer(int(row["count"]))))
                w = T.double(row["weight"])
                if w:
                    add((c, _p(FK.conceptWeight), w))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad_entry(Path(ctx.data.run_dir) / CLUSTERS_FILE, n, exc) from None
    return sorted(out)


def iter_cluster_graphs(ctx: Context) -> Iterator[tuple[str, list[Triple]]]:
    """The aggregates' graph ``(name, triples)`` when the run has a ``clusters.json`` with entries."""
    doc = read_cluster_aggregates(ctx.data.run_dir)
    if doc:
        triples = cluster_aggregate_triples(ctx, doc)
        if triples:
            yield ctx.mint.clusters_graph(ctx.run_iri), triples
