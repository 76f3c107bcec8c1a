"""English text normalisation for word error rates, in the style of Whisper's ``EnglishTextNormalizer``.

Self-contained (standard library only). :func:`normalize_english`, in order:

1. lower-cases;
2. removes content in ``[...]``, ``<...>`` and ``(...)`` (non-nested, e.g. ``[noise]``, ``(laughs)``);
3. standardises apostrophes (``’ ‘ ` ´ ʼ`` -> ``'``) and strips diacritics (``café`` -> ``cafe``);
4. re-attaches split clitics (``it 's`` -> ``it's``) and expands contractions at a basic level:
   ``won't``/``can't``/``let's``/``ain't``/``y'all``, ``n't`` -> `` not``, ``'re`` -> `` are``,
   ``'ll`` -> `` will``, ``'ve`` -> `` have``, ``'m`` -> `` am``, ``'d`` -> `` would`` (``'d been``/
   ``'d gone``/``'d done`` -> `` had ...``), ``'s been``/``'s gone``/``'s got`` -> `` has ...``,
   ``gonna``/``wanna``/``gotta`` -> ``going to``/``want to``/``got to``; other ``'s`` stay (``it's``);
5. spells out titles: ``mr`` -> ``mister``, ``mrs`` -> ``missus``, ``ms`` -> ``miss``, ``dr`` ->
   ``doctor``, ``prof`` -> ``professor``, ``jr``/``sr`` -> ``junior``/``senior`` (with or without a dot);
6. numbers: digits stay digits; thousands separators go (``1,000,000`` -> ``1000000``); a dot between two
   digits is kept as a decimal point (``3.14``); ``%`` -> `` percent``, ``&`` -> `` and``;
7. hyphens and dashes become spaces; every other character that is not a letter, a digit or an apostrophe
   becomes a space; apostrophes survive only inside words (``o'clock``, not ``'quoted'`` or ``dogs'``);
8. optionally drops hesitations (``uh``, ``um``, ``hmm``, ``mm``, ``mhm``, ``mmm``), as Whisper does;
9. collapses whitespace and strips.

It does **not**: convert between spelled-out and written numbers (``twenty`` vs ``20``), handle currency
(``$5`` -> ``5``), ordinals, British/American spellings, or abbreviations other than those above.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["EnglishTextNormalizer", "normalize_english"]

_BRACKETS = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'", "\u02bc": "'"})
_SPLIT_CLITIC = re.compile(r"\s+'(s|re|ll|ve|m|d|t)\b")

_REPLACEMENTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"\bwon't\b", "will not"),
        (r"\bcan't\b", "can not"),
        (r"\blet's\b", "let us"),
        (r"\bain't\b", "aint"),
        (r"\by'all\b", "you all"),
        (r"\bgonna\b", "going to"),
        (r"\bwanna\b", "want to"),
        (r"\bgotta\b", "got to"),
        (r"'d (been|gone|done)\b", r" had \1"),
        (r"'s (been|gone|got)\b", r" has \1"),
        (r"n't\b", " not"),
        (r"'re\b", " are"),
        (r"'ll\b", " will"),
        (r"'ve\b", " have"),
        (r"'m\b", " am"),
        (r"'d\b", " would"),
        (r"\bmrs\b\.?", "missus"),
        (r"\bmr\b\.?", "mister"),
        (r"\bms\b\.?", "miss"),
        (r"\bdr\b\.?", "doctor"),
        (r"\bprof\b\.?", "professor"),
        (r"\bjr\b\.?", "junior"),
        (r"\bsr\b\.?", "senior"),
    ]
]

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_MARK = "\x00"
_LONE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
_FILLERS = re.compile(r"\b(?:uh|um|hmm|mm|mhm|mmm)\b")
_SPACES = re.compile(r"\s+")


def _strip_diacritics(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize_english(text: str, *, remove_fillers: bool = True) -> str:
    """Normalise English text for WER scoring (see the module docstring for the exact steps)."""
    s = text.lower()
    s = _BRACKETS.sub(" ", s)
    s = _strip_diacritics(s.translate(_APOSTROPHES))
    s = _SPLIT_CLITIC.sub(r"'\1", s)
    for pattern, repl in _REPLACEMENTS:
        s = pattern.sub(repl, s)
    s = _THOUSANDS.sub("", s)
    s = s.replace("%", " percent ").replace("&", " and ")
    s = _DECIMAL.sub(_DECIMAL_MARK, s)
    s = "".join(c if c.isalnum() or c in ("'", _DECIMAL_MARK) else " " for c in s)
    s = s.replace(_DECIMAL_MARK, ".")
    s = _LONE_APOSTROPHE.sub(" ", s)
    if remove_fillers:
        s = _FILLERS.sub(" ", s)
    return _SPACES.sub(" ", s).strip()


class EnglishTextNormalizer:
    """Callable wrapper around :func:`normalize_english` (named after Whisper's normaliser)."""

    def __init__(self, *, remove_fillers: bool = True) -> None:
        self.remove_fillers = remove_fillers

    def __call__(self, text: str) -> str:
        return normalize_english(text, remove_fillers=self.remove_fillers)
