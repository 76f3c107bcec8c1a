"""Offline text for speech generation: a sentence generator over a real English and French vocabulary,
and plain text files (one sentence per line). Numbers come out written in words (see `numbers`).

The generator follows a small grammar (statements, questions, copulas, counts, times, compound
sentences) with agreement: English third-person -s and irregular past tenses; French gender and number
agreement of articles and adjectives, elision (l'), contractions (au, du, des) and the passé composé.
A seed gives the same sentences on every machine.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dsm.errors import InputError
from dsm.train.data.numbers import LANGS, spell_numbers


def _words(text: str) -> list[str]:
    return text.split()


# -- English vocabulary ---------------------------------------------------------------------------------

# Nouns as singular[/plural]; the plural defaults to +s.
_EN_NOUNS = _words(
    "apple artist baby bag ball bank bed bell bicycle bird boat book bottle box/boxes boy bread/bread "
    "bridge brother bus/buses butterfly/butterflies cake camera candle car card castle cat chair "
    "cheese/cheese child/children city/cities clock cloud coat computer cook cousin cow cup daughter desk "
    "doctor dog door dragon dress/dresses driver duck egg engine farmer father fish/fish flower forest "
    "fox/foxes friend frog garden gift girl glass/glasses guitar hat horse house island jacket key king "
    "kitchen knife/knives lamp lawyer leaf/leaves letter lion machine map market mirror monkey moon "
    "mother mountain mouse/mice neighbor newspaper nurse ocean orange painter parrot pencil piano picture "
    "pilot plane plant pocket poet queen rabbit radio river road robot rock sailor scientist sheep/sheep "
    "ship shoe singer sister soldier song spoon star stone story/stories student sun table teacher "
    "telephone tiger tower town toy train tree truck umbrella village violin wall watch/watches whale "
    "window wolf/wolves woman/women writer"
)
_EN_NAMES = _words(
    "Alice Amelia Anna Arthur Ben Charlotte Daniel David Diana Edward Ella Emma Felix George Grace Hannah "
    "Harry Henry Isaac Jack James Jane Julia Kevin Laura Leo Lucy Maria Martin Max Nina Oliver Oscar Paul "
    "Rachel Robert Rose Sam Sarah Sophie Thomas Victor William Zoe"
)
_EN_ADJECTIVES = _words(
    "angry beautiful big black blue bright brave brown busy calm careful cheap clean clever cold curious "
    "dark dirty early empty famous fast friendly funny gentle golden green happy heavy honest hungry "
    "large lazy little lonely loud lucky modern narrow new noisy old orange patient polite poor proud "
    "purple quick quiet red rich round sad shiny short silent simple slow small soft strange strong sweet "
    "tall tiny tired warm white wide wild wise wooden yellow young"
)
# Transitive verbs as base/third-person/past (regular ones are completed by _en_verb).
_EN_TRANSITIVE = _words(
    "borrow bring/brings/brought build/builds/built buy/buys/bought carry/carries/carried "
    "catch/catches/caught clean close draw/draws/drew drop/drops/dropped find/finds/found follow "
    "forget/forgets/forgot hold/holds/held like love move open paint pick pull push read/reads/read "
    "remember repair sell/sells/sold send/sends/sent show steal/steals/stole take/takes/took "
    "teach/teaches/taught visit wash/washes/washed watch/watches/watched want write/writes/wrote"
)
_EN_INTRANSITIVE = _words(
    "arrive dance/dances/danced fall/falls/fell laugh leave/leaves/left listen rest run/runs/ran shout "
    "sing/sings/sang sit/sits/sat sleep/sleeps/slept smile stay swim/swims/swam travel/travels/traveled "
    "wait walk whisper win/wins/won work"
)
_EN_ADVERBS = _words(
    "again alone carefully happily loudly outside quickly quietly slowly suddenly today together tonight "
    "yesterday"
)
_EN_PLACES = _words(
    "bank bridge castle city forest garden house island kitchen market mountain ocean river road town village"
)
_EN_PREPOSITIONS = ["in", "near", "behind", "under", "next to", "across", "beside", "inside", "around"]
_EN_DAYS = _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
_EN_MONTHS = _words("January February March April May June July August September October November December")


def _en_noun(entry: str) -> tuple[str, str]:
    sing, _, plural = entry.partition("/")
    return sing, plural or sing + "s"


def _en_verb(entry: str) -> tuple[str, str, str]:
    """(base, third person singular, past) of a vocabulary entry."""
    parts = entry.split("/")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    base = parts[0]
    third = base[:-1] + "ies" if base.endswith("y") and base[-2] not in "aeiou" else base + "s"
    if base.endswith("e"):
        past = base + "d"
    elif base.endswith("y") and base[-2] not in "aeiou":
        past = base[:-1] + "ied"
    else:
        past = base + "ed"
    return base, third, past


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _English:
    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def noun_phrase(self, plural: bool = False, definite: bool | None = None) -> str:
        sing, plur = _en_noun(self.r.choice(_EN_NOUNS))
        noun = plur if plural else sing
        if self.r.random() < 0.4:
            noun = f"{self.r.choice(_EN_ADJECTIVES)} {noun}"
        kind = self.r.random() if definite is None else (0.0 if definite else 0.9)
        if kind < 0.55:
            return f"the {noun}"
        if kind < 0.7:
            return f"{'these' if plural else 'this'} {noun}"
        if kind < 0.8:
            return f"{self.r.choice(['my', 'your', 'our', 'their', 'his', 'her'])} {noun}"
        return f"some {noun}" if plural else f"{_article(noun)} {noun}"

    def subject(self) -> tuple[str, bool]:
        """A subject and whether it is plural."""
        x = self.r.random()
        if x < 0.25:
            return self.r.choice(_EN_NAMES), False
        if x < 0.35:
            return " and ".join(self.r.sample(_EN_NAMES, 2)), True
        plural = self.r.random() < 0.3
        return self.noun_phrase(plural), plural

    def place(self) -> str:
        return f"{self.r.choice(_EN_PREPOSITIONS)} the {self.r.choice(_EN_PLACES)}"

    def time(self) -> str:
        x = self.r.random()
        if x < 0.25:
            return f"at {self.r.randint(1, 12)}:{self.r.choice(['00', '15', '30', '45', '05'])}"
        if x < 0.45:
            return f"in {self.r.randint(1850, 2030)}"
        if x < 0.65:
            return f"on {self.r.choice(_EN_DAYS)}"
        if x < 0.8:
            return f"on the {self.r.randint(1, 31)}th of {self.r.choice(_EN_MONTHS)}"
        return self.r.choice(["this morning", "last night", "every day", "after lunch", "before dinner"])

    def clause(self) -> str:
        subj, plural = self.subject()
        tense = self.r.choice(["past", "past", "present", "future"])
        transitive = self.r.random() < 0.65
        base, third, past = _en_verb(self.r.choice(_EN_TRANSITIVE if transitive else _EN_INTRANSITIVE))
        verb = {"past": past, "present": base if plural else third, "future": f"will {base}"}[tense]
        parts = [subj, verb]
        if transitive:
            parts.append(self.noun_phrase(self.r.random() < 0.3))
        extra = self.r.random()
        if extra < 0.35:
            parts.append(self.place())
        elif extra < 0.55:
            parts.append(self.r.choice(_EN_ADVERBS))
        elif extra < 0.75:
            parts.append(self.time())
        return " ".join(parts)

    def sentence(self) -> str:
        x = self.r.random()
        if x < 0.45:
            s, end = self.clause(), "."
        elif x < 0.55:
            s, end = f"{self.clause()}, {self.r.choice(['and', 'but', 'so', 'because'])} {self.clause()}", "."
        elif x < 0.65:
            base, _, _ = _en_verb(self.r.choice(_EN_TRANSITIVE))
            s, end = f"did {self.subject()[0]} {base} {self.noun_phrase()}", "?"
        elif x < 0.72:
            wh = self.r.choice(["where", "why", "when", "how"])
            base, _, _ = _en_verb(self.r.choice(_EN_INTRANSITIVE))
            s, end = f"{wh} did {self.subject()[0]} {base}", "?"
        elif x < 0.82:
            subj, plural = self.subject()
            adjs = self.r.sample(_EN_ADJECTIVES, 2)
            verb = self.r.choice(["were", "are"] if plural else ["was", "is"])
            s, end = f"{subj} {verb} {adjs[0]} and {adjs[1]}", self.r.choice([".", "!"])
        elif x < 0.92:
            n, m = self.r.randint(2, 99), self.r.randint(2, 2500)
            _, plural = _en_noun(self.r.choice(_EN_NOUNS))
            s = f"{self.r.choice(_EN_NAMES)} bought {n} {plural} for {m:,} dollars"
            if self.r.random() < 0.5:
                s = f"there are {n} {plural} {self.place()}"
            end = "."
        else:
            base, _, _ = _en_verb(self.r.choice(_EN_TRANSITIVE))
            s, end = f"please {base} {self.noun_phrase(definite=True)} {self.time()}", "."
        return s[0].upper() + s[1:] + end


# -- French vocabulary ----------------------------------------------------------------------------------

# Nouns as singular:gender[:plural] (m or f; the plural defaults to +s).
_FR_NOUNS = _words(
    "ami:m amie:f animal:m:animaux arbre:m artiste:m avion:m bateau:m:bateaux boîte:f bouteille:f "
    "boulanger:m bureau:m:bureaux cadeau:m:cadeaux café:m camion:m carte:f chaise:f chanson:f "
    "chapeau:m:chapeaux chat:m château:m:châteaux chemin:m cheval:m:chevaux chien:m ciel:m:cieux clé:f "
    "cousin:m cousine:f couteau:m:couteaux cuisine:f docteur:m école:f enfant:m étoile:f fenêtre:f "
    "fermier:m fille:f fleur:f forêt:f frère:m fromage:m garçon:m gâteau:m:gâteaux guitare:f histoire:f "
    "homme:m île:f jardin:m journal:m:journaux lampe:f lettre:f lion:m livre:m lune:f machine:f maison:f "
    "marché:m mer:f miroir:m montagne:f montre:f mouton:m musicien:m neige:f nuage:m oiseau:m:oiseaux "
    "orange:f ordinateur:m pain:m papier:m parapluie:m pays:m:pays peintre:m pierre:f piano:m plage:f "
    "plante:f poisson:m pomme:f pont:m porte:f professeur:m radio:f reine:f renard:m rivière:f robe:f "
    "roi:m route:f sac:m sœur:f soldat:m soleil:m table:f tasse:f téléphone:m tour:f train:m vache:f "
    "valise:f village:m ville:f violon:m voiture:f voisin:m voisine:f"
)
_FR_NAMES = _words(
    "Alice Antoine Camille Chloé Claire Émile Emma Hugo Inès Jeanne Jules Julie Léa Léon Louis Louise "
    "Lucas Manon Marc Marie Mathilde Nicolas Noémie Paul Pierre Sophie Théo Thomas Victor Zoé"
)
# Adjectives as masculine/feminine[/masculine plural]; a leading + marks one placed before the noun.
_FR_ADJECTIVES = _words(
    "+beau/belle/beaux blanc/blanche bleu/bleue calme/calme célèbre/célèbre chaud/chaude content/contente "
    "curieux/curieuse/curieux doux/douce/doux drôle/drôle fatigué/fatiguée fort/forte froid/froide "
    "+grand/grande gris/grise/gris heureux/heureuse/heureux +jeune/jeune joli/jolie lent/lente "
    "lourd/lourde magnifique/magnifique +mauvais/mauvaise/mauvais noir/noire +nouveau/nouvelle/nouveaux "
    "+petit/petite poli/polie propre/propre rapide/rapide riche/riche rouge/rouge sage/sage "
    "silencieux/silencieuse/silencieux simple/simple triste/triste vert/verte +vieux/vieille/vieux "
    "vide/vide"
)
# Transitive verbs as infinitive/3sg present/3pl present/past participle.
_FR_TRANSITIVE = _words(
    "acheter/achète/achètent/acheté apporter/apporte/apportent/apporté chercher/cherche/cherchent/cherché "
    "construire/construit/construisent/construit dessiner/dessine/dessinent/dessiné "
    "écrire/écrit/écrivent/écrit fermer/ferme/ferment/fermé laver/lave/lavent/lavé lire/lit/lisent/lu "
    "manger/mange/mangent/mangé oublier/oublie/oublient/oublié ouvrir/ouvre/ouvrent/ouvert "
    "peindre/peint/peignent/peint porter/porte/portent/porté prendre/prend/prennent/pris "
    "regarder/regarde/regardent/regardé réparer/répare/réparent/réparé trouver/trouve/trouvent/trouvé "
    "vendre/vend/vendent/vendu visiter/visite/visitent/visité voir/voit/voient/vu"
)
_FR_INTRANSITIVE = _words(
    "attendre/attend/attendent/attendu chanter/chante/chantent/chanté courir/court/courent/couru "
    "danser/danse/dansent/dansé dormir/dort/dorment/dormi marcher/marche/marchent/marché "
    "nager/nage/nagent/nagé parler/parle/parlent/parlé rire/rit/rient/ri "
    "travailler/travaille/travaillent/travaillé voyager/voyage/voyagent/voyagé"
)
_FR_ADVERBS = _words(
    "aujourd'hui hier demain ensemble lentement rapidement souvent toujours doucement encore"
)
_FR_PLACES = _words(
    "jardin:m maison:f forêt:f montagne:f marché:m plage:f école:f ville:f village:m rivière:f"
)
_FR_PREPOSITIONS = ["dans", "près de", "devant", "derrière", "loin de", "à côté de"]
_FR_DAYS = _words("lundi mardi mercredi jeudi vendredi samedi dimanche")
_FR_MONTHS = _words("janvier février mars avril mai juin juillet août septembre octobre novembre décembre")
_FR_VOWELS = "aàâeéèêëiîïoôuùûyœh"  # h: the nouns listed all take elision


@dataclass(frozen=True)
class _FrNoun:
    singular: str
    plural: str
    feminine: bool

    @classmethod
    def parse(cls, entry: str) -> _FrNoun:
        parts = entry.split(":")
        return cls(parts[0], parts[2] if len(parts) > 2 else parts[0] + "s", parts[1] == "f")


@dataclass(frozen=True)
class _FrAdjective:
    forms: tuple[str, str, str, str]  # masculine, feminine, masculine plural, feminine plural
    before: bool

    @classmethod
    def parse(cls, entry: str) -> _FrAdjective:
        before = entry.startswith("+")
        parts = entry.lstrip("+").split("/")
        masc, fem = parts[0], parts[1]
        masc_pl = parts[2] if len(parts) > 2 else (masc if masc[-1] in "sx" else masc + "s")
        return cls((masc, fem, masc_pl, fem + "s"), before)

    def form(self, feminine: bool, plural: bool) -> str:
        return self.forms[2 * plural + feminine]


def _elide(word: str, following: str) -> str:
    """le/la/de/que + vowel -> l'/d'/qu' (returned with its apostrophe, glued by the caller)."""
    if following[0].lower() in _FR_VOWELS and word in ("le", "la", "de", "que", "ce"):
        return {"le": "l'", "la": "l'", "de": "d'", "que": "qu'", "ce": "cet "}[word]
    return word + " "


class _French:
    def __init__(self, rng: random.Random) -> None:
        self.r = rng
        self.nouns = [_FrNoun.parse(e) for e in _FR_NOUNS]
        self.adjectives = [_FrAdjective.parse(e) for e in _FR_ADJECTIVES]

    def noun_phrase(self, plural: bool = False, kind: str | None = None) -> tuple[str, _FrNoun]:
        """A noun phrase with its determiner, and the noun (for agreement)."""
        noun = self.r.choice(self.nouns)
        word = noun.plural if plural else noun.singular
        if self.r.random() < 0.4:
            adj = self.r.choice(self.adjectives)
            form = adj.form(noun.feminine, plural)
            if adj.before and adj.forms[0] == "beau" and not plural and not noun.feminine:
                form = "bel" if word[0] in _FR_VOWELS else form
            word = f"{form} {word}" if adj.before else f"{word} {form}"
        kind = kind or self.r.choice(["def", "def", "indef", "dem", "poss"])
        if plural:
            poss = self.r.choice(["mes", "tes", "nos"])
            det = {"def": "les", "indef": "des", "dem": "ces", "poss": poss}[kind]
            return f"{det} {word}", noun
        if kind == "def":
            return _elide("la" if noun.feminine else "le", word) + word, noun
        if kind == "indef":
            return f"{'une' if noun.feminine else 'un'} {word}", noun
        if kind == "dem":
            return (f"cette {word}" if noun.feminine else _elide("ce", word) + word), noun
        poss = self.r.choice(["mon", "ton", "notre"])
        if poss != "notre" and noun.feminine and word[0] not in _FR_VOWELS:
            poss = {"mon": "ma", "ton": "ta"}[poss]
        return f"{poss} {word}", noun

    def subject(self) -> tuple[str, bool]:
        x = self.r.random()
        if x < 0.25:
            return self.r.choice(_FR_NAMES), False
        if x < 0.35:
            return " et ".join(self.r.sample(_FR_NAMES, 2)), True
        plural = self.r.random() < 0.3
        return self.noun_phrase(plural)[0], plural

    def place(self) -> str:
        noun, gender = self.r.choice(_FR_PLACES).split(":")
        prep = self.r.choice(_FR_PREPOSITIONS)
        article = "la " if gender == "f" else "le "
        if noun[0] in _FR_VOWELS:
            article = "l'"
        if prep.endswith(" de") and article == "le ":
            return f"{prep[:-3]} du {noun}"
        if prep.endswith(" de") and article == "l'":
            return f"{prep[:-3]} de l'{noun}"
        return f"{prep} {article}{noun}"

    def time(self) -> str:
        x = self.r.random()
        if x < 0.25:
            hour = self.r.randint(2, 23)
            return f"à {hour}h{self.r.choice(['', '15', '30', '45', '05'])}"
        if x < 0.45:
            return f"en {self.r.randint(1850, 2030)}"
        if x < 0.65:
            return self.r.choice(_FR_DAYS)
        if x < 0.8:
            return f"le {self.r.randint(2, 28)} {self.r.choice(_FR_MONTHS)}"
        return self.r.choice(["ce matin", "hier soir", "chaque jour", "après le déjeuner", "avant le dîner"])

    def clause(self) -> str:
        subj, plural = self.subject()
        transitive = self.r.random() < 0.65
        entry = self.r.choice(_FR_TRANSITIVE if transitive else _FR_INTRANSITIVE)
        inf, third, third_pl, participle = entry.split("/")
        tense = self.r.choice(["past", "past", "present", "future"])
        if tense == "past":
            verb = f"{'ont' if plural else 'a'} {participle}"
        elif tense == "present":
            verb = third_pl if plural else third
        else:
            verb = f"{'vont' if plural else 'va'} {inf}"
        parts = [subj, verb]
        if transitive:
            parts.append(self.noun_phrase(self.r.random() < 0.3)[0])
        extra = self.r.random()
        if extra < 0.35:
            parts.append(self.place())
        elif extra < 0.55 and not (tense == "future" and not transitive):
            parts.append(self.r.choice(_FR_ADVERBS))
        elif extra < 0.75:
            parts.append(self.time())
        return " ".join(parts)

    def sentence(self) -> str:
        x = self.r.random()
        if x < 0.45:
            s, end = self.clause(), "."
        elif x < 0.55:
            s, end = f"{self.clause()}, {self.r.choice(['et', 'mais', 'donc', 'car'])} {self.clause()}", "."
        elif x < 0.65:
            inf = self.r.choice(_FR_TRANSITIVE).split("/")[0]
            subj, plural = self.subject()
            s, end = f"est-ce que {subj} {'vont' if plural else 'va'} {inf} {self.noun_phrase()[0]}", "?"
            s = "est-ce qu'" + s[len("est-ce que ") :] if s[len("est-ce que ")] in _FR_VOWELS else s
        elif x < 0.72:
            wh = self.r.choice(["où", "pourquoi", "quand", "comment"])
            inf = self.r.choice(_FR_INTRANSITIVE).split("/")[0]
            s, end = f"{wh} vas-tu {inf}", "?"
        elif x < 0.82:
            noun_phrase, noun = self.noun_phrase(plural := self.r.random() < 0.3)
            a, b = self.r.sample(self.adjectives, 2)
            verb = self.r.choice(["sont", "étaient"] if plural else ["est", "était"])
            fa, fb = a.form(noun.feminine, plural), b.form(noun.feminine, plural)
            s, end = f"{noun_phrase} {verb} {fa} et {fb}", self.r.choice([".", "!"])
        elif x < 0.92:
            noun = self.r.choice(self.nouns)
            n = self.r.randint(2, 99)
            if noun.feminine and n % 10 == 1 and n != 11:
                n += 1
            m = self.r.randint(2, 2500)
            if self.r.random() < 0.5:
                s = f"{self.r.choice(_FR_NAMES)} a acheté {n} {noun.plural} pour {m} euros"
            else:
                s = f"il y a {n} {noun.plural} {self.place()}"
            end = "."
        else:
            inf, *_ = self.r.choice(_FR_TRANSITIVE).split("/")
            s, end = f"il faut {inf} {self.noun_phrase(kind='def')[0]} {self.time()}", "."
        return s[0].upper() + s[1:] + end


# -- public API -----------------------------------------------------------------------------------------


def generate_sentences(lang: str, count: int, seed: int = 0, *, unique: bool = True) -> list[str]:
    """`count` sentences in `lang` ("en" or "fr"), numbers written out, reproducible from `seed`.

    With `unique`, no sentence repeats (the grammar yields far more distinct sentences than any corpus
    needs; generation stops with an error if it cannot find enough).
    """
    if lang not in LANGS:
        raise InputError(f"the sentence generator speaks {', '.join(LANGS)}, not {lang!r}")
    if count < 0:
        raise InputError(f"sentence count must be >= 0, got {count}")
    rng = random.Random(f"{lang}:{seed}")
    grammar = _English(rng) if lang == "en" else _French(rng)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 20 * count + 100:
            raise InputError(f"could not generate {count} distinct sentences")
        sentence = spell_numbers(grammar.sentence(), lang)
        if unique and sentence in seen:
            continue
        seen.add(sentence)
        out.append(sentence)
    return out


def iter_sentences(lang: str, seed: int = 0) -> Iterator[str]:
    """An endless stream of generated sentences (repeats possible)."""
    rng = random.Random(f"{lang}:{seed}:stream")
    grammar = _English(rng) if lang == "en" else _French(rng)
    while True:
        yield spell_numbers(grammar.sentence(), lang)


def read_sentences(path: str | os.PathLike, lang: str | None = None) -> list[str]:
    """Non-empty lines of a UTF-8 text file, whitespace collapsed; numbers written out when `lang` is set."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: text file not found") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    sentences = [" ".join(line.split()) for line in lines]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise InputError(f"{path}: no sentences (expected one per line)")
    return [spell_numbers(s, lang) for s in sentences] if lang else sentences
