"""The ``filtag-kg`` command line: argument parsing and printing only.

Every command calls the library function of the same idea; user mistakes
arrive as :class:`~filtag_kg.errors.FiltagError` and are printed as one line
with exit code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import FiltagError, check_whole

DEFAULT_BASE_IRI = "http://localhost:8000/filtag-kg/"  # the same as filtag_kg.rdf's (tested)

EXAMPLES_RUN = """\
examples:
  filtag-kg run --model vgg16 --weights DEFAULT --data ~/imagenet/train --k 1 --k 3 \\
      --percent 1 --above-average --out runs/vgg16 --device cuda --batch-size 128 --amp bf16
  filtag-kg run --model resnet50 --weights-file resnet50.pth --data imgs --layers 'layer4.*' --out runs/r50
  filtag-kg run --model mypkg.nets:build --data imgs --image-size 64 --out runs/mine
After a crash, rerun the same command with --resume.
"""


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", required=True, metavar="SPEC",
        help="a torchvision classification model name (vgg16, resnet50, ...), "
        "package.module:factory or path/to/file.py:factory (a callable returning an nn.Module), "
        "or a TorchScript file",
    )
    w = g.add_mutually_exclusive_group()
    w.add_argument("--weights", metavar="ENUM",
                   help="torchvision weights, e.g. DEFAULT or IMAGENET1K_V1 (downloads once)")
    w.add_argument("--weights-file", metavar="PATH",
                   help="a state-dict file to load into the model (keys must fit exactly)")
    g.add_argument("--classes", metavar="FILE",
                   help="the model's output classes in index order, one per line: wnid, "
                   "'wnid<TAB>label' or label (default: from the weights or the data folders)")
    g.add_argument("--num-classes", type=int, metavar="N",
                   help="output size of a torchvision architecture without enum weights")
    g.add_argument("--image-size", type=int, metavar="N",
                   help="center-crop size (default: the weights' own, else 224; resize scales "
                   "as 256/224)")


def _data_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data (one of)")
    d = g.add_mutually_exclusive_group(required=required)
    d.add_argument("--data", metavar="DIR",
                   help="ImageFolder layout: DIR/CLASS/IMAGE, CLASS a wnid (n02085620) or label")
    d.add_argument("--file-list", metavar="FILE",
                   help="one 'PATH<TAB>CLASS' per line (relative paths: to the list's folder)")
    g.add_argument("--max-pixels", type=int, default=100_000_000, metavar="N",
                   help="skip (and list) images of more than N pixels instead of decoding them "
                   "(default 100000000; 0: no cap)")


def _profile_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("profile pass")
    g.add_argument("--layers", nargs="+", metavar="PATTERN",
                   help="conv layers by module path or glob (features.28, 'layer4.*'); "
                   "default: every Conv2d. See `filtag-kg layers MODEL`")
    g.add_argument("--measure", choices=["activation", "conv"], default="activation",
                   help="measure after the nonlinearity following each conv (default, as the "
                   "method says) or at the conv output")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--batch-size", type=int, default=32, metavar="N", help="default 32")
    g.add_argument("--workers", type=int, metavar="N",
                   help="image decoding processes (default: 0 for small data, else up to 8)")
    g.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                   help="autocast the forward pass (reductions stay in float32 or better)")
    g.add_argument("--checkpoint-every", type=int, default=200, metavar="N",
                   help="save resumable state every N batches (default 200; 0: never)")
    g.add_argument("--top-images", type=int, default=0, metavar="N",
                   help="also keep, per filter, the N images that activate it most (no extra pass)")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--resume", action="store_true",
                   help="finish an interrupted pass from its checkpoint")
    r.add_argument("--restart", action="store_true",
                   help="discard an interrupted pass's checkpoint and start over")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a different run already in the output folder, removing its "
                   "profile, tags, explanations, evaluation, report and kg.* (without it: refused)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _tag_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tagging (repeatable; default --k 1)")
    g.add_argument("--k", type=int, action="append", default=[], metavar="K",
                   help="top-k: tag each class's K most active filters per layer")
    g.add_argument("--percent", type=float, action="append", default=[], metavar="Q",
                   help="top-percent: the round(Q/100 * width) most active filters (0 < Q <= 100)")
    g.add_argument("--above-average", action="store_true",
                   help="filters strictly above the layer's mean value")


def _wordnet_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("WordNet linking")
    g.add_argument("--wordnet-dir", metavar="DIR",
                   help="a WordNet 3.0 database folder to use (default: nltk's corpus, $WNHOME, "
                   "/usr/share/wordnet, else the bundled ImageNet slice)")
    g.add_argument("--synset-map", metavar="FILE",
                   help="label -> wnid or synset name, for classes named by label (TSV or JSON)")
    g.add_argument("--first-sense", action="store_true",
                   help="resolve an ambiguous label to its first WordNet sense instead of "
                   "reporting it")


def _abstract(args: argparse.Namespace, run_dir: str, tags: Any = None, *, roots: Any = None,
              depth: int | None = None, min_cover: int = 2, closed: bool = False) -> Any:
    from .wordnet import load_wordnet, write_abstractions

    return write_abstractions(
        run_dir, tags=tags, wordnet=load_wordnet(wordnet_dir=args.wordnet_dir),
        synset_map=args.synset_map, first_sense=args.first_sense, min_cover=min_cover,
        closed=closed, depth=depth, roots=roots,
    )


def _explain_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("explanations")
    g.add_argument("--perturb", action="append", default=[], metavar="KIND:VALUE",
                   help="also explain perturbed copies: gaussian:SIGMA, salt-and-pepper:P, blur:SIGMA "
                   "(pixel values in [0, 1]; repeatable)")
    g.add_argument("--seed", type=int, default=0, help="seed of the perturbations (default 0)")
    g.add_argument("--weighting", choices=["gradcam"],
                   help="weight each active filter's votes by its gradient-based contribution to the "
                   "model's predicted class")
    g.add_argument("--jsonl", action="store_true",
                   help="write explanations.jsonl (one JSON object per image and setting) instead of "
                   "the compact columnar explanations.parquet folder")
    g.add_argument("--clusters", action="store_true",
                   help="also cluster each layer's feature maps per image, weight the clusters by a "
                   "generalised Grad-CAM and label them by tags (docs/cluster-method.md); writes "
                   "RUN_DIR/clusters/maps/ and RUN_DIR/clusters.json")
    g.add_argument("--cluster-threshold", default="0.5", metavar="T",
                   help="with --clusters: cosine similarity in (0, 1] a map needs to join a more "
                   "important one (default 0.5; higher: more, smaller clusters)")
    g.add_argument("--cluster-maps", default="3", metavar="N",
                   help="with --clusters: PNG maps for the N top clusters of each layer (default 3)")
    g.add_argument("--value-bits", type=int, metavar="K",
                   help="store active filters' values rounded to multiples of 2^-K (at most 2^-(K+1) "
                   "off; ranks, votes and predictions unchanged); K=10 about halves above-average "
                   "rows; default: float32 values")


def _explain_opts(args: argparse.Namespace, settings: Any) -> Any:
    from .explain import ExplainOptions

    return ExplainOptions(
        settings=settings or None, perturb=args.perturb, seed=args.seed, weighting=args.weighting,
        device=args.device, batch_size=args.batch_size, workers=args.workers, amp=args.amp,
        checkpoint_every=args.checkpoint_every, resume=args.resume, restart=args.restart,
        progress=not args.quiet, jsonl=args.jsonl, value_bits=args.value_bits,
        clusters=_cluster_opts(args) if args.clusters else None,
    )


def _cluster_opts(args: argparse.Namespace) -> Any:
    from .clusters import ClusterOptions

    return ClusterOptions.parse(args.cluster_threshold, args.cluster_maps)


def _settings(args: argparse.Namespace) -> list[Any]:
    from .tagging import ABOVE_AVERAGE, TOP_K, TOP_PERCENT, TagSetting

    s = [TagSetting(TOP_K, k) for k in args.k] + [TagSetting(TOP_PERCENT, q) for q in args.percent]
    if args.above_average:
        s.append(TagSetting(ABOVE_AVERAGE))
    return s


def _load_model(args: argparse.Namespace) -> Any:
    from .models import load_model

    return load_model(
        args.model, weights=args.weights, weights_file=args.weights_file,
        classes_file=args.classes, num_classes=args.num_classes, image_size=args.image_size,
    )


def _profile_opts(args: argparse.Namespace) -> Any:
    from .profile import ProfileOptions

    return ProfileOptions(
        layers=args.layers, measure=args.measure, device=args.device,
        batch_size=args.batch_size, workers=args.workers, amp=args.amp,
        checkpoint_every=args.checkpoint_every, top_images=args.top_images, resume=args.resume,
        restart=args.restart, progress=not args.quiet, overwrite=args.overwrite,
    )


def _warn(msg: str) -> None:
    print(f"filtag-kg: warning: {msg}", file=sys.stderr)


def _images(args: argparse.Namespace, loaded: Any) -> Any:
    from .pipeline import load_images

    imageset = load_images(data=args.data, file_list_path=args.file_list, known=loaded.classes)
    return _capped(args, imageset)


def _capped(args: argparse.Namespace, imageset: Any) -> Any:
    """The image set with --max-pixels applied and its warnings printed."""
    check_whole("--max-pixels", args.max_pixels, 0)
    imageset.max_pixels = args.max_pixels or None
    for note in imageset.warnings:
        _warn(note)
    return imageset


def _outputs(run_dir: Path, names: Sequence[str]) -> str:
    return "outputs: " + ", ".join(str(run_dir / n) for n in names if (run_dir / n).exists())


def _record_export(args: argparse.Namespace, run_dir: str, path: Path, fmt: str) -> None:
    from .runfolder import record_export

    record_export(run_dir, path, fmt=fmt, base_iri=args.base_iri, wordnet_dir=args.wordnet_dir,
                  ili_map=getattr(args, "ili_map", None),
                  explanations=not getattr(args, "no_explanations", False),
                  absolute_paths=getattr(args, "absolute_paths", False),
                  materialize=getattr(args, "materialize", False), license=getattr(args, "license", None),
                  sentences=getattr(args, "sentences", False))


def _refresh_graph(run_dir: str) -> list[str]:
    """Write the run folder's own exports again after its files changed; their names."""
    from .runfolder import refresh_exports

    names = []
    for s in refresh_exports(run_dir):  # the run's graph must not be older than what it describes
        print(f"knowledge graph refreshed: {s.path.name}, {s.quads} statements, {s.explanations} "
              "explanation graphs")
        names.append(s.path.name)
    return names


def _warn_if_untagged(run_dir: str) -> None:
    """Warn when the run's explanations vote with a setting its tags no longer hold."""
    from .runfolder import untagged_explanation_settings

    why = untagged_explanation_settings(run_dir)
    if why:
        _warn(why)


def _warn_if_stale(files: Sequence[str]) -> None:
    from .runfolder import stale_reason

    for f in files:
        why = stale_reason(f)
        if why:
            _warn(why)


def cmd_run(args: argparse.Namespace) -> int:
    """profile + tag into one run folder."""
    from .pipeline import run, summarize

    settings = _settings(args)
    loaded = _load_model(args)
    imageset = _images(args, loaded)
    from .distributed import current

    main_rank = current().main  # under torchrun only rank 0 writes and prints
    result = run(loaded, imageset, args.out, settings=settings, options=_profile_opts(args))
    print(summarize(result.profile, result.tags))
    if main_rank:
        print(_abstract(args, args.out, result.tags).summary())
    names = ["profile.json", "profile.npz", "tags.tsv", "tags.json", "abstract_tags.tsv"]
    if args.explain_data:
        from .data import image_folder
        from .evaluation import evaluate_run, format_table
        from .explain import explain_dataset

        explain_dataset(args.out, _capped(args, image_folder(args.explain_data, loaded.classes)),
                        _explain_opts(args, settings), profile=result.profile, loaded=loaded)
        if main_rank:
            print(format_table(evaluate_run(args.out)))
        names += ["explanations.parquet", "explanations.jsonl", "evaluation.json"]
    if main_rank and not args.no_export:
        from .rdf import export_run_stats
        from .wordnet import load_wordnet

        s = export_run_stats(args.out, base_iri=args.base_iri,
                             wordnet=load_wordnet(wordnet_dir=args.wordnet_dir))
        _record_export(args, args.out, s.path, "trig")
        print(f"knowledge graph: {s.quads} statements, {s.explanations} explanation graphs")
        names.append(s.path.name)
    print(_outputs(Path(args.out), names))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """step 1 alone."""
    from .profile import profile_dataset

    loaded = _load_model(args)
    imageset = _images(args, loaded)
    profile = profile_dataset(loaded, imageset, args.out, _profile_opts(args))
    ds = profile.meta["dataset"]
    print(
        f"profiled {ds['images_used']} images of {len(profile.class_ids)} classes over "
        f"{len(profile.layers)} layers ({ds['skipped_count']} skipped, "
        f"{profile.meta['images_per_second']} images/s)"
    )
    for s in ds["skipped"][:10]:
        print(f"  skipped: {s['path']} ({s['reason']})")
    print(_outputs(Path(args.out), ["profile.json", "profile.npz"]))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """step 2 alone, from a run folder's profile."""
    from .pipeline import summarize
    from .profile import Profile
    from .tagging import TagSetting, write_tags

    settings = _settings(args) or [TagSetting("top-k", 1)]
    profile = Profile.load(args.run_dir)
    tags = write_tags(args.run_dir, profile, settings)
    if not args.quiet:
        print(summarize(profile, tags))
    _warn_if_untagged(args.run_dir)
    print(_outputs(Path(args.run_dir), ["tags.tsv", "tags.json", *_refresh_graph(args.run_dir)]))
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """list conv layers and where each is measured."""
    import torch

    from .measure import plan_measurement
    from .models import select_layers

    loaded = _load_model(args)
    names = select_layers(loaded.module, args.layers)
    size = loaded.preprocess.crop or args.image_size or 224
    _, points = plan_measurement(
        loaded.module, names, torch.zeros(1, 3, size, size), measure=args.measure
    )
    modules = dict(loaded.module.named_modules())
    width = max(len(n) for n in names)
    print(f"{'layer':<{width}}  filters  kernel  measured at")
    for p in points:
        k = getattr(modules[p.layer], "kernel_size", None) or "?"
        k = "x".join(map(str, k)) if isinstance(k, tuple) else str(k)
        print(f"{p.layer:<{width}}  {p.width:>7}  {k:>6}  {p.describe()}")
    print(f"{len(points)} conv layers, {sum(p.width for p in points)} filters")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """step 3: explain images with a run's tags."""
    from .data import file_list, image_files, image_folder
    from .explain import explain_dataset
    from .models import ClassInfo
    from .profile import Profile

    profile = Profile.load(args.run_dir)
    known = [ClassInfo(c["id"], c["label"]) for c in profile.meta.get("model_classes") or []]
    if args.data:
        imageset = image_folder(args.data, known)
    elif args.file_list:
        imageset = file_list(args.file_list, known)
    else:
        imageset = image_files(args.images)
    _capped(args, imageset)
    meta = explain_dataset(args.run_dir, imageset, _explain_opts(args, _settings(args)), profile=profile)
    used = ", ".join(f"{s['method']} {s['param'] if s['param'] is not None else ''}".strip()
                     for s in meta["settings"])
    print(f"explained {meta['images']} images with {used} ({meta['dataset']['skipped_count']} skipped)")
    for s in meta["dataset"]["skipped"][:10]:
        print(f"  skipped: {s['path']} ({s['reason']})")
    if meta.get("clusters"):
        print(f"clusters (threshold {meta['clusters']['threshold']:g}): records' \"clusters\", maps in "
              f"{Path(args.run_dir) / 'clusters' / 'maps'}, class aggregates in "
              f"{Path(args.run_dir) / 'clusters.json'}")
    names = ["explanations.parquet", "explanations.jsonl", "explanations.json"]
    from .distributed import current

    if not current().main:  # under torchrun, rank 0 alone refreshes what was made from them
        return 0
    if (Path(args.run_dir) / "evaluation.json").is_file():  # it described the earlier explanations
        from .evaluation import evaluate_run

        evaluate_run(args.run_dir)
        print("evaluation refreshed (filtag-kg evaluate prints it)")
        names.append("evaluation.json")
    print(_outputs(Path(args.run_dir), names + _refresh_graph(args.run_dir)))
    return 0


def cmd_sag(args: argparse.Namespace) -> int:
    """iGOS++ heatmaps and structured attention graphs, regions named by concepts."""
    from .saliency import IgosOptions, SagOptions
    from .saliency_pass import SALIENCY_DIR, SALIENCY_JSON, SaliencyOptions, explain_saliency

    settings = _settings(args)
    opts = SaliencyOptions(
        sag=SagOptions(grid=args.grid, threshold=args.threshold, beam=args.beam, roots=args.roots,
                       overlap=args.overlap, max_size=args.max_size, depth=args.depth,
                       max_nodes=args.max_nodes),
        igos=None if args.no_igos else IgosOptions(size=args.igos_size, iterations=args.igos_iterations,
                                                   ig_steps=args.igos_ig_steps),
        setting=settings[0] if settings else None, region_layers=args.region_layers,
        device=args.device, batch_size=args.batch_size,
    )
    doc = explain_saliency(args.run_dir, args.images, opts)
    for rec in doc["images"]:
        g = rec["sag"]
        print(f"{rec['image']}: {rec['label']} (p={g['probability']:.3f}), {len(g['minimal'])} minimal "
              f"sufficient explanation(s), {len(g['roots'])} root(s)")
        for reg in rec["regions"]:
            node = g["nodes"][reg["node"]]
            seen = ", ".join(f"{v['label']} ({v['count']})" for v in reg["votes"][:3]) or "no tagged filter"
            print(f"  {len(node['patches'])} patches suffice (p={node['probability']:.3f}); inside: {seen}")
    print(f"wrote {Path(args.run_dir) / SALIENCY_DIR / SALIENCY_JSON} and its PNGs")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """evaluate a run's explanations."""
    from .evaluation import evaluate_run, format_table
    from .runfolder import partial_explanations

    part = partial_explanations(args.run_dir)
    if part is not None:
        of = f" of {part['total']}" if part["total"] else ""
        _warn(f"the explanation pass in {args.run_dir} was interrupted after {part['done']}{of} images; "
              f"this evaluates only those (recorded in evaluation.json): finish the pass with "
              f"`filtag-kg explain {args.run_dir} --resume` and the same options, then evaluate again")
    _warn_if_untagged(args.run_dir)
    doc = evaluate_run(args.run_dir, top_concepts=args.top_concepts)
    print(format_table(doc, by_class=args.by_class))
    print(_outputs(Path(args.run_dir), ["evaluation.json", "perturbation_effects.jsonl"]))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """write a run's knowledge graph as RDF."""
    from .rdf import export_run_stats
    from .rdf.export import is_local_base_iri
    from .wordnet import load_wordnet

    if is_local_base_iri(args.base_iri) and not args.allow_local_base:
        _warn(f"the base IRI {args.base_iri} names this machine: its IRIs are not persistent; "
              "give your domain with --base-iri before publishing")
    s = export_run_stats(
        args.run_dir, fmt=args.format, out=args.out, base_iri=args.base_iri,
        wordnet=load_wordnet(wordnet_dir=args.wordnet_dir), ili_map=args.ili_map,
        explanations=not args.no_explanations, absolute_paths=args.absolute_paths,
        materialize=args.materialize, license=args.license, sentences=args.sentences,
        jobs=args.jobs,
    )
    _record_export(args, args.run_dir, s.path, args.format)
    if s.explanations_pending is not None and not args.no_explanations:
        _warn(f"{args.run_dir} holds an unfinished explanation pass ({s.explanations_pending} images "
              f"explained so far): the export is partial and its VoID says so; finish the pass with "
              f"`filtag-kg explain {args.run_dir} --resume`, then export again")
    if not args.no_explanations:
        _warn_if_untagged(args.run_dir)
    print(f"wrote {s.path}: {s.quads} statements ({s.tag_triples} in the tag graph), "
          f"{s.explanations} explanation graphs")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """serve a store as Linked Data with a read-only SPARQL endpoint."""
    from importlib import resources

    from .serve import Options, serve

    ontology = Path(str(resources.files("filtag_kg") / "resources" / "ontology" / "filtag.ttl"))
    options = Options(
        base_iri=args.base_iri, timeout_s=args.timeout, max_results=args.max_results,
        dumps=tuple(Path(d) for d in args.dumps), ontology=ontology,
        allow_service=tuple(args.allow_service), license=args.license, workers=args.workers,
        cache_mib=args.cache_mib,
    )
    missing = [d for d in options.dumps if not d.is_file()]
    if missing:
        raise FiltagError(f"dump file {missing[0]} does not exist")
    _warn_if_stale(args.dumps)
    def ready(url: str) -> None:
        print(f"serving {args.store} at {url} (base IRI {options.base_iri}); Ctrl-C stops", flush=True)

    serve(args.store, host=args.host, port=args.port, options=options, ready=ready)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """push every named graph to a Graph Store Protocol endpoint."""
    from .publish import publish

    report = publish(args.source, args.endpoint, auth=args.auth, base_iri=args.base_iri,
                     progress=not args.quiet, jobs=args.jobs, resend=args.force,
                     allow_local_base=args.allow_local_base)
    print(report.summary())
    return 1 if report.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    """write a run's HTML report."""
    from .report import write_report
    from .runfolder import export_records
    from .wordnet import load_wordnet

    base_iri = args.base_iri
    bases = {r.get("base_iri") for r in export_records(args.run_dir).values()} - {None}
    if base_iri == DEFAULT_BASE_IRI and len(bases) == 1:
        base_iri = bases.pop()  # link the pages to the IRIs the run's graph holds
    summary = write_report(
        args.run_dir, args.out or Path(args.run_dir) / "report", base_iri=base_iri,
        max_images=args.max_images, max_misexplained=args.max_misexplained,
        max_filters=args.max_filters, top_images=args.top_images, heatmaps=not args.no_heatmaps,
        heatmaps_per_layer=args.heatmaps_per_layer, device=args.device, batch_size=args.batch_size,
        thumb_size=args.thumb_size, wordnet=load_wordnet(wordnet_dir=args.wordnet_dir),
        progress=not args.quiet,
    )
    print(summary.summary())
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    """load exports into an on-disk Oxigraph store."""
    from . import sparql

    _warn_if_stale(args.files)
    print(sparql.load(args.files, args.store, bulk=args.bulk, optimize=args.optimize).summary())
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """run a library query or a .rq file with bound parameters."""
    from . import sparql

    if (args.store is None) == (not args.graph):
        raise FiltagError("give the data with exactly one of --store DIR or --graph FILE...")
    _warn_if_stale(args.graph or [])
    with sparql.open_source(store=args.store, graphs=args.graph or None) as src:
        result = sparql.query(src, args.name, **sparql.parse_params(args.param))
        print(sparql.format_result(result, args.format), end="")
    return 0


def cmd_queries(args: argparse.Namespace) -> int:
    """list the query library."""
    from . import sparql

    print(sparql.format_query_list())
    return 0


def cmd_abstract(args: argparse.Namespace) -> int:
    """WordNet abstractions of a run's tags."""
    report = _abstract(args, args.run_dir, roots=args.roots, depth=args.depth,
                       min_cover=args.min_cover, closed=args.closed)
    print(report.summary())
    _refresh_graph(args.run_dir)
    return 0


def cmd_wordnet(args: argparse.Namespace) -> int:
    """WordNet source status, install and synset look-up."""
    import json

    from . import wordnet as wn

    if args.wordnet_command == "status":
        doc = wn.status(wordnet_dir=args.wordnet_dir, source=args.source)
        print(json.dumps(doc, indent=2, ensure_ascii=False) if args.json else wn.format_status(doc))
    elif args.wordnet_command == "install":
        doc = wn.install(args.from_dir, target=args.target, quiet=False)
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        doc = wn.show(args.key, wordnet=wn.load_wordnet(wordnet_dir=args.wordnet_dir, source=args.source))
        print(json.dumps(doc, indent=2, ensure_ascii=False) if args.json else wn.format_show(doc))
    return 0


def cmd_import_filtag(args: argparse.Namespace) -> int:
    """import a tag file of the original FilTag code."""
    from .importer import import_filtag

    result = import_filtag(
        args.file, model=args.model, layer=args.layer, out_dir=args.out,
        on_problem="keep" if args.keep_unresolved else "error",
        resolve_by_order=args.resolve_by_order,
    )
    print(f"imported {len(result.tags)} tags on {result.filters} filters ({result.method} "
          f"{result.param}) of {args.model} {args.layer}")
    for prob in result.problems:
        print(f"  {prob.describe()}")
    print(_outputs(Path(args.out), ["tags.tsv", "import.json"]))
    return 0


def cmd_sentences(args: argparse.Namespace) -> int:
    """sentences generated from a run's votes, tags and WordNet links."""
    import json

    from .sentences import run_sentences
    from .wordnet import load_wordnet

    for s in run_sentences(args.run_dir, kinds=args.kind or ["image", "filter", "class"],
                           wordnet=load_wordnet(wordnet_dir=args.wordnet_dir), limit=args.limit):
        print(json.dumps(s.as_dict(), ensure_ascii=False) if args.json else s.text)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    """human labels of filters: import, export a sheet, agreement with the tags."""
    import json

    from . import labels
    from .wordnet import load_wordnet

    if args.labels_command == "export":
        print(f"wrote {labels.export_sheet(args.run_dir, args.out)}")
        return 0
    wn = load_wordnet(wordnet_dir=args.wordnet_dir)
    if args.labels_command == "import":
        print(labels.import_labels(args.file, args.run_dir, wordnet=wn).summary())
        _refresh_graph(args.run_dir)
    else:
        report = labels.agreement(args.run_dir, setting=args.setting, wordnet=wn)
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) if args.json
              else labels.format_agreement(report))
    return 0


def cmd_cladec(args: argparse.Namespace) -> int:
    """train and evaluate ClaDec decoders for layers of a run's model."""
    from .cladec import CladecOptions, format_evaluation, run_cladec

    opts = CladecOptions(
        alpha=args.alpha, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        holdout=args.holdout, reconstructions=args.reconstructions, device=args.device,
        workers=args.workers, checkpoint_every=args.checkpoint_every, resume=args.resume,
        restart=args.restart, progress=not args.quiet,
    )
    results = run_cladec(args.run_dir, args.layer, data=args.data, file_list=args.file_list,
                         eval_data=args.eval_data, max_pixels=args.max_pixels, options=opts,
                         echo=None if args.quiet else print)
    print(format_evaluation([r.evaluation for r in results if r.evaluation]))
    for r in results:
        print(f"  {r.layer}: decoders and training record in {r.folder}, reconstructions in "
              f"{r.folder / 'reconstructions'}")
    print(_outputs(Path(args.run_dir), ["evaluation.json"]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """the embedded offline default."""
    from .demo import run_demo

    run_demo(out=args.out, cache_dir=args.cache_dir, progress=not args.quiet, echo=print, cladec=args.cladec)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (also used to test that each has help)."""
    parser = argparse.ArgumentParser(
        prog="filtag-kg",
        description="Tag each convolutional filter of a CNN with the classes whose images "
        "activate it most (FilTag), and explain classifications by those tags.",
        epilog="Start with `filtag-kg demo`. Each command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"filtag-kg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run", help="profile a model over images and tag its filters (steps 1+2)",
        description="Profile a CNN over an image dataset (one batched pass) and tag every "
        "filter with the classes that activate it most, into one run folder.",
        epilog=EXAMPLES_RUN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_options(p)
    _data_options(p)
    _profile_options(p)
    _tag_options(p)
    _wordnet_options(p)
    g = p.add_argument_group("explanations (optional)")
    g.add_argument("--explain-data", metavar="DIR",
                   help="also explain the images of this ImageFolder (e.g. held-out data) and evaluate")
    _explain_options(p)
    g = p.add_argument_group("knowledge graph")
    g.add_argument("--base-iri", default=DEFAULT_BASE_IRI, metavar="IRI",
                   help=f"where the run's IRIs are minted (default {DEFAULT_BASE_IRI}, for local use)")
    g.add_argument("--no-export", action="store_true", help="do not write RUN_DIR/kg.trig")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder (created)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "profile", help="step 1: the class profile of each filter (the only expensive step)",
        description="Run the model over the images once and store, per layer, each class's "
        "mean min-max scaled filter values (profile.npz + profile.json).",
        epilog="examples:\n  filtag-kg profile --model vgg16 --weights DEFAULT --data ~/imagenet/train "
        "--out runs/vgg16 --device cuda\n"
        "  filtag-kg tag runs/vgg16 --k 1 --k 3    # then tag as often as you like\n"
        "After a crash, rerun the same command with --resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_options(p)
    _data_options(p)
    _profile_options(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder (created)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "tag", help="step 2: tag filters from a profile (milliseconds, any k or percent)",
        description="Tag filters from RUN_DIR/profile.* with one or more settings; writes "
        "tags.tsv and tags.json. No model or images needed.",
        epilog="example: filtag-kg tag runs/vgg16 --k 1 --k 5 --percent 2 --above-average",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder holding profile.json/.npz")
    _tag_options(p)
    p.add_argument("--quiet", action="store_true", help="print only where the outputs are")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser(
        "layers", help="list a model's conv layers and where each filter is measured",
        description="List the Conv2d layers (names for --layers) with their widths and the "
        "module output each is measured at (found from one forward pass).",
        epilog="example: filtag-kg layers resnet50",
    )
    p.add_argument("model", metavar="MODEL", help="as --model of `run`")
    p.add_argument("--weights", metavar="ENUM", help=argparse.SUPPRESS)
    p.add_argument("--weights-file", metavar="PATH", help="state dict to load")
    p.add_argument("--classes", help=argparse.SUPPRESS)
    p.add_argument("--num-classes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, metavar="N", help="input size for the dry run")
    p.add_argument("--layers", nargs="+", metavar="PATTERN", help="only these layers")
    p.add_argument("--measure", choices=["activation", "conv"], default="activation")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser(
        "explain", help="step 3: explain images by the tags of the filters they activate",
        description="For each image, choose each layer's active filters with the same method as "
        "the tagging, count one vote per tag of each active filter, and predict the most voted "
        "class (all layers, and the last layer alone). Writes the RUN_DIR/explanations.parquet folder "
        "(RUN_DIR/explanations.jsonl with --jsonl).",
        epilog="examples:\n  filtag-kg explain runs/vgg16 --data ~/imagenet/val --k 1\n"
        "  filtag-kg explain runs/vgg16 cat.jpg dog.png --perturb gaussian:0.1\n"
        "After a crash, rerun with --resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with a profile")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (or use --data/--file-list)")
    _data_options(p, required=False)
    _tag_options(p)
    _explain_options(p)
    g = p.add_argument_group("pass")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--batch-size", type=int, default=32, metavar="N", help="default 32")
    g.add_argument("--workers", type=int, metavar="N", help="image decoding processes")
    g.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    g.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                   help="save resumable state every N batches (default 50)")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--resume", action="store_true", help="finish an interrupted pass")
    r.add_argument("--restart", action="store_true", help="discard an interrupted pass")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "sag", help="iGOS++ heatmaps and structured attention graphs, regions named by concepts",
        description="For each image: an iGOS++ heatmap, and a structured attention graph (SAG): "
        "diverse minimal sets of patches that each keep the predicted class's probability, the graph "
        "of one-patch removals below them, and per root the concepts its active tagged filters vote "
        "for. Writes RUN_DIR/saliency/saliency.json and PNGs. Method: docs/saliency-method.md.",
        epilog="examples:\n  filtag-kg sag runs/vgg16 cat.jpg --device cuda\n"
        "  filtag-kg sag runs/vgg16 a.jpg b.jpg --grid 5 --beam 10 --no-igos",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with a profile and tags")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _tag_options(p)
    g = p.add_argument_group("SAG")
    g.add_argument("--grid", type=int, default=7, metavar="N", help="N x N patches (default 7)")
    g.add_argument("--threshold", type=float, default=0.9, metavar="F",
                   help="sufficient: probability >= F x the full image's (default 0.9)")
    g.add_argument("--beam", type=int, default=5, metavar="N", help="beam width (default 5)")
    g.add_argument("--roots", type=int, default=3, metavar="N", help="at most N roots (default 3)")
    g.add_argument("--overlap", type=int, default=1, metavar="N",
                   help="roots share at most N patches (default 1)")
    g.add_argument("--max-size", type=int, metavar="N", help="largest patch set searched (default all)")
    g.add_argument("--depth", type=int, default=2, metavar="N",
                   help="graph levels below the roots (default 2)")
    g.add_argument("--max-nodes", type=int, default=30, metavar="N", help="nodes of the graph (default 30)")
    g.add_argument("--region-layers", type=int, default=1, metavar="N",
                   help="the last N measured layers name the regions (default 1)")
    g = p.add_argument_group("iGOS++")
    g.add_argument("--no-igos", action="store_true", help="no heatmaps")
    g.add_argument("--igos-size", type=int, default=28, metavar="N", help="mask resolution (default 28)")
    g.add_argument("--igos-iterations", type=int, default=15, metavar="N", help="default 15")
    g.add_argument("--igos-ig-steps", type=int, default=20, metavar="N",
                   help="integration steps (default 20)")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per iGOS++ batch (default 8)")
    p.set_defaults(func=cmd_sag)

    p = sub.add_parser(
        "evaluate", help="fidelity and accuracy of a run's explanations",
        description="Per setting and for all layers vs the last layer alone: how often the "
        "explanation's prediction equals the model's top-1 (fidelity), how often the model's "
        "top-1 is in the explanation's top-1/3/5, and both accuracies against the true class; "
        "with counts. Perturbed copies: prediction flips and concepts gaining or losing votes. "
        "Writes RUN_DIR/evaluation.json.",
        epilog="examples:\n  filtag-kg evaluate runs/vgg16\n"
        "  filtag-kg evaluate runs/vgg16 --by-class --top-concepts 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with explanations")
    p.add_argument("--by-class", action="store_true",
                   help="also print class-level explanations (most voted concepts per class)")
    p.add_argument("--top-concepts", type=int, default=5, metavar="N", help="concepts listed (default 5)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export", help="write a run's knowledge graph as RDF (TriG, N-Quads, Turtle, JSON-LD, ...)",
        description="Export a run folder as RDF: model, layers, filters, tags (direct filter -> "
        "concept triples and qualified tag nodes), abstract tags, WordNet concepts with their "
        "hypernyms, provenance and a VoID description in one named graph, and each image "
        "explanation in its own named graph. Deterministic; no blank nodes. Formats without "
        "named graphs (nt, ttl, xml) hold everything in one graph. See ontology/README.md.",
        epilog="examples:\n  filtag-kg export runs/vgg16\n"
        "  filtag-kg export runs/vgg16 --format nq --out vgg16.nq --base-iri https://example.org/kg/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (or an import-filtag folder)")
    p.add_argument("--format", choices=["trig", "nq", "nt", "ttl", "jsonld", "xml"], default="trig",
                   help="default trig")
    p.add_argument("--out", metavar="FILE", help="default RUN_DIR/kg.<format>")
    p.add_argument("--base-iri", default=DEFAULT_BASE_IRI, metavar="IRI",
                   help=f"where IRIs are minted (default {DEFAULT_BASE_IRI}, for local use)")
    p.add_argument("--ili-map", metavar="FILE",
                   help="CILI's ili-map-pwn30.tab for the links to the Interlingual Index (default: "
                   "the map shipped with the package, every WordNet 3.0 noun)")
    p.add_argument("--no-explanations", action="store_true", help="the tag graph only")
    p.add_argument("--wordnet-dir", metavar="DIR", help="a WordNet 3.0 database folder to use")
    p.add_argument("--absolute-paths", action="store_true",
                   help="publish the dataset root and image paths as given (machine-local); by default "
                   "images are named by content hash and path relative to the dataset root")
    p.add_argument("--materialize", action="store_true",
                   help="also write the fk:represents triples a reasoner would infer (filter -> every "
                   "concept at or above its tags), for stores without reasoning")
    p.add_argument("--allow-local-base", action="store_true",
                   help="do not warn about a base IRI on this machine (localhost): for local use only")
    p.add_argument("--license", metavar="IRI",
                   help="licence of the data, as dcterms:license in the VoID (e.g. "
                   "https://creativecommons.org/licenses/by/4.0/)")
    p.add_argument("--sentences", action="store_true",
                   help="also write generated English sentences (fk:sentence) on the explanations, "
                   "filters and class explanations (filtag-kg sentences shows them)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="processes encoding the explanation graphs (default 1); the output is "
                   "byte-identical for any N")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "load", help="load RDF exports into an on-disk Oxigraph store",
        description="Load export files (TriG, N-Quads, ...) into an Oxigraph store folder; "
        "large N-Quads files use the bulk loader.",
        epilog="example: filtag-kg load runs/vgg16/kg.trig --store kg-store",
    )
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="export files to load (kg.trig, kg.nq, ...; format from the extension)")
    p.add_argument("--store", required=True, metavar="DIR", help="store folder (created)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--bulk", dest="bulk", action="store_true", default=None, help="force the bulk loader")
    b.add_argument("--no-bulk", dest="bulk", action="store_false", help="never use the bulk loader")
    p.add_argument("--optimize", action="store_true", help="compact the store after loading")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser(
        "query", help="ask the knowledge graph a library question (or run a .rq file)",
        description="Run a query of the library (see `filtag-kg queries`) or a .rq file on a "
        "store or on export files. Parameters are bound as RDF terms, never pasted into the text; "
        "a concept accepts a wnid, a synset name (dog.n.01) or a lemma (dog).",
        epilog="example: filtag-kg query filters-for-concept --store kg-store --param concept=dog.n.01",
    )
    p.add_argument("name", metavar="NAME|FILE.rq",
                   help="a library query name (see `filtag-kg queries`) or a SPARQL file")
    p.add_argument("--store", metavar="DIR", help="an Oxigraph store (see `filtag-kg load`)")
    p.add_argument("--graph", nargs="+", metavar="FILE", help="or query these export files directly")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    p.add_argument("--format", choices=["table", "csv", "tsv", "json", "plain-tsv"], default="table",
                   help="csv: plain values; tsv: SPARQL TSV (terms as <IRI>, \"literal\"^^type); "
                   "plain-tsv: plain values, tab-separated; json: SPARQL 1.1 JSON results")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("queries", help="list the query library with purposes and parameters",
                       description="List the queries of queries/*.rq with their purposes, parameters "
                       "(name, type, example) and an example call. Run one with `filtag-kg query NAME`; "
                       "read the .rq files to learn to write your own.",
                       epilog="example: filtag-kg queries")
    p.set_defaults(func=cmd_queries)

    p = sub.add_parser(
        "serve", help="serve a store as Linked Data with a read-only SPARQL endpoint",
        description="Serve an Oxigraph store (see `filtag-kg load`) over HTTP: /sparql (SPARQL 1.1 "
        "Protocol, read-only), every resource IRI under the base IRI as HTML or RDF by content "
        "negotiation, /.well-known/void, /dumps/ and /ontology. Binds to loopback unless told "
        "otherwise.",
        epilog="example: filtag-kg serve --store kg-store --port 8000 --dumps runs/vgg16/kg.trig",
    )
    p.add_argument("--store", required=True, metavar="DIR", help="an Oxigraph store folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default 8000 (0: any free port)")
    p.add_argument("--base-iri", default=None, metavar="IRI",
                   help="the IRIs the data was exported with; their path is where resources are served "
                   "(default: the void:uriSpace of the store's VoID, else " + DEFAULT_BASE_IRI + ")")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="query time limit (default 10 s)")
    p.add_argument("--max-results", type=int, default=100_000, metavar="N",
                   help="result size limit (default 100000 rows or triples)")
    p.add_argument("--dumps", nargs="*", default=[], metavar="FILE", help="export files offered for download")
    p.add_argument("--allow-service", action="append", default=[], metavar="URL",
                   help="a SPARQL endpoint queries may call with SERVICE (repeatable); any other SERVICE "
                   "is refused, so no query makes the server fetch a URL")
    p.add_argument("--license", metavar="IRI", help="the data's license, stated in /.well-known/void")
    p.add_argument("--workers", type=int, default=6, metavar="N",
                   help="query processes (default 6; at most 4 of them run slow queries at once)")
    p.add_argument("--cache-mib", type=float, default=64.0, metavar="MIB",
                   help="memory for answers kept for identical SPARQL requests and for resource "
                   "documents (default 64, a quarter of it for documents; 0: none); restart serve "
                   "after loading new data into its store")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "publish", help="push a run's graphs to any SPARQL 1.1 Graph Store (Fuseki, GraphDB, ...)",
        description="Send every named graph of a run folder or RDF file to a Graph Store HTTP "
        "Protocol endpoint with PUT ?graph=IRI, which replaces the graph: publishing again never "
        "duplicates. Failed graphs are retried, then reported; the exit code is 1 if any failed. "
        "What arrived is recorded beside the source (RUN_DIR/published.json, FILE.published.json), "
        "so a rerun sends only what failed or changed.",
        epilog="examples:\n  filtag-kg publish runs/vgg16 --endpoint http://127.0.0.1:7878/store "
        "--base-iri https://example.org/kg/\n"
        "  filtag-kg publish kg.nq --endpoint http://host:3030/ds/data --auth admin:secret",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="RUN_DIR|FILE",
                   help="a run folder (exported on the fly) or an RDF file with named graphs")
    p.add_argument("--endpoint", required=True, metavar="URL", help="the Graph Store Protocol URL")
    p.add_argument("--auth", metavar="USER:PASS", help="HTTP Basic credentials")
    p.add_argument("--base-iri", default=DEFAULT_BASE_IRI, metavar="IRI", help="when exporting a run folder")
    p.add_argument("--quiet", action="store_true", help="only the summary, no progress bar")
    p.add_argument("--jobs", type=int, default=4, metavar="N", help="parallel connections (1-32, default 4)")
    p.add_argument("--force", action="store_true",
                   help="resend graphs that arrived unchanged before (see SOURCE.published.json)")
    p.add_argument("--allow-local-base", action="store_true",
                   help="publish IRIs on localhost or a loopback address (refused by default)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "report", help="write a static HTML report of a run (pages, charts, heatmaps)",
        description="Write a static HTML site of a run folder: an overview (model, layers, dataset, "
        "settings, skipped files, evaluation), a page per layer, per tagged filter (tags, abstract "
        "tags, top images with the filter's activation map), per explained image (predictions, "
        "votes, layer-wise heatmaps of the most active tagged filters) and per WordNet concept "
        "(the filters representing it, counting hyponyms). No server or network needed: open "
        "index.html. Pages link to each other and to the run's RDF IRIs.",
        epilog="examples:\n  filtag-kg report runs/vgg16\n"
        "  filtag-kg report runs/vgg16 --out site --device cuda --max-images 200\n"
        "  filtag-kg report runs/vgg16 --no-heatmaps --max-filters 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (or an import-filtag folder)")
    p.add_argument("--out", metavar="SITE_DIR",
                   help="the site folder: new, empty, or an earlier report (default RUN_DIR/report)")
    p.add_argument("--base-iri", default=DEFAULT_BASE_IRI, metavar="IRI",
                   help="the base IRI the RDF export used, for the pages' IRI links "
                   f"(default: the one the run's own export recorded, else {DEFAULT_BASE_IRI})")
    g = p.add_argument_group("what to show")
    g.add_argument("--max-images", type=int, default=50, metavar="N",
                   help="explanation pages for the first N explained images (default 50)")
    g.add_argument("--max-misexplained", type=int, default=50, metavar="N",
                   help="and for up to N more whose explanation differs from the model's top-1 "
                   "(default 50)")
    g.add_argument("--max-filters", type=int, metavar="N",
                   help="at most N filter pages per layer, the most tagged first (default: every "
                   "tagged filter)")
    g.add_argument("--top-images", type=int, metavar="N",
                   help="top activating images shown per filter (default: all the profile kept)")
    g = p.add_argument_group("heatmaps")
    g.add_argument("--no-heatmaps", action="store_true",
                   help="no activation maps (the model is then never loaded)")
    g.add_argument("--heatmaps-per-layer", type=int, default=3, metavar="N",
                   help="most active tagged filters drawn per layer on an explanation page (default 3)")
    g.add_argument("--device", default="cpu", help="where the model runs for heatmaps: cpu (default), "
                   "cuda, cuda:N or auto")
    g.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="images per forward pass (default 16)")
    g.add_argument("--thumb-size", type=int, default=128, metavar="PX",
                   help="longer side of thumbnails and heatmaps (default 128)")
    p.add_argument("--wordnet-dir", metavar="DIR", help="a WordNet 3.0 database folder to use")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "abstract", help="what a run's filters represent, by WordNet hypernyms",
        description="Link a run's tags to WordNet 3.0 synsets and write, per filter, the most "
        "specific common hypernyms covering at least two of its tags (abstract_tags.tsv), and "
        "per layer a histogram of tags by hypernym (hypernym_histogram.tsv).",
        epilog="example: filtag-kg abstract runs/vgg16 --roots animal.n.01 artifact.n.01",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder holding tags.tsv")
    _wordnet_options(p)
    h = p.add_mutually_exclusive_group()
    h.add_argument("--roots", nargs="+", metavar="SYNSET",
                   help="histogram under these concepts (default: animal, plant, artifact, food, ...)")
    h.add_argument("--depth", type=int, metavar="N", help="histogram by hypernyms at this depth")
    p.add_argument("--min-cover", type=int, default=2, metavar="N",
                   help="an abstract tag covers at least N of a filter's tags (default 2)")
    p.add_argument("--closed", action="store_true",
                   help="also report broader concepts that cover strictly more tags")
    p.set_defaults(func=cmd_abstract)

    p = sub.add_parser(
        "wordnet", help="WordNet 3.0: which source is used, install it, look up a synset",
        description="filtag-kg links ImageNet wnids (n02084071 = dog.n.01) to WordNet 3.0. "
        "Sources, in order: nltk's corpus, a database folder ($WNHOME, /usr/share/wordnet), "
        "the bundled slice covering ImageNet-1k and the demo classes.",
        epilog="examples:\n  filtag-kg wordnet status\n"
        "  filtag-kg wordnet install --from /usr/share/wordnet\n"
        "  filtag-kg wordnet show dog.n.01",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wsub = p.add_subparsers(dest="wordnet_command", metavar="ACTION", required=True)
    w = wsub.add_parser("status", help="which WordNet source is active and what it covers",
                        description="Say which WordNet source is active and what it covers.",
                        epilog="example: filtag-kg wordnet status --json")
    w.add_argument("--wordnet-dir", metavar="DIR", help="check this database folder")
    w.add_argument("--source", choices=["auto", "nltk", "wordnet-dir", "slice"])
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w = wsub.add_parser("install", help="prepare nltk's WordNet data (download or local copy)",
                        description="Make nltk's WordNet 3.0 corpus available: download it when "
                        "online, or copy a local database folder (--from) when not.",
                        epilog="example: filtag-kg wordnet install --from /usr/share/wordnet")
    w.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="a local WordNet 3.0 database (e.g. /usr/share/wordnet)")
    w.add_argument("--target", metavar="DIR", help="nltk data folder to install into")
    w = wsub.add_parser("show", help="a synset's lemmas, definition and hypernym paths",
                        description="Print a synset by wnid (n02084071), offset (02084071-n) or "
                        "name (dog.n.01).", epilog="example: filtag-kg wordnet show n02085620")
    w.add_argument("key", metavar="WNID|SYNSET",
                   help="a wnid (n02085620), an offset (02085620-n) or a synset name (dog.n.01)")
    w.add_argument("--wordnet-dir", metavar="DIR", help="use this database folder")
    w.add_argument("--source", choices=["auto", "nltk", "wordnet-dir", "slice"])
    w.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_wordnet)

    p = sub.add_parser(
        "import-filtag", help="import a tag file written by the original FilTag code",
        description="Read a tag file of the original FilTag code (first line 'filter tags k=1', "
        "then 'INDEX:[' label ', ...]' per filter) and write the usual tags.tsv. ImageNet names "
        "shared by two classes (crane, maillot) are reported, never guessed; under top-k, one is "
        "resolved by elimination once its other class already tags its k filters.",
        epilog="example: filtag-kg import-filtag tags_k1.txt --model vgg16 --layer features.28 "
        "--out runs/imported",
    )
    p.add_argument("file", metavar="FILE", help="the original code's tag file (e.g. tags_k1.txt)")
    p.add_argument("--model", required=True, help="the model the tags belong to (recorded)")
    p.add_argument("--layer", required=True, help="the layer's module path, e.g. features.28")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder (created)")
    p.add_argument("--resolve-by-order", action="store_true",
                   help="resolve a shared name by the class order of its line (the reference "
                   "lists classes in index order)")
    p.add_argument("--keep-unresolved", action="store_true",
                   help="keep unresolvable names as unlinked tags instead of failing")
    p.set_defaults(func=cmd_import_filtag)

    p = sub.add_parser(
        "sentences", help="short English sentences from a run's votes, tags and WordNet links",
        description="Print generated sentences: per explained image (prediction, layers, the "
        "concepts its active filters vote for), per tagged filter (its class distribution) and "
        "per class (the concepts its images vote for). Groups of classes are named at the level "
        "a reader uses (README: Sentences).",
        epilog="examples:\n  filtag-kg sentences runs/vgg16 --kind image --limit 5\n"
        "  filtag-kg sentences runs/vgg16 --kind filter --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a profiled and tagged run folder")
    p.add_argument("--kind", action="append", choices=["image", "filter", "class"],
                   help="which sentences (repeatable; default all three)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N image sentences")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: text, template, generator version, concepts")
    p.add_argument("--wordnet-dir", metavar="DIR", help="a WordNet 3.0 database folder to use")
    p.set_defaults(func=cmd_sentences)

    p = sub.add_parser(
        "labels", help="human labels of filters: import, export an annotation sheet, agreement",
        description="Human labels of filters, kept apart from the machine tags. A label file is a "
        "CSV with the columns run,layer,filter,label,annotator,time (free-text labels, normalised "
        "to WordNet; an unknown or ambiguous label is kept as text and reported).",
        epilog="examples:\n  filtag-kg labels export runs/vgg16\n"
        "  filtag-kg labels import sheet.csv runs/vgg16\n  filtag-kg labels agree runs/vgg16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lsub = p.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    w = lsub.add_parser("import", help="read a filled label CSV into RUN_DIR/human_labels.tsv",
                        description="Read human labels (CSV: run,layer,filter,label,annotator,time) "
                        "into RUN_DIR/human_labels.tsv, each normalised to a WordNet synset.",
                        epilog="example: filtag-kg labels import sheet.csv runs/vgg16")
    w.add_argument("file", metavar="FILE", help="the label CSV")
    w.add_argument("run_dir", metavar="RUN_DIR", help="the run the labels are for")
    w.add_argument("--wordnet-dir", metavar="DIR", help="a WordNet 3.0 database folder to use")
    w = lsub.add_parser("export", help="write an annotation sheet (one row per tagged filter)",
                        description="Write RUN_DIR/label_sheet.csv: per tagged filter its tags, abstract "
                        "tags and top images, with empty label, annotator and time columns to fill.",
                        epilog="example: filtag-kg labels export runs/vgg16 --out sheet.csv")
    w.add_argument("run_dir", metavar="RUN_DIR", help="a tagged run folder")
    w.add_argument("--out", metavar="FILE", help="where to write the sheet (default RUN_DIR/label_sheet.csv)")
    w = lsub.add_parser("agree", help="how often human labels name a tag, abstract tag or hypernym",
                        description="Per filter and overall: whether each human label is a machine "
                        "tag, an abstract tag or a hypernym of a tag, or none of them.",
                        epilog="example: filtag-kg labels agree runs/vgg16 --setting 'top-k 1'")
    w.add_argument("run_dir", metavar="RUN_DIR", help="a run with imported labels")
    w.add_argument("--setting", help="the tagging setting to compare with (default: the first)")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w.add_argument("--wordnet-dir", metavar="DIR", help="a WordNet 3.0 database folder to use")
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser(
        "cladec", help="decode a layer back into images (ClaDec) and compare with an autoencoder",
        description="Train a decoder from the frozen model's activations at a layer to the input "
        "image (ClaDec) and a reference autoencoder of the same size (the model's architecture up "
        "to the layer, fresh weights, trained for reconstruction only); then compare the model's "
        "accuracy on both reconstructions and their pixel error on held-out images. Writes "
        "RUN_DIR/cladec/LAYER/ (decoders.pt, training.json, evaluation.json, reconstructions/*.png) "
        "and the cladec section of RUN_DIR/evaluation.json.",
        epilog="examples:\n  filtag-kg cladec filtag-demo --layer features.3 --layer features.7 "
        "--data ~/.cache/filtag-kg/shapes-v2-seed0/data/train\n"
        "  filtag-kg cladec runs/vgg16 --layer features.28 --data ~/imagenet/train "
        "--eval-data ~/imagenet/val --alpha 0.1 --device cuda\nAfter a crash, rerun with --resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with a profile")
    p.add_argument("--layer", action="append", required=True, metavar="NAME",
                   help="a conv layer to decode (repeat for several; `filtag-kg layers` lists them)")
    _data_options(p)
    p.add_argument("--eval-data", metavar="DIR",
                   help="held-out images (default: a seeded --holdout share of the training images)")
    g = p.add_argument_group("training")
    g.add_argument("--alpha", type=float, default=0.0, metavar="A",
                   help="weight of the classifier's loss on the reconstruction, in [0, 1) (default 0)")
    g.add_argument("--epochs", type=int, default=5, metavar="N", help="default 5")
    g.add_argument("--batch-size", type=int, default=64, metavar="N", help="default 64")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 0.001)")
    g.add_argument("--seed", type=int, default=0, help="initial weights and image order (default 0)")
    g.add_argument("--holdout", type=float, default=0.2, metavar="SHARE",
                   help="share of --data held out without --eval-data (default 0.2)")
    g.add_argument("--reconstructions", type=int, default=8, metavar="N",
                   help="held-out images stored as reconstruction PNGs (default 8; explained ones first)")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--workers", type=int, default=0, metavar="N", help="image decoding processes")
    g.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                   help="save resumable state every N steps (default 50; always after an epoch)")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--resume", action="store_true", help="finish an interrupted training")
    r.add_argument("--restart", action="store_true", help="discard an interrupted training")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_cladec)

    p = sub.add_parser(
        "demo", help="run the whole pipeline offline on a synthetic shapes dataset",
        description="Generate a synthetic dataset of plane shapes (classes are WordNet synsets), "
        "train a small CNN on it (cached), profile and tag it, and print a summary. Offline, "
        "CPU, under two minutes.",
        epilog="examples:\n  filtag-kg demo\n"
        "  filtag-kg demo --out /tmp/demo --cache-dir /tmp/filtag-cache --quiet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="filtag-demo", metavar="DIR",
                   help="run folder (default ./filtag-demo)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where the dataset and trained weights are cached (default: "
                   "$FILTAG_KG_CACHE, else ~/.cache/filtag-kg)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--cladec", action="store_true",
                   help="also decode two layers back into images (ClaDec vs a reference autoencoder; "
                   "a few more CPU minutes)")
    p.set_defaults(func=cmd_demo)
    return parser


#: Path arguments main() checks before a command runs, so that a mistyped path fails in a
#: fraction of a second instead of after importing torch, nltk or rdflib: dest -> (what, fix).
_PATH_ARGS = {
    "run_dir": ("run folder", "give the folder `filtag-kg run` (or profile, import-filtag) wrote"),
    "data": ("data folder", "pass --data DIR with one subfolder per class"),
    "explain_data": ("data folder", "pass --explain-data DIR with one subfolder per class"),
    "eval_data": ("data folder", "pass --eval-data DIR with one subfolder per class"),
    "file_list": ("file list", "pass --file-list FILE with one 'PATH<TAB>CLASS' per line"),
    "weights_file": ("weights file", "pass --weights-file PATH of a saved state dict"),
    "classes": ("class list", "pass --classes FILE with one class per line"),
    "synset_map": ("synset map", "pass --synset-map FILE (TSV or JSON)"),
    "ili_map": ("ILI map", "pass --ili-map FILE (CILI's ili-map-pwn30.tab)"),
    "images": ("image file", None),
    "file": ("tag file", None),
    "files": ("RDF file", None),
    "graph": ("RDF file", None),
}


def _check_paths(args: argparse.Namespace) -> None:
    """Raise a :class:`FiltagError` naming the first input path of ``args`` that does not exist."""
    for dest, (what, fix) in _PATH_ARGS.items():
        value = getattr(args, dest, None)
        for path in [value] if isinstance(value, str) else value or []:
            if not os.path.exists(path):
                raise FiltagError(f"{what} {path} does not exist" + (f"; {fix}" if fix else ""))


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` came from, e.g. ``wordnet show``'s."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action is not None else None
        if action is None or name not in action.choices:
            return parser
        parser = action.choices[name]


def _unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """The error for arguments ``parser`` does not know, suggesting the closest option of each."""
    import difflib

    known = sorted(o for o in parser._option_string_actions if o.startswith("--"))
    hints = []
    for arg in extra:
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                hints.append(f"{arg.split('=', 1)[0]}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(extra)}" + ("".join(f"\n  {h}" for h in hints))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``filtag-kg`` and ``python -m filtag_kg``; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - under torchrun, rank 0 alone prints
    if args.command == "explain" and not any(e.startswith("-") for e in extra):
        args.images += extra  # image files may follow options: explain RUN --k 1 a.jpg b.jpg
    elif extra:
        command = _command_parser(parser, args)
        command.error(_unrecognized(command, extra))
    try:
        _check_paths(args)
        return int(args.func(args) or 0)
    except FiltagError as exc:
        print(f"filtag-kg: error: {exc}", file=sys.stderr)
        # only a pass of profile/explain raises Interrupted: never import torch just to check
        profile = sys.modules.get(f"{__package__}.profile")
        return 130 if profile is not None and isinstance(exc, profile.Interrupted) else 2
    except KeyboardInterrupt:
        print("filtag-kg: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        from ._io import disk_full

        if not disk_full(exc):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"filtag-kg: error: no space left on the device{where}; free some space or write "
              "elsewhere (--out), then rerun", file=sys.stderr)
        return 2
    finally:
        if "torch" in sys.modules:
            from .distributed import shutdown

            shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
