"""A few library queries answered on the demo's knowledge graph, for ``filtag-kg demo``.

The demo's classes are plane shapes named by WordNet synsets, so WordNet's
hierarchy groups them: circle and ellipse are conic sections
(``conic_section.n.01``); square, rectangle, rhombus, triangle, pentagon,
hexagon and octagon are polygons (``polygon.n.01``); the crescent is neither
(a curve). :func:`demo_answers` asks the graph which filters represent a
polygon and a conic section, and which explanations disagree with the
model, through the same queries ``filtag-kg query`` runs.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LoadError
from .results import Result

if TYPE_CHECKING:
    from ..wordnet import WordNet

__all__ = ["DEMO_CONCEPTS", "demo_answers", "find_graph_file"]

#: The concepts the demo asks about: (synset name, how to say it).
DEMO_CONCEPTS: tuple[tuple[str, str], ...] = (
    ("polygon.n.01", "a polygon"),
    ("conic_section.n.01", "a conic section"),
)

_GRAPH_FILES = ("kg.trig", "kg.nq", "kg.jsonld", "kg.ttl", "kg.nt", "kg.rdf")


def find_graph_file(run_dir: str | os.PathLike[str]) -> Path:
    """The knowledge-graph file a run folder holds (``kg.trig``, else ``kg.nq``, ...).

    Raises:
        LoadError: the folder has none (export it first with ``filtag-kg export``).
    """
    run = Path(run_dir)
    for name in _GRAPH_FILES:
        if (run / name).is_file():
            return run / name
    raise LoadError(
        f"no knowledge graph in {run} (looked for {', '.join(_GRAPH_FILES)}); "
        f"write one with `filtag-kg export {run}`"
    )


def _setting_order(setting: str) -> tuple[int, str]:
    # "top-k 1" before "top-k 3" before others: the most selective setting first
    head, _, tail = setting.rpartition(" ")
    try:
        return (0, f"{head} {float(tail):012.4f}")
    except ValueError:
        return (1, setting)


def _filter_lines(result: Result, what: str, name: str, *, limit: int = 4) -> list[str]:
    by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in result.dicts():
        by_setting[str(row.get("setting", ""))].append(row)
    if not by_setting:
        return [f"  which filters represent {what} ({name})? none"]
    settings = sorted(by_setting, key=_setting_order)
    first = by_setting[settings[0]]
    shown = ", ".join(
        f"{r['layer']} filter {r['filter']} ({', '.join(sorted(str(r.get('matched', '')).split(', ')))})"
        for r in first[:limit]
    )
    more = f", and {len(first) - limit} more" if len(first) > limit else ""
    others = "; ".join(f"{len(by_setting[s])} under {s}" for s in settings[1:])
    lines = [f"  which filters represent {what} ({name})? {len(first)} under {settings[0]}: {shown}{more}"]
    if others:
        lines.append(f"    ({others})")
    return lines


def demo_answers(run_dir: str | os.PathLike[str], *, wordnet: WordNet | None = None) -> str:
    """Readable answers of a few library queries on a run's knowledge graph.

    Loads the run's ``kg.trig`` (or another ``kg.*`` export) into an in-memory
    Oxigraph store and asks which filters represent a polygon and a conic
    section (``filters-for-concept``, counting hyponyms: squares, hexagons ...
    are polygons; circles and ellipses conic sections), and which
    explanations predict another class than the model (``misexplained-images``).

    Args:
        run_dir: the demo's run folder (``filtag-demo``).
        wordnet: WordNet 3.0 source for the synset names (default: the usual one).

    Returns:
        A few lines, ending without a newline.

    Raises:
        LoadError: the run has no knowledge-graph file, or it does not parse.
    """
    from . import open_source, query

    path = find_graph_file(run_dir)
    lines = [
        f"questions to the knowledge graph {path.name} "
        "(SPARQL from queries/; `filtag-kg queries` lists them):"
    ]
    with open_source(graphs=[path]) as source:
        for name, what in DEMO_CONCEPTS:
            result = query(source, "filters-for-concept", wordnet=wordnet, concept=name)
            lines += _filter_lines(result, what, name)
        wrong = query(source, "misexplained-images")
    by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in wrong.dicts():
        by_setting[str(row.get("setting", ""))].append(row)
    if not by_setting:
        lines.append("  which explanations predict another class than the model? none")
    for setting in sorted(by_setting, key=_setting_order)[:1]:
        rows = by_setting[setting]
        r = rows[0]
        lines.append(
            f"  which explanations predict another class than the model? {len(rows)} under {setting}, e.g. "
            f"{r.get('image', '?')}: model {r.get('modelTopLabel', '?')}, "
            f"explanation {r.get('predictedLabel', '?')}"
        )
    return "\n".join(lines)
