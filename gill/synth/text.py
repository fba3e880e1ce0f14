"""Natural-language generators for the shapes world: CC3M captions, VIST story sentences, VisDial Q/A.

All wording comes from the template tables below, filled with the vocabulary of
:mod:`gill.synth.scenes`. Because every template and every slot value is enumerable,
:func:`caption_corpus` can guarantee that a tokenizer trained on it has seen every word any
generator can produce.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gill.synth.scenes import (
    BACKGROUNDS,
    COLORS,
    PLAIN_BACKGROUNDS,
    POSITIONS,
    SHAPE_KINDS,
    SIZES,
    Scene,
    Shape,
    Story,
    StoryEvent,
    sample_scene,
    sample_story,
)

WHERE: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
DEST: dict[str, str] = {
    "top left": "to the top left corner",
    "top": "to the top",
    "top right": "to the top right corner",
    "left": "to the left",
    "center": "to the center",
    "right": "to the right",
    "bottom left": "to the bottom left corner",
    "bottom": "to the bottom",
    "bottom right": "to the bottom right corner",
}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}

SHAPE_DESC = "a {size} {color} {kind} {where}"
CC3M_SINGLE = (
    "a {size} {color} {kind} {where} of a {bg} background",
    "a {bg} background with a {size} {color} {kind} {where}",
    "illustration of a {size} {color} {kind} {where} on a {bg} background",
    "there is a {size} {color} {kind} {where} on a {bg} background",
    "{size} {color} {kind} {where}, {bg} background",
)
CC3M_MULTI = (
    "{word} shapes: {shapes}, on a {bg} background",
    "{shapes} on a {bg} background",
    "{digit} shapes on a {bg} background: {shapes}",
    "illustration of {shapes} on a {bg} background",
    "a {bg} background with {word} shapes: {shapes}",
)

STORY_INTRO = (
    "There is a {size} {color} {kind} {where} on a {bg} background.",
    "We see a {size} {color} {kind} {where}, on a {bg} background.",
    "Our story starts with a {size} {color} {kind} {where} on a {bg} background.",
)
STORY_EVENTS: dict[str, tuple[str, ...]] = {
    "move": ("Then {ref} moves {dest}.", "Next, {ref} slides {dest}.", "After that, {ref} goes {dest}."),
    "recolor": (
        "Then {ref} turns {color}.",
        "Now {ref} becomes {color}.",
        "Suddenly {ref} changes its color to {color}.",
    ),
    "resize": ("Now {ref} is {size}.", "Then {ref} changes size and becomes {size}.", "Suddenly {ref} is {size}."),
    "background": (
        "Then the background turns {bg}.",
        "Suddenly the background becomes {bg}.",
        "Now the background is {bg}.",
    ),
    "join": (
        "Then a {size} {color} {kind} appears {where}.",
        "Next, a {size} {color} {kind} joins {where}.",
        "Suddenly a {size} {color} {kind} shows up {where}.",
    ),
}
#: How later sentences refer back to the main shape (never by its kind, so context is needed).
MAIN_REFS_ALONE = ("it", "the same shape")
MAIN_REFS_WITH_OTHER = ("the first shape", "the original shape")
OTHER_REFS = ("the {kind}", "the new shape", "the other shape")

QUESTIONS: dict[str, str] = {
    "count": "how many shapes are there",
    "bg": "what color is the background",
    "plain": "is the background plain",
    "photo": "is it a photo",
    "exists": "is there a {kind}",
    "color": "what color is the {kind}",
    "where": "where is the {kind}",
    "size": "is the {kind} {size}",
    "anything": "is there anything {color}",
    "what_at": "what is {where}",
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "count": ("{digit}", "{word}", "i see {word}"),
    "bg": ("{bg}", "it is {bg}", "the background is {bg}"),
    "plain_yes": ("yes", "yes it is plain"),
    "plain_no": ("no", "no it is {bg}"),
    "photo": ("no", "no it is a drawing"),
    "exists_yes": ("yes", "yes there is", "yes it is {where}"),
    "exists_no": ("no", "no there is not", "nope"),
    "color": ("{color}", "it is {color}", "{color} i think"),
    "where": ("{where}", "it is {where}"),
    "size_yes": ("yes", "yes it is {size}"),
    "size_no": ("no", "no it is {size}"),
    "anything_yes": ("yes", "yes the {kind}", "yes there is a {kind}"),
    "anything_no": ("no", "nothing is {color}"),
    "what_at": ("a {size} {color} {kind}", "there is a {size} {color} {kind}"),
    "what_at_empty": ("nothing", "it is empty"),
}
#: Every value each template slot can take (used to enumerate answers and build the corpus).
SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "kind": SHAPE_KINDS,
    "color": tuple(COLORS),
    "size": SIZES,
    "where": tuple(WHERE.values()),
    "dest": tuple(DEST.values()),
    "bg": tuple(BACKGROUNDS),
    "digit": ("1", "2", "3"),
    "word": tuple(NUMBER_WORDS.values()),
    "ref": MAIN_REFS_ALONE + MAIN_REFS_WITH_OTHER + tuple(r.format(kind=k) for r in OTHER_REFS for k in SHAPE_KINDS),
    "shapes": (
        "a small red circle on the left and a large blue star at the top",
        "a large green ring in the center, a small pink cross at the bottom and a small brown diamond on the right",
    ),
}


@dataclass(frozen=True, kw_only=True)
class QA:
    """One dialog round: a lowercase question without '?' and a lowercase answer without final period."""

    question: str
    answer: str


def template_fields(template: str) -> list[str]:
    """The named slots of a ``str.format`` template, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def shape_slots(shape: Shape) -> dict[str, str]:
    """Template slot values describing one shape."""
    return {"size": shape.size, "color": shape.color, "kind": shape.kind, "where": WHERE[shape.position]}


def join_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def cc3m_caption(scene: Scene, rng: random.Random) -> str:
    """A lowercase CC3M-style caption of ``scene`` (no tab, newline or final period)."""
    n = len(scene.shapes)
    if n == 1:
        return rng.choice(CC3M_SINGLE).format(bg=scene.background, **shape_slots(scene.shapes[0]))
    shapes = join_list([SHAPE_DESC.format(**shape_slots(s)) for s in scene.shapes])
    return rng.choice(CC3M_MULTI).format(shapes=shapes, bg=scene.background, word=NUMBER_WORDS[n], digit=str(n))


def vist_process(text: str) -> str:
    """VIST's processed ``text`` field: lowercased, punctuation split off by spaces."""
    spaced = re.sub(r"([.,!?;:\"()])", r" \1 ", text.lower())
    return " ".join(spaced.split())


def _reference(event: StoryEvent, scene_before: Scene, rng: random.Random) -> str:
    """How a sentence refers to the event's target shape, given the scene before the event."""
    if event.target == "other":
        return rng.choice(OTHER_REFS).format(kind=scene_before.shapes[1].kind)
    return rng.choice(MAIN_REFS_WITH_OTHER if len(scene_before.shapes) > 1 else MAIN_REFS_ALONE)


def _event_sentence(event: StoryEvent, before: Scene, after: Scene, rng: random.Random) -> str:
    """The natural-cased sentence for one story step."""
    if event.action in ("intro", "join"):
        assert event.shape is not None
        table = STORY_INTRO if event.action == "intro" else STORY_EVENTS["join"]
        return rng.choice(table).format(bg=after.background, **shape_slots(event.shape))
    slots = {
        "ref": _reference(event, before, rng),
        "dest": DEST.get(event.value, ""),
        "color": event.value,
        "size": event.value,
        "bg": event.value,
    }
    return rng.choice(STORY_EVENTS[event.action]).format(**slots)


def story_sentences(story: Story, rng: random.Random) -> list[str]:
    """The five natural-cased sentences (VIST ``original_text``) telling ``story``."""
    sentences = []
    before = story.steps[0].scene
    for step in story.steps:
        sentences.append(_event_sentence(step.event, before, step.scene, rng))
        before = step.scene
    return sentences


def _pick(rng: random.Random, key: str, **slots: str) -> str:
    """One randomly chosen answer template of ``ANSWERS[key]``, filled."""
    return rng.choice(ANSWERS[key]).format(**slots)


def _scene_qas(scene: Scene, rng: random.Random) -> list[QA]:
    """Questions about the whole scene, with truthful answers."""
    n, bg = len(scene.shapes), scene.background
    plain = bg in PLAIN_BACKGROUNDS
    qas = [
        QA(question=QUESTIONS["count"], answer=_pick(rng, "count", digit=str(n), word=NUMBER_WORDS[n])),
        QA(question=QUESTIONS["bg"], answer=_pick(rng, "bg", bg=bg)),
        QA(question=QUESTIONS["plain"], answer=_pick(rng, "plain_yes" if plain else "plain_no", bg=bg)),
        QA(question=QUESTIONS["photo"], answer=_pick(rng, "photo")),
    ]
    for kind in SHAPE_KINDS:
        shape = scene.shape_of_kind(kind)
        key = "exists_yes" if shape else "exists_no"
        where = WHERE[shape.position] if shape else ""
        qas.append(QA(question=QUESTIONS["exists"].format(kind=kind), answer=_pick(rng, key, where=where)))
    return qas


def _shape_qas(scene: Scene, rng: random.Random) -> list[QA]:
    """Questions about each shape's colour, place and size, with truthful answers."""
    qas = []
    for shape in scene.shapes:
        slots = shape_slots(shape)
        asked = rng.choice(SIZES)
        qas.append(QA(question=QUESTIONS["color"].format(**slots), answer=_pick(rng, "color", **slots)))
        qas.append(QA(question=QUESTIONS["where"].format(**slots), answer=_pick(rng, "where", **slots)))
        qas.append(
            QA(
                question=QUESTIONS["size"].format(kind=shape.kind, size=asked),
                answer=_pick(rng, "size_yes" if asked == shape.size else "size_no", size=shape.size),
            )
        )
    return qas


def _probe_qas(scene: Scene, rng: random.Random) -> list[QA]:
    """Questions probing a few colours and grid cells, with truthful answers."""
    qas = []
    for color in rng.sample(list(COLORS), 3):
        shape = next((s for s in scene.shapes if s.color == color), None)
        answer = _pick(rng, "anything_yes", kind=shape.kind) if shape else _pick(rng, "anything_no", color=color)
        qas.append(QA(question=QUESTIONS["anything"].format(color=color), answer=answer))
    for position in rng.sample(list(POSITIONS), 3):
        shape = scene.shape_at(position)
        answer = _pick(rng, "what_at", **shape_slots(shape)) if shape else _pick(rng, "what_at_empty")
        qas.append(QA(question=QUESTIONS["what_at"].format(where=WHERE[position]), answer=answer))
    return qas


def dialog_rounds(scene: Scene, rng: random.Random, n_rounds: int = 10) -> list[QA]:
    """``n_rounds`` distinct truthful question/answer rounds about ``scene`` (VisDial style)."""
    candidates = _scene_qas(scene, rng) + _shape_qas(scene, rng) + _probe_qas(scene, rng)
    return rng.sample(candidates, n_rounds)


def expand(template: str) -> list[str]:
    """Every filling of ``template`` over :data:`SLOT_VALUES` (all combinations, in a fixed order)."""
    fields = list(dict.fromkeys(template_fields(template)))
    combos = itertools.product(*(SLOT_VALUES[f] for f in fields))
    return [template.format(**dict(zip(fields, combo, strict=True))) for combo in combos]


def answer_universe() -> list[str]:
    """Every answer string any dialog can contain, deduplicated, in a fixed order."""
    return list(dict.fromkeys(a for table in ANSWERS.values() for t in table for a in expand(t)))


def question_universe() -> list[str]:
    """Every question string any dialog can contain, deduplicated, in a fixed order."""
    return list(dict.fromkeys(q for t in QUESTIONS.values() for q in expand(t)))


def cycle_fill(template: str, slot_values: Mapping[str, Sequence[str]] = SLOT_VALUES) -> list[str]:
    """Fillings of ``template`` in which every slot takes every one of its values at least once."""
    fields = list(dict.fromkeys(template_fields(template)))
    rounds = max((len(slot_values[f]) for f in fields), default=1)
    return [template.format(**{f: slot_values[f][i % len(slot_values[f])] for f in fields}) for i in range(rounds)]


def _coverage_lines() -> list[str]:
    """Lines that together contain every word and symbol any generator can emit."""
    cc3m = [line for t in (SHAPE_DESC, *CC3M_SINGLE, *CC3M_MULTI) for line in cycle_fill(t)]
    story = [line for t in (*STORY_INTRO, *itertools.chain(*STORY_EVENTS.values())) for line in cycle_fill(t)]
    pairs = itertools.zip_longest(question_universe(), answer_universe(), fillvalue="yes")
    dialog = [f"Q: {q}? A: {a}" for q, a in pairs]
    extra = ["0 1 2 3 4 5 6 7 8 9 . , : ; ? ! ' \" ( ) -", "Q: A:"]
    return cc3m + story + [vist_process(s) for s in story] + dialog + question_universe() + answer_universe() + extra


def _sample_line(rng: random.Random) -> str:
    """One random corpus line: a caption, a (raw or processed) story, or a dialog transcript."""
    kind = rng.randrange(4)
    if kind == 0:
        return cc3m_caption(sample_scene(rng), rng)
    if kind in (1, 2):
        story = " ".join(story_sentences(sample_story(rng), rng))
        return story if kind == 1 else vist_process(story)
    scene = sample_scene(rng)
    rounds = " ".join(f"Q: {qa.question}? A: {qa.answer}" for qa in dialog_rounds(scene, rng, 4))
    return f"{cc3m_caption(scene, rng)}. {rounds}"


def caption_corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Deterministic text for training the tiny models' tokenizers.

    Returns ``max(n, C)`` lines, where the first ``C`` lines are a fixed coverage block containing
    every word any generator can produce (CC3M captions, VIST sentences raw and processed, VisDial
    questions and answers with "Q:"/"A:" prefixes, digits and punctuation) and the rest are random
    captions, stories and dialog transcripts drawn from ``random.Random(seed)``.
    """
    rng = random.Random(f"corpus-{seed}")
    lines = _coverage_lines()
    while len(lines) < n:
        lines.append(_sample_line(rng))
    return lines


def tokens(texts: Iterable[str]) -> set[str]:
    """Word and punctuation tokens (case-sensitive) of ``texts``."""
    return {tok for text in texts for tok in re.findall(r"\w+|[^\w\s]", text)}
