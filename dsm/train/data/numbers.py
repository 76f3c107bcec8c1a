"""Numbers written out as words in English and French, so that transcripts match what a synthesiser says.

`spell_numbers(text, lang)` rewrites digits in running text: cardinals ("1,250" / "1 250"), decimals
("3.5" / "3,5"), ordinals ("21st" / "21e"), percentages, negative numbers, clock times ("5:30" / "5h30")
and, in English, years and decades ("in 1984" -> "in nineteen eighty-four", "1980s" -> "nineteen
eighties"). French uses the traditional spelling ("vingt et un", "quatre-vingts").
"""

from __future__ import annotations

import re

from dsm.errors import InputError

LANGS = ("en", "fr")
MAX_NUMBER = 10**12 - 1


def _words(text: str) -> list[str]:
    return text.split()


_EN_ONES = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
)
_EN_TENS = _words("_ _ twenty thirty forty fifty sixty seventy eighty ninety")
_EN_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_EN_ORDINAL_WORDS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip

_FR_ONES = _words(
    "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize "
    "dix-sept dix-huit dix-neuf"
)
_FR_TENS = _words("_ _ vingt trente quarante cinquante soixante")


def _en_below_1000(n: int) -> str:
    words = []
    if n >= 100:
        words.append(f"{_EN_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        words.append(_EN_TENS[n // 10] + (f"-{_EN_ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(_EN_ONES[n])
    return " ".join(words)


def english_cardinal(n: int) -> str:
    """`n` in English words, US style without "and": 1205 -> "one thousand two hundred five"."""
    _check_range(n)
    if n < 0:
        return "minus " + english_cardinal(-n)
    if n < 1000:
        return _en_below_1000(n)
    words = []
    for scale, name in _EN_SCALES:
        if n >= scale:
            words.append(f"{_en_below_1000(n // scale)} {name}")
            n %= scale
    if n:
        words.append(_en_below_1000(n))
    return " ".join(words)


def english_year(n: int) -> str:
    """A year as spoken: 1984 -> "nineteen eighty-four", 1900 -> "nineteen hundred", 2005 -> "two thousand
    five", 1905 -> "nineteen oh five"."""
    if not 1100 <= n <= 9999 or 2000 <= n <= 2009:
        return english_cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{_en_below_1000(high)} hundred"
    return f"{_en_below_1000(high)} {'oh ' + _EN_ONES[low] if low < 10 else _en_below_1000(low)}"


def english_ordinal(n: int) -> str:
    """21 -> "twenty-first", 100 -> "one hundredth"."""
    words = english_cardinal(n)
    head, sep, last = words.rpartition(" ")
    stem_head, hyphen, unit = last.rpartition("-")
    if unit in _EN_ORDINAL_WORDS:
        unit = _EN_ORDINAL_WORDS[unit]
    elif unit.endswith("y"):
        unit = unit[:-1] + "ieth"
    else:
        unit += "th"
    return head + sep + stem_head + hyphen + unit


def _fr_below_100(n: int) -> str:
    if n < 20:
        return _FR_ONES[n]
    tens, unit = divmod(n, 10)
    if tens in (7, 9):  # soixante-dix..., quatre-vingt-dix...
        base = "soixante" if tens == 7 else "quatre-vingt"
        rest = 10 + unit
        if tens == 7 and unit == 1:
            return "soixante et onze"
        return f"{base}-{_FR_ONES[rest]}"
    if tens == 8:
        return "quatre-vingts" if unit == 0 else f"quatre-vingt-{_FR_ONES[unit]}"
    if unit == 0:
        return _FR_TENS[tens]
    if unit == 1:
        return f"{_FR_TENS[tens]} et un"
    return f"{_FR_TENS[tens]}-{_FR_ONES[unit]}"


def _fr_below_1000(n: int, final: bool = True) -> str:
    """`final`: nothing follows (so "deux cents", "quatre-vingts" keep their plural s)."""
    hundreds, rest = divmod(n, 100)
    words = []
    if hundreds:
        if hundreds == 1:
            words.append("cent")
        else:
            words.append(f"{_FR_ONES[hundreds]} cent" + ("s" if rest == 0 and final else ""))
    if rest or not words:
        below = _fr_below_100(rest)
        if rest == 80 and not final:
            below = "quatre-vingt"
        words.append(below)
    return " ".join(words)


def french_cardinal(n: int) -> str:
    """`n` in French words, traditional spelling: 81 -> "quatre-vingt-un", 200 -> "deux cents"."""
    _check_range(n)
    if n < 0:
        return "moins " + french_cardinal(-n)
    if n < 1000:
        return _fr_below_1000(n)
    words = []
    for scale, name in ((10**9, "milliard"), (10**6, "million")):
        if n >= scale:
            count, n = divmod(n, scale)
            words.append(f"{_fr_below_1000(count)} {name}{'s' if count > 1 else ''}")
    if n >= 1000:
        count, n = divmod(n, 1000)
        words.append("mille" if count == 1 else f"{_fr_below_1000(count, final=False)} mille")
    if n:
        words.append(_fr_below_1000(n))
    return " ".join(words)


def french_ordinal(n: int, feminine: bool = False) -> str:
    """1 -> "premier" ("première"), 5 -> "cinquième", 21 -> "vingt et unième", 80 -> "quatre-vingtième"."""
    if n == 1:
        return "première" if feminine else "premier"
    words = french_cardinal(n)
    head, sep, last = words.rpartition(" ")
    stem_head, hyphen, unit = last.rpartition("-")
    if unit.endswith("s") and unit != "trois" and unit != "six":  # cents, vingts, millions
        unit = unit[:-1]
    if unit == "cinq":
        unit = "cinqu"
    elif unit == "neuf":
        unit = "neuv"
    elif unit.endswith("e"):
        unit = unit[:-1]
    return head + sep + stem_head + hyphen + unit + "ième"


def _check_range(n: int) -> None:
    if abs(n) > MAX_NUMBER:
        raise InputError(f"cannot spell {n}: numbers are written out up to {MAX_NUMBER:,}")


# -- running text ---------------------------------------------------------------------------------------

# A number token: optional sign, digits with optional thousands groups, optional decimal part, optional
# ordinal suffix or percent sign. Group separators: "," (en), space / no-break space / "." (fr).
_EN_NUMBER = re.compile(
    r"(?<![\w.,])(?P<sign>[-−])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
    r"(?:(?P<ord>st|nd|rd|th)\b|(?P<pl>'?s)\b|(?P<pct>\s?%))?(?![\w])"
)
# Words after which a plain four-digit number is read as a year ("in 1984", but "1984 people").
_YEAR_CUES = frozenset(
    _words("in since from until till by of around before after during year early late circa")
)
_EN_TIME = re.compile(r"(?<![\w:.,])(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?![\w:])")
_FR_TIME = re.compile(r"(?<![\w:.,])(?P<h>[01]?\d|2[0-3]) ?[h:](?P<m>[0-5]\d)?(?![\w:])")
_FR_NUMBER = re.compile(
    r"(?<![\w.,])(?P<sign>[-−])?(?P<int>\d{1,3}(?:[  .]\d{3})+|\d+)(?:,(?P<frac>\d+))?"
    r"(?:(?P<ord>er|re|ère|e|ème|eme)\b|(?P<pct>\s?%))?(?![\w])"
)


def _spell_match(m: re.Match[str], lang: str) -> str:
    digits = re.sub(r"\D", "", m["int"])
    n = int(digits)
    if n > MAX_NUMBER:
        return " ".join(english_cardinal(int(d)) if lang == "en" else french_cardinal(int(d)) for d in digits)
    negative = m["sign"] is not None
    if m["ord"] and not m["frac"] and not negative:
        if lang == "en":
            return english_ordinal(n)
        return french_ordinal(n, feminine=m["ord"] == "re" or (n == 1 and m["ord"] == "ère"))
    if lang == "en":
        plain = m["int"].isdigit() and not m["frac"] and not negative and not m["pct"]
        before = m.string[: m.start()].split()
        year = plain and len(digits) == 4 and (m["pl"] or (before and before[-1].lower() in _YEAR_CUES))
        words = english_year(n) if year else english_cardinal(n)
        if m["pl"]:  # decades and plurals: 1980s -> nineteen eighties
            words = words[:-1] + "ies" if words.endswith("y") else words + "s"
        if m["frac"]:
            words += " point " + " ".join(_EN_ONES[int(d)] for d in m["frac"])
        words = ("minus " if negative else "") + words
        return words + (" percent" if m["pct"] else "")
    words = french_cardinal(n)
    if m["frac"]:
        frac = m["frac"]
        zeros = len(frac) - len(frac.lstrip("0"))
        tail = frac.lstrip("0")
        words += " virgule " + " ".join(["zéro"] * zeros + ([french_cardinal(int(tail))] if tail else []))
    words = ("moins " if negative else "") + words
    return words + (" pour cent" if m["pct"] else "")


def _spell_time(m: re.Match[str], lang: str) -> str:
    hour, minute = int(m["h"]), int(m["m"] or 0)
    if lang == "en":
        if minute == 0:
            return f"{english_cardinal(hour)} o'clock"
        tail = f"oh {_EN_ONES[minute]}" if minute < 10 else english_cardinal(minute)
        return f"{english_cardinal(hour)} {tail}"
    words = "une heure" if hour == 1 else f"{french_cardinal(hour)} heures"
    return words + (f" {french_cardinal(minute)}" if minute else "")


def spell_numbers(text: str, lang: str) -> str:
    """`text` with every number written out in words (`lang`: "en" or "fr")."""
    if lang not in LANGS:
        raise InputError(f"numbers can be written out in {', '.join(LANGS)}, not {lang!r}")
    time_pattern, pattern = (_EN_TIME, _EN_NUMBER) if lang == "en" else (_FR_TIME, _FR_NUMBER)
    out = time_pattern.sub(lambda m: _spell_time(m, lang), text)
    out = pattern.sub(lambda m: _spell_match(m, lang), out)
    # Digits the patterns leave (glued to letters, like "mp3"): each digit alone.
    if re.search(r"\d", out):
        ones = _EN_ONES if lang == "en" else _FR_ONES
        out = re.sub(r" {2,}", " ", re.sub(r"\d", lambda m: f" {ones[int(m[0])]} ", out)).strip()
    return out
