"""WordNet 3.0 sources and one synset API over all of them.

Three sources, tried in this order when none is named:

1. ``nltk``: nltk's WordNet corpus (``corpora/wordnet`` or
   ``corpora/wordnet.zip`` on ``nltk.data.path``, or in this package's own
   nltk data root where :func:`install` puts it).
2. ``wordnet-dir``: a WordNet 3.0 database directory (``wordnet_dir``
   argument, ``$WNHOME`` or ``$WNHOME/dict``, or Debian's
   ``/usr/share/wordnet`` from ``wordnet-base`` + ``wordnet-sense-index``).
   nltk's reader cannot read such a directory in place: it needs a
   ``lexnames`` file that the database lacks, and nltk >= 3.9 reads only
   files under a root on ``nltk.data.path`` that are private to their owner.
   The files are therefore copied once into a private nltk data root under
   the cache directory (:func:`cache_dir`), with ``lexnames`` added.
3. ``slice``: the bundled offline slice (``resources/wordnet30-slice.json.gz``),
   every synset on the hypernym paths of the 1000 ImageNet-1k classes and of
   the demo's shape classes. It answers the same questions for those
   synsets and says so when asked about anything else.

Every source is WordNet 3.0, so an ImageNet wnid ``n02084071`` is the noun
synset at offset 02084071 (``dog.n.01``) in all three. Only noun synsets are
served: wnids are nouns, and the hierarchy used for abstraction is the noun
hierarchy under ``entity.n.01``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, UnknownSynsetError

__all__ = [
    "ROOT_SYNSET",
    "SHAPE_CLASSES",
    "SOURCES",
    "SOURCE_DIR",
    "SOURCE_NLTK",
    "SOURCE_SLICE",
    "WORDNET_VERSION",
    "LemmaSenses",
    "SourceCandidate",
    "SynsetInfo",
    "WordNet",
    "WordNetSourceError",
    "cache_dir",
    "clear_cache",
    "format_show",
    "format_status",
    "install",
    "load_wordnet",
    "normalize_lemma",
    "nltk_install_root",
    "parse_synset_key",
    "show",
    "slice_path",
    "synset_closure",
    "status",
]

WORDNET_VERSION = "3.0"
SOURCE_NLTK = "nltk"
SOURCE_DIR = "wordnet-dir"
SOURCE_SLICE = "slice"
SOURCES = (SOURCE_NLTK, SOURCE_DIR, SOURCE_SLICE)
#: The unique beginner of the noun hierarchy.
ROOT_SYNSET = "entity.n.01"

#: The demo's shape classes (wnid -> label); the slice always covers them.
SHAPE_CLASSES: dict[str, str] = {
    "n13873502": "circle",
    "n13878306": "ellipse",
    "n13896217": "crescent",
    "n13878634": "square",
    "n13883346": "rectangle",
    "n13882961": "rhombus",
    "n13879320": "triangle",
    "n13882201": "pentagon",
    "n13882276": "hexagon",
    "n13882563": "octagon",
}

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
SLICE_FILE = "wordnet30-slice.json.gz"
SLICE_FORMAT = "filtag-kg wordnet slice"

# The 45 lexicographer files of WordNet 3.0 in file-number order (lexnames(5WN)).
# The database packages omit the ``lexnames`` file that nltk's reader needs.
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Files nltk's reader opens while it loads, then the optional ones it uses later.
_REQUIRED_DB_FILES = tuple(
    f"{kind}.{pos}" for pos in ("noun", "verb", "adj", "adv") for kind in ("data", "index")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
_OPTIONAL_DB_FILES = ("index.sense", "cntlist.rev", "lexnames")

_WNID_RE = re.compile(r"n(\d{8})")
_OFFSET_POS_RE = re.compile(r"(\d{8})-n")
_NAME_RE = re.compile(r"(.+)\.([nvasr])\.(\d+)")
_VERSION_RE = re.compile(rb"WordNet (\d+\.\d+) Copyright")


class WordNetSourceError(DataError):
    """No usable WordNet source, or a given database directory is not WordNet 3.0."""


@dataclass(frozen=True)
class SynsetInfo:
    """One noun synset, the same record whichever source answered.

    Attributes:
        name: nltk-style synset name, e.g. ``"dog.n.01"``.
        wnid: ImageNet-style id, ``"n"`` + the 8-digit WordNet 3.0 offset.
        lemmas: lemma names in WordNet's order (first is the head word).
        definition: the gloss's definition.
        hypernyms: names of the direct hypernyms, sorted by name.
        instance_hypernyms: names of the direct instance hypernyms (for
            instances such as ``eiffel_tower.n.01``), sorted by name.
    """

    name: str
    wnid: str
    lemmas: tuple[str, ...]
    definition: str
    hypernyms: tuple[str, ...] = ()
    instance_hypernyms: tuple[str, ...] = ()

    @property
    def parents(self) -> tuple[str, ...]:
        """Hypernyms followed by instance hypernyms: every edge one step up."""
        return self.hypernyms + self.instance_hypernyms

    @property
    def label(self) -> str:
        """The head lemma (the first lemma name)."""
        return self.lemmas[0] if self.lemmas else self.name.split(".", 1)[0]

    @property
    def offset(self) -> int:
        """The WordNet 3.0 noun offset as an integer."""
        return int(self.wnid[1:])


@dataclass(frozen=True)
class LemmaSenses:
    """The noun senses of one lemma.

    Attributes:
        lemma: the normalised lemma (lower case, ``_`` for spaces).
        senses: ``(sense_number, synset_name)`` pairs available in the source,
            in sense order (1 = WordNet's most frequent sense).
        total: how many noun senses the lemma has in full WordNet 3.0; more
            than ``len(senses)`` only for the bundled slice, which holds a
            subset of the synsets.
    """

    lemma: str
    senses: tuple[tuple[int, str], ...]
    total: int

    @property
    def names(self) -> tuple[str, ...]:
        """Synset names of the available senses, in sense order."""
        return tuple(n for _, n in self.senses)


@dataclass(frozen=True)
class SourceCandidate:
    """One place a WordNet source was looked for, and what was found there."""

    source: str
    location: str | None
    available: bool
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "source": self.source,
            "location": self.location,
            "available": self.available,
            "reason": self.reason,
        }


def parse_synset_key(key: str) -> tuple[str, int | str]:
    """Classify a synset reference.

    Accepted forms: a wnid ``n02084071``, an offset-pos id ``02084071-n`` (as
    used by the ILI maps) or a noun synset name ``dog.n.01``.

    Returns:
        ``("offset", 2084071)`` or ``("name", "dog.n.01")``.

    Raises:
        UnknownSynsetError: the key has none of these forms, or names a
            synset of another part of speech.
    """
    if not isinstance(key, str):
        raise UnknownSynsetError(f"synset reference {key!r} must be a string")
    k = key.strip()
    m = _WNID_RE.fullmatch(k) or _OFFSET_POS_RE.fullmatch(k)
    if m:
        return "offset", int(m.group(1))
    m = _NAME_RE.fullmatch(k)
    if m:
        if m.group(2) != "n":
            raise UnknownSynsetError(
                f"{key!r} is not a noun synset; only noun synsets (such as 'dog.n.01') "
                f"can be linked"
            )
        return "name", k
    raise UnknownSynsetError(
        f"malformed synset reference {key!r}: expected a wnid ('n' + 8 digits, e.g. "
        f"'n02084071'), an offset id ('02084071-n') or a synset name ('dog.n.01')"
    )


def normalize_lemma(text: str) -> str:
    """Lemma form used for look-ups: trimmed, lower case, ``_`` for spaces."""
    return "_".join(text.strip().split()).lower()


class WordNet:
    """Noun synsets of WordNet 3.0 from one source.

    Obtain one with :func:`load_wordnet`. Look-ups accept any form that
    :func:`parse_synset_key` accepts and return :class:`SynsetInfo` records,
    so callers never see which source answered.

    Attributes:
        source: ``"nltk"``, ``"wordnet-dir"`` or ``"slice"``.
        location: where the data was read from.
        complete: whether the source holds all of WordNet 3.0 (only the slice
            does not).
    """

    source: str = ""
    location: str | None = None
    complete: bool = True

    def __init__(self) -> None:
        self._depth: dict[str, int] = {}
        self._paths: dict[str, tuple[tuple[str, ...], ...]] = {}

    # -- backend hooks -------------------------------------------------------
    def _by_offset(self, offset: int) -> SynsetInfo | None:
        raise NotImplementedError

    def _by_name(self, name: str) -> SynsetInfo | None:
        raise NotImplementedError

    def lemma_senses(self, lemma: str) -> LemmaSenses:
        """The noun senses whose lemmas include ``lemma`` (exact, case-insensitive).

        No morphological reduction is applied, so ``"dogs"`` finds nothing;
        spaces and underscores are equivalent.
        """
        raise NotImplementedError

    def noun_count(self) -> int:
        """How many noun synsets this source holds."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line saying what this source covers."""
        raise NotImplementedError

    # -- public API ----------------------------------------------------------
    def find(self, key: str) -> SynsetInfo | None:
        """Like :meth:`synset` but ``None`` for a well-formed key that is absent.

        Raises:
            UnknownSynsetError: the key is malformed.
        """
        kind, value = parse_synset_key(key)
        if kind == "offset":
            return self._by_offset(int(value))
        return self._by_name(str(value))

    def synset(self, key: str) -> SynsetInfo:
        """The synset for a wnid, offset id or synset name.

        Raises:
            UnknownSynsetError: the key is malformed or names no synset of
                this source (the message says when the source is the slice).

        Example:
            >>> load_wordnet(source="slice").synset("n02084071").name
            'dog.n.01'
        """
        info = self.find(key)
        if info is None:
            raise UnknownSynsetError(self._missing_message(key))
        return info

    def _missing_message(self, key: str) -> str:
        if self.complete:
            return f"unknown synset {key!r}: WordNet {WORDNET_VERSION} has no such noun synset"
        return (
            f"synset {key!r} is not in the bundled WordNet slice, which covers only the "
            f"hypernym paths of the ImageNet-1k and demo classes; install full WordNet "
            f"({_INSTALL_HINT}) to look it up"
        )

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            return self.find(key) is not None
        except UnknownSynsetError:
            return False

    def wnid(self, key: str) -> str:
        """The wnid of a synset (``"dog.n.01"`` -> ``"n02084071"``)."""
        return self.synset(key).wnid

    def name(self, key: str) -> str:
        """The synset name of a wnid (``"n02084071"`` -> ``"dog.n.01"``)."""
        return self.synset(key).name

    def parents(self, key: str) -> tuple[str, ...]:
        """Names of the direct hypernyms and instance hypernyms."""
        return self.synset(key).parents

    def hypernym_paths(self, key: str) -> list[list[str]]:
        """Every path from ``entity.n.01`` down to the synset (root first, synset last).

        Both hypernym and instance-hypernym edges are followed, as nltk's
        ``Synset.hypernym_paths`` does.
        """
        return [list(p) for p in self._paths_of(self.synset(key).name)]

    def _paths_of(self, name: str) -> tuple[tuple[str, ...], ...]:
        done = self._paths.get(name)
        if done is not None:
            return done
        # Iterative post-order walk: WordNet's noun hierarchy is deep enough
        # (up to ~20 levels) that recursion is fine, but a loop keeps stack
        # use flat and lets shared ancestors be computed once.
        stack = [name]
        while stack:
            top = stack[-1]
            if top in self._paths:
                stack.pop()
                continue
            parents = self.synset(top).parents
            missing = [p for p in parents if p not in self._paths]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            if not parents:
                self._paths[top] = ((top,),)
            else:
                self._paths[top] = tuple(
                    path + (top,) for p in parents for path in self._paths[p]
                )
        return self._paths[name]

    def depth(self, key: str) -> int:
        """Length of the shortest hypernym path to the root (``entity.n.01`` is 0).

        This is nltk's ``Synset.min_depth``.
        """
        name = self.synset(key).name
        d = self._depth.get(name)
        if d is None:
            d = min(len(p) for p in self._paths_of(name)) - 1
            self._depth[name] = d
        return d

    def ancestors(self, key: str) -> set[str]:
        """Names of all hypernyms (transitively), excluding the synset itself."""
        out: set[str] = set()
        todo = list(self.synset(key).parents)
        while todo:
            s = todo.pop()
            if s not in out:
                out.add(s)
                todo.extend(self.synset(s).parents)
        return out

    def __repr__(self) -> str:
        return f"<WordNet {WORDNET_VERSION} source={self.source!r} location={self.location!r}>"


# ---------------------------------------------------------------------------
# nltk-backed sources (nltk corpus and prepared database directories)
# ---------------------------------------------------------------------------

_READER_CLASS: Any = None


def _reader_class() -> Any:
    """nltk's WordNet reader without the WordNet-version remapping.

    The stock reader, on load, maps the loaded WordNet onto nltk's default
    ``wordnet`` corpus through ``index.sense`` (for the multilingual data).
    For WordNet 3.0 that mapping is the identity yet costs about two seconds
    and requires nltk's own corpus to be findable; this subclass skips it.
    """
    global _READER_CLASS
    if _READER_CLASS is None:
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        class _WordNet30Reader(WordNetCorpusReader):  # type: ignore[misc]
            def map_wn(self, version: str = "wordnet") -> None:
                return None

        _READER_CLASS = _WordNet30Reader
    return _READER_CLASS


def _ensure_on_nltk_path(root: Path) -> None:
    """Let nltk's path security check accept files under ``root``."""
    import nltk.data

    text = str(root)
    if text not in [str(p) for p in nltk.data.path]:
        nltk.data.path.append(text)


def _lookup_errors() -> tuple[type[Exception], ...]:
    """What nltk raises for a synset that does not exist (I/O errors excluded)."""
    from nltk.corpus.reader.wordnet import WordNetError

    return (WordNetError, ValueError, KeyError, IndexError)


class _NltkWordNet(WordNet):
    """A WordNet served by nltk's corpus reader."""

    def __init__(
        self, reader: Any, *, source: str, location: str, nouns: _NounFiles | None = None
    ) -> None:
        """Args:
            reader: nltk's reader, or a function that makes it on first use.
            nouns: direct reads of the database's noun files, when they are plain
                files: synset look-ups then need neither nltk nor its lemma index.
        """
        super().__init__()
        self._make_reader = reader if callable(reader) and not hasattr(reader, "synset") else None
        self._loaded_reader = None if self._make_reader is not None else reader
        self._nouns = nouns
        self.source = source
        self.location = location
        self.complete = True
        self._cache: dict[str, SynsetInfo] = {}
        self._count: int | None = None
        self._errors_cached: tuple[type[Exception], ...] | None = None

    @property
    def _reader(self) -> Any:
        """nltk's reader, made on first use (loading it reads WordNet's whole lemma index)."""
        if self._loaded_reader is None:
            self._loaded_reader = self._make_reader()  # type: ignore[misc]
        return self._loaded_reader

    @property
    def _errors(self) -> tuple[type[Exception], ...]:
        if self._errors_cached is None:
            self._errors_cached = _lookup_errors()
        return self._errors_cached

    def _io_error(self, exc: OSError) -> WordNetSourceError:
        # PermissionError included: nltk refuses files outside nltk.data.path
        return WordNetSourceError(
            f"cannot read the WordNet at {self.location}: {exc}; if its nltk data root was "
            f"removed from nltk.data.path, load the source again"
        )

    def _info(self, s: Any) -> SynsetInfo:
        name = s.name()
        info = self._cache.get(name)
        if info is None:
            info = SynsetInfo(
                name=name,
                wnid=f"n{s.offset():08d}",
                lemmas=tuple(lem.name() for lem in s.lemmas()),
                definition=s.definition(),
                # nltk keeps pointers in sets, so its order varies between
                # processes; sorting by name makes paths and output stable.
                hypernyms=tuple(sorted(h.name() for h in s.hypernyms())),
                instance_hypernyms=tuple(sorted(h.name() for h in s.instance_hypernyms())),
            )
            self._cache[name] = info
        return info

    def _by_offset(self, offset: int) -> SynsetInfo | None:
        if self._nouns is not None:
            return self._direct(lambda: self._nouns.by_offset(offset))  # type: ignore[union-attr]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nltk warns about offsets inside a line
                s = self._reader.synset_from_pos_and_offset("n", offset)
        except self._errors:
            return None
        except OSError as exc:
            raise self._io_error(exc) from None
        if s is None or s.offset() != offset or s.pos() != "n":
            return None
        return self._info(s)

    def _direct(self, find: Any) -> SynsetInfo | None:
        try:
            info = find()
        except OSError as exc:
            raise self._io_error(exc) from None
        if info is not None:
            info = self._cache.setdefault(info.name, info)
        return info

    def _by_name(self, name: str) -> SynsetInfo | None:
        if self._nouns is not None:
            return self._direct(lambda: self._nouns.by_name(name))  # type: ignore[union-attr]
        try:
            s = self._reader.synset(name)
        except self._errors:
            return None
        except OSError as exc:
            raise self._io_error(exc) from None
        if s is None or s.pos() != "n":
            return None
        return self._info(s)

    def lemma_senses(self, lemma: str) -> LemmaSenses:
        norm = normalize_lemma(lemma)
        if not norm:
            return LemmaSenses(norm, (), 0)
        # "lemma.n.NN" names the lemma's NN-th sense in index.noun order; unlike
        # synsets(), this applies no morphology, so the look-up is exact.
        senses: list[tuple[int, str]] = []
        if self._nouns is not None:
            for number, offset in enumerate(self._direct_offsets(norm), start=1):
                info = self._by_offset(offset)
                if info is not None:
                    senses.append((number, info.name))
            return LemmaSenses(norm, tuple(senses), len(senses))
        while True:
            try:
                s = self._reader.synset(f"{norm}.n.{len(senses) + 1:02d}")
            except self._errors:  # past the last sense, or no such lemma
                break
            except OSError as exc:
                raise self._io_error(exc) from None
            senses.append((len(senses) + 1, self._info(s).name))
        return LemmaSenses(norm, tuple(senses), len(senses))

    def _direct_offsets(self, lemma: str) -> list[int]:
        try:
            return self._nouns.offsets(lemma)  # type: ignore[union-attr]
        except OSError as exc:
            raise self._io_error(exc) from None

    def noun_count(self) -> int:
        if self._count is None and self._nouns is not None:
            self._count = self._nouns.count()
        if self._count is None:
            n = 0
            try:
                with self._reader.open("data.noun") as fh:
                    for line in fh:
                        if not line.startswith("  "):
                            n += 1
            except OSError as exc:
                raise self._io_error(exc) from None
            self._count = n
        return self._count

    def describe(self) -> str:
        return f"all of WordNet {WORDNET_VERSION} ({self.noun_count()} noun synsets)"


class _NounFiles:
    """Noun synsets read straight from a WordNet 3.0 database's ``data.noun`` and ``index.noun``.

    Loading nltk's reader costs seconds (importing nltk, then its index of every
    lemma of every part of speech); an export needs a few hundred synsets. A
    synset's line sits at its offset in ``data.noun``; its name (``dog.n.01``)
    is its first lemma with that lemma's sense number, found by a binary search
    of the sorted ``index.noun``. The results equal nltk's (tested against it).
    """

    def __init__(self, folder: Path) -> None:
        import mmap

        self.folder = folder
        self._maps = []
        for name in ("data.noun", "index.noun"):
            with open(folder / name, "rb") as fh:
                self._maps.append(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
        self._data, self._index = self._maps
        self._senses: dict[str, list[int]] = {}

    @classmethod
    def at(cls, folder: Path) -> _NounFiles | None:
        """The reader of ``folder``, or ``None`` if it lacks readable noun files."""
        try:
            plain = (folder / "data.noun").is_file() and (folder / "index.noun").is_file()
            return cls(folder) if plain else None
        except (OSError, ValueError):
            return None

    def offsets(self, lemma: str) -> list[int]:
        """The noun synset offsets of ``lemma`` (lower case, ``_`` for spaces), in sense order."""
        got = self._senses.get(lemma)
        if got is None:
            line = self._index_line(lemma.encode("utf-8"))
            got = []
            if line is not None:
                toks = line.decode("utf-8").split()
                n, n_ptr = int(toks[2]), int(toks[3])
                got = [int(t) for t in toks[4 + n_ptr + 2 : 4 + n_ptr + 2 + n]]
            self._senses[lemma] = got
        return got

    def _index_line(self, key: bytes) -> bytes | None:
        mm, lo, hi = self._index, 0, len(self._index)
        while lo < hi:  # lo and hi are always line starts
            mid = (lo + hi) // 2
            start = mm.rfind(b"\n", 0, mid) + 1
            end = mm.find(b"\n", start)
            end = len(mm) if end < 0 else end
            line = mm[start:end]
            word = line.split(b" ", 1)[0]
            if line.startswith(b" ") or word < key:  # the licence header sorts first
                lo = end + 1
            elif word == key:
                return line
            else:
                hi = start
        return None

    def _line(self, offset: int) -> str | None:
        if offset < 0 or offset >= len(self._data):
            return None
        end = self._data.find(b"\n", offset)
        line = self._data[offset : len(self._data) if end < 0 else end].decode("utf-8")
        head = line[:8]
        return line if head.isdigit() and int(head) == offset else None

    def _name(self, offset: int, first_lemma: str) -> str | None:
        lemma = first_lemma.lower()
        try:
            return f"{lemma}.n.{self.offsets(lemma).index(offset) + 1:02d}"
        except ValueError:
            return None

    def by_offset(self, offset: int) -> SynsetInfo | None:
        """The noun synset at ``offset``, or ``None``."""
        line = self._line(offset)
        if line is None:
            return None
        columns, _, gloss = line.strip().partition("|")
        toks = columns.split()
        if toks[2] != "n":
            return None
        n_lemmas = int(toks[3], 16)
        lemmas = [re.match(r"(.*?)(\([^()]*\))?$", toks[4 + 2 * i]).group(1) for i in range(n_lemmas)]  # type: ignore[union-attr]
        at = 4 + 2 * n_lemmas
        hyper: list[str] = []
        inst: list[str] = []
        for i in range(int(toks[at])):
            symbol, target, pos, lemma_ids = toks[at + 1 + 4 * i : at + 5 + 4 * i]
            if pos == "n" and symbol in ("@", "@i") and lemma_ids == "0000":  # synset pointers
                first = self._first_lemma(int(target))
                name = self._name(int(target), first) if first else None
                if name:
                    (hyper if symbol == "@" else inst).append(name)
        name = self._name(offset, lemmas[0])
        if name is None:
            return None
        definition = re.sub(r"[\"].*?[\"]", "", gloss).strip().strip("; ")
        return SynsetInfo(
            name=name, wnid=f"n{offset:08d}", lemmas=tuple(lemmas), definition=definition,
            hypernyms=tuple(sorted(set(hyper))), instance_hypernyms=tuple(sorted(set(inst))),
        )

    def count(self) -> int:
        """How many noun synsets ``data.noun`` holds (its lines less the licence header)."""
        data = self._data[:]
        return data.count(b"\n") - data.count(b"\n  ") - (1 if data.startswith(b"  ") else 0)

    def _first_lemma(self, offset: int) -> str | None:
        line = self._line(offset)
        if line is None:
            return None
        word = line.split(None, 5)[4]
        return re.match(r"(.*?)(\([^()]*\))?$", word).group(1)  # type: ignore[union-attr]

    def by_name(self, name: str) -> SynsetInfo | None:
        """The noun synset named ``name`` (``dog.n.01``), or ``None``."""
        lemma, pos, number = name.lower().rsplit(".", 2)
        if pos != "n" or not number.isdigit() or int(number) < 1:
            return None
        offsets = self.offsets(lemma)
        if int(number) > len(offsets):
            return None
        return self.by_offset(offsets[int(number) - 1])


def _open_reader(corpus_root: Any, *, source: str, location: str) -> _NltkWordNet:
    """Load nltk's reader on ``corpus_root`` (a path pointer or directory)."""
    cls = _reader_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available"
            reader = cls(corpus_root, None)
            version = reader.get_version()
    except Exception as exc:
        raise WordNetSourceError(
            f"nltk cannot read the WordNet at {location}: {type(exc).__name__}: {exc}"
        ) from None
    if version != WORDNET_VERSION:
        raise WordNetSourceError(
            f"the WordNet at {location} is version {version!r}; wnids are WordNet "
            f"{WORDNET_VERSION} offsets, so version {WORDNET_VERSION} is required"
        )
    return _NltkWordNet(reader, source=source, location=location)


def _find_nltk_corpus() -> tuple[Any, str] | None:
    """nltk's WordNet corpus on ``nltk.data.path`` or in our install root."""
    import nltk.data

    own = nltk_install_root()
    prepared = (cache_dir() / "wordnet-db").resolve()
    paths = []
    for p in nltk.data.path:
        text = str(getattr(p, "path", p))
        # roots that _prepared_root() made for database directories are laid out
        # like nltk data roots; they belong to the wordnet-dir source, not this one
        with contextlib.suppress(OSError, ValueError):
            if Path(text).resolve().is_relative_to(prepared):
                continue
        paths.append(text)
    if str(own) not in paths:
        paths.append(str(own))
    for resource in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ptr = nltk.data.find(resource, paths=paths)
        except (LookupError, OSError, ValueError, PermissionError):
            continue
        where = str(getattr(ptr, "path", ptr))
        with contextlib.suppress(OSError):
            if Path(where).resolve().is_relative_to(own.resolve()):
                _ensure_on_nltk_path(own)
        return ptr, where
    return None


# ---------------------------------------------------------------------------
# WordNet database directories
# ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """The per-user cache directory of filtag-kg.

    ``$FILTAG_KG_CACHE`` if set, else ``$XDG_CACHE_HOME/filtag-kg``, else
    ``~/.cache/filtag-kg``. Nothing is created here by this call.
    """
    env = os.environ.get("FILTAG_KG_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "filtag-kg"


def nltk_install_root() -> Path:
    """The private nltk data root that :func:`install` fills (``<cache>/nltk_data``)."""
    return cache_dir() / "nltk_data"


def _db_dir_of(path: str | os.PathLike[str]) -> Path:
    """The directory holding ``data.noun`` for a user-given WordNet location.

    Accepts a database directory, a WordNet home with ``dict/``, an nltk
    ``corpora/wordnet`` folder or an nltk data root.

    Raises:
        WordNetSourceError: no WordNet 3.0 database is there.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise WordNetSourceError(f"WordNet directory {str(p)!r} does not exist or is not a folder")
    for cand in (p, p / "dict", p / "corpora" / "wordnet"):
        if (cand / "data.noun").is_file():
            missing = [f for f in _REQUIRED_DB_FILES if not (cand / f).is_file()]
            if missing:
                raise WordNetSourceError(
                    f"WordNet directory {str(cand)!r} lacks {', '.join(missing)}; a WordNet "
                    f"{WORDNET_VERSION} database has data.*, index.* and *.exc for all four "
                    f"parts of speech"
                )
            version = _db_version(cand / "data.noun")
            if version != WORDNET_VERSION:
                raise WordNetSourceError(
                    f"WordNet directory {str(cand)!r} holds version {version!r}; wnids are "
                    f"WordNet {WORDNET_VERSION} offsets, so version {WORDNET_VERSION} is required"
                )
            return cand
    raise WordNetSourceError(
        f"no WordNet database in {str(p)!r}: expected data.noun there, in dict/ or in "
        f"corpora/wordnet/ (on Debian: apt-get install wordnet-base wordnet-sense-index, "
        f"then use /usr/share/wordnet)"
    )


def _db_version(data_noun: Path) -> str | None:
    with open(data_noun, "rb") as fh:
        head = fh.read(4096)
    m = _VERSION_RE.search(head)
    return m.group(1).decode() if m else None


def _lexnames_text() -> str:
    return "".join(
        f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.', 1)[0]]}\n"
        for i, name in enumerate(_LEXNAMES)
    )


def _fingerprint(db: Path) -> dict[str, Any]:
    files = {}
    for f in _REQUIRED_DB_FILES + _OPTIONAL_DB_FILES:
        q = db / f
        if q.is_file():
            st = q.stat()
            files[f] = [st.st_size, st.st_mtime_ns]
    return {"source": str(db.resolve()), "files": files}


def _copy_database(db: Path, dest: Path) -> None:
    """Copy a database into ``dest`` (a ``corpora/wordnet`` folder), atomically.

    Files are made private to their owner (mode 0644) because nltk refuses
    files that other accounts can write, whatever the umask was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)
        for f in _REQUIRED_DB_FILES + _OPTIONAL_DB_FILES:
            if (db / f).is_file():
                shutil.copyfile(db / f, tmp / f)
                os.chmod(tmp / f, 0o644)
        if not (tmp / "lexnames").is_file():
            (tmp / "lexnames").write_text(_lexnames_text(), encoding="ascii")
            os.chmod(tmp / "lexnames", 0o644)
        (tmp / "FILTAG_KG_SOURCE.json").write_text(
            json.dumps(_fingerprint(db), indent=2) + "\n", encoding="utf-8"
        )
        os.chmod(tmp / "FILTAG_KG_SOURCE.json", 0o644)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_dirs(leaf: Path) -> None:
    """Create ``leaf`` and missing parents, owner-writable only (0755).

    nltk distrusts data that other accounts can write; folders that already
    exist are left as they are.
    """
    missing = []
    p = leaf
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)


def _prepared_root(db: Path) -> Path:
    """An nltk data root holding a copy of ``db``; refreshed when ``db`` changes."""
    key = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
    base = cache_dir() / "wordnet-db"
    root = base / key
    corpus = root / "corpora" / "wordnet"
    stamp = corpus / "FILTAG_KG_SOURCE.json"
    try:
        fresh = json.loads(stamp.read_text(encoding="utf-8")) == _fingerprint(db)
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        try:
            _make_dirs(root / "corpora")
            _copy_database(db, corpus)
        except OSError as exc:
            raise WordNetSourceError(
                f"cannot prepare the WordNet database {str(db)!r} for nltk in {str(root)!r}: "
                f"{exc.strerror or exc}; set FILTAG_KG_CACHE to a writable folder"
            ) from None
    return root


def _load_db_dir(path: str | os.PathLike[str]) -> _NltkWordNet:
    db = _db_dir_of(path)
    root = _prepared_root(db)
    corpus = root / "corpora" / "wordnet"
    nouns = _NounFiles.at(corpus)
    if nouns is None or _db_version(corpus / "data.noun") != WORDNET_VERSION:
        _ensure_on_nltk_path(root)
        return _open_reader(str(corpus), source=SOURCE_DIR, location=str(db))

    def reader() -> Any:  # nltk only for what the noun files do not answer
        _ensure_on_nltk_path(root)
        return _open_reader(str(corpus), source=SOURCE_DIR, location=str(db))._reader

    return _NltkWordNet(reader, source=SOURCE_DIR, location=str(db), nouns=nouns)


def _default_db_dirs() -> list[Path]:
    out = []
    home = os.environ.get("WNHOME")
    if home:
        out.append(Path(home).expanduser())
    out.append(DEBIAN_WORDNET_DIR)
    return out


# ---------------------------------------------------------------------------
# the bundled slice
# ---------------------------------------------------------------------------


def slice_path() -> Path:
    """Path of the bundled WordNet 3.0 slice."""
    return Path(__file__).resolve().parent.parent / "resources" / SLICE_FILE


class _SliceWordNet(WordNet):
    """The bundled subset of WordNet 3.0 (see ``scripts/build_wordnet_slice.py``)."""

    source = SOURCE_SLICE
    complete = False

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.location = str(path)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise WordNetSourceError(f"cannot read the WordNet slice {str(path)!r}: {exc}") from None
        if doc.get("format") != SLICE_FORMAT or doc.get("wordnet_version") != WORDNET_VERSION:
            raise WordNetSourceError(
                f"{str(path)!r} is not a filtag-kg WordNet {WORDNET_VERSION} slice"
            )
        rows = doc["synsets"]
        name_of = {row[0]: row[1] for row in rows}
        self._by_off: dict[int, SynsetInfo] = {}
        self._by_nm: dict[str, SynsetInfo] = {}
        self._lemmas: dict[str, list[tuple[int, str]]] = {}
        for offset, name, lemmas, senses, definition, hyper, inst in rows:
            info = SynsetInfo(
                name=name,
                wnid=f"n{offset:08d}",
                lemmas=tuple(lemmas),
                definition=definition,
                hypernyms=tuple(name_of[h] for h in hyper),
                instance_hypernyms=tuple(name_of[h] for h in inst),
            )
            self._by_off[offset] = info
            self._by_nm[name] = info
            for lemma, sense in zip(lemmas, senses):
                self._lemmas.setdefault(lemma.lower(), []).append((sense, name))
        for v in self._lemmas.values():
            v.sort()
        self._totals: dict[str, int] = doc["lemma_totals"]
        self.seeds: dict[str, Any] = doc.get("seeds", {})

    def _by_offset(self, offset: int) -> SynsetInfo | None:
        return self._by_off.get(offset)

    def _by_name(self, name: str) -> SynsetInfo | None:
        found = self._by_nm.get(name.lower())
        if found is not None:
            return found
        # As in nltk, "lemma.n.NN" also names the NN-th noun sense of a lemma
        # ("crane.n.03" is grus.n.01).
        m = _NAME_RE.fullmatch(name)
        if m is None:
            return None
        number = int(m.group(3))
        for sense, synset_name in self._lemmas.get(m.group(1).lower(), ()):
            if sense == number:
                return self._by_nm[synset_name]
        return None

    def lemma_senses(self, lemma: str) -> LemmaSenses:
        norm = normalize_lemma(lemma)
        senses = tuple(self._lemmas.get(norm, ()))
        return LemmaSenses(norm, senses, max(self._totals.get(norm, 0), len(senses)))

    def noun_count(self) -> int:
        return len(self._by_off)

    def names(self) -> list[str]:
        """All synset names in the slice, by offset."""
        return [self._by_off[k].name for k in sorted(self._by_off)]

    def describe(self) -> str:
        return (
            f"bundled slice: {self.noun_count()} noun synsets on the hypernym paths of the "
            f"1000 ImageNet-1k classes and the {len(SHAPE_CLASSES)} demo shape classes"
        )


# ---------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------

_INSTALL_HINT = (
    "'filtag-kg wordnet install', or on Debian 'apt-get install wordnet-base "
    "wordnet-sense-index'"
)
_LOADED: dict[tuple[Any, ...], WordNet] = {}


def clear_cache() -> None:
    """Forget loaded sources, so the next :func:`load_wordnet` looks again.

    nltk roots added to ``nltk.data.path`` stay there; tests that must not
    leak them should restore ``nltk.data.path`` themselves.
    """
    _LOADED.clear()


def _nltk_search_paths() -> list[str] | None:
    """nltk's data path without importing nltk (which takes seconds): the same list
    nltk builds by default, then our install root; ``None`` where it cannot be told
    (nltk already imported, whose list may have been changed, or Windows)."""
    if "nltk.data" in sys.modules or sys.platform.startswith("win"):
        return None
    paths = [d for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    if "APPENGINE_RUNTIME" not in os.environ and os.path.expanduser("~/") != "~/":
        paths.append(os.path.expanduser("~/nltk_data"))
    paths += [os.path.join(sys.prefix, "nltk_data"), os.path.join(sys.prefix, "share", "nltk_data"),
              os.path.join(sys.prefix, "lib", "nltk_data"), "/usr/share/nltk_data",
              "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    prepared = (cache_dir() / "wordnet-db").resolve()
    out = []
    for text in paths:
        with contextlib.suppress(OSError, ValueError):
            if Path(text).resolve().is_relative_to(prepared):
                continue
        out.append(text)
    return [*out, str(nltk_install_root())]


def _try_nltk_quickly() -> tuple[WordNet | None, SourceCandidate] | None:
    """The nltk source without importing nltk, when its corpus is a plain folder (nltk
    loads later, if ever, for what the noun files do not answer) or when there is none;
    ``None``: ask nltk."""
    paths = _nltk_search_paths()
    if paths is None:
        return None
    for text in paths:
        corpus = Path(text) / "corpora" / "wordnet"
        if corpus.exists():
            nouns = _NounFiles.at(corpus)
            if nouns is None or _db_version(corpus / "data.noun") != WORDNET_VERSION:
                return None

            def reader(where: Path = corpus) -> Any:
                found = _find_nltk_corpus()
                if found is None:
                    raise WordNetSourceError(f"nltk no longer finds the WordNet at {where}")
                return _open_reader(found[0], source=SOURCE_NLTK, location=found[1])._reader

            wn = _NltkWordNet(reader, source=SOURCE_NLTK, location=str(corpus), nouns=nouns)
            return wn, SourceCandidate(SOURCE_NLTK, str(corpus), True)
    if any((Path(text) / "corpora" / "wordnet.zip").exists() for text in paths):
        return None
    why = "no corpora/wordnet on nltk.data.path or in the cache"
    return None, SourceCandidate(SOURCE_NLTK, None, False, why)


def _try_nltk() -> tuple[WordNet | None, SourceCandidate]:
    quick = _try_nltk_quickly()
    if quick is not None:
        return quick
    try:
        found = _find_nltk_corpus()
    except ImportError as exc:
        return None, SourceCandidate(SOURCE_NLTK, None, False, f"nltk is not importable: {exc}")
    if found is None:
        return None, SourceCandidate(
            SOURCE_NLTK, None, False, "no corpora/wordnet on nltk.data.path or in the cache"
        )
    ptr, where = found
    try:
        wn = _open_reader(ptr, source=SOURCE_NLTK, location=where)
    except WordNetSourceError as exc:
        return None, SourceCandidate(SOURCE_NLTK, where, False, str(exc))
    return wn, SourceCandidate(SOURCE_NLTK, where, True)


def _try_dir(path: Path) -> tuple[WordNet | None, SourceCandidate]:
    try:
        wn = _load_db_dir(path)
    except WordNetSourceError as exc:
        return None, SourceCandidate(SOURCE_DIR, str(path), False, str(exc))
    return wn, SourceCandidate(SOURCE_DIR, wn.location, True)


def _try_slice() -> tuple[WordNet | None, SourceCandidate]:
    p = slice_path()
    try:
        wn = _SliceWordNet(p)
    except WordNetSourceError as exc:
        return None, SourceCandidate(SOURCE_SLICE, str(p), False, str(exc))
    return wn, SourceCandidate(SOURCE_SLICE, str(p), True)


def _select(
    wordnet_dir: str | os.PathLike[str] | None, source: str | None, *, probe_all: bool
) -> tuple[WordNet | None, list[SourceCandidate]]:
    if source not in (None, "auto", *SOURCES):
        raise WordNetSourceError(
            f"unknown WordNet source {source!r}; use one of {', '.join(('auto',) + SOURCES)}"
        )
    if wordnet_dir is not None and source not in (None, "auto", SOURCE_DIR):
        raise WordNetSourceError(
            f"a WordNet directory was given, which contradicts source={source!r}"
        )
    tries: list[Any] = []
    if wordnet_dir is not None:
        tries = [lambda: _try_dir(Path(wordnet_dir))]
    elif source == SOURCE_NLTK:
        tries = [_try_nltk]
    elif source == SOURCE_DIR:
        tries = [lambda p=p: _try_dir(p) for p in _default_db_dirs()]
    elif source == SOURCE_SLICE:
        tries = [_try_slice]
    else:
        tries = [_try_nltk, *[lambda p=p: _try_dir(p) for p in _default_db_dirs()], _try_slice]
    chosen: WordNet | None = None
    seen: list[SourceCandidate] = []
    for attempt in tries:
        if chosen is not None and not probe_all:
            break
        wn, cand = attempt()
        seen.append(cand)
        if chosen is None and wn is not None:
            chosen = wn
    return chosen, seen


def load_wordnet(
    *, wordnet_dir: str | os.PathLike[str] | None = None, source: str | None = None
) -> WordNet:
    """The WordNet 3.0 source to use, loaded once per process and cached.

    Args:
        wordnet_dir: a WordNet 3.0 database directory to use (and nothing
            else); the ``--wordnet-dir`` option.
        source: force one source (``"nltk"``, ``"wordnet-dir"``,
            ``"slice"``); ``None`` or ``"auto"`` tries nltk, ``$WNHOME``,
            ``/usr/share/wordnet`` and the slice in this order.

    Raises:
        WordNetSourceError: the requested source is unusable (the message
            says why and how to install WordNet).

    Example:
        >>> load_wordnet(source="slice").synset("dog.n.01").wnid
        'n02084071'
    """
    key = (
        str(Path(wordnet_dir).expanduser().resolve()) if wordnet_dir is not None else None,
        source or "auto",
        str(cache_dir()),
        os.environ.get("WNHOME"),
    )
    wn = _LOADED.get(key)
    if wn is not None:
        return wn
    wn, seen = _select(wordnet_dir, source, probe_all=False)
    if wn is None:
        reasons = "; ".join(f"{c.source} at {c.location}: {c.reason}" for c in seen)
        raise WordNetSourceError(f"no usable WordNet {WORDNET_VERSION} source ({reasons})")
    _LOADED[key] = wn
    return wn


# ---------------------------------------------------------------------------
# status, install, show
# ---------------------------------------------------------------------------


def status(
    *, wordnet_dir: str | os.PathLike[str] | None = None, source: str | None = None
) -> dict[str, Any]:
    """Which source is active, what it covers, and what else was found.

    Every candidate source is probed (so this may take a few seconds), the
    first usable one in the selection order is reported as active.

    Returns:
        A JSON-ready dict: ``active`` (source, location, complete, noun
        synsets, coverage text, ImageNet-1k classes resolved, load seconds),
        ``candidates`` (each source looked at, with the reason when
        unusable), ``cache_dir`` and ``nltk_install_root``.
    """
    from ..imagenet import imagenet1k_classes

    t0 = time.perf_counter()
    chosen, seen = _select(wordnet_dir, source, probe_all=True)
    active: dict[str, Any] | None = None
    if chosen is not None:
        load_s = time.perf_counter() - t0
        classes = imagenet1k_classes()
        resolved = sum(1 for c in classes if chosen.find(c.wnid) is not None)
        shapes = sum(1 for w in SHAPE_CLASSES if chosen.find(w) is not None)
        active = {
            "source": chosen.source,
            "location": chosen.location,
            "wordnet_version": WORDNET_VERSION,
            "complete": chosen.complete,
            "noun_synsets": chosen.noun_count(),
            "covers": chosen.describe(),
            "imagenet1k_resolved": resolved,
            "shape_classes_resolved": shapes,
            "probe_seconds": round(load_s, 3),
        }
    return {
        "active": active,
        "candidates": [c.as_dict() for c in seen],
        "cache_dir": str(cache_dir()),
        "nltk_install_root": str(nltk_install_root()),
    }


def format_status(doc: dict[str, Any]) -> str:
    """Human-readable text of a :func:`status` result."""
    lines = []
    a = doc.get("active")
    if a is None:
        lines.append(f"no usable WordNet {WORDNET_VERSION} source; install one with {_INSTALL_HINT}")
    else:
        lines.append(f"active source: {a['source']} ({a['location']})")
        lines.append(f"covers: {a['covers']}")
        lines.append(
            f"ImageNet-1k classes resolved: {a['imagenet1k_resolved']}/1000; demo shape "
            f"classes: {a['shape_classes_resolved']}/{len(SHAPE_CLASSES)}"
        )
        if not a["complete"]:
            lines.append(f"for all of WordNet, install it: {_INSTALL_HINT}")
    lines.append("sources looked at (in order):")
    for c in doc.get("candidates", []):
        mark = "ok" if c["available"] else "unusable"
        extra = f": {c['reason']}" if c["reason"] else ""
        lines.append(f"  {c['source']:<12} {mark:<9} {c['location'] or '-'}{extra}")
    lines.append(f"cache: {doc.get('cache_dir')}")
    return "\n".join(lines)


def install(
    from_dir: str | os.PathLike[str] | None = None,
    *,
    target: str | os.PathLike[str] | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Make nltk's WordNet 3.0 corpus available (``filtag-kg wordnet install``).

    With ``from_dir`` the database is copied from that local folder (a
    WordNet 3.0 database, a WordNet home with ``dict/``, or an nltk
    ``corpora/wordnet`` folder) and completed with ``lexnames``; no network
    is used. Without it, nltk's downloader fetches the ``wordnet`` package;
    when that fails (offline), ``$WNHOME`` or ``/usr/share/wordnet`` is used
    if present.

    Args:
        from_dir: local WordNet 3.0 database to install from.
        target: nltk data root to install into; default
            :func:`nltk_install_root`, which :func:`load_wordnet` searches.
        quiet: silence nltk's downloader.

    Returns:
        JSON-ready summary: ``target`` (the corpus folder), ``method``
        (``"copy"`` or ``"download"``), ``from``, ``noun_synsets`` and
        ``download_error`` (why a download failed before a local copy was
        used, else ``None``).

    Raises:
        WordNetSourceError: the folder is not WordNet 3.0, or nothing could
            be downloaded and no local database exists.
    """
    root = Path(target).expanduser() if target is not None else nltk_install_root()
    corpus = root / "corpora" / "wordnet"
    method = "copy"
    origin: str | None = None
    download_error = ""
    if from_dir is not None:
        db = _db_dir_of(from_dir)
        origin = str(db)
    else:
        db = None
        ok, download_error = _download(root, quiet=quiet)
        if ok:
            method, origin = "download", "nltk downloader"
        else:
            for cand in _default_db_dirs():
                try:
                    db = _db_dir_of(cand)
                except WordNetSourceError:
                    continue
                origin = str(db)
                break
            if db is None:
                raise WordNetSourceError(
                    f"could not download WordNet with nltk ({download_error}) and found no local "
                    "WordNet 3.0 database; on Debian run 'apt-get install wordnet-base "
                    "wordnet-sense-index', or pass --from DIR with a WordNet 3.0 'dict' folder"
                )
    if db is not None:
        try:
            _make_dirs(root / "corpora")
            _copy_database(db, corpus)
        except OSError as exc:
            raise WordNetSourceError(
                f"cannot install WordNet into {str(root)!r}: {exc.strerror or exc}"
            ) from None
    clear_cache()
    _ensure_on_nltk_path(root)
    found = corpus if corpus.is_dir() else root / "corpora" / "wordnet.zip"
    pointer: Any = str(corpus)
    if not corpus.is_dir():
        import nltk.data

        pointer = nltk.data.find("corpora/wordnet.zip/wordnet/", paths=[str(root)])
    wn = _open_reader(pointer, source=SOURCE_NLTK, location=str(found))
    return {
        "target": str(found),
        "method": method,
        "from": origin,
        "noun_synsets": wn.noun_count(),
        "download_error": download_error or None,
    }


def _download(root: Path, *, quiet: bool) -> tuple[bool, str]:
    """Fetch nltk's ``wordnet`` package into ``root``; (success, error text)."""
    import io

    try:
        import nltk
    except ImportError as exc:
        return False, f"nltk is not importable: {exc}"
    errors = io.StringIO()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ok = nltk.download(
                    "wordnet", download_dir=str(root), quiet=quiet,
                    print_error_to=errors if quiet else sys.stderr,
                )
            except TypeError:  # nltk < 3.9 has no print_error_to
                ok = nltk.download("wordnet", download_dir=str(root), quiet=quiet)
    except Exception as exc:  # network and file errors of every kind
        return False, f"{type(exc).__name__}: {exc}"
    found = (root / "corpora" / "wordnet").is_dir() or (
        root / "corpora" / "wordnet.zip"
    ).is_file()
    if ok and found:
        return True, ""
    text = " ".join(errors.getvalue().replace("[nltk_data]", " ").split())
    return False, text or "the nltk downloader did not install wordnet"


def show(key: str, *, wordnet: WordNet | None = None) -> dict[str, Any]:
    """Everything ``filtag-kg wordnet show`` prints about one synset.

    Args:
        key: a wnid, offset id or synset name.
        wordnet: the source; default :func:`load_wordnet`.

    Returns:
        JSON-ready dict: synset, wnid, lemmas, definition, hypernyms,
        instance_hypernyms, depth, hypernym paths (root first, as synset
        names), the ImageNet-1k index and label when it is a class, and the
        source.

    Raises:
        UnknownSynsetError: malformed or unknown key.
    """
    from ..imagenet import imagenet_by_wnid

    wn = wordnet if wordnet is not None else load_wordnet()
    info = wn.synset(key)
    cls = imagenet_by_wnid().get(info.wnid)
    return {
        "synset": info.name,
        "wnid": info.wnid,
        "lemmas": list(info.lemmas),
        "definition": info.definition,
        "hypernyms": list(info.hypernyms),
        "instance_hypernyms": list(info.instance_hypernyms),
        "depth": wn.depth(info.name),
        "hypernym_paths": wn.hypernym_paths(info.name),
        "imagenet1k_index": cls.index if cls else None,
        "imagenet1k_label": cls.label if cls else None,
        "source": wn.source,
    }


def format_show(doc: dict[str, Any]) -> str:
    """Human-readable text of a :func:`show` result."""
    lines = [f"{doc['synset']}  {doc['wnid']}  (depth {doc['depth']})"]
    lines.append(f"  lemmas: {', '.join(doc['lemmas'])}")
    lines.append(f"  definition: {doc['definition']}")
    if doc.get("imagenet1k_index") is not None:
        lines.append(
            f"  ImageNet-1k class {doc['imagenet1k_index']}: {doc['imagenet1k_label']}"
        )
    if doc["instance_hypernyms"]:
        lines.append(f"  instance of: {', '.join(doc['instance_hypernyms'])}")
    lines.append("  hypernym paths:")
    for path in doc["hypernym_paths"]:
        lines.append("    " + " > ".join(path))
    return "\n".join(lines)


def synset_closure(wordnet: WordNet, keys: Iterable[str]) -> list[str]:
    """Names of the given synsets and all their ancestors, sorted by offset."""
    names: set[str] = set()
    for k in keys:
        info = wordnet.synset(k)
        names.add(info.name)
        names |= wordnet.ancestors(info.name)
    return sorted(names, key=lambda n: wordnet.synset(n).offset)

