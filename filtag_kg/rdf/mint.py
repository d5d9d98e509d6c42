"""Every IRI of an export is minted here, and nowhere else.

IRIs are minted under a base IRI (``--base-iri``, the publisher's domain; the
default :data:`DEFAULT_BASE_IRI` suits a local Linked Data server). They are

* **stable**: built only from the run's own content (names, indices, hashes),
  never from clocks, paths of the run folder or counters, so the same input
  gives the same IRIs;
* **readable** where the content allows: ``…/model/vgg16-1a2b3c4d5e6f/layer/
  features.28/filter/17``, ``…/concept/n02084071``;
* **safe** for any text: each name becomes one path segment in which every
  character except ``A-Z a-z 0-9 - . _`` is percent-encoded (UTF-8), so
  spaces, quotes, slashes, ``#``, ``%`` and unicode can neither break the IRI
  nor make two names collide. The encoding is injective: ``~`` stands for the
  empty name (a literal ``~`` is encoded), and the dot segments ``.``/``..``
  are encoded so that no IRI resolver removes them.

Layout under the base ``B`` (``{…}`` = one encoded segment)::

    B model/{slug}-{hash12}                       a model (hash: weights SHA-256)
      …/layer/{layer}                             a conv layer
      …/layer/{layer}/filter/{index}              a filter
    B concept/{wnid}                              a WordNet 3.0 synset
    B concept/label/{class id}                    a class without a synset
    B scheme/wordnet-3.0                          the synsets' concept scheme
    B dataset/{fingerprint16}                     an image dataset
    B image/{sha256}                              an image (content-addressed)
    B software/{name}/{version}                   a software package
    B run/{slug}-{hash16}                         a tagging run (R)
      R/kg  R/kg/tags  R/kg/void  R/kg/explanations    VoID + graph names
      R/setting/{method}-{param}                  a tagging setting
      R/parameter/{name}                          a run option
      R/tag/{layer}/{filter}/{setting}/{class}     a qualified tag
      R/abstract-tag/{layer}/{filter}/{setting}/{wnid}
      R/class-explanation/{setting}/{class}
      R/explanations                              the explanation activity
      R/classification/{index}[/{perturbation}]   the model's classification of an image (C)
        C/model-prediction/{rank}  C/perturbation
      R/explanation/{index}/{setting}[/{perturbation}][/{weighting}]   (E)
        E/active/{layer}/{filter}  E/vote/{class}  E/last-layer-vote/{class}
        C/cluster/{layer}/{rank}  E/cluster/{layer}/{rank}/label/{class}   feature-map clusters (once per
                                                  image variant) and their labels (per explanation)
      R/file/{path}/{in}/{run folder}             a file of the run folder (a cluster map atlas; each
                                                  cluster's map is a region: R/file/{path}#xywh=x,y,w,h)
      R/kg/clusters                               the graph of the class-level cluster aggregates
      R/cluster-aggregate/{setting}/{class}/{layer}   (A)
        A/concept/{class}
      R/kg/cladec                                 the graph of the run's ClaDec decoders
      R/cladec/{layer}-{hash16}                   a ClaDec training (D; hash: its options and data)
        D/decoder  D/reference  D/evaluation  D/reconstruction/{sha256}/{cladec|reference}

    R is the tagging run: its hash covers the profile and the tags
    (``tags.tsv``), so retagging a profile gives new IRIs and graph names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from .errors import BaseIriError
from .vocab import ILI, PWN30

__all__ = [
    "DEFAULT_BASE_IRI",
    "Minter",
    "check_base_iri",
    "content_hash",
    "segment",
    "setting_key",
]

#: Base IRI for local use; pass your own domain (``--base-iri``) to publish.
DEFAULT_BASE_IRI = "http://localhost:8000/filtag-kg/"

_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# characters that may not appear in an IRI at all (RFC 3987 excludes them)
_BAD_IRI_CHARS = re.compile(r"[\x00-\x20<>\"{}|\\^`\x7f-\x9f]")
_WNID = re.compile(r"n\d{8}")


def segment(text: str) -> str:
    """One path segment for any text; injective and safe in every RDF syntax.

    Example:
        >>> segment("features.28"), segment("a b/c#d"), segment(""), segment("..")
        ('features.28', 'a%20b%2Fc%23d', '~', '%2E%2E')
    """
    if _PLAIN_SEGMENT.fullmatch(text):
        if text == ".":
            return "%2E"
        if text == "..":
            return "%2E%2E"
        return text
    if text == "":
        return "~"
    # surrogatepass: a lone surrogate (undecodable file name) still gets a distinct IRI
    return quote(text.encode("utf-8", "surrogatepass"), safe="-._").replace("~", "%7E")


def content_hash(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def setting_key(method: str, param: str) -> str:
    """The readable key of a tagging setting: ``top-k-3``, ``top-percent-2.5``, ``above-average``."""
    return f"{method}-{param}" if param else method


def check_base_iri(base_iri: str) -> str:
    """Validate a base IRI and return it ending in ``/``.

    Raises:
        BaseIriError: it is not absolute, contains characters an IRI may not
            contain, or has a query or fragment (data IRIs are paths under it).

    Example:
        >>> check_base_iri("https://example.org/kg")
        'https://example.org/kg/'
    """
    hint = "use an absolute IRI such as https://example.org/kg/ (the default is " + DEFAULT_BASE_IRI + ")"
    if not isinstance(base_iri, str) or not _SCHEME.match(base_iri):
        raise BaseIriError(f"bad base IRI {base_iri!r}: it has no scheme; {hint}")
    bad = _BAD_IRI_CHARS.search(base_iri)
    if bad:
        raise BaseIriError(
            f"bad base IRI {base_iri!r}: character {bad.group()!r} is not allowed in an IRI; {hint}"
        )
    if "#" in base_iri or "?" in base_iri:
        raise BaseIriError(f"bad base IRI {base_iri!r}: it may not have a query or fragment; {hint}")
    scheme = base_iri.split(":", 1)[0].lower()
    if scheme in ("http", "https") and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^/]+", base_iri):
        raise BaseIriError(f"bad base IRI {base_iri!r}: it names no host; {hint}")
    if re.search(r"%(?![0-9A-Fa-f]{2})", base_iri):
        raise BaseIriError(f"bad base IRI {base_iri!r}: '%' must start a %XX escape; {hint}")
    return base_iri if base_iri.endswith(("/", ":")) else base_iri + "/"


def _perturbation_segment(p: dict[str, Any]) -> str:
    return segment(f"{p.get('kind', '')}-{p.get('param', '')}-{p.get('seed', '')}")


def _model_slug(spec: str) -> str:
    # the readable part: the last path component of a file spec, else the spec itself
    name = re.split(r"[/\\]", spec.rstrip("/\\"))[-1] or spec
    return segment(name)


class Minter:
    """Mints the IRIs of one export (plain strings, not yet in ``<…>``).

    Args:
        base_iri: the base IRI; validated by :func:`check_base_iri`.

    Raises:
        BaseIriError: the base IRI is unusable.
    """

    def __init__(self, base_iri: str) -> None:
        self.base = check_base_iri(base_iri)
        self._layer_seg: dict[str, str] = {}

    # -- shared across runs ---------------------------------------------------------
    def model(self, spec: str, weights_sha256: str | None) -> str:
        """``B model/{slug}-{hash12}``; the hash is of the weights, else of the spec."""
        digest = (weights_sha256 or hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest())
        return f"{self.base}model/{_model_slug(spec)}-{segment(digest[:12].lower())}"

    def layer_segment(self, layer: str) -> str:
        """The encoded segment of a layer name (cached: layer names repeat in every line)."""
        seg = self._layer_seg.get(layer)
        if seg is None:
            seg = self._layer_seg[layer] = segment(layer)
        return seg

    def layer(self, model_iri: str, layer: str) -> str:
        """``…/model/…/layer/{layer}``."""
        return f"{model_iri}/layer/{self.layer_segment(layer)}"

    def filter(self, model_iri: str, layer: str, index: int) -> str:
        """``…/layer/{layer}/filter/{index}``."""
        return f"{model_iri}/layer/{self.layer_segment(layer)}/filter/{int(index)}"

    def synset(self, wnid: str) -> str:
        """``B concept/{wnid}`` for a WordNet 3.0 noun synset."""
        return f"{self.base}concept/{segment(wnid)}"

    def label_concept(self, class_id: str) -> str:
        """``B concept/label/{class id}`` for a class that has no synset."""
        return f"{self.base}concept/label/{segment(class_id)}"

    def concept(self, class_id: str, wnid: str | None) -> str:
        """The concept of a class: its synset when linked (or wnid-shaped), else a label concept."""
        if wnid:
            return self.synset(wnid)
        if _WNID.fullmatch(class_id):
            return self.synset(class_id)
        return self.label_concept(class_id)

    def wordnet_scheme(self) -> str:
        """``B scheme/wordnet-3.0``: the concept scheme of the synsets."""
        return f"{self.base}scheme/wordnet-3.0"

    def dataset(self, fingerprint: str) -> str:
        """``B dataset/{fingerprint16}`` (the dataset fingerprint is a SHA-256)."""
        return f"{self.base}dataset/{segment(fingerprint[:16].lower())}"

    def image(self, sha256: str) -> str:
        """``B image/{sha256}``: an image is named by its bytes."""
        return f"{self.base}image/{segment(sha256.lower())}"

    def software(self, name: str, version: str) -> str:
        """``B software/{name}/{version}``."""
        return f"{self.base}software/{segment(name)}/{segment(version)}"

    # -- one run --------------------------------------------------------------------
    def run(self, spec: str, identity: Any) -> str:
        """``B run/{slug}-{hash16}``; the hash is of ``identity`` (what makes the run itself)."""
        return f"{self.base}run/{_model_slug(spec)}-{content_hash(identity)}"

    @staticmethod
    def knowledge_graph(run_iri: str) -> str:
        """``R/kg``: the VoID dataset of the whole export."""
        return f"{run_iri}/kg"

    @staticmethod
    def tag_graph(run_iri: str) -> str:
        """``R/kg/tags``: name of the named graph with the tags (and its VoID subset)."""
        return f"{run_iri}/kg/tags"

    @staticmethod
    def void_graph(run_iri: str) -> str:
        """``R/kg/void``: name of the named graph with the VoID description."""
        return f"{run_iri}/kg/void"

    @staticmethod
    def explanation_set(run_iri: str) -> str:
        """``R/kg/explanations``: the VoID subset of all explanation graphs."""
        return f"{run_iri}/kg/explanations"

    @staticmethod
    def setting(run_iri: str, method: str, param: str) -> str:
        """``R/setting/{method}-{param}``."""
        return f"{run_iri}/setting/{segment(setting_key(method, param))}"

    @staticmethod
    def parameter(run_iri: str, name: str) -> str:
        """``R/parameter/{name}``."""
        return f"{run_iri}/parameter/{segment(name)}"

    def tag(self, run_iri: str, layer: str, index: int, method: str, param: str, class_id: str) -> str:
        """``R/tag/{layer}/{filter}/{setting}/{class}``."""
        return (
            f"{run_iri}/tag/{self.layer_segment(layer)}/{int(index)}/"
            f"{segment(setting_key(method, param))}/{segment(class_id)}"
        )

    def abstract_tag(self, run_iri: str, layer: str, index: int, method: str, param: str, wnid: str) -> str:
        """``R/abstract-tag/{layer}/{filter}/{setting}/{wnid}``."""
        return (
            f"{run_iri}/abstract-tag/{self.layer_segment(layer)}/{int(index)}/"
            f"{segment(setting_key(method, param))}/{segment(wnid)}"
        )

    @staticmethod
    def class_explanation(run_iri: str, method: str, param: str, class_id: str) -> str:
        """``R/class-explanation/{setting}/{class}``."""
        return f"{run_iri}/class-explanation/{segment(setting_key(method, param))}/{segment(class_id)}"

    @staticmethod
    def labels_graph(run_iri: str) -> str:
        """``R/kg/labels``: name of the named graph with the human labels of the run's filters."""
        return f"{run_iri}/kg/labels"

    @staticmethod
    def human_label(run_iri: str, layer: str, index: int, annotator: str, text: str, time: str) -> str:
        """``R/human-label/{layer}/{filter}/{hash of annotator, text, time}``."""
        return (f"{run_iri}/human-label/{segment(layer)}/{index}/"
                f"{content_hash([annotator, text, time])}")

    def annotator(self, name: str) -> str:
        """``B annotator/{name}``: a person (or team) who labelled filters."""
        return f"{self.base}annotator/{segment(name)}"

    @staticmethod
    def sentence_generation(run_iri: str) -> str:
        """``R/sentences``: the generation of the run's sentences (:mod:`filtag_kg.sentences`)."""
        return f"{run_iri}/sentences"

    @staticmethod
    def explanation_run(run_iri: str) -> str:
        """``R/explanations``: the activity that explained images with the run's tags."""
        return f"{run_iri}/explanations"

    @staticmethod
    def classification(run_iri: str, index: int | str, perturbation: dict[str, Any] | None = None) -> str:
        """``R/classification/{index}[/{kind}-{param}-{seed}]``: the model's classification of one
        image (variant), shared by the image's explanations under every setting and weighting.

        Also the name of its named graph.
        """
        iri = f"{run_iri}/classification/{segment(str(index))}"
        if perturbation:
            iri += "/" + _perturbation_segment(perturbation)
        return iri

    @staticmethod
    def explanation(
        run_iri: str,
        index: int | str,
        method: str,
        param: str,
        perturbation: dict[str, Any] | None = None,
        weighting: str | None = None,
    ) -> str:
        """``R/explanation/{index}/{setting}[/{kind}-{param}-{seed}][/{weighting}]``.

        Also the name of the explanation's named graph.
        """
        iri = f"{run_iri}/explanation/{segment(str(index))}/{segment(setting_key(method, param))}"
        if perturbation:
            iri += "/" + _perturbation_segment(perturbation)
        if weighting:
            iri += "/" + segment(str(weighting))
        return iri

    def active_filter(self, explanation_iri: str, layer: str, index: int) -> str:
        """``E/active/{layer}/{filter}``."""
        return f"{self.active_filter_prefix(explanation_iri)}{self.layer_segment(layer)}/{int(index)}"

    @staticmethod
    def active_filter_prefix(explanation_iri: str) -> str:
        """``E/active/``, to which the hot loop appends ``{layer segment}/{filter}``."""
        return f"{explanation_iri}/active/"

    @classmethod
    def vote(cls, explanation_iri: str, class_id: str) -> str:
        """``E/vote/{class}``."""
        return f"{cls.vote_prefix(explanation_iri)}{segment(class_id)}"

    @staticmethod
    def vote_prefix(explanation_iri: str) -> str:
        """``E/vote/``, to which the hot loop appends ``segment(class id)``."""
        return f"{explanation_iri}/vote/"

    @classmethod
    def last_layer_vote(cls, explanation_iri: str, class_id: str) -> str:
        """``E/last-layer-vote/{class}``."""
        return f"{cls.last_layer_vote_prefix(explanation_iri)}{segment(class_id)}"

    @staticmethod
    def last_layer_vote_prefix(explanation_iri: str) -> str:
        """``E/last-layer-vote/``, to which the hot loop appends ``segment(class id)``."""
        return f"{explanation_iri}/last-layer-vote/"

    @staticmethod
    def model_prediction(classification_iri: str, rank: int) -> str:
        """``C/model-prediction/{rank}``."""
        return f"{classification_iri}/model-prediction/{int(rank)}"

    @staticmethod
    def perturbation(classification_iri: str) -> str:
        """``C/perturbation``."""
        return f"{classification_iri}/perturbation"

    # -- feature-map clusters (explain --clusters) ----------------------------------------
    def cluster(self, classification_iri: str, layer: str, rank: int) -> str:
        """``C/cluster/{layer}/{rank}``: a feature-map cluster of an image variant, stated once in
        its classification graph ``C`` (members, weight and map do not depend on the setting)."""
        return f"{self.cluster_prefix(classification_iri)}{self.layer_segment(layer)}/{int(rank)}"

    @staticmethod
    def cluster_prefix(graph_iri: str) -> str:
        """``C/cluster/`` (or ``E/cluster/`` for labels), to which ``{layer segment}/{rank}`` is appended."""
        return f"{graph_iri}/cluster/"

    @staticmethod
    def run_file(run_iri: str, path: str) -> str:
        """``R/file/{path}``: a file of the run folder, by its path relative to the folder
        (each ``/``-separated part one segment, so ``..`` or ``%`` cannot escape or collide)."""
        return f"{run_iri}/file/" + "/".join(segment(part) for part in path.split("/"))

    @staticmethod
    def cluster_map(run_iri: str, path: str, fragment: str | None = None) -> str:
        """A cluster's map: ``R/file/{path}#{fragment}``, its region of the atlas ``path``
        (``xywh=x,y,w,h``), or the whole file without a fragment (maps of older runs)."""
        iri = Minter.run_file(run_iri, path)
        return f"{iri}#{fragment}" if fragment is not None else iri

    @staticmethod
    def clusters_graph(run_iri: str) -> str:
        """``R/kg/clusters``: name of the named graph with the run's class-level cluster aggregates."""
        return f"{run_iri}/kg/clusters"

    def cluster_aggregate(self, run_iri: str, method: str, param: str, class_id: str, layer: str) -> str:
        """``R/cluster-aggregate/{setting}/{class}/{layer}`` (A)."""
        return (f"{run_iri}/cluster-aggregate/{segment(setting_key(method, param))}/{segment(class_id)}/"
                f"{self.layer_segment(layer)}")

    @staticmethod
    def aggregate_concept(aggregate_iri: str, class_id: str) -> str:
        """``A/concept/{class}``: one concept entry of a cluster aggregate."""
        return f"{aggregate_iri}/concept/{segment(class_id)}"

    # -- structured attention graphs (docs/saliency-method.md) --------------------------
    @staticmethod
    def sag(run_iri: str, sha256: str) -> str:
        """``R/sag/{sha256-16}``: the SAG of one image (by content), also its graph's name."""
        return f"{run_iri}/sag/{segment(sha256[:16].lower())}"

    @staticmethod
    def region_set(sag_iri: str, patches: Sequence[int]) -> str:
        """``G/region/{p1-p2-...}`` (patches ascending)."""
        return f"{sag_iri}/region/{'-'.join(str(int(p)) for p in sorted(patches)) or 'none'}"

    @classmethod
    def region_removal(cls, sag_iri: str, parent: Sequence[int], removed: int) -> str:
        """``G/region/{parent}/minus/{patch}``: the edge removing one patch."""
        return f"{cls.region_set(sag_iri, parent)}/minus/{int(removed)}"

    @staticmethod
    def region_vote(region_iri: str, class_id: str) -> str:
        """``G/region/{patches}/vote/{class}``."""
        return f"{region_iri}/vote/{segment(class_id)}"

    @staticmethod
    def saliency_map(sag_iri: str) -> str:
        """``G/igos``: the iGOS++ heatmap made with the SAG."""
        return f"{sag_iri}/igos"

    # -- ClaDec (filtag-kg cladec) ------------------------------------------------------
    @staticmethod
    def cladec_graph(run_iri: str) -> str:
        """``R/kg/cladec``: name of the named graph with the run's ClaDec decoders and reconstructions."""
        return f"{run_iri}/kg/cladec"

    def cladec_training(self, run_iri: str, layer: str, training: Any) -> str:
        """``R/cladec/{layer}-{hash16}`` (D): one ClaDec training; the hash is of what it was trained
        with (``training``: its fingerprint), so a retraining with other options is another IRI."""
        return f"{run_iri}/cladec/{self.layer_segment(layer)}-{content_hash(training)}"

    @staticmethod
    def cladec_part(training_iri: str, part: str) -> str:
        """``D/decoder``, ``D/reference`` or ``D/evaluation``."""
        return f"{training_iri}/{segment(part)}"

    @staticmethod
    def reconstruction(training_iri: str, sha256: str, by: str) -> str:
        """``D/reconstruction/{image sha256}/{cladec|reference}``."""
        return f"{training_iri}/reconstruction/{segment(sha256.lower())}/{segment(by)}"

    # -- public WordNet IRIs ----------------------------------------------------------
    @staticmethod
    def princeton_wn30(wnid: str) -> str:
        """Princeton WordNet RDF's IRI for a WordNet 3.0 synset: ``…/pwn30/02084071-n``."""
        return f"{PWN30}{wnid[1:]}-n"

    @staticmethod
    def ili(ili_id: str) -> str:
        """The Collaborative Interlingual Index IRI: ``http://globalwordnet.org/ili/i46360``."""
        return f"{ILI}{segment(ili_id)}"
