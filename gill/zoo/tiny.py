"""The tiny model zoo: small models of the *same classes* as the paper's backbones.

``build_tiny_zoo(out)`` writes, with ``save_pretrained``:

* ``opt/``: ``OPTForCausalLM`` (2 layers, width 64), briefly pre-trained on the shapes world's text, with
  a sentence-summary objective distilled from the tiny CLIP's text tower (:mod:`gill.zoo.pretrain`), and an
  OPT-style byte-level BPE tokenizer (prepends ``</s>`` as BOS, like OPT) trained on the same text;
* ``clip/``: a full ``CLIPModel`` (vision width 48, text width 40, projection 40), briefly pre-trained
  contrastively on rendered scenes and their captions, with a ``CLIPProcessor``.
  Like ``openai/clip-vit-large-patch14`` it serves both as GILL's vision encoder (``CLIPVisionModel`` loads
  from it) and as the metric model;
* ``sd/``: the **world-trained** ``StableDiffusionPipeline`` (``UNet2DConditionModel``, ``AutoencoderKL``,
  ``CLIPTextModel`` of width 32, DPM-Solver++ over SD-1.5's noise schedule, CLIP BPE tokenizer) producing 64x64
  images of the shapes world from single captions (:mod:`gill.zoo.world_sd`). It is trained once by
  ``gill models build-world-sd`` (tens of minutes) and ships with gill; building the zoo copies it after checking
  every file's sha256;
* ``zoo.json``: builder version, seed and a sha256 of each component.

Every width differs from the others (64 / 48 / 40 / 32) so a mix-up of derived dims fails loudly in tests.
The models are loaded back only through ``from_pretrained(path)`` (:mod:`gill.factory`): the code path real
weights take. Building is deterministic: the same seed gives byte-identical files (``sd/`` is the shipped world
SD whatever the seed; its own seed is in ``data_manifests/tiny_zoo/world_sd.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tokenizers
import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
    GPT2Tokenizer,
    OPTConfig,
    OPTForCausalLM,
)

from gill.errors import InputError
from gill.manifests import manifests_dir
from gill.synth import caption_corpus
from gill.utils.io import atomic_directory, atomic_write_json, sha256_tree
from gill.zoo.pretrain import (
    SummaryTargets,
    clip_text_targets,
    pretrain_clip,
    pretrain_lm,
    summary_texts,
)
from gill.zoo.world_sd import (
    BuildReport,
    WorldSDConfig,
    install_world_sd,
    require_world_sd,
    shipped_paths,
    train_world_sd,
    verify_world_sd,
    write_shipped,
)

logger = logging.getLogger(__name__)

ZOO_VERSION = 5
"""Bump when the builder's output changes, so cached zoos are rebuilt."""
COMPONENTS = ("opt", "clip", "sd")
LM_WIDTH, VISION_WIDTH, CLIP_TEXT_WIDTH, CLIP_PROJ, SD_TEXT_WIDTH = 64, 48, 40, 40, 32
VOCAB_SIZE = 1000
LM_PRETRAIN_STEPS = 1000
"""Pre-training steps of the tiny OPT: a story's summary needs them (a linear probe reads the main shape's final
colour from the end-of-story state 44% of the time after 300 steps, 62% after 1,000; the background 97-100%)."""
CLIP_PRETRAIN_STEPS = 1000
"""Contrastive pre-training steps of the tiny CLIP (with near-miss negatives, :func:`pretrain_clip`)."""
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
    require_world_sd()  # before minutes of pre-training, not after
    corpus = _tokenizer_corpus(seed)
    with atomic_directory(out) as tmp:
        opt_tok = _train_opt_tokenizer(corpus)
        clip_tok = _train_clip_tokenizer(corpus)
        clip = _save_clip(tmp / "clip", clip_tok, seed + 1)
        _save_opt(tmp / "opt", opt_tok, seed, corpus, _summary_targets(clip, clip_tok, seed))
        install_world_sd(tmp / "sd")
        manifest = ZooManifest(
            version=ZOO_VERSION,
            seed=seed,
            components={name: sha256_tree(tmp / name) for name in COMPONENTS},
            build_seconds=round(time.perf_counter() - start, 3),
        )
        atomic_write_json(tmp / "zoo.json", asdict(manifest))
    logger.info("built tiny zoo at %s in %.1f s", out, manifest.build_seconds)
    return manifest


SHIPPED_SEED = 0
"""The seed of the zoo that ships pre-built in ``data_manifests/tiny_zoo`` (other seeds are built on first use)."""


def shipped_zoo_dir() -> Path:
    """``data_manifests/tiny_zoo``: the pre-built ``opt/`` and ``clip/`` with their ``zoo.json``, and the world SD."""

    return manifests_dir() / "tiny_zoo"


def shipped_zoo_problems(seed: int = SHIPPED_SEED) -> list[str]:
    """Why the shipped zoo cannot serve ``seed`` (absent, other version or seed, changed files); [] when it can."""
    shipped = shipped_zoo_dir()
    manifest = ZooManifest.read(shipped)
    if manifest is None:
        return [f"{shipped / 'zoo.json'}: missing or unreadable"]
    if manifest.version != ZOO_VERSION or manifest.seed != seed:
        return [f"{shipped / 'zoo.json'}: version {manifest.version} seed {manifest.seed}, need {ZOO_VERSION} {seed}"]
    problems = [
        f"{shipped / name}: its files do not match zoo.json"
        for name in ("opt", "clip")
        if not (shipped / name).is_dir() or sha256_tree(shipped / name) != manifest.components.get(name)
    ]
    return problems + verify_world_sd()


def ship_tiny_zoo(seed: int = SHIPPED_SEED) -> ZooManifest:
    """Build the zoo from scratch and write its ``opt/``, ``clip/`` and ``zoo.json`` into ``data_manifests``."""

    shipped = shipped_zoo_dir()
    with tempfile.TemporaryDirectory() as scratch:
        manifest = build_tiny_zoo(Path(scratch) / "zoo", seed=seed)
        for name in ("opt", "clip"):
            with atomic_directory(shipped / name) as tmp:
                shutil.copytree(Path(scratch) / "zoo" / name, tmp, dirs_exist_ok=True)
        atomic_write_json(shipped / "zoo.json", asdict(manifest))
    return manifest


def _copy_shipped(zoo_dir: Path) -> ZooManifest:

    shipped = shipped_zoo_dir()
    with atomic_directory(zoo_dir) as tmp:
        for name in ("opt", "clip"):
            shutil.copytree(shipped / name, tmp / name)
        install_world_sd(tmp / "sd")
        manifest = ZooManifest.read(shipped)
        assert manifest is not None  # checked by shipped_zoo_problems
        atomic_write_json(tmp / "zoo.json", asdict(manifest))
    return manifest


def ensure_tiny_zoo(zoo_dir: str | Path, seed: int = 0) -> ZooManifest:
    """Return the zoo at ``zoo_dir``; if it is absent, stale or incomplete, copy the shipped one (seed 0, checked
    file by file) or build it (other seeds, or a shipped zoo that does not verify)."""
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
    problems = shipped_zoo_problems(seed)
    if not problems:
        logger.info("installing the shipped tiny model zoo into %s (first use)", zoo_dir)
        return _copy_shipped(zoo_dir)
    logger.info(
        "building the tiny model zoo into %s (first use; shipped zoo not usable: %s)", zoo_dir, "; ".join(problems)
    )
    return build_tiny_zoo(zoo_dir, seed=seed)


# -- tokenizers -----------------------------------------------------------------------------------------


def _tokenizer_corpus(seed: int) -> list[str]:

    return caption_corpus(seed=seed)


def _train_opt_tokenizer(corpus: list[str]):  # -> GPT2Tokenizer
    """OPT-style GPT-2 byte-level BPE: ``</s>`` is BOS and EOS and is prepended, ``<pad>`` pads."""

    base = GPT2Tokenizer(unk_token="<unk>", bos_token="</s>", eos_token="</s>", pad_token="<pad>", add_bos_token=True)
    tok = base.train_new_from_iterator(corpus, vocab_size=VOCAB_SIZE, show_progress=False)
    tok.model_max_length = 512
    return tok


def _train_clip_tokenizer(corpus: list[str]):  # -> CLIPTokenizer
    """CLIP BPE with the 256 ``x</w>`` end-of-word byte tokens, max length 77.

    A trained CLIP BPE lacks them, so a word-final character unseen in training would become ``<|endoftext|>``.
    """

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
    """World texts (captions, stories, dialogues) and the tiny CLIP's text embedding of a caption of the scene each
    one ends in: the targets of the OPT's summary objective (:func:`gill.zoo.pretrain.summary_texts`)."""
    texts, captions = summary_texts(seed + 100, 6000)
    return SummaryTargets(captions=texts, embeddings=clip_text_targets(clip, clip_tok, captions))


def _save_opt(out: Path, tok, seed: int, corpus: list[str], summary: SummaryTargets) -> None:

    config = OPTConfig(
        vocab_size=len(tok),
        hidden_size=LM_WIDTH,
        word_embed_proj_dim=LM_WIDTH,
        num_hidden_layers=2,
        ffn_dim=4 * LM_WIDTH,
        num_attention_heads=4,
        max_position_embeddings=512,
        dropout=0.0,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    lm = OPTForCausalLM(config)
    report = pretrain_lm(lm, tok, corpus, seed=seed, summary=summary, steps=LM_PRETRAIN_STEPS)
    logger.info("tiny OPT pre-trained on the world's text: loss %.2f -> %.2f", report.first_loss, report.last_loss)
    lm.save_pretrained(out)
    tok.save_pretrained(out)


def _clip_text_config(tok, width: int, projection_dim: int):

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_TOKENS,
        projection_dim=projection_dim,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _save_clip(out: Path, tok, seed: int):  # -> CLIPModel

    vision = CLIPVisionConfig(
        hidden_size=VISION_WIDTH,
        intermediate_size=2 * VISION_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        projection_dim=CLIP_PROJ,
    )
    text = _clip_text_config(tok, CLIP_TEXT_WIDTH, CLIP_PROJ)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=CLIP_PROJ)
    torch.manual_seed(seed)
    clip = CLIPModel(config)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    report = pretrain_clip(clip, tok, images, seed=seed, steps=CLIP_PRETRAIN_STEPS)
    logger.info("tiny CLIP pre-trained on rendered scenes: loss %.2f -> %.2f", report.first_loss, report.last_loss)
    clip.save_pretrained(out)
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
    images.save_pretrained(out)  # preprocessor_config.json, as in the openai/clip-vit-large-patch14 repo
    return clip


WORLD_SD_CORPUS_SEED = 0
"""The world SD's tokenizer is the zoo's CLIP tokenizer for this corpus seed (it ships inside ``sd/tokenizer``)."""


def build_world_sd(
    *, seed: int = 0, config: WorldSDConfig | None = None, out: str | Path | None = None, progress=logger.info
) -> tuple[Path, BuildReport]:
    """Train the world SD from scratch and write it with its manifest (default: the shipped location).

    Returns the pipeline folder and the build report. Deterministic for a seed on a given machine and torch build.
    """

    config = dataclasses.replace(config or WorldSDConfig(), seed=seed)
    tokenizer = _train_clip_tokenizer(_tokenizer_corpus(WORLD_SD_CORPUS_SEED))
    pipe, report = train_world_sd(tokenizer, config, progress=progress)
    folder, manifest = shipped_paths()
    if out is not None:
        folder, manifest = Path(out) / folder.name, Path(out) / manifest.name
    write_shipped(pipe, report, folder, manifest)
    logger.info("world SD written to %s (manifest %s): %s", folder, manifest, report.seconds)
    return folder, report
