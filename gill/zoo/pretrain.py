"""Brief pre-training of the tiny zoo on the shapes world, so that learning downstream is visible.

Randomly initialised backbones are a poor stand-in for frozen *pretrained* ones: a random LM outputs nearly
uniform next-token distributions whatever its input, so no image prefix can lower GILL's captioning loss,
and random CLIP features barely separate the scenes. A few hundred CPU steps fix that: the OPT learns the
world's language (captions, stories, dialogue) and the CLIP learns to match rendered scenes with captions.

A large LM's final hidden state after a text summarises that text; that is what lets GILL retrieve from
h[IMG0] through a single linear map (paper section 3.3), and what GILL's premise relies on for long context: after
a story, the LM's state reflects the scene the story has reached. A 64-wide LM trained only on next-token
prediction over templated text does not get there: its states carry the last few words, and a linear probe from
them to the image features stays near chance. So the tiny OPT also learns, at the end-of-text token, to predict
(through a throwaway linear head, not saved) the tiny CLIP's text embedding of a caption of the scene the text
ends in: for a caption its own scene, for a story the scene after its last step, for a dialogue the scene it is
about (:func:`summary_texts`). This summary objective stands in for the understanding that scale gives a real
LM; it never sees GILL, its benchmarks or their worlds (other seeds). GILL's trained ``[IMG0]`` embedding then
learns to read that summary, and validation R@1 on the shapes world goes from about 4x to about 20x chance.
Runs with a fixed thread count and fixed seeds, so a build is byte-for-byte repeatable on a machine.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gill.synth.render import render_scene
from gill.synth.scenes import changed_scene, sample_scene, sample_story
from gill.synth.text import cc3m_caption, dialog_rounds, story_sentences, vist_process

logger = logging.getLogger(__name__)


SUMMARY_MAX_TOKENS = 192
"""Longest summary text in LM tokens (a five-sentence story is about 70, a ten-round dialogue about 130)."""
THREADS = 2
"""A fixed intra-op thread count: CPU reductions then split the same way on every build (repeatable weights)."""


@contextmanager
def _fixed_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True, kw_only=True)
class PretrainReport:
    """First and last loss of a pre-training run."""

    steps: int
    first_loss: float
    last_loss: float


def summary_texts(seed: int, n: int) -> tuple[list[str], list[str]]:
    """``n`` world texts and, for each, a caption of the scene it ends in (what its summary should mean).

    Half are CC3M-style captions (their own scene), 30% stories (the scene after the last step: the story's
    sentences, raw or VIST-processed) and 20% VisDial-style dialogues of 1-10 rounds (the scene they are about).
    """

    rng = random.Random(f"tiny-zoo-summary-{seed}")
    texts, targets = [], []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            scene = sample_scene(rng)
            texts.append(cc3m_caption(scene, rng))
        elif kind < 0.8:
            story = sample_story(rng)
            scene = story.steps[-1].scene
            text = " ".join(story_sentences(story, rng))
            texts.append(vist_process(text) if rng.random() < 0.5 else text)
        else:
            scene = sample_scene(rng)
            rounds = dialog_rounds(scene, rng, rng.randint(1, 10))
            sep = "\n" if rng.random() < 0.5 else " "
            texts.append(sep.join(f"Q: {qa.question}?{sep}A: {qa.answer}" for qa in rounds))
        targets.append(cc3m_caption(scene, rng))
    return texts, targets


@dataclass(frozen=True, kw_only=True)
class SummaryTargets:
    """Texts and the (N, E) embeddings the LM's end-of-text state should predict (see the module docstring)."""

    captions: list[str]
    """The texts: captions, stories and dialogues (:func:`summary_texts`)."""
    embeddings: torch.Tensor
    weight: float = 1.0
    """Weight of the summary loss (``1 - cosine``) next to the LM loss."""


def clip_text_targets(clip, tokenizer, captions: list[str], chunk: int = 512) -> torch.Tensor:
    """(N, E) L2-normalised CLIP text embeddings of ``captions``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(captions), chunk):
            enc = tokenizer(captions[i : i + chunk], padding=True, truncation=True, return_tensors="pt")
            features = clip.get_text_features(**enc)
            out.append(getattr(features, "pooler_output", features))  # transformers 5 may wrap the tensor
    return F.normalize(torch.cat(out).float(), dim=-1)


def pretrain_lm(
    lm,
    tokenizer,
    corpus: list[str],
    *,
    seed: int,
    steps: int = 300,
    batch: int = 32,
    summary: SummaryTargets | None = None,
) -> PretrainReport:
    """Causal-LM training of ``lm`` on ``corpus`` lines (AdamW, lr 3e-3), plus the optional summary objective."""
    generator = torch.Generator().manual_seed(seed)
    head = None if summary is None else torch.nn.Linear(lm.config.hidden_size, summary.embeddings.shape[1])
    params = [*lm.parameters(), *([] if head is None else head.parameters())]
    optim = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    losses: list[float] = []
    lm.train()
    with _fixed_threads():
        for _ in range(steps):
            rows = torch.randint(len(corpus), (batch,), generator=generator).tolist()
            enc = tokenizer(
                [corpus[i] for i in rows], padding="longest", truncation=True, max_length=128, return_tensors="pt"
            )
            labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
            loss = lm(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).loss
            if summary is not None and head is not None:
                loss = loss + summary.weight * _summary_loss(lm, head, tokenizer, summary, batch, generator)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
    lm.eval()
    return PretrainReport(steps=steps, first_loss=losses[0], last_loss=sum(losses[-10:]) / 10)


def _summary_loss(lm, head, tokenizer, summary: SummaryTargets, batch: int, generator) -> torch.Tensor:
    """``1 - cos(head(h_eos), target)`` over a batch of captions each followed by the EOS token."""
    rows = torch.randint(len(summary.captions), (batch,), generator=generator)
    texts = [summary.captions[i] + tokenizer.eos_token for i in rows.tolist()]
    enc = tokenizer(
        texts,
        padding="longest",
        truncation=True,
        max_length=SUMMARY_MAX_TOKENS,
        padding_side="right",
        return_tensors="pt",
    )
    hidden = lm.get_decoder()(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
    last = enc.attention_mask.sum(dim=1) - 1  # (B,) the EOS position
    predicted = F.normalize(head(hidden[torch.arange(batch), last]), dim=-1)  # (B, E)
    return (1 - (predicted * summary.embeddings[rows]).sum(dim=-1)).mean()


def contrastive_batch(rng: random.Random, batch: int, image_size: int = 64) -> tuple[list[str], list]:
    """``batch`` (caption, render) pairs: half random world scenes, half the same scenes with one attribute changed.

    The near misses make every attribute necessary to tell captions apart. With random batches of fixed pairs a
    tiny CLIP learns colour and background and little of the position words: a linear probe reads the main
    shape's 3x3 cell from its text embedding 27% of the time (colour 95%); with near misses and 1,000 steps, 55%
    (colour 100%).
    """

    base = [sample_scene(rng) for _ in range(batch // 2)]
    scenes = base + [changed_scene(s, rng) for s in base]
    return [cc3m_caption(s, rng) for s in scenes], [render_scene(s, image_size) for s in scenes]


def pretrain_clip(
    clip, tokenizer, image_processor, *, seed: int, steps: int = 1000, batch: int = 128, lr: float = 2e-3
) -> PretrainReport:
    """Contrastive (CLIP) training on freshly rendered scenes and their captions, with near-miss pairs in every
    batch (:func:`contrastive_batch`); AdamW, linear warm-up over 100 steps, then cosine decay to 10%."""
    rng = random.Random(f"tiny-zoo-clip-{seed}")
    optim = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    clip.train()
    with _fixed_threads():
        for step in range(steps):
            captions, images = contrastive_batch(rng, batch)
            pixels = image_processor(images=images, return_tensors="pt").pixel_values  # (B, 3, H, W)
            enc = tokenizer(captions, padding="longest", truncation=True, return_tensors="pt")
            out = clip(
                input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pixels, return_loss=True
            )
            warmup = min(1.0, (step + 1) / 100)
            for group in optim.param_groups:
                group["lr"] = lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
            optim.zero_grad()
            out.loss.backward()
            optim.step()
            losses.append(out.loss.item())
    clip.eval()
    return PretrainReport(steps=steps, first_loss=losses[0], last_loss=sum(losses[-10:]) / 10)
