"""Feature-map clusters as RDF: each image variant's clusters once in its classification graph
(members, weight, rank, map file), their labels in each explanation graph, the class-level
aggregates in R/kg/clusters, all conforming to the shapes, and the export's bytes the same for any
number of processes.

The explanation pass that computes clusters is not needed: the records get a "clusters" key
and the run a ``clusters.json`` in the form the pass writes (docs: contract of issue 18).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from rdflib import RDF, Literal, URIRef
from rdflib.namespace import DCTERMS, VOID, XSD
from test_rdf_support import CLASSES, LAYERS, make_run, quads_rdflib, union, validate, wordnet

import filtag_kg.rdf.rundata as rundata
from filtag_kg.rdf import RunFolderError, RunGraphs, export_run
from filtag_kg.rdf.mint import segment
from filtag_kg.rdf.vocab import FK


def _partition(width: int, i: int) -> list[list[int]]:
    """Filters 0..width-1 in three groups that change with the image."""
    groups: list[list[int]] = [[], [], []]
    for f in range(width):
        groups[(f * (i + 1) + i) % 3].append(f)
    return [g for g in groups if g]


#: side of every layer's (square) maps in the atlases these tests write
SIDE = 8


def clusters_for(rec: dict[str, Any], layers: list[tuple[str, int]], classes: list[str], *,
                 maps: int = 2, atlas: bool = True) -> dict[str, list[dict[str, Any]]]:
    """A record's "clusters" (contract, section 1): every filter of each layer in one cluster,
    ranked by weight, the last one of weight 0 without labels or map; the top ``maps`` have maps:
    regions ``#xywh=`` of the variant's atlas (one row of ``maps`` SIDE x SIDE slots per layer),
    or with ``atlas=False`` one file per map, as runs before the atlas stored them."""
    i = int(rec["index"])
    out: dict[str, list[dict[str, Any]]] = {}
    p = rec.get("perturbation")
    variant = "clean" if not p else f"{p['kind']}-{p['param']}"
    for li, (layer, width) in enumerate(layers):
        groups = _partition(width, i)
        weights = [round(0.9 / (r + 1) + 0.01 * i, 6) for r in range(len(groups) - 1)] + [0.0]
        rows = []
        for r, (members, w) in enumerate(zip(groups, weights), 1):
            concepts = [] if w == 0 else [
                {"class_id": classes[(i + r) % len(classes)], "score": round(0.8 / r, 6)},
                {"class_id": classes[(i + r + 1) % len(classes)], "score": round(0.3 / r, 6)},
            ]
            if not (r <= maps and w):
                path = None
            elif atlas:
                region = f"xywh={(r - 1) * SIDE},{li * SIDE},{SIDE},{SIDE}"
                path = f"clusters/maps/{rec['sha256']}/{variant}.png#{region}"
            else:
                path = f"clusters/maps/{rec['sha256']}/{variant}/{layer}-{r}.png"
            rows.append({"rank": r, "filters": members, "weight": w, "map": path, "concepts": concepts})
        out[layer] = rows
    return out


def blob(seed: int) -> Any:
    """A SIDE x SIDE 8-bit grey map: a bright blob that moves with ``seed``."""
    import numpy as np

    y, x = np.mgrid[0:SIDE, 0:SIDE]
    cy, cx = 2 + seed % 4, 5 - seed % 4
    return (255 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 6.0)).astype("uint8")


def write_map(run: Path, ref: str, seed: int) -> None:
    """Put the map ``blob(seed)`` where ``ref`` names it: its region of an atlas (made all 0
    first, as big as the region needs), or a file of its own (``ref`` without a fragment)."""
    import numpy as np
    from PIL import Image

    rel, _, frag = ref.partition("#")
    path = run / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if not frag:
        Image.fromarray(blob(seed), "L").save(path)
        return
    x, y, w, h = (int(v) for v in frag.removeprefix("xywh=").split(","))
    atlas = np.asarray(Image.open(path)).copy() if path.exists() else np.zeros((0, 0), np.uint8)
    if atlas.shape[0] < y + h or atlas.shape[1] < x + w:
        grown = np.zeros((max(atlas.shape[0], y + h), max(atlas.shape[1], x + w)), np.uint8)
        grown[:atlas.shape[0], :atlas.shape[1]] = atlas
        atlas = grown
    atlas[y:y + h, x:x + w] = blob(seed)
    Image.fromarray(atlas, "L").save(path)


def aggregates_for(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``clusters.json`` (contract, section 2) computed from the records' clusters (top 2)."""
    acc: dict[tuple, dict[str, list[float]]] = defaultdict(dict)
    images: dict[tuple, set[int]] = defaultdict(set)
    for rec in records:
        if rec.get("perturbation") or rec.get("weighting"):
            continue
        p = rec.get("param")
        setting = (rec["method"], None if p in (None, "") else float(p) if "." in str(p) else int(p))
        for layer, rows in rec["clusters"].items():
            key = (setting, rec["model_top"][0]["class_id"], layer)
            images[key].add(rec["index"])
            seen: set[str] = set()
            for row in rows[:2]:
                for c in row["concepts"]:
                    got = acc[key].setdefault(c["class_id"], [0, 0.0])
                    if c["class_id"] not in seen:
                        got[0] += 1
                        seen.add(c["class_id"])
                    got[1] += row["weight"] * c["score"]
    classes = []
    for key in sorted(images, key=lambda k: (k[0][0], str(k[0][1]), k[1], k[2])):
        (method, param), cid, layer = key
        concepts = sorted(acc[key].items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
        classes.append({
            "setting": {"method": method, "param": param}, "class_id": cid, "layer": layer,
            "images": len(images[key]),
            "concepts": [{"class_id": c, "count": n, "weight": round(w, 6)} for c, (n, w) in concepts],
        })
    return {"format": "filtag-kg cluster aggregates", "format_version": 1, "top_clusters": 2,
            "classes": classes}


def add_clusters(run: Path, *, aggregates: bool = True, atlas: bool = True) -> list[dict[str, Any]]:
    """Give every explanation of ``run`` (``explanations.jsonl``) its clusters over the profile's
    layers, labelled with the run's classes, write their map files (atlases, or one file per
    map: ``atlas=False``) and ``clusters.json``."""
    profile = json.loads((run / "profile.json").read_text(encoding="utf-8"))
    layers = [(lr["name"], int(lr["width"])) for lr in profile["layers"]]
    classes = [c["id"] for c in profile["model_classes"]]
    path = run / "explanations.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    written: set[str] = set()
    for rec in records:
        rec["clusters"] = clusters_for(rec, layers, classes, atlas=atlas)
        for rows in rec["clusters"].values():
            for row in rows:
                if row["map"] and row["map"] not in written:
                    written.add(row["map"])
                    write_map(run, row["map"], row["rank"] + rec["index"])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    if aggregates:
        (run / "clusters.json").write_text(json.dumps(aggregates_for(records), indent=1), encoding="utf-8")
    return records


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], dict]:
    run = make_run(tmp_path_factory.mktemp("clusters") / "run", images=5)
    records = add_clusters(run)
    by_graph: dict = defaultdict(set)
    nq = export_run(run, fmt="nq", wordnet=wordnet())
    for s, p, o, g in quads_rdflib(nq, "nq"):
        by_graph[g].add((s, p, o))
    return run, records, by_graph


def _graph(by_graph: dict, suffix: str) -> Any:
    return next(g for g in by_graph if str(g).endswith(suffix))


def _explanation_graph(by_graph: dict, index: int) -> Any:
    return next(g for g in by_graph if f"/explanation/{index}/" in str(g))


def test_each_cluster_is_in_its_classification_graph_and_its_labels_in_the_explanation(
        clustered: tuple) -> None:
    run, records, by_graph = clustered
    tags = by_graph[_graph(by_graph, "/kg/tags")]
    filter_of = {}  # filter IRI -> (layer name, index), from the tag graph
    layer_name = {s: str(o) for s, p, o in tags if p == FK.layerName}
    index_of = {s: int(o) for s, p, o in tags if p == FK.filterIndex}
    for s, p, o in tags:
        if p == FK.inLayer:
            filter_of[s] = (layer_name[o], index_of[s])
    class_of = {s: str(o) for s, p, o in tags if p == FK.classId}  # the class ids a concept stands for
    for rec in records:
        g = by_graph[_explanation_graph(by_graph, rec["index"])]
        e = next(s for s, p, o in g if p == RDF.type and o == FK.ImageExplanation)
        c = next(o for s, p, o in g if p == FK.classification)
        cg = by_graph[c]  # the image's classification: the clusters, whatever the setting
        # the explanation graph holds no cluster, only labels
        assert not any(p in (FK.hasCluster, FK.memberFilter, FK.memberCount, FK.clusterWeight)
                       for s, p, o in g)
        clusters = {o for s, p, o in cg if s == c and p == FK.hasCluster}
        assert len(clusters) == sum(len(rows) for rows in rec["clusters"].values()) == len(
            {s for s, p, o in cg if p == RDF.type and o == FK.FeatureMapCluster})
        labels = {o for s, p, o in g if s == e and p == FK.hasClusterLabel}
        assert len(labels) == sum(len(row["concepts"]) for rows in rec["clusters"].values() for row in rows)
        for layer, rows in rec["clusters"].items():
            for row in rows:
                k = URIRef(f"{c}/cluster/{layer}/{row['rank']}")
                assert k in clusters
                assert {filter_of[o] for s, p, o in cg if s == k and p == FK.memberFilter} == {
                    (layer, f) for f in row["filters"]}
                assert (k, FK.memberCount, Literal(len(row["filters"]))) in cg
                assert (k, FK.rank, Literal(row["rank"])) in cg
                assert (k, FK.clusterWeight, Literal(float(row["weight"]), datatype=XSD.double)) in cg
                assert {str(o) for s, p, o in cg if s == k and p == FK.clusterLayer} == {
                    str(next(s for s, p, o in tags if p == FK.layerName and str(o) == layer))}
                mine = {x for x in labels if (x, FK.labelledCluster, k) in g}
                assert len(mine) == len(row["concepts"])
                assert all(str(x).startswith(f"{e}/cluster/{layer}/{row['rank']}/label/") for x in mine)
                for r, cc in enumerate(row["concepts"], 1):
                    lab = next(x for x in mine if (x, FK.rank, Literal(r)) in g)
                    concept = next(o for s, p, o in g if s == lab and p == FK.clusterConcept)
                    assert class_of[concept] == cc["class_id"]  # the synset the export mints
                    assert (lab, FK.clusterLabelScore, Literal(float(cc["score"]), datatype=XSD.double)) in g
                maps = [o for s, p, o in cg if s == k and p == FK.clusterMap]
                if row["map"] is None:
                    assert maps == []
                else:
                    # the map is described once per image variant, with its classification: the
                    # variant's atlas file and the cluster's region of it (layer row, rank column)
                    file, frag = row["map"].split("#")
                    li = list(rec["clusters"]).index(layer)
                    region = f"xywh={(row['rank'] - 1) * SIDE},{li * SIDE},{SIDE},{SIDE}"
                    assert frag == region
                    assert (maps[0], FK.filePath, Literal(file)) in cg
                    assert (maps[0], FK.mapRegion, Literal(region)) in cg
                    assert (maps[0], RDF.type, FK.ClusterMap) in cg
                    assert (maps[0], DCTERMS.format, Literal("image/png")) in cg
                    assert str(maps[0]).endswith(f"/file/{file}#{region}")  # R/file/{path}#xywh=…
                    assert (run / file).is_file()


def test_explanation_graphs_with_clusters_conform_and_broken_clusters_do_not(clustered: tuple) -> None:
    _, records, by_graph = clustered
    tags = by_graph[_graph(by_graph, "/kg/tags")]
    g_iri = _explanation_graph(by_graph, records[0]["index"])
    expl = by_graph[g_iri]
    c = next(o for s, p, o in expl if p == FK.classification)
    cls = by_graph[c]
    unit = expl | cls | tags
    conforms, report = validate(union({(*t, None) for t in unit}))
    assert conforms, report
    layer = LAYERS[0][0]
    k1, k2 = URIRef(f"{c}/cluster/{layer}/1"), URIRef(f"{c}/cluster/{layer}/2")
    member = next(o for s, p, o in cls if s == k2 and p == FK.memberFilter)
    label = next(s for s, p, o in expl if p == FK.labelledCluster and o == k1)
    count = next(o for s, p, o in cls if s == k1 and p == FK.memberCount)
    other = next(o for s, p, o in by_graph[_explanation_graph(by_graph, records[1]["index"])]
                 if p == FK.labelledCluster)  # a cluster of another image
    unlinked = _about(unit, label, FK.labelledCluster)
    maps = {o for s, p, o in cls if p == FK.clusterMap}
    assert maps and {str(m).split("#")[1] for m in maps} == {str(o) for s, p, o in cls if p == FK.mapRegion}
    broken = {
        "a filter in two clusters": unit | {(k1, FK.memberFilter, member)},
        "a member count that does not match": unit - {(k1, FK.memberCount, count)}
        | {(k1, FK.memberCount, Literal(int(count) + 1))},
        "a label without its concept": unit - _about(unit, label, FK.clusterConcept),
        "a label without its cluster": unit - unlinked,
        "a label of another image's cluster": unit - unlinked | {(label, FK.labelledCluster, other)}
        | {t for t in by_graph[URIRef(str(other).split("/cluster/")[0])] if t[0] == other},
        "a negative weight": {t for t in unit if not (t[0] == k1 and t[1] == FK.clusterWeight)}
        | {(k1, FK.clusterWeight, Literal(-1.0))},
        "a member of another layer": unit | {(k1, FK.memberFilter, next(
            o for s, p, o in cls if p == FK.memberFilter and f"/layer/{LAYERS[1][0]}/" in str(o)))},
        "a map region that is not a pixel rectangle": {t for t in unit if t[1] != FK.mapRegion}
        | {(m, FK.mapRegion, Literal("xywh=percent:0,0,50,50")) for m in maps},
        "a map with two regions": unit | {(m, FK.mapRegion, Literal("xywh=0,0,1,1")) for m in maps},
    }
    for what, triples in broken.items():
        assert not validate(union({(*t, None) for t in triples}))[0], what


def _about(triples: set, s: Any, p: Any) -> set:
    return {t for t in triples if t[0] == s and t[1] == p}


def _with_second_setting(run: Path) -> None:
    """Repeat every explanation of ``run`` under a second tagging setting (top-k 3), with other labels."""
    path = run / "explanations.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    more = []
    for rec in records:
        other = json.loads(json.dumps(rec))
        other["param"] = "3"
        for rows in other["clusters"].values():
            for row in rows:
                row["concepts"] = row["concepts"][:1]
        more.append(other)
    path.write_text("".join(json.dumps(r) + "\n" for r in records + more), encoding="utf-8")


def _count(text: str, prop: Any) -> int:
    return sum(1 for line in text.splitlines() if f" <{prop}> " in line)


def test_member_filters_are_stated_once_per_image_variant_whatever_the_settings(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=3)
    records = add_clusters(run, aggregates=False)
    one = export_run(run, fmt="nq", out=tmp_path / "one.nq", wordnet=wordnet()).read_text(encoding="utf-8")
    _with_second_setting(run)
    two = export_run(run, fmt="nq", out=tmp_path / "two.nq", wordnet=wordnet()).read_text(encoding="utf-8")
    members = sum(len(row["filters"]) for r in records for rows in r["clusters"].values() for row in rows)
    assert _count(one, FK.memberFilter) == _count(two, FK.memberFilter) == members > 0
    assert _count(one, FK.FeatureMapCluster) == _count(two, FK.FeatureMapCluster)
    assert _count(two, FK.ImageExplanation) == 2 * _count(one, FK.ImageExplanation)
    # the labels are per setting: the second setting's records have one label per labelled cluster
    labelled = sum(1 for r in records for rows in r["clusters"].values() for row in rows if row["concepts"])
    assert _count(two, FK.labelledCluster) == _count(one, FK.labelledCluster) + labelled


def test_a_rank_listed_twice_keeps_only_the_last_entry_and_its_labels(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=1)
    records = add_clusters(run, aggregates=False)
    rec = records[0]
    layer = LAYERS[0][0]
    first = rec["clusters"][layer][0]
    replaced = {**first, "concepts": [{"class_id": CLASSES[3][0], "score": 0.5}]}
    rec["clusters"][layer].append(replaced)  # rank 1 again, labelled by another concept
    (run / "explanations.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    out = export_run(run, fmt="nq", wordnet=wordnet())
    text = out.read_text(encoding="utf-8")
    labels = [line for line in text.splitlines()
              if f"/cluster/{layer}/1/label/" in line.split(" ", 1)[0] and f" <{FK.clusterConcept}> " in line]
    assert len(labels) == 1 and f"/label/{segment(CLASSES[3][0])}>" in labels[0]
    assert not any(f"/cluster/{layer}/1/label/{segment(c['class_id'])}>" in text
                   for c in first["concepts"])  # the replaced entry's labels are gone
    conforms, report = validate(union(quads_rdflib(out, "nq")))
    assert conforms, report


def test_the_aggregates_are_their_own_graph_and_conform_with_the_tag_graph(clustered: tuple) -> None:
    run, _, by_graph = clustered
    doc = json.loads((run / "clusters.json").read_text(encoding="utf-8"))
    g_iri = _graph(by_graph, "/kg/clusters")
    g = by_graph[g_iri]
    tags = by_graph[_graph(by_graph, "/kg/tags")]
    conforms, report = validate(union({(*t, None) for t in g | tags}))
    assert conforms, report
    aggregates = {s for s, p, o in g if p == RDF.type and o == FK.ClusterAggregate}
    assert len(aggregates) == len(doc["classes"]) > 0
    class_of = {s: str(o) for s, p, o in tags if p == FK.classId}  # the class ids a concept stands for
    settings = {s for s, p, o in tags if p == RDF.type and o == FK.TagSetting}
    for entry in doc["classes"]:
        a = next(x for x in aggregates if str(x).endswith(f"/{segment(entry['class_id'])}/{entry['layer']}"))
        assert (a, FK.imageCount, Literal(entry["images"])) in g
        assert (a, FK.topClusters, Literal(2)) in g
        assert class_of[next(o for s, p, o in g if s == a and p == FK.aggregatedClass)] == entry["class_id"]
        assert next(o for s, p, o in g if s == a and p == FK.setting) in settings  # the tags' setting IRI
        entries = {o for s, p, o in g if s == a and p == FK.hasAggregateConcept}
        assert len(entries) == len(entry["concepts"])
        for r, c in enumerate(entry["concepts"], 1):
            x = next(x for x in entries if (x, FK.rank, Literal(r)) in g)
            assert class_of[next(o for s, p, o in g if s == x and p == FK.aggregateConcept)] == c["class_id"]
            assert (x, FK.conceptCount, Literal(c["count"])) in g
            assert (x, FK.conceptWeight, Literal(float(c["weight"]), datatype=XSD.double)) in g
    # VoID lists the graph with its size, and counts it in the whole
    void = by_graph[_graph(by_graph, "/kg/void")]
    assert (g_iri, VOID.triples, Literal(len(g))) in void
    assert any(p == VOID.subset and o == g_iri for s, p, o in void)
    # a broken entry: a concept counted in more images than the aggregate has
    x = next(o for s, p, o in g if p == FK.hasAggregateConcept)
    bad = {t for t in g if not (t[0] == x and t[1] == FK.conceptCount)}
    bad.add((x, FK.conceptCount, Literal(10**6)))
    assert not validate(union({(*t, None) for t in bad | tags}))[0]


def test_each_graph_stays_sorted_and_jobs_give_the_same_bytes(clustered: tuple, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run = clustered[0]
    want = b"".join(text.encode("utf-8") for _, text, _ in RunGraphs(run, wordnet=wordnet()))
    by_graph: dict[str, list[str]] = defaultdict(list)
    for line in want.decode("utf-8").splitlines():
        by_graph[line.rsplit(" ", 2)[-2]].append(line)
    for g, lines in by_graph.items():
        assert lines == sorted(set(lines)), g  # unique and sorted within each graph, clusters included
    monkeypatch.setattr(rundata, "BATCH_ROWS", 2)
    one = export_run(run, fmt="nq", out=tmp_path / "kg1.nq", wordnet=wordnet(), jobs=1).read_bytes()
    two = export_run(run, fmt="nq", out=tmp_path / "kg2.nq", wordnet=wordnet(), jobs=2).read_bytes()
    assert one == two == want
    assert b"#FeatureMapCluster>" in one and b"/kg/clusters>" in one


def test_runs_without_clusters_get_no_cluster_triples(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=2)
    path = run / "explanations.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    path.write_text("".join(json.dumps({**r, "clusters": None}) + "\n" for r in records), encoding="utf-8")
    text = export_run(run, fmt="nq", wordnet=wordnet()).read_text(encoding="utf-8")
    assert "#FeatureMapCluster>" not in text and "/kg/clusters>" not in text and "#hasCluster>" not in text


def test_a_broken_clusters_file_is_a_one_line_error(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", images=2)
    records = add_clusters(run)
    assert records
    (run / "clusters.json").write_text('{"classes": [{"layer": "features.0"}]}', encoding="utf-8")
    with pytest.raises(RunFolderError, match="clusters.json: entry 1 of classes.*missing field 'setting'"):
        export_run(run, fmt="nq", wordnet=wordnet())
    (run / "clusters.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RunFolderError, match="clusters.json is not valid JSON"):
        export_run(run, fmt="nq", wordnet=wordnet())


def test_hostile_layer_class_and_file_names_give_valid_cluster_graphs(tmp_path: Path) -> None:
    from test_rdf_hostile import CLASSES as HOSTILE_CLASSES
    from test_rdf_hostile import LAYERS as HOSTILE_LAYERS
    from test_rdf_support import quads_oxigraph

    run = make_run(tmp_path / "run", images=3, layers=HOSTILE_LAYERS, classes=HOSTILE_CLASSES)
    records = add_clusters(run)
    one = export_run(run, fmt="nq", out=tmp_path / "one.nq", wordnet=wordnet(), jobs=1)
    two = export_run(run, fmt="nq", out=tmp_path / "two.nq", wordnet=wordnet(), jobs=2)
    assert one.read_bytes() == two.read_bytes()
    quads = quads_rdflib(one, "nq")
    assert quads == quads_oxigraph(one, "nq")  # both parsers read every IRI and literal alike
    g = union(quads)
    conforms, report = validate(g)
    assert conforms, report
    clusters = set(g.subjects(RDF.type, FK.FeatureMapCluster))
    assert len(clusters) == sum(len(rows) for r in records for rows in r["clusters"].values())
    labels = set(g.subjects(RDF.type, FK.ClusterLabel))  # one IRI per explanation, cluster and concept
    assert len(labels) == sum(len(row["concepts"]) for r in records for rows in r["clusters"].values()
                              for row in rows)
    assert {o for s, p, o in g.triples((None, FK.labelledCluster, None))} <= clusters
    paths = {str(o) for o in g.objects(None, FK.filePath)}
    written = {row["map"] for r in records for rows in r["clusters"].values() for row in rows} - {None}
    assert paths == {m.split("#")[0] for m in written}
    assert len(set(g.subjects(RDF.type, FK.ClusterMap))) == len(written)  # one IRI per map, no collision


def test_maps_stored_before_the_atlas_are_whole_files(tmp_path: Path) -> None:
    """Records of runs before the atlas name one PNG per map, without a region: the map node is
    the file (R/file/{path}), has no fk:mapRegion, and the graphs still conform."""
    run = make_run(tmp_path / "run", images=2)
    records = add_clusters(run, atlas=False)
    g = union(quads_rdflib(export_run(run, fmt="nq", wordnet=wordnet()), "nq"))
    conforms, report = validate(g)
    assert conforms, report
    written = {row["map"] for r in records for rows in r["clusters"].values() for row in rows} - {None}
    assert written and not any("#" in m for m in written)
    assert {str(o) for o in g.objects(None, FK.filePath)} == written
    nodes = set(g.subjects(RDF.type, FK.ClusterMap))
    assert {str(m).split("/file/", 1)[1] for m in nodes} == written
    assert not set(g.objects(None, FK.mapRegion))
