"""``GILLPipeline``: interleaved images and text in; text, retrieved and generated images out.

What users see of GILL (paper section 3.3, "Inference"; docs/official-gill.md §4). Diffusers-shaped:
:meth:`GILLPipeline.check_inputs`, :meth:`~GILLPipeline.encode_prompt`, :meth:`~GILLPipeline.generate_text`,
then for each emitted ``[IMG]`` block :meth:`~GILLPipeline.decide`, :meth:`~GILLPipeline.retrieve` or
:meth:`~GILLPipeline.generate_image` (:meth:`~GILLPipeline.generate_images` for a batch of blocks, one seeded
generator per image, as the benchmarks use it), and :meth:`~GILLPipeline.__call__` running all of them.
:meth:`GILLPipeline.from_pretrained` loads a checkpoint written by :mod:`gill.checkpoint`.

Differences from the official ``GILL.generate_for_images_and_texts`` (each fixes a defect of official §8):

* decoding uses the LM's key/value cache (the official loop re-runs the whole sequence every step), stops at a
  newline or EOS, and the ``[IMG]`` states always come from a forward over the forced ``[IMG0..7]`` run, so they
  exist even when ``[IMG0]`` is the last token sampled (8.8);
* ``[IMG0]`` emission is steered by an additive log-bias, ``ln(image_frequency)``: the frequency multiplies the
  odds of ``[IMG0]`` at every step (1 = unchanged, higher = more images, 0 = never). The official
  ``|logit| x factor`` is not monotone (a negative logit flips sign) (8.10); it stays available as
  ``ret_scale_factor`` so that a value from the official demo behaves the same;
* prompt images may be any ``PIL.Image.Image`` subclass (the official check is ``type(p) == Image.Image``);
* retrieved images are read from the local bank's shards, never downloaded, and the loop really stops at
  ``max_images`` blocks (8.9); retrieval and generation scores are both reported as plain cosine with the
  ``[IMG0]`` retrieval embedding plus the same cosine times the learned logit scale (the official code mixes a
  logit-scaled retrieval score with a raw-cosine generation score);
* a safety-checker hit is reported (``safety_flagged``), never returned as a silent black image;
* text is cut at the first newline only (the official ``truncate_caption`` also cuts at the first ".").
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from gill.checkpoint import load_adapters
from gill.config import GILLConfig, _Validated
from gill.data.precompute import preprocess_images
from gill.errors import InputError
from gill.factory import derive_dims, load_backbones
from gill.model import GILLModel
from gill.retrieval import RetrievalBank, checkpoint_id
from gill.tokenization import add_img_tokens
from gill.utils.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from gill.retrieval import Hit, RetrievalBank

logger = logging.getLogger(__name__)

Mode = Literal["auto", "gen", "ret"]
MODES = ("auto", "gen", "ret")
PromptItem = str | Image.Image
OFFICIAL_DEMO_SEED = 1337
"""The official demo seeds SD with 1337 for every request (official §4.5)."""


# -- settings and results -------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GenerationSettings(_Validated):
    """Per-request settings of :class:`GILLPipeline` (defaults: the official demo's, official §4.5)."""

    max_new_tokens: int = 32
    """Most tokens to sample (a forced ``[IMG0..7]`` run counts as one, as in the official loop)."""
    min_new_tokens: int = 0
    """``[IMG0]`` is forbidden before this many tokens (official ``min_word_tokens``)."""
    temperature: float = 0.0
    """0: greedy. Otherwise logits are divided by it and sampled (with :attr:`top_p`)."""
    top_p: float = 1.0
    """Nucleus sampling mass (only with ``temperature > 0``)."""
    image_frequency: float = 1.0
    """How often to return images: multiplies the odds of ``[IMG0]`` at each step (log-bias ``ln f``)."""
    ret_scale_factor: float | None = None
    """The official demo's knob instead of :attr:`image_frequency`: when > 1, the ``[IMG0]`` logit becomes
    ``|logit| x factor`` (official §4.3; not monotone: a negative logit turns positive). None: not used."""
    force_image: bool = False
    """Emit ``[IMG0..7]`` as the first tokens (what the official evals get with a huge ``ret_scale_factor``)."""
    stop_at_newline: bool = True
    """Stop at the first newline after some text (the official code truncates there afterwards)."""
    max_images: int = 1
    """Most ``[IMG]`` blocks per reply (official demo ``max_num_rets = 1``); later ``[IMG0]`` are forbidden."""
    mode: Mode = "auto"
    """``auto``: the decision classifier picks; ``gen`` / ``ret``: always generate / retrieve."""
    num_inference_steps: int = 50
    """Stable Diffusion denoising steps."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale (negative embedding: SD's encoding of the empty prompt)."""
    seed: int = OFFICIAL_DEMO_SEED
    """Seeds both text sampling and the SD noise of this request: same seed, same output."""
    height: int | None = None
    """Generated image height in pixels (default: the SD pipeline's native size)."""
    width: int | None = None
    """Generated image width in pixels (default: the SD pipeline's native size)."""
    use_cache: bool = True
    """Decode with the LM's key/value cache (False: recompute the whole sequence each step; same tokens)."""

    def _problems(self) -> list[str]:
        problems = []
        for name in ("max_new_tokens", "max_images", "num_inference_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.min_new_tokens < 0:
            problems.append(f"min_new_tokens: must be >= 0, got {self.min_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: must be in (0, 1], got {self.top_p}")
        if not (self.image_frequency >= 0 and math.isfinite(self.image_frequency)):
            problems.append(
                f"image_frequency: must be a finite number >= 0 (1 = unchanged), got {self.image_frequency}"
            )
        if self.ret_scale_factor is not None:
            if not (self.ret_scale_factor >= 0 and math.isfinite(self.ret_scale_factor)):
                problems.append(f"ret_scale_factor: must be a finite number >= 0, got {self.ret_scale_factor}")
            if self.image_frequency != 1.0:
                problems.append(
                    f"ret_scale_factor ({self.ret_scale_factor}) and image_frequency ({self.image_frequency}) are two "
                    "ways to set how often images come: give one of them"
                )
        if self.mode not in MODES:
            problems.append(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.guidance_scale < 0:
            problems.append(f"guidance_scale: must be >= 0, got {self.guidance_scale}")
        return problems + image_size_problems(self.height, self.width)

    @property
    def img_logit_bias(self) -> float:
        """The additive bias on the ``[IMG0]`` logit: ``ln(image_frequency)`` (-inf for 0)."""
        return math.log(self.image_frequency) if self.image_frequency > 0 else float("-inf")


def image_size_problems(height: int | None, width: int | None) -> list[str]:
    """What is wrong with a requested SD image size (None: the pipeline's native size)."""
    return [
        f"{name}: must be a positive multiple of 8 (SD's latent factor), got {value}"
        for name, value in (("height", height), ("width", width))
        if value is not None and (value < 8 or value % 8)
    ]


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Retrieve or generate, and why."""

    label: Literal["gen", "ret"]
    """What was produced."""
    p_gen: float | None
    """Classifier probability of "generate" (None without a classifier)."""
    p_ret: float | None
    """Classifier probability of "retrieve" (None without a classifier)."""
    reason: str
    """``classifier``, ``mode``, ``no retrieval bank`` or ``no decision classifier``."""


@dataclass(kw_only=True)
class TextResult:
    """A span of generated text."""

    text: str


@dataclass(kw_only=True)
class ImageResult:
    """An image the model returned for one ``[IMG]`` block."""

    kind: Literal["gen", "ret"]
    """``gen``: generated by Stable Diffusion; ``ret``: retrieved from the bank."""
    image: Image.Image | None
    """The image (None only when the safety checker flagged a generated image)."""
    score: float
    """Cosine between the block's ``[IMG0]`` retrieval embedding and the image's retrieval embedding."""
    scaled_score: float
    """:attr:`score` times the learned logit scale (the scale of the official retrieval scores)."""
    decision: Decision
    """Why this kind was chosen, with the classifier's probabilities."""
    key: str | None = None
    """Bank key of a retrieved image."""
    shard: str | None = None
    """Shard holding a retrieved image, as its bank records it (relative to the bank's root folder)."""
    caption: str | None = None
    """Caption stored with a retrieved image."""
    seed: int | None = None
    """SD seed of a generated image."""
    safety_flagged: bool = False
    """The SD safety checker flagged the generated image; :attr:`image` is then None."""

    def sidecar(self) -> dict[str, Any]:
        """JSON-ready description (everything but the pixels)."""
        return {
            "kind": self.kind,
            "score": self.score,
            "scaled_score": self.scaled_score,
            "decision": vars(self.decision),
            "key": self.key,
            "shard": self.shard,
            "caption": self.caption,
            "seed": self.seed,
            "safety_flagged": self.safety_flagged,
            "size": list(self.image.size) if self.image is not None else None,
        }


OutputItem = TextResult | ImageResult


@dataclass(kw_only=True)
class GILLOutput:
    """Interleaved text and image results, in the order the model produced them."""

    items: list[OutputItem]
    token_ids: list[int]
    """Every generated id, forced ``[IMG]`` runs included."""
    stop_reason: str
    """``newline``, ``eos`` or ``max_new_tokens``."""
    warnings: list[str] = field(default_factory=list)
    """E.g. the prompt was truncated from the left."""

    @property
    def text(self) -> str:
        """All text results joined (image positions omitted)."""
        return " ".join(item.text for item in self.items if isinstance(item, TextResult)).strip()

    @property
    def images(self) -> list[ImageResult]:
        """The image results, in order."""
        return [item for item in self.items if isinstance(item, ImageResult)]


@dataclass(kw_only=True)
class DecodeResult:
    """What :meth:`GILLPipeline.generate_text` produced."""

    token_ids: list[int]
    """Generated ids, forced ``[IMG]`` runs included."""
    blocks: list[int]
    """Index in :attr:`token_ids` where each ``[IMG0..n-1]`` run starts."""
    img_states: list[torch.Tensor]
    """Per block, (n, D) states at ``[IMG0..n-1]`` from the ``text_emb_layers`` layer the heads read."""
    stop_reason: str


@dataclass(kw_only=True)
class GeneratedImage:
    """One image of :meth:`GILLPipeline.generate_images`."""

    image: Image.Image | None
    """The image (None when the safety checker flagged it)."""
    safety_flagged: bool = False
    """The SD safety checker flagged the image."""


# -- the pipeline ---------------------------------------------------------------------------------------------------


class GILLPipeline:
    """Frozen LM, vision encoder and SD pipeline with GILL's adapters, a decision head and a retrieval bank.

    Args:
        model: :class:`~gill.model.GILLModel` (LM + adapters, optionally a decision head).
        tokenizer: the LM tokenizer with the ``[IMG]`` tokens added.
        vision: ``CLIPVisionModel`` for prompt images and the scores of generated images.
        image_processor: its processor (the same preprocessing as ``gill data precompute``).
        sd: a ``StableDiffusionPipeline``, or None (then only retrieval is possible).
        bank: a :class:`~gill.retrieval.RetrievalBank` built by the same checkpoint, or None.
        device: where the models run.
    """

    def __init__(
        self,
        model: GILLModel,
        tokenizer: Any,
        vision: Any,
        image_processor: Any,
        sd: Any = None,
        bank: RetrievalBank | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vision = vision
        self.image_processor = image_processor
        self.sd = sd
        self.bank = bank
        self.device = torch.device(device)
        ids = model.img_token_ids.tolist()
        self.img_ids: list[int] = [int(i) for i in ids]
        self.img_strings = tokenizer.convert_ids_to_tokens(self.img_ids)
        self.newline_ids = _newline_ids(tokenizer, exclude=set(self.img_ids))
        self._negative: torch.Tensor | None = None
        self.checkpoint_dir: Path | None = None
        """The checkpoint folder, when loaded with :meth:`from_pretrained`."""

    # -- loading ------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | os.PathLike[str],
        *,
        bank: RetrievalBank | str | os.PathLike[str] | None = None,
        config: GILLConfig | None = None,
        device: str = "cpu",
        load_sd: bool = True,
        dtype: torch.dtype | None = None,
    ) -> GILLPipeline:
        """Load a checkpoint folder (``config.json`` + ``adapters.safetensors`` [+ ``decision.safetensors``]).

        Args:
            checkpoint_dir: the checkpoint (``gill train`` writes ``runs/<id>/best`` and ``runs/<id>/final``).
            bank: the retrieval bank: a loaded :class:`RetrievalBank` or its folder (it must have been built by
                this checkpoint). Without a bank only generation is possible.
            config: when given, its backbones must be the checkpoint's (an error names both otherwise).
            device: torch device.
            load_sd: also load Stable Diffusion (False: retrieval only).
            dtype: weight dtype of the frozen backbones (default: as stored).
        """

        ckpt = load_adapters(checkpoint_dir, config=config)
        roles = ("lm", "vision", "sd") if load_sd else ("lm", "vision")
        backbones = load_backbones(ckpt.config, roles=roles, dtype=dtype)
        img = add_img_tokens(backbones.tokenizer, ckpt.config.adapters.num_img_tokens)
        if ckpt.img_tokens.ids and tuple(ckpt.img_tokens.ids) != tuple(img.ids):
            raise InputError(
                f"checkpoint {str(checkpoint_dir)!r}: its [IMG] token ids differ from the loaded tokenizer's",
                [
                    f"checkpoint: {list(ckpt.img_tokens.ids)}",
                    f"tokenizer {ckpt.config.backbones.lm.id}: {list(img.ids)}",
                ],
                hint="load the tokenizer the checkpoint was trained with (same LM id and revision)",
            )
        model = GILLModel(
            ckpt.config,
            derive_dims(ckpt.config),
            backbones.lm,
            img.ids,
            adapters=ckpt.adapters,
            decision_head=ckpt.decision_head,
        )
        if bank is not None and not isinstance(bank, RetrievalBank):
            bank = RetrievalBank.load(bank, checkpoint_id(checkpoint_dir), checkpoint_dir=checkpoint_dir)
        elif isinstance(bank, RetrievalBank) and bank.manifest["checkpoint"]["id"] != checkpoint_id(checkpoint_dir):
            raise InputError(
                f"the retrieval bank at {str(bank.path)!r} was built by another checkpoint",
                [f"bank: {bank.manifest['checkpoint']['id']}", f"checkpoint: {checkpoint_id(checkpoint_dir)}"],
                hint=f"build the bank of {checkpoint_dir} (gill index build --checkpoint {checkpoint_dir})",
            )
        sd = backbones.sd.to(device) if backbones.sd is not None else None
        vision = backbones.vision.to(device)
        pipe = cls(
            model.to(device), backbones.tokenizer, vision, backbones.image_processor, sd=sd, bank=bank, device=device
        )
        pipe.checkpoint_dir = Path(checkpoint_dir)
        return pipe

    # -- inputs -------------------------------------------------------------------------------------------------

    def check_inputs(self, prompt: Sequence[PromptItem], settings: GenerationSettings) -> None:
        """Raise one :class:`InputError` listing every problem of ``prompt`` and ``settings``."""
        problems = []
        if isinstance(prompt, (str, Image.Image)) or not isinstance(prompt, Sequence):
            problems.append(f"prompt: must be a list of strings and PIL images, got {type(prompt).__name__}")
            prompt = []
        if isinstance(prompt, Sequence) and not prompt:
            problems.append("prompt: is empty; give at least one string or image")
        for i, item in enumerate(prompt):
            if not isinstance(item, (str, Image.Image)):
                problems.append(f"prompt[{i}]: must be a str or a PIL.Image.Image, got {type(item).__name__}")
        if prompt and all(isinstance(p, str) and not p.strip() for p in prompt):
            problems.append("prompt: every item is an empty string; give some text or an image")
        if settings.mode == "ret" and self.bank is None:
            problems.append("mode 'ret' needs a retrieval bank: load the pipeline with bank= (gill index build)")
        if settings.mode == "gen" and self.sd is None:
            problems.append("mode 'gen' needs Stable Diffusion, but the pipeline was loaded without it")
        if problems:
            raise InputError("invalid GILL prompt", problems)

    # -- encoding -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def vision_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, Dv) frozen CLIP ``pooler_output`` of RGB copies of ``images`` (precompute's preprocessing)."""

        pixels = preprocess_images(self.image_processor, [im.convert("RGB") for im in images])
        dtype = next(self.vision.parameters()).dtype
        return self.vision(pixel_values=pixels.to(self.device, dtype)).pooler_output.float()

    @torch.no_grad()
    def encode_prompt(self, prompt: Sequence[PromptItem]) -> torch.Tensor:
        """Interleaved prompt -> (1, T, D) LM input embeddings (official §4.2).

        An image becomes ``n_visual_tokens`` soft tokens (the captioning projection); a string is tokenised with
        BOS only on the first string, as the official code does. Pieces are concatenated without separators.
        """
        pieces, first_text = [], True
        for item in prompt:
            if isinstance(item, Image.Image):
                pieces.append(self.model.encode_images(self.vision_features([item]))[0])  # (k, D)
                continue
            ids = self.tokenizer(item, add_special_tokens=first_text)["input_ids"]
            first_text = False
            if ids:
                pieces.append(self.model.embed_tokens(torch.tensor([ids], device=self.device))[0])  # (t, D)
        return torch.cat(pieces, dim=0).unsqueeze(0)  # (1, T, D)

    def fit_context(self, embeds: torch.Tensor, settings: GenerationSettings) -> tuple[torch.Tensor, list[str]]:
        """Truncate the prompt from the left so prompt, reply and ``[IMG]`` runs fit the LM's context."""
        n = len(self.img_ids)
        room = self.model.dims.lm_max_positions - settings.max_new_tokens - n * settings.max_images
        if room < 1:
            need = f"max_new_tokens {settings.max_new_tokens} + {n} x max_images {settings.max_images}"
            raise InputError(
                "the reply does not fit the LM's context",
                [f"{need} >= context {self.model.dims.lm_max_positions}"],
                hint="lower max_new_tokens",
            )
        if embeds.shape[1] <= room:
            return embeds, []
        message = (
            f"prompt of {embeds.shape[1]} positions is longer than the {room} the LM's context leaves "
            f"(context {self.model.dims.lm_max_positions}); kept its last {room}"
        )
        logger.warning(message)
        return embeds[:, -room:], [message]

    # -- decoding -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_text(self, embeds: torch.Tensor, settings: GenerationSettings) -> DecodeResult:
        """Decode from (1, T, D) prompt embeddings, forcing full ``[IMG]`` runs (official §4.3, fixed per 8.8)."""
        generator = torch.Generator().manual_seed(settings.seed)
        n, img0 = len(self.img_ids), self.img_ids[0]
        ids: list[int] = []
        blocks: list[int] = []
        states: list[torch.Tensor] = []
        step_embeds, all_embeds = embeds, embeds
        past, pending_block, sampled, stop = None, False, 0, "max_new_tokens"
        while True:
            if settings.use_cache:
                total = (0 if past is None else past.get_seq_length()) + step_embeds.shape[1]
                mask = torch.ones(1, total, dtype=torch.long, device=self.device)
                out = self.model.forward_lm(
                    step_embeds, mask, past_key_values=past, use_cache=True, compute_logits=False
                )
                past = out.past_key_values
            else:
                mask = torch.ones(1, all_embeds.shape[1], dtype=torch.long, device=self.device)
                out = self.model.forward_lm(all_embeds, mask, compute_logits=False)
            new = step_embeds.shape[1]
            if pending_block:
                states.append(out.hidden_states[0][0, -new:][:n].float())  # (n, D)
                pending_block = False
            if sampled >= settings.max_new_tokens:
                break
            logits = self.model.logits(out.last_hidden_state[:, -1:])[0, -1].float()  # (V,)
            token = self._next_token(logits, settings, sampled, len(blocks), generator)
            sampled += 1
            if token == img0:
                blocks.append(len(ids))
                new_ids, pending_block = list(self.img_ids), True
            elif token in self.newline_ids and settings.stop_at_newline and _has_text(ids, self.img_ids):
                stop = "newline"
                break
            elif token == self.tokenizer.eos_token_id:
                stop = "eos"
                break
            else:
                new_ids = [token]
            ids.extend(new_ids)
            step_embeds = self.model.embed_tokens(torch.tensor([new_ids], device=self.device))
            if not settings.use_cache:  # the uncached path re-reads the whole sequence
                all_embeds = torch.cat([all_embeds, step_embeds], dim=1)
        # A forced run is always followed by one more forward (the loop's top), so every block has its states,
        # even when [IMG0] was the last token the budget allowed.
        return DecodeResult(token_ids=ids, blocks=blocks, img_states=states, stop_reason=stop)

    def _next_token(
        self, logits: torch.Tensor, settings: GenerationSettings, sampled: int, blocks: int, generator: torch.Generator
    ) -> int:
        """Logit edits of official §4.3 (with an additive [IMG0] bias), then greedy or top-p sampling."""
        img0, rest = self.img_ids[0], self.img_ids[1:]
        if settings.force_image and blocks == 0 and sampled == 0:
            return img0
        logits = logits.clone()
        logits[rest] = float("-inf")  # [IMG1..] only ever follow [IMG0], by forcing
        if sampled < settings.min_new_tokens or blocks >= settings.max_images:
            logits[img0] = float("-inf")
        elif settings.ret_scale_factor is not None:
            if settings.ret_scale_factor > 1:  # the official rule, kept as it is
                logits[img0] = logits[img0].abs() * settings.ret_scale_factor
        else:
            logits[img0] = logits[img0] + settings.img_logit_bias
        if settings.temperature == 0:
            return int(logits.argmax())
        probs = F.softmax(logits / settings.temperature, dim=-1)
        if settings.top_p < 1:
            probs = _top_p_filter(probs, settings.top_p)
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))

    # -- per [IMG] block ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def retrieval_embedding(self, h_img0: torch.Tensor) -> torch.Tensor:
        """(D,) h[IMG0] -> (R,) L2-normalised text-side retrieval embedding."""
        return F.normalize(self.model.text_retrieval_embeddings(h_img0[None].to(self._adapter_dtype)).float(), dim=-1)[
            0
        ]

    @torch.no_grad()
    def text_query(self, text: str) -> torch.Tensor:
        """(R,) normalised retrieval embedding of ``text`` formatted as in training: ``text[IMG0]..[IMG7]``."""
        if not text.strip():
            raise InputError("empty query", ["give the text to search the bank with"])
        embeds = self.encode_prompt([text + self.img_suffix()])
        hidden = self.model.forward_lm(embeds, compute_logits=False).hidden_states[0]  # (1, T, D)
        return self.retrieval_embedding(hidden[0, -len(self.img_ids)])

    @torch.no_grad()
    def retrieve(self, query: torch.Tensor, k: int = 1, exclude_rows: set[int] | None = None) -> list[Hit]:
        """Top-``k`` bank entries for an (R,) normalised query, skipping ``exclude_rows``."""
        if self.bank is None:
            raise InputError("no retrieval bank is loaded", [], hint="load the pipeline with bank= (gill index build)")
        return self.bank.search(query[None].cpu(), k=k, exclude_rows=[exclude_rows or set()])[0]

    @torch.no_grad()
    def decide(self, h_img0: torch.Tensor, settings: GenerationSettings, best: Hit | None) -> Decision:
        """Pick ``gen`` or ``ret`` for one block (classifier in ``auto`` mode; official §4.4)."""
        if settings.mode != "auto":
            return Decision(label=settings.mode, p_gen=None, p_ret=None, reason="mode")  # type: ignore[arg-type]
        head = self.model.decision_head
        if head is None:
            return Decision(label="gen", p_gen=None, p_ret=None, reason="no decision classifier")
        score = None
        if head.with_retrieval_score:
            score = torch.tensor([best.scaled_score if best is not None else 0.0], device=self.device)
        logits = self.model.decision_logits(h_img0[None].to(self._adapter_dtype), score)[0].float()
        p_gen, p_ret = (float(p) for p in F.softmax(logits, dim=-1))
        if best is None:
            return Decision(label="gen", p_gen=p_gen, p_ret=p_ret, reason="no retrieval bank")
        return Decision(label="ret" if p_ret > p_gen else "gen", p_gen=p_gen, p_ret=p_ret, reason="classifier")

    @torch.no_grad()
    def generate_image(self, h_img: torch.Tensor, settings: GenerationSettings) -> tuple[Image.Image | None, bool]:
        """(n, D) [IMG] states -> GILLMapper -> stock SD via ``prompt_embeds`` (official §4.4 "Generation").

        Returns the image (None when the safety checker flagged it) and whether it was flagged. The batch-of-one
        case of :meth:`generate_images`, seeded with ``settings.seed``.
        """
        result = self.generate_images([h_img], settings)[0]
        return result.image, result.safety_flagged

    @torch.no_grad()
    def generate_images(
        self, h_imgs: Sequence[torch.Tensor], settings: GenerationSettings, seeds: Sequence[int] | None = None
    ) -> list[GeneratedImage]:
        """A batch of (n, D) [IMG] states -> GILLMapper -> one stock SD call via ``prompt_embeds`` (official §4.4).

        ``settings`` gives the batch's steps, guidance scale and size; ``seeds`` one SD seed per image (default:
        ``settings.seed`` for each). Each image gets its own CPU generator, so its initial noise is what a call with
        that image alone draws, whatever its neighbours; the schedulers in use (PNDM for SD v1.5, DPM-Solver++ for
        the tiny world SD) draw no noise while stepping, so a sample's image does not depend on the batch beyond
        the last float bits of batched kernels. Safety-checker flags are per image.
        """
        if self.sd is None:
            raise InputError("image generation needs Stable Diffusion", [], hint="load the pipeline with load_sd=True")
        if not h_imgs:
            return []
        seeds = [settings.seed] * len(h_imgs) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(h_imgs):
            raise ValueError(f"generate_images: {len(h_imgs)} [IMG] state sets but {len(seeds)} seeds")
        states = torch.stack([h.to(self.device, self._adapter_dtype) for h in h_imgs])  # (B, n, D)
        cond = self.model.generation_embeddings(states)  # (B, Q, Dt)
        negative = self.negative_embeds()  # (1, 77, Dt)
        if cond.shape[1] < negative.shape[1]:  # a mapper with fewer than 77 queries: zero-pad, as the official code
            cond = F.pad(cond, (0, 0, 0, negative.shape[1] - cond.shape[1]))
        sd_dtype = self.sd.unet.dtype
        out = self.sd(
            prompt_embeds=cond.to(sd_dtype),
            negative_prompt_embeds=negative.expand(len(seeds), -1, -1).to(sd_dtype),
            guidance_scale=settings.guidance_scale,
            num_inference_steps=settings.num_inference_steps,
            height=settings.height,
            width=settings.width,
            output_type="pil",
            generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in seeds],
        )
        return [GeneratedImage(image=image, safety_flagged=flagged) for image, flagged in _unflagged(out)]

    @torch.no_grad()
    def negative_embeds(self) -> torch.Tensor:
        """SD's text encoding of the empty prompt (the unconditional embedding), computed once."""
        if self._negative is None:
            tok = self.sd.tokenizer
            ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
            self._negative = self.sd.text_encoder(ids.to(self.device))[0]
        return self._negative

    @torch.no_grad()
    def image_score(self, image: Image.Image, query: torch.Tensor) -> float:
        """Cosine between an image's retrieval embedding and an (R,) normalised query."""
        emb = self.model.image_retrieval_embeddings(self.vision_features([image]).to(self._adapter_dtype)).float()
        return float(F.normalize(emb, dim=-1)[0] @ query)

    # -- everything ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self, prompt: Sequence[PromptItem], settings: GenerationSettings | None = None, **overrides: Any
    ) -> GILLOutput:
        """Run GILL on an interleaved prompt; ``overrides`` replace fields of ``settings``."""

        settings = dataclasses.replace(settings or GenerationSettings(), **overrides)
        self.check_inputs(prompt, settings)
        embeds, warnings = self.fit_context(self.encode_prompt(prompt), settings)
        decoded = self.generate_text(embeds, settings)
        items: list[OutputItem] = []
        start, seen = 0, set()
        for block, states in zip(decoded.blocks, decoded.img_states, strict=True):
            self._append_text(items, decoded.token_ids[start:block])
            image = self._image_for_block(states, settings, seen)
            items.append(image)
            start = block + len(self.img_ids)
        self._append_text(items, decoded.token_ids[start:])
        return GILLOutput(items=items, token_ids=decoded.token_ids, stop_reason=decoded.stop_reason, warnings=warnings)

    def _image_for_block(self, states: torch.Tensor, settings: GenerationSettings, seen: set[int]) -> ImageResult:
        query = self.retrieval_embedding(states[0])
        scale = float(self.model.adapters.retrieval.scale())
        best = self.retrieve(query, 1, seen)[0] if self.bank is not None else None
        decision = self.decide(states[0], settings, best)
        if decision.label == "ret":
            assert best is not None
            seen.add(best.row)
            return ImageResult(
                kind="ret",
                image=self.bank.image(best),
                score=best.score,  # type: ignore[union-attr]
                scaled_score=best.score * scale,
                decision=decision,
                key=best.key,
                shard=best.shard,
                caption=self.bank.caption(best),
            )  # type: ignore[union-attr]
        image, flagged = self.generate_image(states, settings)
        score = self.image_score(image, query) if image is not None else float("nan")
        return ImageResult(
            kind="gen",
            image=image,
            score=score,
            scaled_score=score * scale,
            decision=decision,
            seed=settings.seed,
            safety_flagged=flagged,
        )

    def _append_text(self, items: list[OutputItem], ids: list[int]) -> None:
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if text:
            items.append(TextResult(text=text))

    @property
    def _adapter_dtype(self) -> torch.dtype:
        return self.model.adapters.retrieval.text_proj.weight.dtype

    def img_suffix(self) -> str:
        """The ``[IMG0]..[IMG7]`` string (what a chat history records where an image was returned)."""
        return "".join(self.img_strings)


# -- helpers --------------------------------------------------------------------------------------------------------


def _newline_ids(tokenizer: Any, exclude: set[int]) -> set[int]:
    """Ids of every token whose text contains a newline (one batched decode over the vocabulary)."""
    ids = sorted(i for i in tokenizer.get_vocab().values() if i not in exclude)
    texts = tokenizer.batch_decode([[i] for i in ids])
    return {int(i) for i, text in zip(ids, texts, strict=True) if "\n" in text}


def _unflagged(out: Any) -> list[tuple[Image.Image | None, bool]]:
    """Per image of a Stable Diffusion output: the image, or None when the safety checker flagged it, and the flag."""
    flags = getattr(out, "nsfw_content_detected", None) or [False] * len(out.images)
    result = []
    for image, flagged in zip(out.images, flags, strict=True):
        if flagged:
            logger.warning("Stable Diffusion's safety checker flagged a generated image; it is not returned")
        result.append((None if flagged else image, bool(flagged)))
    return result


def _has_text(ids: list[int], img_ids: list[int]) -> bool:
    """Whether ``ids`` holds any token besides [IMG] runs (a leading newline does not stop decoding)."""
    return any(i not in img_ids for i in ids)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches ``top_p`` (vectorised; official §8.7)."""
    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # tokens after the nucleus is full
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs) / sorted_probs.sum()


def load_prompt_images(paths: Sequence[str | os.PathLike[str]]) -> list[Image.Image]:
    """Open image files for a prompt; one :class:`InputError` names every missing or unreadable file."""
    images, problems = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except FileNotFoundError:
            problems.append(f"{path}: no such file")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            problems.append(f"{path}: not a readable image ({err})")
    if problems:
        raise InputError("cannot read the prompt images", problems, hint="pass PNG/JPEG/WebP files that exist")
    return images


__all__ = [
    "Decision",
    "DecodeResult",
    "GILLOutput",
    "GILLPipeline",
    "GeneratedImage",
    "GenerationSettings",
    "ImageResult",
    "TextResult",
    "load_prompt_images",
]


# -- saving and chatting --------------------------------------------------------------------------------------------


def save_images(output: GILLOutput, out_dir: str | os.PathLike[str], prefix: str = "") -> list[Path]:
    """Write each image result as ``<prefix>NN-<kind>.png`` with a ``.json`` sidecar (atomically); return the PNGs.

    A safety-flagged result gets only its sidecar (``safety_flagged: true``, no PNG).
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, result in enumerate(output.images):
        stem = out / f"{prefix}{i:02d}-{result.kind}"
        atomic_write_json(stem.with_suffix(".json"), result.sidecar())
        if result.image is None:
            continue
        buffer = io.BytesIO()
        result.image.save(buffer, format="PNG")
        atomic_write_bytes(stem.with_suffix(".png"), buffer.getvalue())
        written.append(stem.with_suffix(".png"))
    return written


class ChatSession:
    """A multi-turn conversation in the official demo's format (official §4.5).

    Each user turn is added as ``"Q: " + text + "\\nA:"`` after any images attached to it; the reply's text
    (with ``[IMG0]..[IMG7]`` where it returned an image) and a newline are appended to the history.
    """

    def __init__(self, pipe: GILLPipeline, settings: GenerationSettings | None = None) -> None:
        self.pipe = pipe
        self.settings = settings or GenerationSettings(temperature=0.0, image_frequency=1.3)
        self.history: list[PromptItem] = []
        self.pending_images: list[Image.Image] = []

    def add_image(self, image: Image.Image) -> None:
        """Attach an image to the next turn."""
        self.pending_images.append(image)

    def reset(self) -> None:
        """Forget the conversation and any pending images."""
        self.history, self.pending_images = [], []

    def turn(self, text: str) -> GILLOutput:
        """Send one user message; the history keeps it and the reply."""
        if not text.strip() and not self.pending_images:
            raise InputError("empty message", ["type some text, or attach an image with /image PATH first"])
        prompt = [*self.history, *self.pending_images, f"Q: {text.strip()}\nA:"]
        output = self.pipe(prompt, self.settings)
        reply = " ".join(item.text if isinstance(item, TextResult) else self.pipe.img_suffix() for item in output.items)
        self.history = [*prompt, f" {reply}\n"]
        self.pending_images = []
        return output
