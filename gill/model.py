"""GILL's model: a frozen causal LM plus the trainable adapters, one method per task path (paper section 3).

:class:`GILLModel` takes an already-loaded LM (no IO here; :mod:`gill.factory` loads it) and the [IMG] ids
from :func:`gill.tokenization.add_img_tokens`. The LM is frozen, kept in eval mode and **never resized**: the
[IMG] tokens live in their own table (:class:`~gill.adapters.ImgTokenEmbeddings`) spliced into the input
embeddings (:meth:`GILLModel.embed_tokens`) and the LM-head logits (:meth:`GILLModel.logits`). This replaces the
official trick of unfreezing the whole embedding matrix and masking its gradient (docs/official-gill.md §2.6, 8 item 1).

:func:`summary` counts parameters per module without any weights (every model is built on the meta device),
and compares the trainable count with the released GILL's (official §1.3). From the shell::

    gill model summary --preset paper
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

from gill.adapters import DEFAULT_INIT_STD, DecisionHead, GILLAdapters, build_adapters
from gill.config import DerivedDims, GILLConfig
from gill.errors import ConfigError
from gill.factory import config_dir, derive_dims, quiet_hf_logging
from gill.presets import paper_config

logger = logging.getLogger(__name__)

OFFICIAL_TRAINABLE = 50_096_385
"""Trainable parameters of the released GILL checkpoint (official §1.3: 8 [IMG] rows counted, not the matrix)."""


@dataclass(kw_only=True)
class LMOutput:
    """One frozen-LM pass over spliced input embeddings.

    Attributes:
        hidden_states: one (B, T, D) tensor per ``adapters.text_emb_layers`` entry (-1: after the final norm).
        last_hidden_state: (B, T, D) what the LM head sees.
        logits: (B, T, V) next-token logits over the LM's rows plus the [IMG] columns (V = :attr:`vocab_size`);
            None when the caller asked for none.
    """

    hidden_states: tuple[torch.Tensor, ...]
    last_hidden_state: torch.Tensor
    logits: torch.Tensor | None
    past_key_values: Any = None
    """The LM's key/value cache after this pass (``use_cache=True`` only)."""


def _check_img_ids(ids: Sequence[int], num_img_tokens: int) -> list[int]:
    ids = [int(i) for i in ids]
    expected = list(range(ids[0], ids[0] + num_img_tokens)) if ids else []
    if len(ids) != num_img_tokens or ids != expected:
        raise ConfigError(
            "img_token_ids must be the consecutive ids of [IMG0..n-1] (from gill.tokenization.add_img_tokens)",
            [f"expected {num_img_tokens} consecutive ids, got {ids}"],
        )
    return ids


def lm_init_std(lm: nn.Module) -> float:
    """The LM's weight-init std from its config (OPT ``init_std``, most others ``initializer_range``)."""
    cfg = getattr(lm, "config", None)
    return float(getattr(cfg, "init_std", None) or getattr(cfg, "initializer_range", None) or DEFAULT_INIT_STD)


class GILLModel(nn.Module):
    """Frozen LM + GILL adapters (paper section 3). Build with :func:`gill.factory.load_backbones` output.

    Args:
        config: the GILL configuration.
        dims: backbone widths (:func:`gill.factory.derive_dims`).
        lm: a loaded ``AutoModelForCausalLM``; it is frozen in place and never resized.
        img_token_ids: ids of ``[IMG0..n-1]`` in the tokenizer (consecutive).
        adapters: trained adapters to use (default: freshly initialised).
        decision_head: optional retrieve-or-generate classifier.
    """

    def __init__(
        self,
        config: GILLConfig,
        dims: DerivedDims,
        lm: nn.Module,
        img_token_ids: Sequence[int],
        adapters: GILLAdapters | None = None,
        decision_head: DecisionHead | None = None,
    ) -> None:
        super().__init__()
        ids = _check_img_ids(img_token_ids, config.adapters.num_img_tokens)
        width = lm.get_input_embeddings().embedding_dim
        if width != dims.lm_hidden:
            raise ConfigError("the LM does not match dims", [f"embedding width {width} != lm_hidden {dims.lm_hidden}"])
        self.config = config
        self.dims = dims
        self.lm = lm.requires_grad_(False).eval()
        self.adapters = adapters if adapters is not None else build_adapters(config, dims, lm_init_std(lm))
        self.decision_head = decision_head
        self.first_img_id = ids[0]
        self.lm_rows = lm.get_input_embeddings().num_embeddings
        self.vocab_size = max(self.lm_rows, ids[-1] + 1)
        """Width of :meth:`logits`: the LM's rows, extended to reach the last [IMG] id."""
        self.register_buffer("img_token_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self._target_norm: float | None = None

    def train(self, mode: bool = True) -> GILLModel:
        """Set train/eval mode on the adapters; the frozen LM always stays in eval (no dropout)."""
        super().train(mode)
        self.lm.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapters' parameters (never the LM's): what the optimiser gets."""
        return [p for p in self.adapters.parameters() if p.requires_grad]

    # -- the LM with [IMG] spliced in --------------------------------------------------------------------------

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D): LM rows for ordinary ids, our table's rows for [IMG] ids (official §2.6)."""
        n = self.config.adapters.num_img_tokens
        offset = input_ids - self.first_img_id  # (B, T)
        is_img = (offset >= 0) & (offset < n)
        lm_ids = torch.where(is_img, 0, input_ids).clamp(0, self.lm_rows - 1)  # never index past the LM's rows
        text = self.lm.get_input_embeddings()(lm_ids)  # (B, T, D)
        img = self.adapters.img_embeddings.weight[offset.clamp(0, n - 1)]  # (B, T, D)
        return torch.where(is_img.unsqueeze(-1), img.to(text.dtype), text)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) final hidden states -> (B, T, V) logits.

        The LM head scores its own rows (OPT's unused padding rows keep the LM's values); the [IMG] columns are
        ``hidden @ table.T`` (tied, as in the official model); columns past the LM's rows that are not [IMG] are
        -inf.
        """
        lm_logits = self.lm.get_output_embeddings()(hidden)  # (B, T, V_lm)
        extra = self.vocab_size - lm_logits.shape[-1]
        if extra > 0:
            lm_logits = F.pad(lm_logits, (0, extra), value=float("-inf"))  # (B, T, V)
        img_logits = hidden @ self.adapters.img_embeddings.weight.to(hidden.dtype).T  # (B, T, n)
        return lm_logits.index_copy(-1, self.img_token_ids, img_logits.to(lm_logits.dtype))

    def forward_lm(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        past_key_values: Any = None,
        use_cache: bool = False,
        compute_logits: bool = True,
    ) -> LMOutput:
        """Run the frozen LM on (B, T, D) embeddings; return the ``text_emb_layers`` states and the logits.

        With ``use_cache`` the pass extends ``past_key_values`` (the LM's own cache) and returns the new cache;
        ``attention_mask`` must then cover the cached and the new positions (B, T_past + T).
        """
        layers = self.config.adapters.text_emb_layers
        need_all = any(i != -1 for i in layers)
        out = self.lm.base_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            output_hidden_states=need_all,
            use_cache=use_cache,
        )
        last = out.last_hidden_state  # (B, T, D), after the final layer norm (OPT: and project_out)
        hidden = tuple(last if i == -1 else out.hidden_states[i] for i in layers)
        return LMOutput(
            hidden_states=hidden,
            last_hidden_state=last,
            logits=self.logits(last) if compute_logits else None,
            past_key_values=out.past_key_values if use_cache else None,
        )

    def img_states(self, hidden: torch.Tensor, caption_len: torch.Tensor) -> torch.Tensor:
        """(B, T, D) states and (B,) lengths -> (B, n, D) states at the [IMG] inputs (``caption_len - n ..``)."""
        n = self.config.adapters.num_img_tokens
        positions = caption_len.to(hidden.device).unsqueeze(1) - n + torch.arange(n, device=hidden.device)  # (B, n)
        return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    # -- task paths ---------------------------------------------------------------------------------------------

    def encode_images(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, Dv) CLIP features -> (B, k, D) soft tokens for captioning (paper section 3.1)."""
        return self.adapters.input_proj(vision_features)

    def image_retrieval_embeddings(self, vision_features: torch.Tensor) -> torch.Tensor:
        """(B, Dv) -> (B, R) image side of retrieval (unnormalised; paper section 3.2)."""
        return self.adapters.retrieval.image_proj(vision_features)

    def text_retrieval_embeddings(self, h_img0: torch.Tensor) -> torch.Tensor:
        """(B, D) h[IMG0] -> (B, R) text side of retrieval (unnormalised; official §1.4: only [IMG0] is used)."""
        return self.adapters.retrieval.text_proj(h_img0)

    def generation_embeddings(self, h_img: torch.Tensor) -> torch.Tensor:
        """(B, n, D) [IMG] states -> (B, Q, Dt) SD conditioning, via the mapper with the [IMG] table as ``e_img``."""
        e_img = self.adapters.img_embeddings.weight.to(h_img.dtype)  # (n, D)
        return self.adapters.mapper(h_img, e_img)

    def decision_logits(self, h_img0: torch.Tensor, retrieval_score: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) h[IMG0] -> (B, 2) [gen, ret] logits of the attached decision head (paper section 3.3)."""
        if self.decision_head is None:
            raise ConfigError("no decision head is attached", ["pass decision_head= when building GILLModel"])
        return self.decision_head(h_img0, retrieval_score)

    # -- [IMG] norm ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def img_embedding_target_norm(self) -> float:
        """Mean L2 norm of the LM's real input-embedding rows (the tokenizer's tokens, not padding rows)."""
        if self._target_norm is None:
            rows = min(self.lm_rows, self.first_img_id)
            weight = self.lm.get_input_embeddings().weight[:rows]  # (V_real, D)
            self._target_norm = float(weight.float().norm(dim=-1).mean())
        return self._target_norm

    @torch.no_grad()
    def init_img_from_lm_rows_(self) -> int:
        """Copy the LM's own embedding rows into the [IMG] rows whose ids the LM already has (official §1.2).

        OPT-6.7B's matrix has 50,272 rows for a 50,265-token vocabulary; the official code adds ``<|image|>`` and
        [IMG0..7] (ids 50265-50273) and resizes to 50,274, so [IMG0..5] start from the LM's unused rows 50266-50271
        and only [IMG6..7] are new. Returns how many rows were copied (0 when the LM has no rows at those ids).
        """
        ids = self.img_token_ids.tolist()
        present = [i for i, token in enumerate(ids) if token < self.lm_rows]
        if present:
            source = self.lm.get_input_embeddings().weight[[ids[i] for i in present]]  # (m, D)
            table = self.adapters.img_embeddings.weight
            table[present] = source.to(table.dtype)
        return len(present)

    def rescale_img_embeddings_(self) -> None:
        """Rescale the [IMG] rows to :meth:`img_embedding_target_norm` when the config asks for it (official §2.6)."""
        if self.config.adapters.rescale_img_embeddings:
            self.adapters.img_embeddings.rescale_(self.img_embedding_target_norm())


# -- parameter summary (no weights needed) ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModuleCount:
    """Parameter counts of one module."""

    name: str
    """Module name (state-dict prefix for adapters; ``frozen lm`` / ``frozen vision`` for backbones)."""
    trainable: int
    """Trainable parameters."""
    frozen: int
    """Frozen parameters."""
    shape: str
    """What the module is, with its widths."""
    official: int | None = None
    """The released GILL's trainable count for this module (paper config), None for frozen backbones."""
    official_shape: str | None = None
    """The same module in the released GILL."""


@dataclass(frozen=True, kw_only=True)
class ModelSummary:
    """Per-module parameter counts of a config, compared with the released GILL (official §1.3)."""

    preset: str
    rows: tuple[ModuleCount, ...]

    @property
    def trainable(self) -> int:
        """Total trainable parameters."""
        return sum(r.trainable for r in self.rows)

    @property
    def frozen(self) -> int:
        """Total frozen parameters."""
        return sum(r.frozen for r in self.rows)

    def differences(self) -> list[str]:
        """One line per module whose trainable count differs from the release, saying why."""
        return [
            f"{r.name}: {r.trainable:,} vs {r.official:,}: ours is {r.shape}, the release's is {r.official_shape}"
            for r in self.rows
            if r.official is not None and r.trainable != r.official
        ]

    def render(self) -> str:
        """A text table plus the comparison with the released checkpoint."""
        lines = [f"preset: {self.preset}", f"{'module':24s} {'trainable':>14s} {'frozen':>16s}  shape"]
        for r in self.rows:
            lines.append(f"{r.name:24s} {r.trainable:>14,} {r.frozen:>16,}  {r.shape}")
        lines.append(f"{'total':24s} {self.trainable:>14,} {self.frozen:>16,}")
        why = self.differences()
        if self.trainable == OFFICIAL_TRAINABLE and not why:
            lines.append(f"trainable matches the released GILL checkpoint: {OFFICIAL_TRAINABLE:,} (official §1.3)")
        else:
            lines.append(
                f"trainable differs from the released GILL ({OFFICIAL_TRAINABLE:,}) by "
                f"{self.trainable - OFFICIAL_TRAINABLE:+,}:"
            )
            lines += [f"  - {w}" for w in why] or ["  - the paper config's modules no longer match official §1.3"]
        lines.append(
            "note: the release trained the 8 [IMG] rows through the whole LM embedding matrix "
            "(requires_grad on all rows, gradient-masked); here they are a separate table."
        )
        return "\n".join(lines)


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params if not p.requires_grad)


def _mapper_shape(config: GILLConfig, dims: DerivedDims) -> str:
    m, a = config.adapters.mapper, config.adapters
    io = f"D={dims.lm_hidden} -> {a.num_clip_tokens}x{dims.sd_text_dim}"
    if m.kind == "linear":
        return f"linear({io})"
    if m.kind == "mlp3":
        return f"mlp3({io}, hidden {m.hidden_dim})"
    layers = f"{m.num_encoder_layers} enc" + (f" + {m.num_decoder_layers} dec" if m.kind == "gill_mapper" else "")
    return f"{m.kind}({io}, hidden {m.hidden_dim}, {layers} layers, {m.num_heads} heads, ffn {m.ffn_dim})"


def _adapter_rows(config: GILLConfig, dims: DerivedDims) -> list[ModuleCount]:
    a, d = config.adapters, dims
    with torch.device("meta"):
        adapters = build_adapters(config, dims)
    shapes = {
        "input_proj": f"Linear({d.vision_hidden} -> {a.n_visual_tokens}x{d.lm_hidden})",
        "img_embeddings": f"{a.num_img_tokens}x{d.lm_hidden} [IMG] table",
        "retrieval.text_proj": f"Linear({d.lm_hidden} -> {a.ret_emb_dim})",
        "retrieval.image_proj": f"Linear({d.vision_hidden} -> {a.ret_emb_dim})",
        "retrieval.logit_scale": "scalar",
        "mapper": _mapper_shape(config, dims),
    }
    return [
        ModuleCount(name=name, shape=shape, trainable=_count(adapters.get_submodule(name))[0], frozen=0)
        if name != "retrieval.logit_scale"
        else ModuleCount(name=name, shape=shape, trainable=adapters.retrieval.logit_scale.numel(), frozen=0)
        for name, shape in shapes.items()
    ]


def _frozen_rows(config: GILLConfig, dims: DerivedDims) -> list[ModuleCount]:

    quiet_hf_logging()
    backbones = config.backbones
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir("lm", backbones.lm)))
        vision = CLIPVisionModel(CLIPVisionConfig.from_pretrained(config_dir("vision", backbones.vision)))
    rows = []
    for name, model, ref in (("frozen lm", lm, backbones.lm), ("frozen vision", vision, backbones.vision)):
        model.requires_grad_(False)
        rows.append(
            ModuleCount(name=name, trainable=0, frozen=_count(model)[1], shape=f"{type(model).__name__} {ref.id}")
        )
    return rows


def summary(config: GILLConfig) -> ModelSummary:
    """Count parameters per module for ``config`` with no weights (meta device), next to the released GILL's.

    Reads only the backbones' ``config.json`` (local folders or the shipped configs of the paper backbones).
    """

    dims = derive_dims(config)
    rows = _adapter_rows(config, dims)
    paper = paper_config()
    official = {r.name: r for r in _adapter_rows(paper, derive_dims(paper))}
    rows = [
        dataclasses.replace(r, official=official[r.name].trainable, official_shape=official[r.name].shape) for r in rows
    ]
    return ModelSummary(preset=config.preset, rows=tuple(rows + _frozen_rows(config, dims)))
