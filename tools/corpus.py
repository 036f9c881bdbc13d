"""Deterministic English-like training text for the embedded demo model.

The demo model is trained offline on text this module writes itself, so that the build needs no
download and the same seed always gives the same bytes. The text comes from a small
probabilistic grammar with enough structure for a 4-layer model to learn something real:

* short stories whose characters keep their name and pronoun from sentence to sentence;
* dialogue in quotes with a speaker and a reply;
* counting and small sums ("Mia had 3 apples. She found 4 more, so she had 7 apples.");
* diary entries with dates and temperatures, shopping lists, recipes and letters.

    python -m tools.corpus --bytes 3000000 --seed 0 > corpus.txt

Documents are separated by ``DOC_SEP`` (a blank line), which the trainer maps to the
end-of-text token.
"""
from __future__ import annotations

import argparse
import random
import sys

DOC_SEP = "\n\n"

# -- word lists ----------------------------------------------------------------------------------
NAMES_SHE = ["Mia", "Lily", "Emma", "Ava", "Zoe", "Nora", "Ella", "Ruby", "Grace", "Hannah",
             "Clara", "Lucy", "Alice", "Maya", "Sara", "Iris", "Rosa", "Anna", "Julia", "Eva",
             "Nina", "Olive", "Daisy", "Hazel", "Ivy", "Jane", "Kate", "Laura", "Molly", "Tess"]
NAMES_HE = ["Tom", "Ben", "Sam", "Max", "Leo", "Jack", "Noah", "Finn", "Owen", "Luke",
            "Adam", "Eli", "Hugo", "Ivan", "Jonah", "Kai", "Liam", "Marco", "Nick", "Oscar",
            "Paul", "Ravi", "Simon", "Theo", "Victor", "Will", "Alex", "Dan", "Felix", "Omar"]
ANIMALS = ["cat", "dog", "fox", "rabbit", "bird", "mouse", "horse", "duck", "frog", "bear",
           "owl", "turtle", "goat", "lion", "sheep", "pig", "squirrel", "deer", "whale", "bee"]
PLACES = ["forest", "village", "garden", "house", "farm", "city", "school", "park", "beach",
          "castle", "library", "market", "river", "hill", "valley", "kitchen", "harbor",
          "station", "meadow", "island"]
OBJECTS = ["ball", "book", "box", "kite", "hat", "cup", "key", "lamp", "map", "shell", "stone",
           "spoon", "ribbon", "drum", "coin", "letter", "basket", "clock", "bell", "blanket",
           "pencil", "bottle", "candle", "feather", "mirror", "rope", "ship", "toy", "wheel"]
FOODS = ["apples", "carrots", "cookies", "eggs", "bananas", "pears", "cakes", "plums",
         "oranges", "nuts", "berries", "potatoes", "lemons", "tomatoes", "grapes", "muffins"]
ADJS = ["big", "small", "old", "new", "red", "blue", "green", "yellow", "happy", "sad",
        "quiet", "loud", "bright", "dark", "soft", "warm", "cold", "tiny", "tall", "shiny",
        "brave", "clever", "kind", "lazy", "funny", "strange", "gentle", "busy", "wild", "sleepy"]
FEELINGS = ["happy", "sad", "tired", "scared", "excited", "angry", "proud", "surprised",
            "calm", "worried", "hungry", "curious", "lonely", "glad"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "purple", "orange", "pink"]
WEATHER = ["sunny", "rainy", "windy", "cloudy", "snowy", "foggy", "warm", "cold"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
TIMES = ["In the morning", "At noon", "In the afternoon", "In the evening", "At night",
         "One day", "Later", "After lunch", "Before dinner", "The next day"]
# (base, past, -ing) for transitive verbs taking an object
VERBS_T = [("find", "found", "finding"), ("carry", "carried", "carrying"),
           ("open", "opened", "opening"), ("paint", "painted", "painting"),
           ("clean", "cleaned", "cleaning"), ("hide", "hid", "hiding"),
           ("build", "built", "building"), ("fix", "fixed", "fixing"),
           ("drop", "dropped", "dropping"), ("throw", "threw", "throwing"),
           ("hold", "held", "holding"), ("lose", "lost", "losing"),
           ("wash", "washed", "washing"), ("bring", "brought", "bringing"),
           ("take", "took", "taking"), ("push", "pushed", "pushing"),
           ("catch", "caught", "catching"), ("see", "saw", "seeing")]
# (base, past) for intransitive verbs
VERBS_I = [("run", "ran"), ("jump", "jumped"), ("sing", "sang"), ("dance", "danced"),
           ("sleep", "slept"), ("laugh", "laughed"), ("swim", "swam"), ("walk", "walked"),
           ("cry", "cried"), ("smile", "smiled"), ("climb", "climbed"), ("wait", "waited"),
           ("play", "played"), ("read", "read"), ("rest", "rested"), ("shout", "shouted")]
ADVERBS = ["quickly", "slowly", "happily", "quietly", "carefully", "loudly", "gently",
           "suddenly", "bravely", "sadly"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve"]
SAY = ["said", "asked", "shouted", "whispered", "replied", "laughed", "cried"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _singular(plural: str) -> str:
    if plural.endswith("ies"):
        return plural[:-3] + "y"
    if plural.endswith("oes"):
        return plural[:-2]
    return plural[:-1]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class Character:
    """A story character: a name and the pronouns that must stay consistent with it."""

    def __init__(self, rng: random.Random):
        she = rng.random() < 0.5
        self.name = rng.choice(NAMES_SHE if she else NAMES_HE)
        self.subj, self.obj, self.poss = ("she", "her", "her") if she else ("he", "him", "his")
        self.animal = rng.choice(ANIMALS) if rng.random() < 0.3 else None


# -- sentences -----------------------------------------------------------------------------------
def s_intro(rng: random.Random, c: Character) -> str:
    adj = rng.choice(ADJS)
    if c.animal:
        return f"Once upon a time, there was {_a(adj)} {c.animal} named {c.name}."
    place = rng.choice(PLACES)
    return f"{c.name} lived in {_a(adj)} {rng.choice(['little', 'old', 'quiet', 'busy'])} {place}." \
        if rng.random() < 0.5 else f"Once upon a time, {c.name} lived near the {place}."


def s_action(rng: random.Random, c: Character) -> str:
    base, past, _ = rng.choice(VERBS_T)
    obj = rng.choice(OBJECTS)
    opener = rng.choice(TIMES)
    form = rng.randrange(4)
    if form == 0:
        return f"{opener}, {c.name} {past} {_a(rng.choice(ADJS))} {obj}."
    if form == 1:
        return f"{_cap(c.subj)} {past} the {obj} in the {rng.choice(PLACES)}."
    if form == 2:
        vi = rng.choice(VERBS_I)[1]
        return f"{_cap(c.subj)} {vi} {rng.choice(ADVERBS)} and then {past} {c.poss} {obj}."
    return f"{opener}, {c.subj} wanted to {base} the {rng.choice(COLORS)} {obj}."


def s_feeling(rng: random.Random, c: Character) -> str:
    f = rng.choice(FEELINGS)
    w = rng.choice(WEATHER)
    form = rng.randrange(3)
    if form == 0:
        return f"It was {w} outside, so {c.name} felt {f}."
    if form == 1:
        return f"{_cap(c.subj)} was very {f} because {c.poss} {rng.choice(OBJECTS)} was gone."
    return f"{c.name} looked at the {rng.choice(['sky', 'sea', 'road', 'trees', 'window'])} and felt {f}."


def s_counting(rng: random.Random, c: Character) -> str:
    food = rng.choice(FOODS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    form = rng.randrange(3)
    if form == 0:
        return (f"{c.name} had {a} {food}. {_cap(c.subj)} found {b} more, "
                f"so {c.subj} had {a + b} {food}.")
    if form == 1 and a > b:
        return (f"{c.name} had {a} {food}. {_cap(c.subj)} gave {b} to a friend, "
                f"so {c.subj} had {a - b} {food} left.")
    n = rng.randint(2, 6)
    words = ", ".join(NUMBER_WORDS[1:n + 1])
    return f"{c.name} counted the {food}: {words}. There were {NUMBER_WORDS[n]} {food}."


def s_dialogue(rng: random.Random, c: Character, other: Character) -> str:
    form = rng.randrange(4)
    obj = rng.choice(OBJECTS)
    if form == 0:
        return (f'"Where is my {obj}?" {c.name} asked. '
                f'"It is in the {rng.choice(PLACES)}," {other.name} {rng.choice(["said", "replied"])}.')
    if form == 1:
        return (f'"Can we go to the {rng.choice(PLACES)} today?" asked {c.name}. '
                f'"Yes, but only after we {rng.choice(VERBS_T)[0]} the {obj}," said {other.name}.')
    if form == 2:
        f = rng.choice(FEELINGS)
        return f'"I feel {f}," {c.name} {rng.choice(SAY)}. {other.name} gave {c.obj} {_a(obj)}.'
    return (f'{other.name} {rng.choice(SAY)}, "Look at that {rng.choice(ADJS)} {rng.choice(ANIMALS)}!" '
            f'{c.name} {rng.choice(VERBS_I)[1]}.')


def s_ending(rng: random.Random, c: Character, other: Character) -> str:
    form = rng.randrange(4)
    if form == 0:
        return f"In the end, {c.name} and {other.name} became good friends. The end."
    if form == 1:
        return f"That night, {c.name} went to sleep feeling {rng.choice(FEELINGS)}."
    if form == 2:
        return f"{c.name} learned that it is good to be {rng.choice(['kind', 'brave', 'patient', 'honest'])}."
    return f"From that day on, {c.subj} always kept {c.poss} {rng.choice(OBJECTS)} close."


# -- documents -----------------------------------------------------------------------------------
def story(rng: random.Random) -> str:
    """Return a short story with two consistent characters."""
    c, other = Character(rng), Character(rng)
    while other.name == c.name:
        other = Character(rng)
    parts = [s_intro(rng, c)]
    for _ in range(rng.randint(3, 8)):
        kind = rng.random()
        if kind < 0.35:
            parts.append(s_action(rng, c))
        elif kind < 0.55:
            parts.append(s_feeling(rng, c))
        elif kind < 0.7:
            parts.append(s_counting(rng, c))
        else:
            parts.append(s_dialogue(rng, c, other) if rng.random() < 0.6 else s_dialogue(rng, other, c))
    parts.append(s_ending(rng, c, other))
    return " ".join(parts)


def diary(rng: random.Random) -> str:
    """Return a few dated diary entries with weather and temperatures."""
    c = Character(rng)
    month, day = rng.randrange(12), rng.randint(1, 20)
    lines = [f"{c.name}'s diary"]
    for k in range(rng.randint(2, 4)):
        w, t = rng.choice(WEATHER), rng.randint(-5, 32)
        vb = rng.choice(VERBS_T)
        lines.append(f"{DAYS[(day + k) % 7]}, {MONTHS[month]} {day + k}: It was {w} and {t} degrees. "
                     f"I {vb[1]} {_a(rng.choice(OBJECTS))} at the {rng.choice(PLACES)}.")
    return "\n".join(lines)


def shopping_list(rng: random.Random) -> str:
    """Return a numbered shopping list with quantities and a total."""
    items = rng.sample(FOODS, rng.randint(2, 5))
    counts = [rng.randint(1, 9) for _ in items]
    lines = ["Shopping list:"] + [f"{i + 1}. {n} {f}" for i, (n, f) in enumerate(zip(counts, items))]
    lines.append(f"Total: {sum(counts)} things.")
    return "\n".join(lines)


def recipe(rng: random.Random) -> str:
    """Return a small recipe with ordered steps."""
    a, b = rng.sample(FOODS, 2)
    n, m = rng.randint(1, 6), rng.randint(2, 40)
    return (f"How to make {rng.choice(ADJS)} {_singular(a)} soup\n"
            f"First, wash {n} {a}. Then cut the {a} and the {b} into small pieces. "
            f"Put everything in a pot with water. Cook it for {m} minutes. "
            f"Serve it {rng.choice(['warm', 'hot', 'cold'])} with bread.")


def letter(rng: random.Random) -> str:
    """Return a short letter between two characters."""
    c, other = Character(rng), Character(rng)
    while other.name == c.name:
        other = Character(rng)
    return (f"Dear {other.name},\n"
            f"I am writing to you from the {rng.choice(PLACES)}. The weather is {rng.choice(WEATHER)}. "
            f"Yesterday I saw {_a(rng.choice(ADJS))} {rng.choice(ANIMALS)} and it {rng.choice(VERBS_I)[1]} "
            f"{rng.choice(ADVERBS)}. I miss you.\nLove,\n{c.name}")


DOCUMENTS = [(story, 0.6), (diary, 0.1), (shopping_list, 0.1), (recipe, 0.1), (letter, 0.1)]


def document(rng: random.Random) -> str:
    """Return one document, drawing its kind by the weights in DOCUMENTS."""
    r, acc = rng.random(), 0.0
    for make, weight in DOCUMENTS:
        acc += weight
        if r < acc:
            return make(rng)
    return DOCUMENTS[0][0](rng)


def documents(n_bytes: int, seed: int = 0) -> list[str]:
    """Return documents totalling at least n_bytes UTF-8 bytes (with separators), deterministically."""
    rng = random.Random(seed)
    docs, total = [], 0
    while total < n_bytes:
        d = document(rng)
        docs.append(d)
        total += len(d.encode()) + len(DOC_SEP)
    return docs


def generate(n_bytes: int, seed: int = 0) -> str:
    """Return the corpus text: documents joined by DOC_SEP."""
    return DOC_SEP.join(documents(n_bytes, seed))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=3_000_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.stdout.write(generate(args.bytes, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
