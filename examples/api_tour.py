"""The Python API end to end: profile, tag, link to WordNet, explain, evaluate, export, query.

Runs offline on the demo's synthetic shapes (ten WordNet synsets) and the
small CNN trained on them, both cached by ``filtag-kg demo`` (this script
generates and trains them first if the cache has none: under a minute on two
cores). Every step is one public function, the same one the CLI command of
that name calls, so this file is a template for your own model and data:
swap the ``load_model`` and ``image_folder`` calls for yours.

    python examples/api_tour.py                  # writes ./api-tour/
    python examples/api_tour.py --out /tmp/tour --small   # a seconds-long check
"""

from __future__ import annotations

import argparse
from pathlib import Path

from filtag_kg import (
    ExplainOptions,
    ProfileOptions,
    TagSetting,
    evaluate_run,
    explain_dataset,
    image_folder,
    load_model,
    profile_dataset,
    read_explanations,
    write_tags,
)
from filtag_kg.models import ClassInfo
from filtag_kg.rdf import export_run
from filtag_kg.shapes import (
    SHAPE_CLASSES,
    SHAPES_OUTPUT_WNIDS,
    SHAPES_PREPROCESS,
    default_cache_dir,
    load_or_train_shapes_net,
)
from filtag_kg.sparql import query
from filtag_kg.wordnet import load_wordnet, write_abstractions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="api-tour", help="run folder to write (default: ./api-tour)")
    ap.add_argument("--cache", help="where the shapes data and weights are cached (default: the demo's)")
    ap.add_argument("--small", action="store_true", help="a tiny dataset and one epoch: a quick check")
    args = ap.parse_args()
    out = Path(args.out)

    # The model and its data. A model is a torchvision name, "module:factory", "file.py:factory"
    # or a TorchScript file; the class ids are WordNet ids, in the order of the model's outputs.
    sizes = {"train_per_class": 12, "heldout_per_class": 4, "epochs": 1} if args.small else {}
    _, _, data = load_or_train_shapes_net(args.cache or default_cache_dir(), progress=False, **sizes)
    labels = dict(SHAPE_CLASSES)
    classes = [ClassInfo(wnid, labels[wnid]) for wnid in SHAPES_OUTPUT_WNIDS]
    model = load_model("filtag_kg.shapes:build_shapes_net", weights_file=data.parent / "weights.pt",
                       preprocess=SHAPES_PREPROCESS, classes=classes)

    # Step 1: one batched pass over the images gives every filter's mean scaled activation per class.
    profile = profile_dataset(model, image_folder(data / "train", classes), out,
                              ProfileOptions(batch_size=64, progress=False, top_images=3))
    print(f"profiled {int(profile.counts.sum())} images over {len(profile.layers)} conv layers")

    # Step 2: tags, for as many settings as you like, from the profile alone (milliseconds).
    tags = write_tags(out, profile, [TagSetting("top-k", 1), TagSetting("top-k", 3)])
    last = profile.layers[-1].name
    print(f"top-k 1 tags of the last layer ({last}):")
    for t in sorted((t for t in tags if t.param == "1" and t.layer == last), key=lambda t: t.filter):
        print(f"  filter {t.filter:2}: {t.label} (class mean {t.score:.3f}, share {t.share:.2f})")

    # WordNet: each tag's synset, and the hypernyms that several tags of one filter share.
    wordnet = load_wordnet()
    report = write_abstractions(out, tags=tags, wordnet=wordnet)
    print(report.summary().splitlines()[0])

    # Step 3: explain held-out images by the tags of the filters each one activates.
    explain_dataset(out, image_folder(data / "heldout", classes),
                    ExplainOptions(settings=[TagSetting("top-k", 1)], batch_size=64, progress=False),
                    profile=profile, loaded=model)
    first = next(read_explanations(out))
    votes = ", ".join(f"{labels[c]} {n}" for c, n in first["vote_counts"].items())
    print(f"{Path(first['image']).name}: the model says {first['model_top'][0]['label']}; the tags of "
          f"its active filters vote {labels.get(first['prediction'])} ({votes})")
    for group in evaluate_run(out)["groups"]:  # also written to evaluation.json
        for scope in ("all_layers", "last_layer"):
            n, share = group[scope]["counts"]["fidelity"], group[scope]["fidelity"]
            print(f"fidelity of {group['method']} {group['param']} ({scope.replace('_', ' ')}): "
                  f"{share:.1%} ({n} of {group['images']} images)")

    # The knowledge graph, and a question to it through the query library.
    kg = export_run(out, wordnet=wordnet)
    answer = query(kg, "filters-for-concept", concept="polygon.n.01", setting="top-k 1", wordnet=wordnet)
    print(f"{kg.name}: {len(answer.rows)} filter(s) represent a polygon at top-k 1, e.g.:")
    for row in answer.dicts()[:5]:
        print(f"  {row['layer']} filter {row['filter']}: {row['matched']}")


if __name__ == "__main__":
    main()
