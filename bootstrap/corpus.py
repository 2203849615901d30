"""Generated English (and numbers, code, punctuation) for tiny-chat: its tokenizer's training corpus
and the answers whose bigrams shape its weights. Deterministic, offline."""

from __future__ import annotations

import random

# Word lists for the tokenizer corpus: enough variety that BPE learns real English subwords.
_NOUNS = (
    "time year people way day man woman child world life hand part place case week company system "
    "program question work government number night point home water room mother area money story fact "
    "month lot right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea kid body "
    "information back parent face others level office door health person art war history party result "
    "change morning reason research girl guy moment air teacher force education cat dog kitten mat rug "
    "market stock price river mountain computer model server request token garden kitchen window table "
    "chair street village forest ocean island bridge train station letter paper music song picture "
    "language science nature planet star moon sun cloud rain snow wind fire stone tree flower bird fish "
    "horse apple bread coffee tea milk cheese dinner lunch breakfast doctor student engineer artist"
).split()
_VERBS = (
    "be have do say go get make know think take see come want look use find give tell work call try ask "
    "need feel become leave put mean keep let begin seem help talk turn start show hear play run move like "
    "live believe hold bring happen write provide sit stand lose pay meet include continue set learn "
    "change lead understand watch follow stop create speak read allow add spend grow open walk win offer "
    "remember love consider appear buy wait serve die send expect build stay fall cut reach kill remain "
    "suggest raise pass sell require report decide pull explain answer compute embed rank generate"
).split()
_ADJECTIVES = (
    "good new first last long great little own other old right big high different small large next early "
    "young important few public bad same able local sure free better true whole clear simple hard open "
    "short quick slow bright dark warm cold happy sad quiet loud strong weak rich poor green blue red "
    "white black yellow gentle careful curious ancient modern tiny huge fast busy calm brave clever"
).split()
_ADVERBS = (
    "quickly slowly quietly often never always sometimes today tomorrow yesterday here there very".split()
)
_DETERMINERS = "the a an this that every some any each my your our their his her".split()
_PREPOSITIONS = "in on at with from into over under near behind across through about after before".split()
_NAMES = "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Maria Noah Olivia Paul".split()
_PLACES = "London Paris Tokyo Berlin Madrid Rome Cairo Lima Oslo Seoul Sydney Toronto Nairobi Delhi".split()
_PUNCT = list(".,;:!?-()[]{}'\"/@#$%&*+=<>_|~`^\\")


def _past(verb: str) -> str:
    if verb.endswith("e"):
        return verb + "d"
    return verb + "ed"


def _ing(verb: str) -> str:
    if verb.endswith("e") and verb not in ("be", "see"):
        return verb[:-1] + "ing"
    return verb + "ing"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _phrase(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    if rng.random() < 0.3:
        noun = _plural(noun)
    if rng.random() < 0.5:
        noun = f"{rng.choice(_ADJECTIVES)} {noun}"
    return f"{rng.choice(_DETERMINERS)} {noun}"


def sentence(rng: random.Random) -> str:
    subject = rng.choice(_NAMES) if rng.random() < 0.3 else _phrase(rng)
    verb = rng.choice(_VERBS)
    form = rng.random()
    if form < 0.4:
        verb = _past(verb)
    elif form < 0.6:
        verb = "is " + _ing(verb)
    elif form < 0.8:
        verb = verb + "s"
    parts = [subject, verb, _phrase(rng)]
    if rng.random() < 0.5:
        parts += [rng.choice(_PREPOSITIONS), rng.choice(_PLACES) if rng.random() < 0.3 else _phrase(rng)]
    if rng.random() < 0.3:
        parts.append(rng.choice(_ADVERBS))
    text = " ".join(parts)
    end = rng.choice(".....!?")
    if end == "?":
        text = f"did {text}"
    return text[0].upper() + text[1:] + end


def _numbers(rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.25:
        return f"{rng.randint(0, 9999)} + {rng.randint(0, 9999)} = {rng.randint(0, 19999)}"
    if choice < 0.5:
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1900, 2099)}"
    if choice < 0.75:
        return f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d} {rng.choice(['%', 'kg', 'km', 'USD', 'ms'])}"
    return " ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(rng.randint(2, 6)))


def _code(rng: random.Random) -> str:
    name, arg = rng.choice(_VERBS), rng.choice(_NOUNS)
    return rng.choice(
        [
            f"def {name}_{arg}({arg}):\n    return {arg} + {rng.randint(0, 99)}\n",
            f'{{"{arg}": {rng.randint(0, 999)}, "{name}": [{rng.randint(0, 9)}, {rng.randint(0, 9)}]}}',
            f"if ({arg} != null) {{ {name}({arg}); }}",
            f"{arg}[{rng.randint(0, 9)}] = {arg}_{name} * {rng.randint(2, 9)}; // {_phrase(rng)}",
            f"- [{rng.choice(' x')}] {sentence(rng)}",
            f"# {name.capitalize()} the {arg}\n\n1. {sentence(rng)}\n2. {sentence(rng)}",
        ]
    )


def tokenizer_corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """A deterministic, varied training corpus for the tiny BPE tokenizer (English, digits, code)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        kind = i % 10
        if kind < 6:
            lines.append(" ".join(sentence(rng) for _ in range(rng.randint(1, 3))))
        elif kind == 6:
            lines.append(_numbers(rng))
        elif kind == 7:
            lines.append(_code(rng))
        elif kind == 8:
            lines.append(f"{rng.choice(['user', 'assistant', 'system'])}: {sentence(rng)}")
        else:
            lines.append(" ".join(rng.choice(_PUNCT) + rng.choice(_NOUNS) for _ in range(rng.randint(2, 6))))
    return lines
