"""Generated sentences (:mod:`filtag_kg.sentences`) on the report's pages.

Image pages show the sentence of the image's primary explanation, each concept phrase
linked to a heatmap of the active filters that voted for it (their mean activation map in
the layer where most of them are, as the other heatmaps of the page); filter pages show
the filter's class distribution as a sentence, class pages the concepts its images vote for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..sentences import (
    Phrase,
    Sentence,
    SentenceContext,
    SentenceError,
    class_sentences,
    filter_sentences,
    image_sentence,
    setting_key,
)
from .htmlkit import Page, esc

__all__ = ["SentenceView", "phrase_voters", "sentence_html"]


class SentenceView:
    """The sentences of one run, for its report pages."""

    def __init__(self, ctx: SentenceContext, records: Any | None) -> None:
        self.ctx = ctx
        self.filters = {(s.subject["layer"], s.subject["filter"]): s for s in filter_sentences(ctx)}
        self.classes = {s.subject["class_id"]: s for s in class_sentences(ctx, records)} if records else {}

    @classmethod
    def build(cls, run_dir: Path, wordnet: Any) -> SentenceView | None:
        """The view, or ``None`` when the run cannot have sentences (no ``profile.json``)."""
        from ..explanations_io import iter_explanations

        try:
            ctx = SentenceContext.from_run(run_dir, wordnet=wordnet)
        except SentenceError:
            return None
        has = any((run_dir / n).exists() for n in ("explanations.parquet", "explanations.jsonl"))
        return cls(ctx, iter_explanations(run_dir) if has else None)

    def image(self, rec: Mapping[str, Any]) -> Sentence:
        """The sentence of one explanation record."""
        return image_sentence(self.ctx, rec)


def phrase_voters(
    ctx: SentenceContext, rec: Mapping[str, Any], phrase: Phrase, layers: Sequence[str]
) -> tuple[int, list[int], list[float]] | None:
    """The layer (its index in ``layers``) holding most of the active filters whose tags
    voted for the phrase's classes (ties: the later layer), those filters, and their vote
    weights (the Grad-CAM weights of a ``--weighting gradcam`` record, else 1)."""
    setting = setting_key(rec)
    members = set(phrase.members)
    best: tuple[int, list[int], list[float]] | None = None
    for li, layer in enumerate(layers):
        rows = [r for r in (rec.get("active_filters") or {}).get(layer, [])
                if members.intersection(ctx.tags.get((*setting, layer, int(r["filter"])), ()))]
        if rows and (best is None or len(rows) >= len(best[1])):
            weights = [1.0 if r.get("weight") is None else float(r["weight"]) for r in rows]
            best = (li, [int(r["filter"]) for r in rows], weights)
    return best


def sentence_html(page: Page, sentence: Sentence, maps: Mapping[int, str] | None = None) -> str:
    """The sentence as a paragraph; phrase ``i`` links to ``maps[i]`` (a heatmap) when given."""
    text = esc(sentence.text)
    for i, p in enumerate(sentence.phrases):
        target = (maps or {}).get(i)
        if target is None:
            continue
        old = "to " + esc(p.text)
        new = f'to <a class="phrase" href="{page.src(target)}" data-phrase="{i}">{esc(p.text)}</a>'
        text = text.replace(old, new, 1)
    return f'<p class="sentence" lang="en">{text}</p>'
