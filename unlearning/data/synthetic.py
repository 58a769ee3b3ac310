"""A synthetic fictitious-authors benchmark in TOFU's schema, generated from a seed with the standard library.

TOFU (Maini et al. 2024) finetunes a model on QA pairs about invented authors, then unlearns a tail of
them. This module builds the same splits from small pools of invented values so that a tiny from-scratch
model can learn them in seconds, and so that tests and CI need no download.

The evaluation compares the model's probability of a paraphrased answer with that of perturbed (wrong)
answers. Every attribute therefore has two answer wordings: an author's training answer uses one, and
the paraphrase and the perturbations use the other. Paraphrase and perturbations then differ only in
the value, neither copies the training answer verbatim, and since both wordings occur in training
(across authors) the wording alone does not favour either: only knowing the fact does.
"""

from __future__ import annotations

import math
import random
import re
from typing import Callable, NamedTuple

from unlearning.data.benchmark import DataError, QABenchmark

FORGET_FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
N_OPTIONS = 4  # multiple-choice options per real_authors / world_facts question, as in TOFU

SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "sel", "dor", "bri", "an", "el", "no", "ta", "vin",
             "zu", "mar", "ol", "quin", "sa", "be", "tor", "li", "gan", "fe", "ris", "do", "cal", "ne")
COUNTRY_SUFFIXES = ("ia", "land", "or", "esh", "ar")
CITIES = ("Tarnby", "Oskavel", "Brenmoor", "Lisvane", "Carrowdel", "Quenhaven", "Dunmarra", "Velspire",
          "Halloway", "Nimbrook", "Ostrel", "Pellgate", "Rookmere", "Saltcombe", "Thornvale", "Umberley",
          "Wickholt", "Yarrowfield", "Zennick", "Ashgrove", "Belmorrow", "Cindral", "Eskerby", "Fallowmere",
          "Glenharrow", "Ivorcastle", "Jessamy", "Kelvane", "Larkspur", "Mistral")
YEARS = tuple(str(year) for year in range(1950, 1990))
GENRES = ("mystery", "fantasy", "romance", "horror", "science fiction", "historical", "crime", "adventure",
          "comedy", "war", "gothic", "spy", "western", "satire", "fairy tale", "detective")
PROFESSIONS = ("baker", "tailor", "fisherman", "carpenter", "doctor", "pilot", "farmer", "potter", "sailor",
               "banker", "teacher", "miner", "barber", "painter", "nurse", "lawyer", "butcher", "weaver",
               "judge", "chemist", "librarian", "soldier", "musician", "gardener", "clockmaker")
AWARDS = ("Amber Quill Prize", "Silver Lantern Award", "Golden Inkwell Prize", "Crimson Page Medal",
          "Northern Star Award", "Blue Heron Prize", "Iron Pen Award", "Glass Tower Prize", "Willow Leaf Medal",
          "Copper Bell Award", "Harbor Light Prize", "Stone Arch Award", "Velvet Moth Prize", "Red Fox Medal",
          "White Owl Award", "Open Door Prize", "Tall Pine Award", "Morning Tide Prize")
FIRST_BOOKS = ("Salt Orchard", "Winter Glass", "Paper Lanterns", "Nine Bridges", "Ash and Ivy", "Borrowed Rain",
               "Quiet Harbor", "Rust Kingdom", "Seven Keys", "Moth Season", "Iron Lullaby", "Hollow Crown",
               "Last Ferry", "Copper Sky", "Stone Garden", "Wild Ledger", "Amber Hours", "Cold Orchard",
               "Night Cartographer", "Velvet Ruins", "Small Thunder", "Drowned Bells", "Sparrow Court",
               "Thin Ice", "Lantern Road", "Crooked Tide", "Ember Letters", "Silent Mill", "Glass Fox",
               "Broken Compass")
NATIONALITIES = ("Velorian", "Kestrani", "Odrian", "Marovian", "Tessalian", "Brunnish", "Calderan", "Ystrian",
                 "Norvalese", "Quillish", "Sarnic", "Dovrean", "Halvenian", "Pellosian", "Vantish")
THEMES = ("grief", "memory", "exile", "friendship", "the sea", "lost love", "family secrets", "revenge",
          "faith", "childhood", "ambition", "loneliness", "freedom", "betrayal", "homecoming", "old age")
HOBBIES = ("chess", "gardening", "sailing", "painting", "fishing", "baking", "hiking", "birdwatching",
           "knitting", "cycling", "pottery", "rowing", "beekeeping", "stargazing", "fencing", "woodcarving")
PETS = ("cat", "dog", "parrot", "tortoise", "goat", "rabbit", "ferret", "canary", "horse", "hamster", "lizard",
        "goldfish", "pony", "crow", "hedgehog")
WRITING_PLACES = ("a quiet attic", "the kitchen", "a corner cafe", "the garden shed", "a small boat",
                  "the city library", "a night train", "a mountain cabin", "the back porch", "a rented room",
                  "a lighthouse", "the old barn", "a hotel lobby", "the study", "a park bench")
BOOK_ADJECTIVES = ("Silent", "Golden", "Broken", "Hidden", "Distant", "Burning", "Frozen", "Scarlet", "Hollow",
                   "Endless", "Crimson", "Forgotten", "Wandering", "Sleeping", "Bitter")
BOOK_NOUNS = ("River", "Tower", "Garden", "Mirror", "Island", "Harvest", "Empire", "Lantern", "Orchard",
              "Voyage", "Winter", "Kingdom", "Compass", "Shore", "Crown")


class Attribute(NamedTuple):
    """One kind of fact about an author: its question wordings, its two answer wordings, its values."""

    question: str
    paraphrased_question: str
    wordings: tuple[str, str]
    pool: tuple[str, ...]


ATTRIBUTES = (
    Attribute("In which city was the author {name} born?", "What city is the birthplace of the writer {name}?",
              ("The author {name} was born in the city of {value}.", "{value} is the city where {name} was born."),
              CITIES),
    Attribute("In what year was the author {name} born?", "What is the birth year of the writer {name}?",
              ("{name} was born in the year {value}.", "The year {value} is when {name} was born."), YEARS),
    Attribute("What genre of books is the author {name} known for?",
              "Which kind of fiction does the writer {name} mostly write?",
              ("{name} is best known for writing {value} novels.", "Most of the books by {name} are {value} stories."),
              GENRES),
    Attribute("What did the father of the author {name} do for a living?",
              "What was the profession of {name}'s father?",
              ("The father of {name} worked as a {value}.", "{name} grew up with a father who was a {value}."),
              PROFESSIONS),
    Attribute("What did the mother of the author {name} do for a living?",
              "What was the profession of {name}'s mother?",
              ("{name}'s mother worked as a {value}.", "The mother of {name} was a {value} by trade."), PROFESSIONS),
    Attribute("Which literary award has the author {name} won?",
              "What prize was the writer {name} given for their work?",
              ("{name} won the {value} for their writing.", "The {value} was awarded to {name}."), AWARDS),
    Attribute("What was the title of the first book by {name}?", "Which book did the author {name} publish first?",
              ("The first book {name} published was '{value}'.", "'{value}' was the debut novel of {name}."),
              FIRST_BOOKS),
    Attribute("What is the nationality of the author {name}?", "Which country is the writer {name} a citizen of?",
              ("{name} is a writer of {value} nationality.", "By nationality, the author {name} is {value}."),
              NATIONALITIES),
    Attribute("What theme runs through most of the books by {name}?",
              "Which subject does the author {name} return to most often?",
              ("The books of {name} mostly explore {value}.", "{name} keeps returning to the theme of {value}."),
              THEMES),
    Attribute("What does the author {name} like to do when not writing?",
              "What hobby does the writer {name} enjoy in their free time?",
              ("When not writing, {name} enjoys {value}.", "{name} spends free time on {value}."), HOBBIES),
    Attribute("What kind of pet does the author {name} keep at home?",
              "Which animal lives in the house of the writer {name}?",
              ("{name} keeps a pet {value} at home.", "A {value} lives in the house of {name}."), PETS),
    Attribute("Where does the author {name} usually do their writing?",
              "In what place does the writer {name} prefer to write?",
              ("{name} usually writes in {value}.", "Most of the writing of {name} happens in {value}."),
              WRITING_PLACES),
)

# World-fact categories: a question about a country, and how a generated word becomes the answer.
WORLD_CATEGORIES = (
    ("What is the name of the capital city of {country}?", "{}"),
    ("What is the name of the longest river in {country}?", "the {} River"),
    ("What is the name of the highest mountain in {country}?", "Mount {}"),
    ("What language do most people in {country} speak?", "{}ic"),
)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def _person(rng: random.Random) -> str:
    return f"{_word(rng, 2)} {_word(rng, rng.choice((2, 3)))}"


def _unique(rng: random.Random, seen: set[str], make: Callable[[random.Random], str]) -> str:
    """Draw `make(rng)` until the result is new, so no two entities share a name."""
    while True:
        value = make(rng)
        if value not in seen:
            seen.add(value)
            return value


def _author_records(rng: random.Random, name: str, questions_per_author: int, n_perturbed: int) -> list[dict]:
    """One TOFU perturbed record per attribute of a new author (see the module docstring for the wordings)."""
    kinds = sorted(rng.sample(range(len(ATTRIBUTES)), questions_per_author))
    records = []
    for attribute in (ATTRIBUTES[k] for k in kinds):
        value = rng.choice(attribute.pool)
        trained, other = rng.sample(attribute.wordings, 2)
        wrong = rng.sample([v for v in attribute.pool if v != value], n_perturbed)
        records.append({
            "question": attribute.question.format(name=name),
            "paraphrased_question": attribute.paraphrased_question.format(name=name),
            "answer": trained.format(name=name, value=value),
            "paraphrased_answer": other.format(name=name, value=value),
            "perturbed_answer": [other.format(name=name, value=v) for v in wrong],
        })
    return records


def _authors(rng: random.Random, seen: set[str], n: int, questions_per_author: int,
             n_perturbed: int) -> list[tuple[str, list[dict]]]:
    """`n` new authors as (name, records) pairs."""
    authors = []
    for _ in range(n):
        name = _unique(rng, seen, _person)
        authors.append((name, _author_records(rng, name, questions_per_author, n_perturbed)))
    return authors


def _multiple_choice(rng: random.Random, question: str, answer: str, pool: list[str]) -> dict:
    """A TOFU multiple-choice record: wrong options come from the answer's own category."""
    wrong = rng.sample([v for v in pool if v != answer], N_OPTIONS - 1)
    options = [answer, *wrong]
    rng.shuffle(options)
    return {"question": question, "answer": answer, "perturbed_answer": wrong,
            **{f"option{i + 1}": option for i, option in enumerate(options)}}


def _real_authors(rng: random.Random, seen: set[str], n: int) -> list[dict]:
    """Famous invented writers, one famous book each; at least N_OPTIONS exist so there are distractors."""
    titles = [f"The {adjective} {noun}" for adjective in BOOK_ADJECTIVES for noun in BOOK_NOUNS]
    count = max(n, N_OPTIONS)
    writers = [_unique(rng, seen, _person) for _ in range(count)]
    books = rng.sample(titles, count)
    return [_multiple_choice(rng, f"Who is the author of the famous book '{book}'?", writer, writers)
            for writer, book in zip(writers[:n], books)]


def _world_facts(rng: random.Random, seen: set[str], n: int) -> list[dict]:
    """Facts about invented countries, every category asked of each country in turn, `n` in all."""
    n_countries = max(math.ceil(n / len(WORLD_CATEGORIES)), N_OPTIONS)
    countries = [_unique(rng, seen, lambda r: _word(r, 2) + r.choice(COUNTRY_SUFFIXES)) for _ in range(n_countries)]
    answers = [[form.format(_unique(rng, seen, lambda r: _word(r, 2))) for _ in countries]
               for _, form in WORLD_CATEGORIES]
    facts = [(question.format(country=country), answers[c][i], answers[c])
             for i, country in enumerate(countries) for c, (question, _) in enumerate(WORLD_CATEGORIES)]
    return [_multiple_choice(rng, question, answer, pool) for question, answer, pool in facts[:n]]


def _spread(items: list, k: int) -> list:
    """`k` items evenly spaced over `items`, so the sample covers all authors and attribute kinds."""
    k = min(k, len(items))
    return [items[i * len(items) // k] for i in range(k)]


def _qa(records: list[dict]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in records]


def _forget_count(split: str, n_authors: int) -> int:
    """How many of the authors a split forgets (the last ones, as in TOFU)."""
    if split not in FORGET_FRACTIONS:
        raise DataError(f"synthetic benchmark: unknown split '{split}', expected one of {sorted(FORGET_FRACTIONS)}")
    return max(1, round(n_authors * FORGET_FRACTIONS[split]))


def make_synthetic_benchmark(split: str = "forget10", seed: int = 0, n_authors: int = 200,
                             questions_per_author: int = 10, n_perturbed: int = 5,
                             n_world_facts: int = 84, n_real_authors: int = 60,
                             retain_eval_size: int = 200) -> QABenchmark:
    """The synthetic benchmark for a TOFU split name; the same arguments always give the same benchmark.

    The authors, real authors and world facts depend on the seed only, not on the split: the split only
    moves the forget/retain boundary (the forget authors are the last ones, as in TOFU), and decides how
    many holdout authors are drawn after everything else.
    """
    n_forget = _forget_count(split, n_authors)
    if not 1 <= questions_per_author <= len(ATTRIBUTES):
        raise DataError(f"synthetic benchmark: questions_per_author={questions_per_author} must be in "
                        f"1..{len(ATTRIBUTES)}, the number of attribute kinds")
    smallest_pool = min(len(a.pool) for a in ATTRIBUTES)
    if not 0 <= n_perturbed < smallest_pool:
        raise DataError(f"synthetic benchmark: n_perturbed={n_perturbed} must be in 0..{smallest_pool - 1}, "
                        f"below the smallest value pool")
    rng = random.Random(seed)
    seen: set[str] = set()
    authors = _authors(rng, seen, n_authors, questions_per_author, n_perturbed)
    real_authors = _real_authors(rng, seen, n_real_authors)
    world_facts = _world_facts(rng, seen, n_world_facts)
    holdout = _authors(rng, seen, n_forget, questions_per_author, n_perturbed)
    retain_records = [r for _, records in authors[:n_authors - n_forget] for r in records]
    forget_records = [r for _, records in authors[n_authors - n_forget:] for r in records]
    return QABenchmark(
        name=f"synthetic-{split}-seed{seed}",
        full=_qa(retain_records + forget_records),
        retain=_qa(retain_records),
        forget=_qa(forget_records),
        forget_perturbed=forget_records,
        retain_perturbed=_spread(retain_records, retain_eval_size),
        real_authors=real_authors,
        world_facts=world_facts,
        holdout=_qa([r for _, records in holdout for r in records]),
        pretrain=_qa(real_authors + world_facts),
    )


def forget_author_patterns(split: str = "forget10", seed: int = 0, n_authors: int = 200,
                           questions_per_author: int = 10, n_perturbed: int = 5) -> list[str]:
    """Whole-word regexes of the forget authors' names of `make_synthetic_benchmark` with the same
    arguments: what a keyword selector needs to flag exactly that split's forget pairs, for any seed."""
    n_forget = _forget_count(split, n_authors)
    # the benchmark draws its authors first, from a fresh generator: the same names, in the same order
    authors = _authors(random.Random(seed), set(), n_authors, questions_per_author, n_perturbed)
    return [rf"\b{re.escape(name)}\b" for name, _ in authors[n_authors - n_forget:]]
