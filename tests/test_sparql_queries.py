"""Every query of the library on a small two-model export, against answers computed by hand
from the runs' files (tags.tsv, abstract_tags.tsv, hypernym_histogram.tsv, profile.json,
explanations.jsonl) and the WordNet API; and the same answers from the store, from the
files and through rdflib."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
from test_rdf_support import wordnet
from test_sparql_support import (
    ROOTS,
    SPEC_A,
    SPEC_B,
    ancestors_or_self,
    explanations,
    is_wnid,
    kg,
    pref_label,
    profile,
    setting_label,
    split_list,
    tags,
    tsv,
)

from filtag_kg import sparql
from filtag_kg.rdf import DEFAULT_BASE_IRI, Minter

DOG = "n02084071"


def r12(x: Any) -> float:
    """A double compared to 12 decimals (engines may print doubles in another form)."""
    return round(float(x), 12)


@pytest.fixture(scope="module")
def store() -> sparql.Source:
    return sparql.open_source(store=kg().store)


def q(source: Any, name: str, **params: Any) -> list[dict[str, Any]]:
    return sparql.query(source, name, wordnet=wordnet(), **params).dicts()


def all_tags() -> list[tuple[str, dict[str, str]]]:
    return [(SPEC_A, t) for t in tags(kg().run_a)] + [(SPEC_B, t) for t in tags(kg().run_b)]


# -- filters-for-concept -------------------------------------------------------------------


def expected_filters_for(concept: str, **only: str) -> dict[tuple, tuple]:
    """(model, layer, filter, setting) -> (tags, best score, matched labels), from tags.tsv."""
    name = wordnet().synset(concept).name
    groups: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for spec, t in all_tags():
        if name not in ancestors_or_self(t["class_id"]):
            continue
        key = (spec, t["layer"], int(t["filter"]), setting_label(t))
        if any(v != dict(zip(("model", "layer", "filter", "setting"), key))[k] for k, v in only.items()):
            continue
        groups[key].append(t)
    return {
        k: (
            len(rows),
            max(float(r["score"]) for r in rows),
            frozenset(pref_label(r["class_id"], r["label"]) for r in rows),
        )
        for k, rows in groups.items()
    }


def got_filters(rows: list[dict[str, Any]]) -> dict[tuple, tuple]:
    return {
        (r["model"], r["layer"], r["filter"], r["setting"]): (r["tags"], r["best"], split_list(r["matched"]))
        for r in rows
    }


def test_filters_for_dog_count_every_breed(store: sparql.Source) -> None:
    rows = q(store, "filters-for-concept", concept="dog.n.01")
    want = expected_filters_for(DOG)
    assert {r["concept"] for r in rows} == {DOG}
    assert got_filters(rows) == want
    # both models, and filters tagged with several breeds
    assert {k[0] for k in want} == {SPEC_A, SPEC_B} and max(v[0] for v in want.values()) >= 2
    # most selective first: the share of the filter's tags (under the setting) that fall under dog
    all_of: Counter = Counter(
        (spec, t["layer"], int(t["filter"]), setting_label(t)) for spec, t in all_tags()
    )
    for r in rows:
        key = (r["model"], r["layer"], r["filter"], r["setting"])
        assert r["filterTags"] == all_of[key]
        assert float(r["selectivity"]) == pytest.approx(r["tags"] / all_of[key])
    got = [float(r["selectivity"]) for r in rows]
    assert got == sorted(got, reverse=True) and min(got) < 1.0
    # the resources themselves, not just their names: filter, layer, model and the tagging run
    m = Minter(DEFAULT_BASE_IRI)
    for r in rows[:5]:
        spec = r["model"]
        weights = profile(kg().run_a if spec == SPEC_A else kg().run_b)["model"]["weights_sha256"]
        model_iri = m.model(spec, weights)
        assert (r["modelIri"], r["layerIri"], r["filterIri"]) == (
            model_iri, m.layer(model_iri, r["layer"]), m.filter(model_iri, r["layer"], r["filter"])
        )
        assert "/run/" in r["run"]


def test_filters_for_concept_accepts_wnid_name_and_lemma(store: sparql.Source) -> None:
    by_name = got_filters(q(store, "filters-for-concept", concept="toy_dog.n.01"))
    assert by_name == expected_filters_for("n02085374")
    assert got_filters(q(store, "filters-for-concept", concept="n02085374")) == by_name
    assert got_filters(q(store, "filters-for-concept", concept="02085374-n")) == by_name
    assert (
        got_filters(q(store, "filters-for-concept", concept="toy dog")) == by_name
    )  # a lemma with one sense


def test_filters_for_concept_optional_filters(store: sparql.Source) -> None:
    rows = q(store, "filters-for-concept", concept=DOG, model=SPEC_A, layer="features.28", setting="top-k 2")
    assert got_filters(rows) == expected_filters_for(
        DOG, model=SPEC_A, layer="features.28", setting="top-k 2"
    )
    assert rows and all(r["layer"] == "features.28" and r["model"] == SPEC_A for r in rows)
    assert q(store, "filters-for-concept", concept=DOG, setting="top-k 3") == []
    # a concept with no tags below it: no rows (a violin is no dog, a dog no violin)
    assert got_filters(q(store, "filters-for-concept", concept="violin.n.01")) == expected_filters_for(
        "n04536866"
    )


# -- concepts-of-filter --------------------------------------------------------------------


def test_concepts_of_filter_tags_and_abstract_tags(store: sparql.Source) -> None:
    run = kg().run_a
    abstract = tsv(run / "abstract_tags.tsv")
    a = abstract[0]
    layer, index = a["layer"], int(a["filter"])
    rows = q(store, "concepts-of-filter", layer=layer, filter=index, model=SPEC_A)
    got_tags = {
        (r["label"], r["score"], r["rank"], r["share"], r.get("wnid")) for r in rows if r["kind"] == "tag"
    }
    want_tags = {
        (
            pref_label(t["class_id"], t["label"]),
            float(t["score"]),
            int(t["rank"]),
            float(t["share"]),
            t["class_id"] if is_wnid(t["class_id"]) else None,
        )
        for t in tags(run)
        if t["layer"] == layer and int(t["filter"]) == index
    }
    assert got_tags == want_tags
    got_abstract = {(r["wnid"], r["cover"], r["linked"]) for r in rows if r["kind"] == "abstract"}
    want_abstract = {
        (x["wnid"], int(x["cover"]), int(x["linked_tags"]))
        for x in abstract
        if x["layer"] == layer and int(x["filter"]) == index
    }
    assert got_abstract == want_abstract and want_abstract
    assert {r["setting"] for r in rows} == {"top-k 2"} and {r["model"] for r in rows} == {SPEC_A}
    # tags come before abstract tags
    kinds = [r["kind"] for r in rows]
    assert kinds == sorted(kinds, reverse=True)


def test_concepts_of_filter_of_both_models_sharing_a_layer_name(store: sparql.Source) -> None:
    rows = q(store, "concepts-of-filter", layer="layer1.0.conv1", filter=0)
    want = {
        (pref_label(t["class_id"], t["label"]), float(t["score"]))
        for t in tags(kg().run_b)
        if t["layer"] == "layer1.0.conv1" and t["filter"] == "0"
    }
    assert {(r["label"], r["score"]) for r in rows if r["kind"] == "tag"} == want


# -- explain-image -------------------------------------------------------------------------


def concept_key(class_id: str, label: str | None = None) -> tuple[str | None, str]:
    return (class_id if is_wnid(class_id) else None, pref_label(class_id, label or class_id))


def test_explain_image_parts(store: sparql.Source) -> None:
    rec = explanations(kg().run_a)[4]
    rows = q(store, "explain-image", image=rec["image"])
    labels = {c: lab for c, lab in ((t["class_id"], t["label"]) for t in tags(kg().run_a))}
    parts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        parts[r["part"]].append(r)
    assert {r["image"] for r in rows} == {rec["image"]} and {r["setting"] for r in rows} == {"top-k 2"}
    assert {r["variant"] for r in rows} == {"original"}

    def key(r: dict[str, Any]) -> tuple[str | None, str]:
        return (r.get("wnid"), r["label"])

    assert [key(r) for r in parts["truth"]] == [concept_key(rec["true_class"], labels.get(rec["true_class"]))]
    assert [(r["rank"], key(r), r["value"]) for r in parts["model"]] == [
        (i, concept_key(p["class_id"], p["label"]), pytest.approx(p["prob"]))
        for i, p in enumerate(rec["model_top"], 1)
    ]
    assert [key(r) for r in parts["explanation"]] == [
        concept_key(rec["prediction"], labels.get(rec["prediction"]))
    ]
    last = rec["prediction_last_layer"]
    assert [key(r) for r in parts["last layer"]] == [concept_key(last, labels.get(last))]
    assert {(r["layer"], r["filter"], r["rank"], r12(r["value"])) for r in parts["active filter"]} == {
        (layer, a["filter"], a["rank"], r12(a["value"]))
        for layer, active in rec["active_filters"].items()
        for a in active
    }
    assert {key(r): (r12(r["value"]), r["count"]) for r in parts["vote"]} == {
        concept_key(c, labels.get(c)): (r12(rec["votes"][c]), rec["vote_counts"][c]) for c in rec["votes"]
    }
    # in order: truth, model, explanation, last layer, active filters by layer, votes
    order = ["truth", "model", "explanation", "last layer", "active filter", "vote"]
    assert [r["part"] for r in rows] == sorted((r["part"] for r in rows), key=order.index)
    layers = [r["layer"] for r in parts["active filter"]]
    assert layers == sorted(layers, key=["features.0", "features.28"].index)


def test_explain_image_of_an_unknown_image_is_empty(store: sparql.Source) -> None:
    assert q(store, "explain-image", image="no such image.png") == []


def test_explain_image_names_perturbation_and_weighting(tmp_path: Any) -> None:
    from test_rdf_support import make_run

    from filtag_kg.rdf import export_run

    run = make_run(
        tmp_path / "p",
        images=3,
        abstract=False,
        weighting="gradcam",
        perturbation={"kind": "gaussian", "param": 0.1, "seed": 7},
    )
    path = export_run(run, fmt="nq", wordnet=wordnet())
    rows = q(path, "explain-image", image=explanations(run)[1]["image"])
    assert {r["variant"] for r in rows} == {"gaussian 0.1, gradcam weights"}
    rec = explanations(run)[1]
    assert all(
        "weight" in a for acts in rec["active_filters"].values() for a in acts
    )  # votes are weighted sums
    votes = {r["label"]: r12(r["value"]) for r in rows if r["part"] == "vote"}
    labels = {t["class_id"]: t["label"] for t in tags(run)}
    assert votes == {pref_label(c, labels.get(c, c)): r12(v) for c, v in rec["votes"].items()}


# -- layer-concept-histogram ---------------------------------------------------------------


def test_layer_histogram_matches_hypernym_histogram_tsv(store: sparql.Source) -> None:
    rows = q(store, "layer-concept-histogram")
    got = {(r["model"], r["layer"], r["setting"], r["category"]): (r["tags"], r["filters"]) for r in rows}
    want = {}
    for spec, run in ((SPEC_A, kg().run_a), (SPEC_B, kg().run_b)):
        for h in tsv(run / "hypernym_histogram.tsv"):
            if int(h["tags"]):
                want[(spec, h["layer"], setting_label(h), h["bucket"])] = (int(h["tags"]), int(h["filters"]))
    assert got == want
    assert {"animal.n.01", "artifact.n.01", "(unlinked)"} <= {k[3] for k in want}
    # layers in network order, roots in their order
    a = [(r["layer"], r["category"]) for r in rows if r["model"] == SPEC_A]
    assert [x[0] for x in a] == sorted((x[0] for x in a), key=["features.0", "features.28"].index)
    assert [c for layer, c in a if layer == "features.0"] == ["animal.n.01", "artifact.n.01", "(unlinked)"]
    assert {r["lemma"] for r in rows if r["category"] == "animal.n.01"} == {"animal"}


def test_layer_histogram_for_one_layer(store: sparql.Source) -> None:
    rows = q(store, "layer-concept-histogram", model=SPEC_B, layer="layer4.1.conv2")
    assert rows and {(r["model"], r["layer"]) for r in rows} == {(SPEC_B, "layer4.1.conv2")}


# -- polysemantic-filters ------------------------------------------------------------------


def test_polysemantic_filters(store: sparql.Source) -> None:
    groups: dict[tuple, list[str]] = defaultdict(list)
    for spec, t in all_tags():
        groups[(spec, t["layer"], int(t["filter"]), setting_label(t))].append(t["class_id"])
    want = {}
    for key, classes in groups.items():
        cats = {ROOTS[n] for c in classes for n in ancestors_or_self(c) if n in ROOTS}
        concepts = {c for c in classes if any(n in ROOTS for n in ancestors_or_self(c))}
        if len(cats) >= 2:
            want[key] = (len(cats), len(concepts), frozenset(cats))
    rows = q(store, "polysemantic-filters")
    got = {
        (r["model"], r["layer"], r["filter"], r["setting"]): (
            r["categories"],
            r["concepts"],
            split_list(r["under"]),
        )
        for r in rows
    }
    assert got == want and want
    assert all(split_list(r["under"]) == {"animal", "artifact"} for r in rows)
    one = q(store, "polysemantic-filters", model=SPEC_A, layer="features.28")
    assert {r["filter"] for r in one} == {k[2] for k in want if k[:2] == (SPEC_A, "features.28")}


# -- untagged-filters ----------------------------------------------------------------------


def test_untagged_filters(store: sparql.Source) -> None:
    want = set()
    for spec, run in ((SPEC_A, kg().run_a), (SPEC_B, kg().run_b)):
        tagged = {(t["layer"], int(t["filter"]), setting_label(t)) for t in tags(run)}
        settings = {setting_label(t) for t in tags(run)}
        for layer in profile(run)["layers"]:
            for i in range(layer["width"]):
                for s in settings:
                    if (layer["name"], i, s) not in tagged:
                        want.add((spec, layer["name"], i, s))
    rows = q(store, "untagged-filters")
    assert {(r["model"], r["layer"], r["filter"], r["setting"]) for r in rows} == want and want
    assert len(rows) == len(want)
    assert q(store, "untagged-filters", setting="top-k 5") == []


# -- misexplained-images -------------------------------------------------------------------


def test_misexplained_images(store: sparql.Source) -> None:
    recs = explanations(kg().run_a)
    want = {
        (r["image"], r["model_top"][0]["class_id"], r["prediction"])
        for r in recs
        if r["model_top"][0]["class_id"] != r["prediction"]
    }
    rows = q(store, "misexplained-images")
    got = {
        (r["image"], r.get("modelTop") or r["modelTopLabel"], r.get("predicted") or r["predictedLabel"])
        for r in rows
    }
    assert got == want and 0 < len(want) < len(recs)
    assert {r["model"] for r in rows} == {SPEC_A} and len(rows) == len(want)
    truth = {r["image"]: r["true_class"] for r in recs}
    labels = {t["class_id"]: t["label"] for t in tags(kg().run_a)}
    assert all(r["truth"] == pref_label(truth[r["image"]], labels[truth[r["image"]]]) for r in rows)
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)  # image order
    assert q(store, "misexplained-images", model=SPEC_B) == []


# -- shared-concepts -----------------------------------------------------------------------


def test_shared_concepts_between_two_models(store: sparql.Source) -> None:
    where: dict[tuple[str, str], dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for spec, t in all_tags():
        if is_wnid(t["class_id"]):
            where[(spec, t["layer"])][t["class_id"]].add(int(t["filter"]))
    want = {}
    for (s1, l1), c1 in where.items():
        for (s2, l2), c2 in where.items():
            if (s1, s2) != (SPEC_A, SPEC_B):
                continue
            for c in c1.keys() & c2.keys():
                want[(c, l1, l2)] = (
                    len(c1[c]),
                    frozenset(map(str, c1[c])),
                    len(c2[c]),
                    frozenset(map(str, c2[c])),
                )
    rows = q(store, "shared-concepts", model1=SPEC_A, model2=SPEC_B)
    got = {
        (r["wnid"], r["layer1"], r["layer2"]): (
            r["filters1"],
            split_list(r["where1"]),
            r["filters2"],
            split_list(r["where2"]),
        )
        for r in rows
    }
    assert got == want and want
    assert {(r["model1"], r["model2"]) for r in rows} == {(SPEC_A, SPEC_B)}


def test_shared_concepts_between_two_layers_of_one_model(store: sparql.Source) -> None:
    rows = q(
        store, "shared-concepts", model1=SPEC_A, layer1="features.0", model2=SPEC_A, layer2="features.28"
    )
    by_layer: dict[str, set[str]] = defaultdict(set)
    for t in tags(kg().run_a):
        if is_wnid(t["class_id"]):
            by_layer[t["layer"]].add(t["class_id"])
    assert {r["wnid"] for r in rows} == by_layer["features.0"] & by_layer["features.28"]
    assert (
        q(store, "shared-concepts", model1=SPEC_A, layer1="features.0", model2=SPEC_A, layer2="features.0")
        == []
    )


# -- the same answers everywhere -----------------------------------------------------------

#: One call per library query (the test below checks every query is here).
CALLS = [
    ("filters-for-concept", {"concept": DOG}),
    ("concepts-of-filter", {"layer": "features.0", "filter": 3}),
    ("explain-image", {"image": "img 000004.jpg"}),
    ("layer-concept-histogram", {}),
    ("polysemantic-filters", {}),
    ("untagged-filters", {}),
    ("misexplained-images", {}),
    ("shared-concepts", {"model1": SPEC_A, "model2": SPEC_B}),
    ("images-for-concept", {"concept": DOG}),
    ("label-disagreements", {}),
    ("multiple-explanations", {}),
]
LIST_COLUMNS = {"matched", "under", "tagged", "where1", "where2"}


def canonical(result: sparql.Result) -> Counter:
    """Rows as comparable values: numbers by value, GROUP_CONCAT lists as sets."""
    out: Counter = Counter()
    for row in result.values():
        out[
            tuple(
                split_list(v) if c in LIST_COLUMNS else (round(v, 9) if isinstance(v, float) else v)
                for c, v in zip(result.columns, row)
            )
        ] += 1
    return out


def test_every_library_query_is_checked_here() -> None:
    assert {name for name, _ in CALLS} == {i.name for i in sparql.list_queries()}


@pytest.mark.parametrize(("name", "params"), CALLS, ids=[c[0] for c in CALLS])
def test_store_files_and_rdflib_agree(store: sparql.Source, name: str, params: dict[str, Any]) -> None:
    import rdflib

    ref = sparql.query(store, name, wordnet=wordnet(), **params)
    assert len(ref) > 0
    files = sparql.open_source(graphs=[kg().trig_a, kg().nq_b])
    ds = rdflib.Dataset(default_union=True)
    for path, fmt in ((kg().nq_a, "nquads"), (kg().nq_b, "nquads")):
        ds.parse(str(path), format=fmt)
    copied = sparql.rdflib_dataset(store)  # rdflib's own engine on a copy (or Oxigraph through oxrdflib)
    for other in (files, ds, copied):
        got = sparql.query(other, name, wordnet=wordnet(), **params)
        assert got.columns == ref.columns
        assert canonical(got) == canonical(ref)


def test_a_merged_turtle_export_gives_the_tag_answers_of_its_run() -> None:
    turtle = sparql.open_source(graphs=[kg().ttl_a])
    quads = sparql.open_source(graphs=[kg().nq_a])
    for name, params in CALLS[:6]:
        assert canonical(sparql.query(turtle, name, wordnet=wordnet(), **params)) == canonical(
            sparql.query(quads, name, wordnet=wordnet(), **params)
        ), name


@pytest.fixture(scope="module")
def plain_store() -> Any:
    """Both exports in an Oxigraph store, queried without the library's dataset settings."""
    import pyoxigraph as ox

    st = ox.Store()
    for path in (kg().nq_a, kg().nq_b):
        st.load(path=str(path), format=ox.RdfFormat.N_QUADS)
    return st


@pytest.mark.parametrize(("name", "params"), CALLS, ids=[c[0] for c in CALLS])
def test_each_query_answers_alike_with_and_without_a_union_default_graph(
    plain_store: Any, name: str, params: dict[str, Any]
) -> None:
    """The query text as a user pastes it into any store: Jena TDB and the SPARQL default have
    an empty default graph, Oxigraph and Fuseki may make it the union of the named graphs."""
    import pyoxigraph as ox

    from filtag_kg.sparql.params import bind_params
    from filtag_kg.sparql.store import _ox_term

    info = sparql.find_query(name)
    subs = {ox.Variable(k): _ox_term(v) for k, v in bind_params(info, params, wordnet=wordnet()).items()}
    got = {}
    for union in (False, True):
        res = plain_store.query(info.text, substitutions=subs or None, use_default_graph_as_union=union)
        got[union] = Counter(tuple(None if t is None else t.value for t in row) for row in res)
    assert got[False] == got[True]
    assert sum(got[False].values()) == len(sparql.query(plain_store, name, wordnet=wordnet(), **params)) > 0


# -- restricted OPTIONALs give the rows of plain ones --------------------------------------


def _plain_optionals(text: str) -> str:
    """The library text with each OPTIONAL reduced to its last triple pattern read from the
    bound tag (``OPTIONAL { ?t fk:score ?score }``): the plain form, whose rows the
    library's form (which repeats the path to the tag, so that an engine reading the
    OPTIONAL on its own stays within the parameter's tags) must give exactly."""
    import re

    def plain(m: re.Match[str]) -> str:
        inner = m.group(1)
        last = inner.rstrip().rstrip(".").rsplit(".", 1)[-1]
        subject = last.split()[0]
        pred_obj = last.split(";")[-1].split()
        if not pred_obj[0].startswith("?") and len(pred_obj) == 2:  # "?tag fk:p ?c ; fk:score ?score"
            return f"OPTIONAL {{ {subject} {pred_obj[0]} {pred_obj[1]} }}"
        return f"OPTIONAL {{ {last.strip()} }}"

    return re.sub(r"OPTIONAL \{((?:[^{}])*)\}", plain, text)


def test_restricted_optionals_give_the_rows_of_plain_ones() -> None:
    """concepts-of-filter and filters-for-concept read their optional values (score, rank,
    share, cover, linked, wnid) through OPTIONALs that repeat the path from the parameters
    (fast on Oxigraph); on a store where some tags lack them, the rows equal those of the
    plain one-triple OPTIONALs, on Oxigraph and on rdflib."""
    import pyoxigraph as ox
    import rdflib

    src = sparql.open_source(store=kg().store)
    fk = "https://w3id.org/filtag-kg/ontology#"
    mem = ox.Store()
    dropped = Counter()
    for i, quad in enumerate(src.backend):
        p = quad.predicate.value
        # every third score, rank and share, and the wnid of every fifth concept, are missing
        if p in (fk + "score", fk + "rank", fk + "share", fk + "linkedTagCount") and i % 3 == 0:
            dropped[p] += 1
            continue
        if p == fk + "wnid" and i % 5 == 0 and quad.object.value not in (DOG, "n02085620"):
            dropped[p] += 1
            continue
        mem.add(quad)
    assert all(dropped[fk + p] for p in ("score", "rank", "share", "wnid"))
    holed = sparql.Source(mem)
    ds = rdflib.Dataset(default_union=True)
    ds.parse(data=mem.dump(format=ox.RdfFormat.N_QUADS).decode(), format="nquads")
    for name, calls in (
        ("concepts-of-filter", [{"layer": "features.0", "filter": 3}, {"layer": "features.28", "filter": 1},
                                {"layer": "layer1.0.conv1", "filter": 0}]),
        ("filters-for-concept", [{"concept": DOG}, {"concept": "n02085620"}, {"concept": "entity.n.01"}]),
    ):
        info = sparql.find_query(name)
        plain = sparql.QueryInfo(**{**info.__dict__, "text": _plain_optionals(info.text)})
        assert plain.text != info.text and plain.text.count("OPTIONAL") == info.text.count("OPTIONAL")
        for params in calls:
            for source in (holed, ds):
                got = sparql.query(source, info, wordnet=wordnet(), **params)
                want = sparql.query(source, plain, wordnet=wordnet(), **params)
                assert len(got) > 0 and got.columns == want.columns
                assert canonical(got) == canonical(want), (name, params)
                # and in the same order
                assert [r[:5] for r in got.values()] == [r[:5] for r in want.values()]
