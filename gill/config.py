"""Typed configuration tree for GILL (Koh et al. 2023, section 3 and appendix A).

One frozen dataclass per concern:

* :class:`ModelRef`: one backbone, as a Hub id, a tiny zoo id (``gill-tiny/opt``) or a local directory, plus a
  revision.
* :class:`BackbonesConfig`: the frozen models (causal LM, CLIP vision encoder, Stable Diffusion pipeline,
  CLIP model for metrics).
* :class:`MapperConfig` and :class:`AdapterConfig`: the sizes of the trainable pieces (paper section 3.2).
* :class:`GILLConfig`: the root, with JSON round-trip (:meth:`GILLConfig.to_json` / :meth:`GILLConfig.from_json`).

Backbone widths (4096 for OPT-6.7B, 1024 for CLIP ViT-L/14, 768 for SD-1.5's text encoder) are never written
here: they are read from the backbones' own ``config.json`` files into :class:`DerivedDims` by
:func:`gill.factory.derive_dims`.

Every dataclass validates itself in ``__post_init__`` and reports *all* problems at once in a
:class:`ConfigError` whose lines name the field path (``adapters.mapper.num_heads: ...``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from gill.errors import ConfigError
from gill.utils.io import atomic_write_json

MapperKind = Literal["gill_mapper", "linear", "mlp3", "transformer_encoder"]
"""GILLMapper (paper section 3.2) and the ablation variants of the paper's mapper table."""

GenLossKind = Literal["l2", "mse"]
"""``l2``: the official per-token (non-squared) Euclidean distance; ``mse``: mean squared error."""

T = TypeVar("T")


def _positive(problems: list[str], name: str, value: int | float) -> None:
    if value <= 0:
        problems.append(f"{name}: must be > 0, got {value!r}")


class _Validated:
    """Mixin: run ``_problems()`` after construction and raise one :class:`ConfigError` listing all of them."""

    def __post_init__(self) -> None:
        problems = self._problems()  # type: ignore[attr-defined]
        if problems:
            raise ConfigError(f"invalid {type(self).__name__}", problems)


@dataclass(frozen=True, kw_only=True)
class ModelRef(_Validated):
    """A pretrained model, loaded with ``from_pretrained(id, revision=revision)``."""

    id: str
    """Hugging Face Hub repo id (``facebook/opt-6.7b``), a tiny zoo id (``gill-tiny/opt``, ``gill-tiny/clip``,
    ``gill-tiny/sd``: the zoo in this machine's cache, see :func:`gill.hub.resolve_model_id`) or a local directory
    saved with ``save_pretrained``."""
    revision: str = "main"
    """Hub branch, tag or commit sha. Ignored when ``id`` is a local directory."""

    def _problems(self) -> list[str]:
        problems = []
        if not self.id.strip():
            problems.append("id: must name a Hub repo id or a local directory, got an empty string")
        if not self.revision.strip():
            problems.append("revision: must be a branch, tag or commit sha, got an empty string")
        return problems

    @property
    def is_local_path(self) -> bool:
        """True when ``id`` names a filesystem path rather than a Hub repo id."""
        return looks_like_path(self.id)


def looks_like_path(model_id: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything absolute, relative-dotted or deeper is a path."""
    if os.path.isdir(model_id):
        return True
    return (
        model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1 or os.sep != "/" and os.sep in model_id
    )


@dataclass(frozen=True, kw_only=True)
class BackbonesConfig(_Validated):
    """The frozen models GILL is built on (paper section 3: OPT-6.7B, CLIP ViT-L/14, Stable Diffusion v1.5)."""

    lm: ModelRef
    """Causal language model (any ``AutoModelForCausalLM``) and its tokenizer."""
    vision: ModelRef
    """CLIP model whose vision tower gives the image features (``pooler_output``, before the projection)."""
    sd: ModelRef
    """Stable Diffusion pipeline (``StableDiffusionPipeline`` layout: unet, vae, text_encoder, tokenizer, scheduler)."""
    clip_metric: ModelRef
    """Full CLIP model (image and text towers) used for CLIP-similarity metrics."""

    def _problems(self) -> list[str]:
        return []

    def roles(self) -> dict[str, ModelRef]:
        """Backbones by role name, in a fixed order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def check_roles(self, roles: typing.Iterable[str]) -> None:
        """Raise one :class:`ConfigError` naming every role that is not a backbone role."""
        allowed = sorted(self.roles())
        unknown = sorted(set(roles) - set(allowed))
        if unknown:
            raise ConfigError("unknown backbone role", [f"{r}: allowed roles are {allowed}" for r in unknown])


@dataclass(frozen=True, kw_only=True)
class MapperConfig(_Validated):
    """GILLMapper: [IMG] hidden states -> SD text-encoder space (paper section 3.2, docs/official-gill.md §1.5)."""

    kind: MapperKind = "gill_mapper"
    """``gill_mapper`` (encoder-decoder transformer with learned queries) or an ablation variant."""
    hidden_dim: int = 512
    """Width inside the mapper (fixed at 512 in the official code)."""
    num_heads: int = 4
    """Attention heads in the mapper's transformer."""
    num_encoder_layers: int = 4
    """Encoder layers of the mapper's ``nn.Transformer``."""
    num_decoder_layers: int = 4
    """Decoder layers of the mapper's ``nn.Transformer``."""
    ffn_dim: int = 2048
    """Feed-forward width of each transformer layer."""
    dropout: float = 0.0
    """Dropout inside the transformer (0.0 in the paper)."""

    def _problems(self) -> list[str]:
        problems: list[str] = []
        for name in ("hidden_dim", "num_heads", "ffn_dim"):
            _positive(problems, name, getattr(self, name))
        for name in ("num_encoder_layers", "num_decoder_layers"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.num_heads > 0 and self.hidden_dim % self.num_heads:
            problems.append(f"hidden_dim: must be divisible by num_heads ({self.num_heads}), got {self.hidden_dim}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout!r}")
        return problems


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(_Validated):
    """Sizes of GILL's trainable adapters (paper section 3.1-3.2; official ``model_args.json``)."""

    num_img_tokens: int = 8
    """Number of learned ``[IMG]`` tokens appended after a caption (r = 8 in the paper)."""
    n_visual_tokens: int = 4
    """Soft tokens the input projection makes from one image (k = 4 in the paper)."""
    ret_emb_dim: int = 256
    """Width of the shared retrieval space (text side from h[IMG0], image side from CLIP features)."""
    num_clip_tokens: int = 77
    """Output tokens of the mapper; must not exceed the SD text encoder's token count."""
    text_emb_layers: tuple[int, ...] = (-1,)
    """LM hidden-state layers whose [IMG] states feed the heads (-1: after the final layer norm)."""
    mapper: MapperConfig = field(default_factory=MapperConfig)
    """The generation mapper."""
    logit_scale_init: float = math.log(1 / 0.07)
    """Initial contrastive temperature as a log scale (CLIP's ln(1/0.07)). Never clamped at inference: an imported
    value is used exactly (the clamp is a training option, ``train.logit_scale_clamp``)."""
    rescale_img_embeddings: bool = True
    """After each step, rescale each [IMG] embedding to the mean norm of the frozen vocabulary (official §2.6)."""

    def _problems(self) -> list[str]:
        problems: list[str] = []
        for name in ("num_img_tokens", "n_visual_tokens", "ret_emb_dim", "num_clip_tokens"):
            _positive(problems, name, getattr(self, name))
        if not self.text_emb_layers:
            problems.append("text_emb_layers: must list at least one layer index, got ()")
        return problems


@dataclass(frozen=True, kw_only=True)
class Objective:
    """The training objective's options after :attr:`TrainConfig.paper_exact` filled the unset ones."""

    lp_second_segment: bool
    separate_mode_passes: bool
    contrastive_official_world: int
    img_init: Literal["fresh", "lm_rows"]
    logit_scale_clamp: bool


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Validated):
    """Adapter training (paper section 3.4, appendix; official §2.3-2.5). Defaults are the paper run's."""

    steps: int = 20000
    """Optimizer steps (10 "epochs" x 2,000 in the official run)."""
    batch_size: int = 200
    """Global batch per optimizer step (summed over processes and accumulation micro-steps)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW weight decay, applied to adapter parameters only."""
    warmup_steps: int = 2000
    """Linear warm-up from 0."""
    decay_every: int = 10000
    """After warm-up, multiply the rate by ``decay_gamma`` every this many steps."""
    decay_gamma: float = 0.1
    """Step-decay factor."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """bf16 autocast with fp32 master weights (fixes the official pure-bf16 training), or plain fp32."""
    concat_prob: float = 0.5
    """Probability of the concat-captions augmentation per task and step."""
    cap_loss_scale: float = 1.0
    """Weight of the captioning loss."""
    ret_loss_scale: float = 1.0
    """Weight of the contrastive retrieval loss."""
    gen_loss_scale: float = 1.0
    """Weight of the generation (mapper) loss."""
    gen_loss: GenLossKind = "l2"
    """Generation loss: the official per-token L2 (``l2``) or ``mse``."""
    seed: int = 0
    """Seed of weights init, data order and augmentation draws."""
    val_every: int = 2000
    """Validate every this many steps (and at the end)."""
    ckpt_every: int = 2000
    """Save a resumable checkpoint every this many steps (and at the end)."""
    keep_last: int = 2
    """Resumable checkpoints kept (older ones are deleted)."""
    log_every: int = 10
    """Write metrics every this many steps."""
    val_bleu: bool = True
    """Greedy-caption the validation images and report corpus BLEU-1..4 against their captions (official §2.7)."""
    # -- the objective: our fixes by default, the official objective with ``paper_exact`` (docs/official-differences.md)
    paper_exact: bool = False
    """Compute the official objective: every option below left unset takes its official value (see
    :meth:`objective`); setting one of them to a non-official value while this is on is an error."""
    lp_second_segment: bool | None = None
    """With concat-captions, give the second caption and its [IMG0] the l_p loss (default True; official: False)."""
    separate_mode_passes: bool | None = None
    """Run retrieval and generation as two LM passes, each with its own concat draw and l_p weighted 0.5, as the
    official code does (default False: one shared pass, the same objective in expectation at one LM pass less)."""
    contrastive_official_world: int | None = None
    """Give the adapters 1/W of the contrastive gradient, as the official W-process DDP run did (W = 2 for the
    paper's run); default 1: the exact gradient. ``logit_scale`` always gets its exact gradient."""
    img_init: Literal["fresh", "lm_rows"] | None = None
    """[IMG] rows at the start: ``fresh`` (all drawn anew, default) or ``lm_rows`` (copied from the LM's unused
    embedding rows at the [IMG] ids where those rows exist, fresh otherwise; official)."""
    logit_scale_clamp: bool | None = None
    """Clamp ``logit_scale`` to at most :attr:`logit_scale_max` after every step, as CLIP does (default True;
    official: never clamped)."""
    logit_scale_max: float = math.log(100.0)
    """The clamp's bound (ln 100)."""

    def objective(self) -> Objective:
        """The resolved objective options (unset ones from :attr:`paper_exact`)."""
        exact = self.paper_exact
        return Objective(
            lp_second_segment=not exact if self.lp_second_segment is None else self.lp_second_segment,
            separate_mode_passes=exact if self.separate_mode_passes is None else self.separate_mode_passes,
            contrastive_official_world=(2 if exact else 1)
            if self.contrastive_official_world is None
            else self.contrastive_official_world,
            img_init=("lm_rows" if exact else "fresh") if self.img_init is None else self.img_init,
            logit_scale_clamp=not exact if self.logit_scale_clamp is None else self.logit_scale_clamp,
        )

    def _paper_exact_problems(self) -> list[str]:
        if not self.paper_exact:
            return []
        official = {
            "lp_second_segment": False,
            "separate_mode_passes": True,
            "img_init": "lm_rows",
            "logit_scale_clamp": False,
            "gen_loss": "l2",
        }
        problems = [
            f"{name}: paper_exact computes the official objective, which needs {value!r}, got {getattr(self, name)!r}"
            " (leave it unset, or turn paper_exact off)"
            for name, value in official.items()
            if getattr(self, name) is not None and getattr(self, name) != value
        ]
        return problems

    def _problems(self) -> list[str]:
        problems: list[str] = self._paper_exact_problems()
        if self.contrastive_official_world is not None and self.contrastive_official_world < 1:
            problems.append(f"contrastive_official_world: must be >= 1, got {self.contrastive_official_world!r}")
        for name in ("steps", "batch_size", "grad_accum", "lr", "ckpt_every", "val_every", "keep_last", "log_every"):
            _positive(problems, name, getattr(self, name))
        for name in ("warmup_steps", "decay_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.grad_accum > 0 and self.batch_size % self.grad_accum:
            problems.append(f"batch_size: must be divisible by grad_accum ({self.grad_accum}), got {self.batch_size}")
        elif self.grad_accum > 0 and self.batch_size > 0 and (self.batch_size // self.grad_accum) % 2:
            problems.append(
                f"batch_size: each micro-batch (batch_size / grad_accum = {self.batch_size // self.grad_accum}) must "
                f"be even, since concat-captions pairs rows; got batch_size {self.batch_size}"
            )
        if not 0.0 <= self.concat_prob <= 1.0:
            problems.append(f"concat_prob: must be in [0, 1], got {self.concat_prob!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            problems.append(f"betas: must be two values in [0, 1), got {self.betas!r}")
        return problems


@dataclass(frozen=True, kw_only=True)
class GILLConfig(_Validated):
    """Root configuration: which backbones, which adapter sizes, how long a training caption may be."""

    backbones: BackbonesConfig
    """The frozen models."""
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    """The trainable adapters."""
    max_len: int = 32
    """Caption length in LM tokens including BOS and the [IMG] tokens (32 in the official code)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Adapter training settings."""
    preset: str = "custom"
    """Name of the preset this config came from (informational)."""

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.max_len <= self.adapters.num_img_tokens + 1:
            problems.append(
                f"max_len: must leave room for BOS, a caption and {self.adapters.num_img_tokens} [IMG] tokens "
                f"(> {self.adapters.num_img_tokens + 1}), got {self.max_len}"
            )
        return problems

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        """Pretty JSON text with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GILLConfig:
        """Build and validate a config from a dict, reporting every problem with its field path.

        Configs of earlier versions are read too: ``adapters.logit_scale_max`` (a clamp applied at inference as well)
        became the training option ``train.logit_scale_max``.
        """
        return from_dict(cls, _migrated(data))

    @classmethod
    def from_json(cls, text: str) -> GILLConfig:
        """Parse JSON text (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError("config is not valid JSON", [f"line {err.lineno} column {err.colno}: {err.msg}"]) from err
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GILLConfig:
        """Read a config written by :meth:`save` (or by hand)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist", ["pass the path of a JSON config"])
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except ConfigError as err:
            raise ConfigError(f"invalid config file {str(path)!r}", err.problems) from err

    def with_backbones(self, **refs: str | ModelRef | None) -> GILLConfig:
        """Copy with some backbones replaced (``lm="/models/opt"``); ``None`` values are ignored."""
        updates = {
            role: ref if isinstance(ref, ModelRef) else ModelRef(id=ref)
            for role, ref in refs.items()
            if ref is not None
        }
        self.backbones.check_roles(updates)
        return dataclasses.replace(self, backbones=dataclasses.replace(self.backbones, **updates))

    def with_backbones_relative_to(self, base: str | os.PathLike[str], within: str | os.PathLike[str]) -> GILLConfig:
        """Copy for writing into a file in folder ``base``: each backbone that is a local folder inside ``within``
        (e.g. a Stable Diffusion trained into the work folder) is named relative to ``base`` (``../../world_sd``),
        so the folder can be moved or copied as a whole. Other ids are kept; read back with
        :meth:`with_backbones_resolved_from`."""
        root, here = Path(within).resolve(), Path(base).resolve()
        updates = {}
        for role, ref in self.backbones.roles().items():
            if not ref.is_local_path or not Path(ref.id).expanduser().is_dir():
                continue
            folder = Path(ref.id).expanduser().resolve()
            if folder.is_relative_to(root):
                relative = Path(os.path.relpath(folder, here)).as_posix()
                updates[role] = ModelRef(
                    id=relative if relative.startswith("../") else f"./{relative}", revision=ref.revision
                )
        return self.with_backbones(**updates) if updates else self

    def with_backbones_resolved_from(self, base: str | os.PathLike[str]) -> GILLConfig:
        """Copy with each relative backbone path (``./x``, ``../x``, as :meth:`with_backbones_relative_to` writes
        them) resolved against folder ``base``, when that folder exists there (else left as it is, relative to
        the current directory as before)."""
        updates = {}
        for role, ref in self.backbones.roles().items():
            if ref.id.startswith(("./", "../")):
                folder = Path(os.path.normpath(Path(base).resolve() / ref.id))
                if folder.is_dir():
                    updates[role] = ModelRef(id=str(folder), revision=ref.revision)
        return self.with_backbones(**updates) if updates else self


def _migrated(data: Any) -> Any:
    """``data`` with the fields of earlier config versions moved to where they live now (a copy; never mutated)."""
    if not isinstance(data, dict) or not isinstance(data.get("adapters"), dict):
        return data
    if "logit_scale_max" not in data["adapters"]:
        return data
    adapters = {k: v for k, v in data["adapters"].items() if k != "logit_scale_max"}
    train = data.get("train", {})
    if isinstance(train, dict) and "logit_scale_max" not in train:
        train = {**train, "logit_scale_max": data["adapters"]["logit_scale_max"]}
    return {**data, "adapters": adapters, "train": train}


@dataclass(frozen=True, kw_only=True)
class DerivedDims:
    """Widths read from the backbones' own configs (never hard-coded; see :func:`gill.factory.derive_dims`)."""

    lm_hidden: int
    """Width of the LM's input embeddings and final hidden states (OPT: ``word_embed_proj_dim``)."""
    lm_vocab_size: int
    """Rows of the LM's embedding matrix before the [IMG] tokens are added."""
    lm_max_positions: int
    """Longest sequence the LM accepts."""
    lm_num_layers: int
    """Transformer layers of the LM (bounds ``text_emb_layers``)."""
    vision_hidden: int
    """CLIP vision ``pooler_output`` width (the GILL image feature, before CLIP's projection)."""
    vision_image_size: int
    """Input resolution of the vision tower."""
    sd_text_dim: int
    """SD text-encoder hidden width; equals the UNet's ``cross_attention_dim``."""
    sd_text_tokens: int
    """Tokens of the SD text encoder's output (77 for SD 1.x)."""
    clip_projection_dim: int
    """Projected embedding width of the metric CLIP model."""


def check_against_dims(config: GILLConfig, dims: DerivedDims) -> None:
    """Check settings that depend on the backbones' sizes; raise one :class:`ConfigError` listing all problems."""
    problems = []
    if config.adapters.num_clip_tokens > dims.sd_text_tokens:
        problems.append(
            f"adapters.num_clip_tokens: must be <= the SD text encoder's {dims.sd_text_tokens} tokens, "
            f"got {config.adapters.num_clip_tokens}"
        )
    for layer in config.adapters.text_emb_layers:
        if not -(dims.lm_num_layers + 1) <= layer <= dims.lm_num_layers:
            problems.append(
                f"adapters.text_emb_layers: layer {layer} is out of range for an LM with "
                f"{dims.lm_num_layers} layers (allowed {-(dims.lm_num_layers + 1)}..{dims.lm_num_layers})"
            )
    if config.max_len > dims.lm_max_positions:
        problems.append(f"max_len: must be <= the LM's {dims.lm_max_positions} positions, got {config.max_len}")
    if problems:
        raise ConfigError("config does not fit its backbones", problems)


# -- generic dict -> dataclass conversion with full problem reporting ---------------------------------

_MISSING = object()


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Convert nested dicts to the dataclass ``cls``; raise one :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    result = _convert_dataclass(cls, data, path, problems)
    if problems or result is _MISSING:
        raise ConfigError(f"invalid {cls.__name__}", problems)
    return typing.cast(T, result)


def _convert_dataclass(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    label = path or cls.__name__
    if not isinstance(data, dict):
        problems.append(f"{label}: expected an object, got {type(data).__name__} {data!r}")
        return _MISSING
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in sorted(set(data) - set(fields)):
        problems.append(f"{_join(path, key)}: unknown field; allowed fields are {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for name, fld in fields.items():
        if name in data:
            count = len(problems)
            value = _convert(hints[name], data[name], _join(path, name), problems)
            kwargs[name] = value if len(problems) == count else _MISSING
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            problems.append(f"{_join(path, name)}: required field is missing")
    if len(problems) > before:
        problems.extend(_join(path, p) for p in _partial_problems(cls, kwargs))
        return _MISSING
    try:
        return cls(**kwargs)
    except ConfigError as err:
        problems.extend(_join(path, p) for p in err.problems)
        return _MISSING


def _partial_problems(cls: type, converted: dict[str, Any]) -> list[str]:
    """Value checks of ``cls`` over the fields that converted, so one bad field does not hide the others.

    Fields that failed are left unset; a check that needs one of them is skipped (AttributeError).
    """
    partial = object.__new__(cls)
    for fld in dataclasses.fields(cls):
        if fld.name in converted and converted[fld.name] is not _MISSING:
            object.__setattr__(partial, fld.name, converted[fld.name])
    try:
        return partial._problems()  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return []


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(typing.cast(type, tp), value, path, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{path}: must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _convert(inner[0], value, path, problems)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            problems.append(f"{path}: expected a list, got {type(value).__name__} {value!r}")
            return value
        return tuple(_convert(get_args(tp)[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value))
    return _convert_scalar(tp, value, path, problems)


def _convert_scalar(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        problems.append(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return float(value) if tp is float else value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
