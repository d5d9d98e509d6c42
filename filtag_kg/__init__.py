"""filtag-kg: tag CNN filters with the classes that activate them most (FilTag),
link the tags to WordNet and publish them as a knowledge graph.

The public API mirrors the CLI: ``load_model`` + ``image_folder`` +
``profile_dataset`` (step 1), ``write_tags`` / ``tag_profile`` (step 2),
``explain_dataset`` + ``evaluate_run`` (step 3); WordNet linking is in
``filtag_kg.wordnet``, RDF export in ``filtag_kg.rdf``. Heavy modules (torch)
are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "models",
    "LoadedModel": "models",
    "ClassInfo": "models",
    "conv_layer_names": "models",
    "select_layers": "models",
    "find_measure_points": "measure",
    "MeasurePoint": "measure",
    "FilterProbe": "activations",
    "scaled_filter_values": "activations",
    "image_folder": "data",
    "file_list": "data",
    "ImageSet": "data",
    "Profile": "profile",
    "ProfileOptions": "profile",
    "profile_dataset": "profile",
    "TagSetting": "tagging",
    "Tag": "tagging",
    "tag_profile": "tagging",
    "write_tags": "tagging",
    "read_tags_tsv": "tagging",
    "ExplainOptions": "explain",
    "explain_dataset": "explain",
    "read_explanations": "explain",
    "evaluate_run": "evaluation",
    "load_recorded_model": "models",
    "run_demo": "demo",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
