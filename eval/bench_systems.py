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
not depend on which samples ran before it (the official script shares one generator: official §8.16).
"""

from __future__ import annotations

import hashlib
import io
import logging
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
    from gill.pipeline import GILLPipeline

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


class SystemRunner:
    """Produces the images of the requested systems for one prompt, sharing work between them.

    GILL's variants share one forced decode; ``gill`` reuses the image ``gill-gen`` or ``gill-ret`` made.
    """

    def __init__(
        self, pipe: GILLPipeline, clip: ClipScorer, options: ImageOptions, clip_bank: ClipBank | None = None
    ) -> None:
        self.pipe = pipe
        self.clip = clip
        self.options = options
        self.clip_bank = clip_bank

    def settings(self, sd_seed: int) -> Any:

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
        """``{system: Produced}`` for ``systems`` (``gill-oracle`` yields both of its candidates instead)."""
        out: dict[str, Produced] = {}
        gill_family = systems & {"gill", "gill-gen", "gill-ret", "gill-oracle"}
        if gill_family:
            out.update(self._gill(prompt, gill_family, sd_seed))
        if "sd" in systems:
            out["sd"] = self._sd(text, sd_seed)
        if "clip-retrieval" in systems:
            out["clip-retrieval"] = self._clip_retrieval(text)
        if "fromage-retrieval" in systems:
            out["fromage-retrieval"] = self._fromage(prompt)
        return out

    def _gill(self, prompt: list[Any], systems: set[str], sd_seed: int) -> dict[str, Produced]:
        pipe, settings = self.pipe, self.settings(sd_seed)
        embeds, _ = pipe.fit_context(pipe.encode_prompt(prompt), settings)
        states = pipe.generate_text(embeds, settings).img_states[0]  # (n_img, D)
        query = pipe.retrieval_embedding(states[0])
        best = pipe.retrieve(query, 1)[0] if pipe.bank is not None else None
        decision = pipe.decide(states[0], settings, best)
        need_gen = bool(systems & {"gill-gen", "gill-oracle"}) or ("gill" in systems and decision.label == "gen")
        need_ret = bool(systems & {"gill-ret", "gill-oracle"}) or ("gill" in systems and decision.label == "ret")
        out: dict[str, Produced] = {}
        if need_gen:
            image, flagged = pipe.generate_image(states, settings)
            out["gill-gen"] = Produced(
                image=image, skip_reason="safety checker flagged the image" if flagged else None, decision="gen"
            )
        if need_ret and best is not None:
            out["gill-ret"] = Produced(image=pipe.bank.image(best), decision="ret", ret_key=best.key)  # type: ignore
        if "gill" in systems:
            chosen = out.get(f"gill-{decision.label}")
            out["gill"] = Produced(
                image=chosen.image if chosen else None,
                skip_reason=chosen.skip_reason if chosen else "no retrieval bank",
                decision=decision.label,
                p_ret=decision.p_ret,
                ret_key=chosen.ret_key if chosen else None,
            )
        return out

    def _sd(self, text: str, sd_seed: int) -> Produced:
        o = self.options
        result = self.pipe.sd(
            prompt=[text],
            guidance_scale=o.guidance_scale,
            num_inference_steps=o.sd_steps,
            height=o.height,
            width=o.width,
            output_type="pil",
            generator=torch.Generator(device="cpu").manual_seed(sd_seed),
        )
        flags = getattr(result, "nsfw_content_detected", None)
        if flags and flags[0]:
            return Produced(image=None, skip_reason="safety checker flagged the image")
        return Produced(image=result.images[0])

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
