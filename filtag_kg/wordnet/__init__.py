"""Link tags to WordNet 3.0 synsets and reason over their hypernyms, offline.

An ImageNet wnid such as ``n02084071`` is the WordNet 3.0 noun synset at
offset 02084071 (``dog.n.01``). This package finds a WordNet 3.0 source
(nltk's corpus, a database directory, or the bundled slice; see
:mod:`.source`), links dataset classes to synsets (:mod:`.mapping`) and
builds the hypernym hierarchy above them, from which it derives per-filter
abstract tags and per-layer histograms (:mod:`.hierarchy`).
"""

from __future__ import annotations

from .hierarchy import (
    DEFAULT_ROOTS,
    MIN_ABSTRACT_DEPTH,
    AbstractionError,
    AbstractionReport,
    AbstractTag,
    FilterAbstraction,
    Hierarchy,
    HistogramRow,
    abstract_filter_tags,
    abstract_tags,
    hypernym_graph,
    layer_histograms,
    write_abstractions,
)
from .mapping import (
    ClassLink,
    ClassMapping,
    link_class,
    map_classes,
    map_tag_classes,
    read_synset_map,
)
from .source import (
    ROOT_SYNSET,
    SHAPE_CLASSES,
    SOURCES,
    WORDNET_VERSION,
    LemmaSenses,
    SynsetInfo,
    WordNet,
    WordNetSourceError,
    cache_dir,
    clear_cache,
    format_show,
    format_status,
    install,
    load_wordnet,
    parse_synset_key,
    show,
    status,
)

__all__ = [
    "DEFAULT_ROOTS",
    "MIN_ABSTRACT_DEPTH",
    "ROOT_SYNSET",
    "SHAPE_CLASSES",
    "SOURCES",
    "WORDNET_VERSION",
    "AbstractTag",
    "AbstractionError",
    "AbstractionReport",
    "ClassLink",
    "ClassMapping",
    "FilterAbstraction",
    "Hierarchy",
    "HistogramRow",
    "LemmaSenses",
    "SynsetInfo",
    "WordNet",
    "WordNetSourceError",
    "abstract_filter_tags",
    "abstract_tags",
    "cache_dir",
    "clear_cache",
    "format_show",
    "format_status",
    "hypernym_graph",
    "install",
    "layer_histograms",
    "link_class",
    "load_wordnet",
    "map_classes",
    "map_tag_classes",
    "parse_synset_key",
    "read_synset_map",
    "show",
    "status",
    "write_abstractions",
]
