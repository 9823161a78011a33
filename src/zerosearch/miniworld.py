"""The mini-world: a deterministic, fictional knowledge base with questions only search can answer.

A small model cannot know any of it from pre-training, because every name is assembled from
syllables by a seeded RNG. The world has countries, cities, people, organisations and works, with
dated and linked facts (a person was born in a city in a year and worked at an organisation; an
organisation was founded by a person in a city; a work was made by a person). It is written as

- ``corpus.jsonl``: an encyclopedia-style FlashRAG corpus (``{"id", "contents": "\\"Title\\"\\ntext"}``),
  several short passages per entity, plus distractor passages about relatives with the same family
  name and minor places, so retrieval has to discriminate;
- ``train.jsonl`` / ``test.jsonl``: FlashRAG QA rows (``id``, ``question``, ``golden_answers``,
  ``metadata`` with the question type and hop count), single-hop and 2-3 hop questions. The split is
  by the entity a question names, so no held-out question asks about an entity a training question
  names.

The same seed and sizes give byte-identical files (:func:`write_world`).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s",
           "sk", "t", "th", "v", "z", "zh", "qu", "c", "j", "w")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "ia", "y")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "sh")
_PLACE_SUFFIXES = ("brook", "holm", "vale", "mere", "stead", "ford", "gard", "wick", "moor", "haven")
_COUNTRY_SUFFIXES = ("ia", "ar", "esh", "onia", "and", "ovia")
_OCCUPATIONS = ("cartographer", "astronomer", "composer", "architect", "botanist", "painter",
                "engineer", "poet", "physician", "historian", "sculptor", "chemist", "novelist",
                "mathematician", "shipwright", "weaver")
_ORG_KINDS = ("Institute", "Company", "Observatory", "Guild", "Academy", "Foundry", "Society",
              "Conservatory")
_WORK_KINDS = {"novel": "wrote", "symphony": "composed", "painting": "painted", "treatise": "wrote",
               "poem cycle": "wrote", "atlas": "drew"}
_ADJECTIVES = ("Glass", "Silent", "Amber", "Hollow", "Crimson", "Distant", "Iron", "Quiet", "Sunken",
               "Pale", "Winter", "Gilded", "Broken", "Seventh", "Lantern", "Northern", "Velvet",
               "Ashen", "Copper", "Tidal")
_NOUNS = ("Orchard", "Harbour", "Lantern", "Meridian", "Cathedral", "Garden", "River", "Archive",
          "Bridge", "Compass", "Tower", "Voyage", "Mirror", "Procession", "Atlas", "Choir", "Engine",
          "Lighthouse", "Feather", "Crown")
_RIVERS = ("Ossel", "Tarn", "Velm", "Quill", "Dunmar", "Ister", "Brae", "Corran")


@dataclass
class MiniWorldConfig:
    """Sizes of the generated world (``zerosearch data miniworld``)."""

    seed: int = 0
    """Everything is drawn from this seed; the same seed and sizes give byte-identical files."""
    countries: int = 6
    """Countries (each has several cities)."""
    cities: int = 30
    """Cities, spread over the countries."""
    people: int = 160
    """People with a birth city, birth year, occupation and employer."""
    organisations: int = 40
    """Organisations with a founder, a founding year and a seat."""
    works: int = 120
    """Works (novels, symphonies, paintings…) with a creator and a year."""
    distractors: int = 120
    """Relatives sharing a family name with someone in the world (retrieval distractors)."""
    test_fraction: float = 0.15
    """Fraction of the named entities whose questions go to the test split."""
    max_train: int | None = None
    """Keep at most this many training questions (None: all)."""
    max_test: int | None = None
    """Keep at most this many test questions (None: all)."""
    multi_hop: bool = True
    """Also write 2- and 3-hop questions."""


@dataclass
class World:
    """The generated facts; names are unique across the whole world."""

    countries: list[dict[str, Any]] = field(default_factory=list)
    cities: list[dict[str, Any]] = field(default_factory=list)
    people: list[dict[str, Any]] = field(default_factory=list)
    organisations: list[dict[str, Any]] = field(default_factory=list)
    works: list[dict[str, Any]] = field(default_factory=list)
    distractors: list[dict[str, Any]] = field(default_factory=list)


class _Names:
    """Unique pronounceable names from syllables."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def _syllables(self, n: int) -> str:
        return "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                       for _ in range(n))

    def fresh(self, make) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used and name.lower() not in self.used:
                self.used.update((name, name.lower()))
                return name
        raise RuntimeError("the name space is exhausted; lower the world sizes")

    def word(self, syllables: int = 2) -> str:
        return self.fresh(lambda: self._syllables(syllables).capitalize())

    def place(self) -> str:
        return self.fresh(lambda: (self._syllables(1) + self.rng.choice(_PLACE_SUFFIXES)).capitalize())

    def country(self) -> str:
        return self.fresh(lambda: (self._syllables(2) + self.rng.choice(_COUNTRY_SUFFIXES)).capitalize())


def generate(cfg: MiniWorldConfig) -> World:
    """Draw the world's entities and facts from ``cfg.seed``."""
    for name in ("countries", "cities", "people", "organisations", "works"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"miniworld: {name} must be >= 1")
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    w = World()
    for _ in range(cfg.countries):
        w.countries.append({"name": names.country(), "founded": rng.randint(900, 1500)})
    for i in range(cfg.cities):
        country = w.countries[i % cfg.countries]  # every country gets a city
        w.cities.append({"name": names.place(), "country": country["name"],
                         "founded": rng.randint(1000, 1700), "river": rng.choice(_RIVERS)})
    surnames: list[str] = []
    for _ in range(cfg.people):
        surname = names.word(2)
        surnames.append(surname)
        first = names.fresh(lambda: names._syllables(rng.choice((1, 2))).capitalize())
        w.people.append({"name": f"{first} {surname}", "surname": surname,
                         "birth_city": rng.choice(w.cities)["name"],
                         "birth_year": rng.randint(1720, 1940),
                         "occupation": rng.choice(_OCCUPATIONS), "employer": None})
    for _ in range(cfg.organisations):
        seat = rng.choice(w.cities)["name"]
        founder = rng.choice(w.people)
        kind = rng.choice(_ORG_KINDS)
        name = names.fresh(lambda: f"{names._syllables(2).capitalize()} {kind}")
        w.organisations.append({"name": name, "founder": founder["name"], "city": seat,
                                "founded": founder["birth_year"] + rng.randint(25, 60)})
    for person in w.people:
        person["employer"] = rng.choice(w.organisations)["name"]
    for _ in range(cfg.works):
        creator = rng.choice(w.people)
        kind = rng.choice(sorted(_WORK_KINDS))
        title = names.fresh(lambda: f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}")
        w.works.append({"name": title, "kind": kind, "creator": creator["name"],
                        "year": creator["birth_year"] + rng.randint(20, 70)})
    for _ in range(cfg.distractors):
        surname = rng.choice(surnames)
        first = names.fresh(lambda: names._syllables(rng.choice((1, 2))).capitalize())
        w.distractors.append({"name": f"{first} {surname}", "city": rng.choice(w.cities)["name"],
                              "occupation": rng.choice(_OCCUPATIONS),
                              "year": rng.randint(1720, 1940)})
    return w


def _a(word: str) -> str:
    """The indefinite article for ``word``."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def passages(w: World) -> list[tuple[str, str]]:
    """(title, text) passages, several per entity, in a fixed order."""
    made: dict[str, list[dict[str, Any]]] = {}
    for work in w.works:
        made.setdefault(work["creator"], []).append(work)
    out: list[tuple[str, str]] = []
    for c in w.countries:
        mine = [x["name"] for x in w.cities if x["country"] == c["name"]]
        out.append((c["name"], f"{c['name']} is a country that was established in {c['founded']}. "
                               f"Its cities include {', '.join(mine)}."))
    for c in w.cities:
        out.append((c["name"], f"{c['name']} is a city in {c['country']}, founded in {c['founded']}."))
        out.append((c["name"], f"{c['name']} lies on the river {c['river']} and is known for its "
                               "markets and old stone bridges."))
    for p in w.people:
        out.append((p["name"], f"{p['name']} (born {p['birth_year']}) was {_a(p['occupation'])}. "
                               f"{p['surname']} was born in {p['birth_city']}."))
        out.append((p["name"], f"{p['name']} worked at the {p['employer']} for most of a long "
                               f"career as {_a(p['occupation'])}."))
        works = made.get(p["name"], [])
        if works:
            listed = ", ".join(f"{x['name']} ({x['year']})" for x in works)
            out.append((p["name"], f"{p['name']} is remembered for {listed}."))
    for o in w.organisations:
        out.append((o["name"], f"The {o['name']} was founded in {o['founded']} by {o['founder']}."))
        out.append((o["name"], f"The {o['name']} has its seat in {o['city']}."))
    for x in w.works:
        out.append((x["name"], f"{x['name']} is {_a(x['kind'])} {_WORK_KINDS[x['kind']]} by "
                               f"{x['creator']} and first presented in {x['year']}."))
    for d in w.distractors:
        relative = next((p for p in w.people if p["surname"] == d["name"].split()[-1]), None)
        tie = f" a relative of {relative['name']}," if relative else ""
        out.append((d["name"], f"{d['name']},{tie} was {_a(d['occupation'])} who lived in {d['city']} "
                               f"around {d['year']}."))
    return out


def questions(w: World, multi_hop: bool = True) -> list[dict[str, Any]]:
    """Every question the world supports: (subject entity, question, answer, type, hops)."""
    people = {p["name"]: p for p in w.people}
    cities = {c["name"]: c for c in w.cities}
    orgs = {o["name"]: o for o in w.organisations}
    qs: list[dict[str, Any]] = []

    def add(subject: str, question: str, answer: Any, kind: str, hops: int) -> None:
        qs.append({"subject": subject, "question": question, "answer": str(answer), "type": kind,
                   "hops": hops})

    for p in w.people:
        n = p["name"]
        add(n, f"In which city was {n} born?", p["birth_city"], "birth_city", 1)
        add(n, f"In what year was {n} born?", p["birth_year"], "birth_year", 1)
        add(n, f"What was the occupation of {n}?", p["occupation"], "occupation", 1)
        add(n, f"Which organisation did {n} work at?", f"the {p['employer']}", "employer", 1)
        if multi_hop:
            add(n, f"In which country was {n} born?", cities[p["birth_city"]]["country"],
                "birth_country", 2)
            add(n, f"Who founded the organisation where {n} worked?", orgs[p["employer"]]["founder"],
                "employer_founder", 2)
            add(n, f"In which country does the organisation that {n} worked at have its seat?",
                cities[orgs[p["employer"]]["city"]]["country"], "employer_country", 3)
    for c in w.cities:
        add(c["name"], f"In which country is the city of {c['name']}?", c["country"], "city_country", 1)
        add(c["name"], f"In what year was {c['name']} founded?", c["founded"], "city_founded", 1)
    for o in w.organisations:
        n = o["name"]
        add(n, f"Who founded the {n}?", o["founder"], "org_founder", 1)
        add(n, f"In what year was the {n} founded?", o["founded"], "org_founded", 1)
        add(n, f"In which city does the {n} have its seat?", o["city"], "org_city", 1)
        if multi_hop:
            add(n, f"In which city was the founder of the {n} born?",
                people[o["founder"]]["birth_city"], "founder_birth_city", 2)
    for x in w.works:
        verb = _WORK_KINDS[x["kind"]]
        add(x["name"], f"Who {verb} the {x['kind']} {x['name']}?", x["creator"], "creator", 1)
        add(x["name"], f"In what year was {x['name']} first presented?", x["year"], "work_year", 1)
        if multi_hop:
            creator = people[x["creator"]]
            add(x["name"], f"In what year was the creator of {x['name']} born?", creator["birth_year"],
                "creator_birth_year", 2)
            add(x["name"], f"In which country was the creator of {x['name']} born?",
                cities[creator["birth_city"]]["country"], "creator_country", 3)
    return qs


def _golden(answer: str) -> list[str]:
    """Accepted answers: organisation names with and without the article."""
    return [answer, answer[4:]] if answer.startswith("the ") else [answer]


def split_questions(qs: list[dict[str, Any]], cfg: MiniWorldConfig) -> dict[str, list[dict[str, Any]]]:
    """Train/test by subject entity, shuffled with the seed, as FlashRAG rows."""
    rng = random.Random(cfg.seed + 1)
    subjects = sorted({q["subject"] for q in qs})
    rng.shuffle(subjects)
    n_test = max(1, round(len(subjects) * cfg.test_fraction))
    test_subjects = set(subjects[:n_test])
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for q in qs:
        splits["test" if q["subject"] in test_subjects else "train"].append(q)
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, items in splits.items():
        rng.shuffle(items)
        limit = cfg.max_train if name == "train" else cfg.max_test
        items = items[:limit] if limit is not None else items
        rows[name] = [{"id": f"{name}_{i}", "question": q["question"], "golden_answers": _golden(q["answer"]),
                       "metadata": {"type": q["type"], "hops": q["hops"], "subject": q["subject"]}}
                      for i, q in enumerate(items)]
    return rows


def split_validation(rows: list[dict[str, Any]], n: int, seed: int = 0) -> tuple[list[dict[str, Any]],
                                                                                 list[dict[str, Any]]]:
    """(rest, validation): whole subjects of ``rows`` held out until at least ``n`` questions are,
    the way the test split holds out entities, so validation questions are about subjects no kept
    question mentions. Rows without ``metadata.subject`` are their own subject. Order is kept."""
    if not 0 < n < len(rows):
        raise ValueError(f"a validation split of {n} questions needs 0 < n < {len(rows)} (the training "
                         "questions)")

    def subject(row: dict[str, Any]) -> str:
        return str((row.get("metadata") or {}).get("subject", row.get("id")))

    subjects = sorted({subject(r) for r in rows})
    random.Random(seed + 2).shuffle(subjects)
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[subject(r)] = sizes.get(subject(r), 0) + 1
    held, count = set(), 0
    for name in subjects:
        if count >= n:
            break
        held.add(name)
        count += sizes[name]
    if count >= len(rows):
        raise ValueError(f"holding out {n} validation questions by subject would leave no training question")
    return [r for r in rows if subject(r) not in held], [r for r in rows if subject(r) in held]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically (a temp file renamed into place), so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_world(out_dir: str | Path, cfg: MiniWorldConfig | None = None) -> dict[str, Any]:
    """Generate and write corpus.jsonl, train.jsonl, test.jsonl and world.json; return counts."""
    cfg = cfg or MiniWorldConfig()
    if not 0 < cfg.test_fraction < 1:
        raise ValueError("miniworld: test_fraction must be between 0 and 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = generate(cfg)
    corpus = [{"id": f"mw{i}", "contents": f'"{title}"\n{text}'}
              for i, (title, text) in enumerate(passages(world))]
    splits = split_questions(questions(world, cfg.multi_hop), cfg)
    _write_jsonl(out / "corpus.jsonl", corpus)
    for name, rows in splits.items():
        _write_jsonl(out / f"{name}.jsonl", rows)
    counts = {"passages": len(corpus), "train": len(splits["train"]), "test": len(splits["test"]),
              "entities": sum(len(getattr(world, k)) for k in ("countries", "cities", "people",
                                                                 "organisations", "works"))}
    meta = {"config": asdict(cfg), "counts": counts}
    (out / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return counts


VAL_FILE = "val.jsonl"
FIT_FILE = "train_minus_val.jsonl"
"""The validation split of ``train.jsonl`` and the training questions left beside it."""


def write_validation_split(world_dir: str | Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write ``val.jsonl`` (at least ``n`` questions about held-out training subjects, see
    :func:`split_validation`) and ``train_minus_val.jsonl`` (the rest) beside ``train.jsonl``;
    ``val.jsonl`` is written last, so its presence means both are complete."""
    out = Path(world_dir)
    with open(out / "train.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    rest, val = split_validation(rows, n, seed)
    _write_jsonl(out / FIT_FILE, rest)
    _write_jsonl(out / VAL_FILE, val)
    return {"train": len(rest), "val": len(val)}

