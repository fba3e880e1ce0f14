"""The tiny model zoo: small models of the *same classes* as the paper's backbones.

``build_tiny_zoo(out)`` writes, with ``save_pretrained``:

* ``opt/``: ``OPTForCausalLM`` (2 layers, width 64), briefly pre-trained on the shapes world's text, with
  a sentence-summary objective distilled from the tiny CLIP's text tower (:mod:`gill.zoo.pretrain`), and an
  OPT-style byte-level BPE tokenizer (prepends ``</s>`` as BOS, like OPT) trained on the same text;
* ``clip/``: a full ``CLIPModel`` (vision width 48, text width 40, projection 40), briefly pre-trained
  contrastively on rendered scenes and their captions, with a ``CLIPProcessor``.
  Like ``openai/clip-vit-large-patch14`` it serves both as GILL's vision encoder (``CLIPVisionModel`` loads
  from it) and as the metric model;
* ``sd/``: a ``StableDiffusionPipeline`` (``UNet2DConditionModel``, ``AutoencoderKL`` with SD's 8x latent
  factor, ``CLIPTextModel`` of width 32, SD-1.5's PNDM scheduler settings, CLIP BPE tokenizer) producing
  64x64 images;
* ``zoo.json``: builder version, seed and a sha256 of each component.

Every width differs from the others (64 / 48 / 40 / 32) so a mix-up of derived dims fails loudly in tests.
The models are loaded back only through ``from_pretrained(path)`` (:mod:`gill.factory`): the code path real
weights take. Building is deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gill.errors import InputError
from gill.utils.io import atomic_directory, atomic_write_json, sha256_tree
from gill.zoo.pretrain import SummaryTargets, clip_text_targets, pretrain_clip, pretrain_lm, world_pairs

logger = logging.getLogger(__name__)

ZOO_VERSION = 4
"""Bump when the builder's output changes, so cached zoos are rebuilt."""
COMPONENTS = ("opt", "clip", "sd")
LM_WIDTH, VISION_WIDTH, CLIP_TEXT_WIDTH, CLIP_PROJ, SD_TEXT_WIDTH = 64, 48, 40, 40, 32
VOCAB_SIZE = 1000
CLIP_MAX_TOKENS = 77


@dataclass(frozen=True, kw_only=True)
class ZooManifest:
    """What ``zoo.json`` records about a built zoo."""

    version: int
    """:data:`ZOO_VERSION` of the builder."""
    seed: int
    """Seed used for tokenizer corpus and weights."""
    components: dict[str, str]
    """Component folder -> sha256 of its files."""
    build_seconds: float
    """Wall time of the build."""

    @classmethod
    def read(cls, zoo_dir: Path) -> ZooManifest | None:
        """Read ``zoo.json``, or None when absent or unreadable."""
        try:
            return cls(**json.loads((zoo_dir / "zoo.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None


def build_tiny_zoo(out: str | Path, seed: int = 0) -> ZooManifest:
    """Build the tiny zoo into ``out`` (atomically: a crash leaves no half-built zoo)."""
    out = Path(out)
    start = time.perf_counter()
    corpus = _tokenizer_corpus(seed)
    with atomic_directory(out) as tmp:
        opt_tok = _train_opt_tokenizer(corpus)
        clip_tok = _train_clip_tokenizer(corpus)
        clip = _save_clip(tmp / "clip", clip_tok, seed + 1)
        _save_opt(tmp / "opt", opt_tok, seed, corpus, _summary_targets(clip, clip_tok, seed))
        _save_sd(tmp / "sd", clip_tok, seed + 2)
        manifest = ZooManifest(
            version=ZOO_VERSION,
            seed=seed,
            components={name: sha256_tree(tmp / name) for name in COMPONENTS},
            build_seconds=round(time.perf_counter() - start, 3),
        )
        atomic_write_json(tmp / "zoo.json", asdict(manifest))
    logger.info("built tiny zoo at %s in %.1f s", out, manifest.build_seconds)
    return manifest


def ensure_tiny_zoo(zoo_dir: str | Path, seed: int = 0) -> ZooManifest:
    """Return the zoo at ``zoo_dir``, building it first if it is absent, stale or incomplete."""
    zoo_dir = Path(zoo_dir)
    manifest = ZooManifest.read(zoo_dir)
    if (
        manifest is not None
        and manifest.version == ZOO_VERSION
        and manifest.seed == seed
        and all((zoo_dir / c).is_dir() for c in COMPONENTS)
    ):
        return manifest
    if zoo_dir.exists() and manifest is None and any(zoo_dir.iterdir()):
        raise InputError(
            f"{str(zoo_dir)!r} exists but is not a tiny zoo (no readable zoo.json)",
            hint="pass an empty or new folder, or delete it so it can be rebuilt",
        )
    logger.info("building the tiny model zoo into %s (first use)", zoo_dir)
    return build_tiny_zoo(zoo_dir, seed=seed)


# -- tokenizers -----------------------------------------------------------------------------------------


def _tokenizer_corpus(seed: int) -> list[str]:
    from gill.synth import caption_corpus

    return caption_corpus(seed=seed)


def _train_opt_tokenizer(corpus: list[str]):  # -> GPT2Tokenizer
    """OPT-style GPT-2 byte-level BPE: ``</s>`` is BOS and EOS and is prepended, ``<pad>`` pads."""
    from transformers import GPT2Tokenizer

    base = GPT2Tokenizer(unk_token="<unk>", bos_token="</s>", eos_token="</s>", pad_token="<pad>", add_bos_token=True)
    tok = base.train_new_from_iterator(corpus, vocab_size=VOCAB_SIZE, show_progress=False)
    tok.model_max_length = 512
    return tok


def _train_clip_tokenizer(corpus: list[str]):  # -> CLIPTokenizer
    """CLIP BPE with the 256 ``x</w>`` end-of-word byte tokens (see tech-notes 1), max length 77."""
    import tokenizers
    from transformers import CLIPTokenizer

    trained = CLIPTokenizer().train_new_from_iterator(corpus, vocab_size=VOCAB_SIZE, show_progress=False)
    model = json.loads(trained.backend_tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(a + "</w>" for a in alphabet), *("".join(m) for m in merges)]:
        vocab.setdefault(token, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)


# -- models ---------------------------------------------------------------------------------------------


def _summary_targets(clip, clip_tok, seed: int) -> SummaryTargets:
    """The tiny CLIP's text embeddings of fresh shapes-world captions (targets of the OPT's summary objective)."""
    captions, _ = world_pairs(seed + 100, 4000, image_size=8)
    return SummaryTargets(captions=captions, embeddings=clip_text_targets(clip, clip_tok, captions))


def _save_opt(out: Path, tok, seed: int, corpus: list[str], summary: SummaryTargets) -> None:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=len(tok), hidden_size=LM_WIDTH, word_embed_proj_dim=LM_WIDTH, num_hidden_layers=2,
        ffn_dim=4 * LM_WIDTH, num_attention_heads=4, max_position_embeddings=512, dropout=0.0,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    lm = OPTForCausalLM(config)
    report = pretrain_lm(lm, tok, corpus, seed=seed, summary=summary)
    logger.info("tiny OPT pre-trained on the world's text: loss %.2f -> %.2f", report.first_loss, report.last_loss)
    lm.save_pretrained(out)
    tok.save_pretrained(out)


def _clip_text_config(tok, width: int, projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_TOKENS, projection_dim=projection_dim,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip


def _save_clip(out: Path, tok, seed: int):  # -> CLIPModel
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    vision = CLIPVisionConfig(
        hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=4, projection_dim=CLIP_PROJ,
    )  # fmt: skip
    text = _clip_text_config(tok, CLIP_TEXT_WIDTH, CLIP_PROJ)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=CLIP_PROJ)
    torch.manual_seed(seed)
    clip = CLIPModel(config)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    report = pretrain_clip(clip, tok, images, world_pairs(seed, 1024), seed=seed)
    logger.info("tiny CLIP pre-trained on rendered scenes: loss %.2f -> %.2f", report.first_loss, report.last_loss)
    clip.save_pretrained(out)
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
    images.save_pretrained(out)  # preprocessor_config.json, as in the openai/clip-vit-large-patch14 repo
    return clip


def _save_sd(out: Path, tok, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_text_config(tok, SD_TEXT_WIDTH, SD_TEXT_WIDTH))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=SD_TEXT_WIDTH, attention_head_dim=4,
    )  # fmt: skip
    scheduler = PNDMScheduler(  # SD-1.5's scheduler_config.json values
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(out)
