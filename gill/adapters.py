"""GILL's trainable pieces (paper sections 3.1-3.2): pure ``nn.Module`` classes built from a config, no IO.

* :class:`InputProjection` (``input_proj``): CLIP feature -> ``k`` soft LM tokens (captioning, section 3.1).
* :class:`ImgTokenEmbeddings` (``img_embeddings``): the ``[IMG]`` rows as their own trainable table. The official
  code unfroze the LM's whole embedding matrix through a transformers accident and masked gradients
  (docs/official-gill.md §2.6, §8.1); we never touch the LM's matrix.
* :class:`RetrievalHeads` (``retrieval``): text side from h[IMG0], image side from CLIP features, and the
  contrastive temperature (section 3.2, "retrieval").
* the mapper (``mapper``): [IMG] hidden states -> SD text-encoder space. :class:`GILLMapper` (section 3.2,
  official §1.5) and the ablation variants of the paper's mapper table (:class:`LinearMapper`,
  :class:`MLP3Mapper`, :class:`TransformerEncoderMapper`), chosen by :func:`build_mapper`.
* :class:`GILLAdapters` holds the four; :func:`build_adapters` makes it from a :class:`~gill.config.GILLConfig`.
* :class:`DecisionHead`: the retrieve-or-generate classifier (section 3.3, official §4.4 / 5).

Attribute names are the state-dict names of our checkpoint format (:mod:`gill.checkpoint`). Every width comes
from :class:`~gill.config.DerivedDims` (read from the backbones' configs) or the config, never from literals.
Shapes: B batch, n = ``num_img_tokens``, k = ``n_visual_tokens``, D = LM width, Dv = vision width,
R = ``ret_emb_dim``, Q = ``num_clip_tokens``, Dt = SD text width, H = mapper hidden width.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from gill.config import AdapterConfig, DerivedDims, GILLConfig, MapperConfig
from gill.errors import ConfigError

DEFAULT_INIT_STD = 0.02
"""Init std of the [IMG] table when the LM's config gives none (OPT's ``init_std``)."""


class InputProjection(nn.Module):
    """CLIP ``pooler_output`` -> ``k`` soft LM input tokens (paper section 3.1; official ``visual_embeddings``)."""

    def __init__(self, vision_hidden: int, lm_hidden: int, n_visual_tokens: int) -> None:
        super().__init__()
        self.n_visual_tokens = n_visual_tokens
        self.lm_hidden = lm_hidden
        self.linear = nn.Linear(vision_hidden, n_visual_tokens * lm_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, Dv) -> (B, k, D)."""
        return self.linear(features).view(features.shape[0], self.n_visual_tokens, self.lm_hidden)


class ImgTokenEmbeddings(nn.Module):
    """The ``[IMG0..n-1]`` input embeddings, a separate (n, D) table spliced into the frozen LM (official §2.6).

    They also serve as the LM-head rows of the [IMG] tokens (tied, as in the official model).
    """

    def __init__(self, num_img_tokens: int, lm_hidden: int, init_std: float = DEFAULT_INIT_STD) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_img_tokens, lm_hidden))  # (n, D)
        nn.init.normal_(self.weight, mean=0.0, std=init_std)

    @torch.no_grad()
    def rescale_(self, target_norm: float) -> None:
        """Set every row's L2 norm to ``target_norm`` in place (official: after each step, to the mean vocab norm)."""
        norms = self.weight.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(self.weight.dtype).tiny)  # (n, 1)
        self.weight.mul_(target_norm / norms)


class RetrievalHeads(nn.Module):
    """Contrastive retrieval heads (paper section 3.2): ``text_proj(h[IMG0])`` vs ``image_proj(CLIP feature)``."""

    def __init__(self, lm_hidden: int, vision_hidden: int, ret_emb_dim: int, logit_scale_init: float) -> None:
        super().__init__()
        self.text_proj = nn.Linear(lm_hidden, ret_emb_dim)
        self.image_proj = nn.Linear(vision_hidden, ret_emb_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))  # () log temperature

    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)``, never clamped here (official §1.3): an imported value is used exactly.

        Training may keep the log scale at most ln(100) as CLIP does (``train.logit_scale_clamp``;
        :meth:`clamp_`); that is an option of the trainer, not of the model.
        """
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_(self, max_log_scale: float) -> None:
        """Clamp the log scale in place to at most ``max_log_scale`` (after an optimizer step, as OpenCLIP does)."""
        self.logit_scale.clamp_(max=max_log_scale)


# -- mappers (paper section 3.2 and the mapper ablation table) -------------------------------------------------


def _pad_tokens(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Zero-pad (B, n, Dt) to (B, num_tokens, Dt), as the official code does for non-mapper modes."""
    return F.pad(x, (0, 0, 0, num_tokens - x.shape[1]))


class GILLMapper(nn.Module):
    """GILLMapper (paper section 3.2, official §1.5): encoder-decoder transformer with learned queries.

    ``x = h_img + e_img`` (the [IMG] embeddings are the only positional signal) -> ``fc`` -> ``tfm`` encoder
    source; the decoder target is ``query_embs`` (no masks anywhere) -> ``out``. Official names: ``fc``, ``tfm``,
    ``query_embs``, ``model`` (ours: ``out``).
    """

    def __init__(self, lm_hidden: int, sd_text_dim: int, num_clip_tokens: int, mapper: MapperConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(lm_hidden, mapper.hidden_dim)
        with warnings.catch_warnings():  # pre-LN encoders cannot use nested tensors; torch warns about it
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.tfm = nn.Transformer(
                d_model=mapper.hidden_dim,
                nhead=mapper.num_heads,
                num_encoder_layers=mapper.num_encoder_layers,
                num_decoder_layers=mapper.num_decoder_layers,
                dim_feedforward=mapper.ffn_dim,
                dropout=mapper.dropout,
                batch_first=True,
                norm_first=True,
            )
        self.query_embs = nn.Parameter(torch.randn(1, num_clip_tokens, mapper.hidden_dim))  # (1, Q, H), std 1
        self.out = nn.Linear(mapper.hidden_dim, sd_text_dim)

    def forward(self, h_img: torch.Tensor, e_img: torch.Tensor) -> torch.Tensor:
        """(B, n, D) [IMG] hidden states and (n, D) [IMG] embeddings -> (B, Q, Dt)."""
        x = self.fc(h_img + e_img.unsqueeze(0))  # (B, n, H)
        queries = self.query_embs.expand(x.shape[0], -1, -1)  # (B, Q, H)
        return self.out(self.tfm(src=x, tgt=queries))  # (B, Q, Dt)


class LinearMapper(nn.Module):
    """Ablation "GILL + linear": one per-token Linear(D -> Dt) on ``h + e``, zero-padded to Q tokens."""

    def __init__(self, lm_hidden: int, sd_text_dim: int, num_clip_tokens: int) -> None:
        super().__init__()
        self.num_clip_tokens = num_clip_tokens
        self.out = nn.Linear(lm_hidden, sd_text_dim)

    def forward(self, h_img: torch.Tensor, e_img: torch.Tensor) -> torch.Tensor:
        """(B, n, D), (n, D) -> (B, Q, Dt) (the first n tokens carry the output)."""
        return _pad_tokens(self.out(h_img + e_img.unsqueeze(0)), self.num_clip_tokens)


class MLP3Mapper(nn.Module):
    """Ablation "GILL + 3-layer MLP": per-token D -> H -> H -> Dt with GELU, zero-padded to Q tokens."""

    def __init__(self, lm_hidden: int, sd_text_dim: int, num_clip_tokens: int, hidden_dim: int) -> None:
        super().__init__()
        self.num_clip_tokens = num_clip_tokens
        self.net = nn.Sequential(
            nn.Linear(lm_hidden, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, sd_text_dim),
        )

    def forward(self, h_img: torch.Tensor, e_img: torch.Tensor) -> torch.Tensor:
        """(B, n, D), (n, D) -> (B, Q, Dt)."""
        return _pad_tokens(self.net(h_img + e_img.unsqueeze(0)), self.num_clip_tokens)


class TransformerEncoderMapper(nn.Module):
    """Ablation "GILL + transformer encoder": one encoder over ``[n projected tokens ; Q queries]``, query outputs."""

    def __init__(self, lm_hidden: int, sd_text_dim: int, num_clip_tokens: int, mapper: MapperConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(lm_hidden, mapper.hidden_dim)
        layer = nn.TransformerEncoderLayer(
            d_model=mapper.hidden_dim,
            nhead=mapper.num_heads,
            dim_feedforward=mapper.ffn_dim,
            dropout=mapper.dropout,
            batch_first=True,
            norm_first=True,
        )
        final_norm = nn.LayerNorm(mapper.hidden_dim)  # pre-LN stacks need a last norm (as nn.Transformer adds)
        self.encoder = nn.TransformerEncoder(
            layer, mapper.num_encoder_layers, norm=final_norm, enable_nested_tensor=False
        )
        self.query_embs = nn.Parameter(torch.randn(1, num_clip_tokens, mapper.hidden_dim))  # (1, Q, H)
        self.out = nn.Linear(mapper.hidden_dim, sd_text_dim)

    def forward(self, h_img: torch.Tensor, e_img: torch.Tensor) -> torch.Tensor:
        """(B, n, D), (n, D) -> (B, Q, Dt)."""
        x = self.fc(h_img + e_img.unsqueeze(0))  # (B, n, H)
        queries = self.query_embs.expand(x.shape[0], -1, -1)  # (B, Q, H)
        y = self.encoder(torch.cat([x, queries], dim=1))  # (B, n + Q, H)
        return self.out(y[:, x.shape[1] :])  # (B, Q, Dt)


def build_mapper(config: AdapterConfig, dims: DerivedDims) -> nn.Module:
    """The mapper named by ``config.mapper.kind``, sized from ``dims`` (paper section 3.2 / mapper ablation)."""
    mapper, q = config.mapper, config.num_clip_tokens
    if mapper.kind in ("linear", "mlp3") and config.num_img_tokens > q:
        raise ConfigError(
            f"mapper kind {mapper.kind!r} outputs one token per [IMG] token",
            [f"adapters.num_img_tokens ({config.num_img_tokens}) must be <= adapters.num_clip_tokens ({q})"],
        )
    if mapper.kind == "gill_mapper":
        return GILLMapper(dims.lm_hidden, dims.sd_text_dim, q, mapper)
    if mapper.kind == "linear":
        return LinearMapper(dims.lm_hidden, dims.sd_text_dim, q)
    if mapper.kind == "mlp3":
        return MLP3Mapper(dims.lm_hidden, dims.sd_text_dim, q, mapper.hidden_dim)
    if mapper.kind == "transformer_encoder":
        return TransformerEncoderMapper(dims.lm_hidden, dims.sd_text_dim, q, mapper)
    raise ConfigError(
        f"unknown mapper kind {mapper.kind!r}", ["allowed: gill_mapper, linear, mlp3, transformer_encoder"]
    )


# -- all adapters ---------------------------------------------------------------------------------------------


class GILLAdapters(nn.Module):
    """Every trainable GILL parameter: ``input_proj``, ``img_embeddings``, ``retrieval``, ``mapper``."""

    def __init__(self, config: AdapterConfig, dims: DerivedDims, init_std: float = DEFAULT_INIT_STD) -> None:
        super().__init__()
        self.config = config
        self.input_proj = InputProjection(dims.vision_hidden, dims.lm_hidden, config.n_visual_tokens)
        self.img_embeddings = ImgTokenEmbeddings(config.num_img_tokens, dims.lm_hidden, init_std)
        self.retrieval = RetrievalHeads(dims.lm_hidden, dims.vision_hidden, config.ret_emb_dim, config.logit_scale_init)
        self.mapper = build_mapper(config, dims)


def build_adapters(config: GILLConfig, dims: DerivedDims, init_std: float = DEFAULT_INIT_STD) -> GILLAdapters:
    """The adapters of ``config`` for backbones of widths ``dims`` (randomly initialised)."""
    return GILLAdapters(config.adapters, dims, init_std)


# -- decision head --------------------------------------------------------------------------------------------


class DecisionHead(nn.Module):
    """Retrieve-or-generate classifier on h[IMG0] (paper section 3.3; official §4.4, 5).

    Dropout(0.5) then Linear(D -> 2); row :attr:`GEN` = 0 is "generate", row :attr:`RET` = 1 is "retrieve". With
    ``with_retrieval_score`` the input is ``[h[IMG0] ; max retrieval score]`` (D + 1), the paper-era variant.
    """

    GEN = 0
    RET = 1

    def __init__(self, lm_hidden: int, with_retrieval_score: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        self.with_retrieval_score = with_retrieval_score
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(lm_hidden + int(with_retrieval_score), 2)

    def forward(self, h_img0: torch.Tensor, retrieval_score: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) and, for the paper-era head, (B,) max retrieval scores -> (B, 2) logits [gen, ret]."""
        if self.with_retrieval_score:
            if retrieval_score is None:
                raise ValueError("this decision head was trained with the retrieval-score feature; pass it")
            h_img0 = torch.cat([h_img0, retrieval_score.reshape(-1, 1).to(h_img0.dtype)], dim=-1)  # (B, D + 1)
        elif retrieval_score is not None:
            raise ValueError("this decision head takes no retrieval score (it has no weight for it)")
        return self.linear(self.dropout(h_img0))
