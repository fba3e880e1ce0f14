"""The systems the GILL paper compares, each producing one image for a benchmark prompt (paper sections 4-5).

* ``gill``: GILL with its decision classifier choosing to generate or retrieve (paper section 3.3).
* ``gill-gen`` / ``gill-ret``: GILL forced to generate / to retrieve (the paper's generation-only and
  retrieval-only ablations).
* ``gill-oracle``: for each sample, the better of ``gill-gen`` and ``gill-ret`` by CLIP similarity to the ground
  truth (an upper bound on any decision rule; it reads the answer, so it is not a deployable system).
* ``sd``: Stable Diffusion v1.5 alone on the same text (the last caption, or every caption joined; SD's tokenizer
  truncates at 77 tokens, exactly as the stock pipeline does).
* ``clip-retrieval``: CLIP text-to-image retrieval from the same bank (same text as ``sd``; text only).
* ``fromage-retrieval``: FROMAGe-style retrieval: GILL's retrieval head on ``prompt + [IMG0..7]`` with no
  decoding and no generation. Under the benchmarks' forced ``[IMG]`` protocol it must equal ``gill-ret``: the two
  are computed by independent code paths (one LM pass vs cached decoding), so their agreement is a check.

As in the official evals (docs/official-gill.md §6.1 step 4), GILL's ``[IMG]`` tokens are forced as the first
output tokens.
Each sample's SD noise is seeded from (run seed, sample id), the same for GILL and SD, so a sample's result does
not depend on which samples ran before it (the official script shares one generator: official §8.16). Samples are
generated in batches (:meth:`SystemRunner.produce_batch`) with one generator per sample, so a sample's result does
not depend on the batch it is in either, up to the last float bits of batched kernels.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gill.data.precompute import VISION_FILE
from gill.pipeline import GenerationSettings
from gill.utils.io import atomic_write_bytes

if TYPE_CHECKING:
    from eval.metric_models import ClipScorer
    from gill.pipeline import Decision, GILLPipeline
    from gill.retrieval import Hit

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SystemSpec:
    """What a system is and what it needs."""

    name: str
    description: str
    uses_seed: bool
    """Whether its output depends on the SD seed (seed-free systems are evaluated once, under the first seed)."""
    needs_bank: bool
    """Whether it retrieves from the checkpoint's retrieval bank."""


SYSTEMS: dict[str, SystemSpec] = {
    s.name: s
    for s in (
        SystemSpec(
            name="gill",
            description="GILL, decision classifier picks generate or retrieve",
            uses_seed=True,
            needs_bank=False,
        ),
        SystemSpec(name="gill-gen", description="GILL, always generate", uses_seed=True, needs_bank=False),
        SystemSpec(name="gill-ret", description="GILL, always retrieve", uses_seed=False, needs_bank=True),
        SystemSpec(
            name="gill-oracle",
            description="GILL, oracle decision (better of gen/ret by CLIP similarity)",
            uses_seed=True,
            needs_bank=True,
        ),
        SystemSpec(name="sd", description="Stable Diffusion alone on the text", uses_seed=True, needs_bank=False),
        SystemSpec(
            name="clip-retrieval",
            description="CLIP text-to-image retrieval from the bank",
            uses_seed=False,
            needs_bank=True,
        ),
        SystemSpec(
            name="fromage-retrieval",
            description="FROMAGe-style: GILL's retrieval head, no generation",
            uses_seed=False,
            needs_bank=True,
        ),
    )
}
UNSUPPORTED_SYSTEMS: dict[str, str] = {
    "glide": "GLIDE is not available in diffusers (no maintained pipeline loads its weights), so it cannot be run "
    "here; the paper's GLIDE rows are quoted from its authors, never recomputed by gill",
}
"""Systems of the paper that gill cannot run, with the reason (reported as rows of ``unsupported_systems``)."""


def derive_seed(seed: int, sample_id: str) -> int:
    """The SD seed of one sample: a hash of the run seed and the sample id (independent of run order)."""
    digest = hashlib.sha256(f"{seed}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(kw_only=True)
class Produced:
    """One system's image for one sample (``image`` None with ``skip_reason`` when there is none)."""

    image: Image.Image | None
    skip_reason: str | None = None
    decision: str | None = None
    p_ret: float | None = None
    ret_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """How images are generated (the same for GILL and SD)."""

    sd_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None


GILL_FAMILY = frozenset({"gill", "gill-gen", "gill-ret", "gill-oracle"})
"""The systems that share GILL's forced decode."""


@dataclass(frozen=True, kw_only=True)
class ProduceRequest:
    """One sample of a :meth:`SystemRunner.produce_batch` call."""

    prompt: list[Any]
    """GILL's interleaved prompt (strings and images)."""
    text: str
    """What the text-only systems (``sd``, ``clip-retrieval``) read."""
    systems: frozenset[str]
    """The systems to run (``gill-oracle``: give ``gill-gen`` and ``gill-ret``, which it picks from)."""
    sd_seed: int
    """The sample's SD seed (:func:`derive_seed`)."""


@dataclass(kw_only=True)
class _GillPlan:
    """GILL's forced decode of one sample, its retrieval and decision: what is left is generating, if needed."""

    states: torch.Tensor
    """(n_img, D) ``[IMG]`` states, the mapper's input."""
    systems: frozenset[str]
    decision: Decision
    best: Hit | None
    need_gen: bool
    need_ret: bool


class SystemRunner:
    """Produces the images of the requested systems for a batch of prompts, sharing work between them.

    GILL's variants share one forced decode per sample; ``gill`` reuses the image ``gill-gen`` or ``gill-ret`` made.
    The decode, retrieval and decision run per sample (they are cheap); the images to generate are then made by
    one Stable Diffusion call for every GILL generation of the batch (only the samples whose system needs one) and
    one for every ``sd`` prompt, each image with its own generator seeded with its sample's seed, so a sample's
    image is the one it gets alone (up to the last float bits of batched kernels).
    """

    def __init__(
        self, pipe: GILLPipeline, clip: ClipScorer, options: ImageOptions, clip_bank: ClipBank | None = None
    ) -> None:
        self.pipe = pipe
        self.clip = clip
        self.options = options
        self.clip_bank = clip_bank

    def settings(self, sd_seed: int) -> GenerationSettings:
        """GILL's settings of one sample: forced ``[IMG]``, one token, the benchmark's image options."""
        o = self.options
        return GenerationSettings(
            force_image=True,
            max_new_tokens=1,
            mode="auto",
            num_inference_steps=o.sd_steps,
            guidance_scale=o.guidance_scale,
            seed=sd_seed,
            height=o.height,
            width=o.width,
        )

    @torch.no_grad()
    def produce(self, prompt: list[Any], text: str, systems: set[str], sd_seed: int) -> dict[str, Produced]:
        """``{system: Produced}`` for ``systems`` (``gill-oracle`` yields both of its candidates instead); the
        batch-of-one case of :meth:`produce_batch`."""
        request = ProduceRequest(prompt=prompt, text=text, systems=frozenset(systems), sd_seed=sd_seed)
        return self.produce_batch([request])[0]

    @torch.no_grad()
    def produce_batch(self, requests: Sequence[ProduceRequest]) -> list[dict[str, Produced]]:
        """``{system: Produced}`` for each request, in order, with at most two Stable Diffusion calls in all."""
        plans = [self._gill_plan(r.prompt, r.systems & GILL_FAMILY, r.sd_seed) for r in requests]
        gen = [(i, plan.states) for i, plan in enumerate(plans) if plan is not None and plan.need_gen]
        gill_images = self.generate_gill([states for _, states in gen], [requests[i].sd_seed for i, _ in gen])
        generated = {i: image for (i, _), image in zip(gen, gill_images, strict=True)}
        sd = [i for i, r in enumerate(requests) if "sd" in r.systems]
        sd_images = self.generate_sd([requests[i].text for i in sd], [requests[i].sd_seed for i in sd])
        baseline = dict(zip(sd, sd_images, strict=True))
        out = []
        for i, (request, plan) in enumerate(zip(requests, plans, strict=True)):
            produced = self._gill_outputs(plan, generated.get(i)) if plan is not None else {}
            if i in baseline:
                produced["sd"] = baseline[i]
            if "clip-retrieval" in request.systems:
                produced["clip-retrieval"] = self._clip_retrieval(request.text)
            if "fromage-retrieval" in request.systems:
                produced["fromage-retrieval"] = self._fromage(request.prompt)
            out.append(produced)
        return out

    def _gill_plan(self, prompt: list[Any], systems: frozenset[str], sd_seed: int) -> _GillPlan | None:
        """Decode, retrieve and decide for one sample (None when no GILL system is asked for)."""
        if not systems:
            return None
        pipe, settings = self.pipe, self.settings(sd_seed)
        embeds, _ = pipe.fit_context(pipe.encode_prompt(prompt), settings)
        states = pipe.generate_text(embeds, settings).img_states[0]  # (n_img, D)
        query = pipe.retrieval_embedding(states[0])
        best = pipe.retrieve(query, 1)[0] if pipe.bank is not None else None
        decision = pipe.decide(states[0], settings, best)
        return _GillPlan(
            states=states,
            systems=systems,
            decision=decision,
            best=best,
            need_gen=bool(systems & {"gill-gen", "gill-oracle"}) or ("gill" in systems and decision.label == "gen"),
            need_ret=bool(systems & {"gill-ret", "gill-oracle"}) or ("gill" in systems and decision.label == "ret"),
        )

    def _gill_outputs(self, plan: _GillPlan, generated: Produced | None) -> dict[str, Produced]:
        out: dict[str, Produced] = {}
        if generated is not None:
            out["gill-gen"] = generated
        if plan.need_ret and plan.best is not None:
            out["gill-ret"] = Produced(
                image=self.pipe.bank.image(plan.best),  # type: ignore[union-attr]
                decision="ret",
                ret_key=plan.best.key,
            )
        if "gill" in plan.systems:
            decision = plan.decision
            chosen = out.get(f"gill-{decision.label}")
            out["gill"] = Produced(
                image=chosen.image if chosen else None,
                skip_reason=chosen.skip_reason if chosen else "no retrieval bank",
                decision=decision.label,
                p_ret=decision.p_ret,
                ret_key=chosen.ret_key if chosen else None,
            )
        return out

    def generate_gill(self, states: Sequence[torch.Tensor], sd_seeds: Sequence[int]) -> list[Produced]:
        """GILL's images for a batch of ``[IMG]`` states: one SD call through the mapper, one seed per image."""
        if not states:
            return []
        results = self.pipe.generate_images(states, self.settings(0), seeds=sd_seeds)
        return [
            Produced(
                image=r.image,
                skip_reason="safety checker flagged the image" if r.safety_flagged else None,
                decision="gen",
            )
            for r in results
        ]

    def generate_sd(self, texts: Sequence[str], sd_seeds: Sequence[int]) -> list[Produced]:
        """The ``sd`` baseline's images for a batch of texts: one SD call, one seed per image."""
        if not texts:
            return []
        o = self.options
        result = self.pipe.sd(
            prompt=list(texts),
            guidance_scale=o.guidance_scale,
            num_inference_steps=o.sd_steps,
            height=o.height,
            width=o.width,
            output_type="pil",
            generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in sd_seeds],
        )
        flags = getattr(result, "nsfw_content_detected", None) or [False] * len(texts)
        return [
            Produced(image=None, skip_reason="safety checker flagged the image") if flagged else Produced(image=image)
            for image, flagged in zip(result.images, flags, strict=True)
        ]

    def _clip_retrieval(self, text: str) -> Produced:
        if self.clip_bank is None:
            return Produced(image=None, skip_reason="no retrieval bank")
        row = self.clip_bank.top1(self.clip.text_features([text])[0])
        hit = self.pipe.bank.hit(row, 0.0)  # type: ignore[union-attr]
        return Produced(image=self.pipe.bank.image(hit), decision="ret", ret_key=hit.key)  # type: ignore[union-attr]

    def fromage_query(self, prompt: list[Any]) -> torch.Tensor:
        """(R,) GILL retrieval embedding of ``prompt + [IMG0..7]`` from one LM pass (no decoding)."""
        pipe = self.pipe
        embeds, _ = pipe.fit_context(pipe.encode_prompt([*prompt, pipe.img_suffix()]), self.settings(0))
        hidden = pipe.model.forward_lm(embeds, compute_logits=False).hidden_states[0]  # (1, T, D)
        return pipe.retrieval_embedding(hidden[0, -len(pipe.img_ids)])

    def _fromage(self, prompt: list[Any]) -> Produced:
        if self.pipe.bank is None:
            return Produced(image=None, skip_reason="no retrieval bank")
        best = self.pipe.retrieve(self.fromage_query(prompt), 1)[0]
        return Produced(image=self.pipe.bank.image(best), decision="ret", ret_key=best.key)


class ClipBank:
    """CLIP image embeddings of every retrieval-bank row, for the ``clip-retrieval`` baseline (exact search).

    When the metric CLIP is GILL's vision backbone (both presets), the embeddings come from the precomputed
    ``pooler_output`` features through CLIP's visual projection, so no image is decoded. Otherwise each bank image
    is read from its shard and encoded. Cached under ``W/bench/clip-bank/`` (atomic write).
    """

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = embeddings  # (N, P) float16, L2-normalised

    @torch.no_grad()
    def top1(self, query: torch.Tensor, chunk: int = 1 << 18) -> int:
        """Row of the bank image most similar to an (P,) normalised CLIP text embedding."""
        q = query.float().cpu().numpy()
        best_row, best = -1, -np.inf
        for first in range(0, len(self.embeddings), chunk):
            scores = self.embeddings[first : first + chunk].astype(np.float32) @ q
            i = int(np.argmax(scores))
            if scores[i] > best:
                best_row, best = first + i, float(scores[i])
        return best_row

    @classmethod
    def build(
        cls, pipe: GILLPipeline, clip: ClipScorer, cache_dir: Path, *, from_features: bool, progress: bool = True
    ) -> ClipBank:

        bank = pipe.bank
        assert bank is not None
        name = hashlib.sha256(clip.name.encode()).hexdigest()[:8]
        path = cache_dir / f"{bank.checkpoint_id}-{name}-{bank.count}.npy"
        if path.is_file():
            return cls(np.load(path, mmap_mode="r"))
        rows = []
        with tqdm(total=bank.count, unit="img", desc="CLIP bank", disable=not progress, dynamic_ncols=True) as bar:
            for shard in bank.shards:
                if from_features:
                    pooled = np.load(bank.shard_features(shard) / VISION_FILE, mmap_mode="r")
                    for first in range(0, shard.count, 4096):
                        x = torch.from_numpy(np.array(pooled[first : first + 4096], dtype=np.float32))
                        rows.append(clip.projection_from_pooled(x).numpy().astype(np.float16))
                        bar.update(len(x))
                else:
                    for row in range(shard.start, shard.start + shard.count):
                        image = bank.image(bank.hit(row, 0.0))
                        rows.append(clip.image_features([image]).numpy().astype(np.float16))
                        bar.update(1)
        embeddings = np.concatenate(rows) if rows else np.zeros((0, 1), np.float16)

        buffer = io.BytesIO()
        np.save(buffer, embeddings)
        atomic_write_bytes(path, buffer.getvalue())
        return cls(embeddings)
