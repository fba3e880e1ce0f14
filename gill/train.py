"""Adapter training over precomputed targets (paper section 3.4; docs/official-gill.md §2.3-2.7, with its
defects fixed).

One optimizer step = ``grad_accum`` micro-batches; each micro-batch runs two LM passes:

* **captioning** (``l_c``): ``[k visual tokens][BOS caption [IMG]s pad]`` -> caption CE;
* **text** (``l_p``, retrieval, generation): ``[BOS caption [IMG0..n-1] pad]`` -> CE on the caption and
  [IMG0]; h[IMG0] -> contrastive loss against the image features; h[IMG] -> GILLMapper -> generation loss.

The official code runs retrieval and generation as two passes, each computing ``l_p`` with weight 0.5; one
pass with weight 1 is the same objective at half the cost. Concat-captions (p = 0.5, drawn per pass from a
seeded generator) merges pairs of examples; unlike the official, the second segment keeps its ``l_p`` loss.
``train.paper_exact`` computes the official objective instead: two passes, no second-segment ``l_p``, the
official two-process contrastive weighting, [IMG] rows from the LM's unused rows and no ``logit_scale`` clamp
(:meth:`gill.config.TrainConfig.objective`; docs/official-differences.md).

Fixes against the official loop: fp32 master weights with optional bf16 autocast (not pure bf16); AdamW on
the adapters only; a schedule that is a pure function of the step; no input prefix in validation (the same
formatting as training); checkpoints carry optimizer, scheduler, RNG and data position, so **a resumed run
reproduces the uninterrupted run's losses**. Under ``torchrun`` the global batch is split across ranks, the
contrastive negatives span the global batch, and every loss is normalised so that gradients equal a
single-process step on the same global batch.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gill import losses as L
from gill.captioning import corpus_bleu, greedy_captions
from gill.checkpoint import save_pretrained
from gill.config import GILLConfig
from gill.data.reader import TrainingBatch, TrainingData
from gill.data.shards import SplitFolders
from gill.errors import InputError
from gill.factory import derive_dims, load_backbones
from gill.model import GILLModel
from gill.optim import build_optimizer, build_scheduler
from gill.resume import CheckpointManager, RunLock, capture_rng, restore_rng
from gill.tokenization import ImgTokens, add_img_tokens
from gill.utils.io import atomic_write_json
from gill.validation import retrieval_recall

logger = logging.getLogger(__name__)

TENSOR_FIELDS = ("input_ids", "attention_mask", "caption_len", "vision_features", "sd_targets")
"""The tensor fields of :class:`~gill.data.reader.TrainingBatch` (moved to the device together)."""

MetricsSink = Callable[[int, dict[str, float]], None]
"""Receives ``(step, {name: value})``; the CLI and flow store them in DuckDB ``train_metrics``."""


@dataclass(frozen=True, kw_only=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistInfo:
        """Read the initialised process group (or a single process)."""
        if dist.is_available() and dist.is_initialized():
            return cls(rank=dist.get_rank(), world_size=dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and exports."""
        return self.rank == 0


@dataclass(kw_only=True)
class Position:
    """Where training is: optimizer steps done, and the data position inside the current epoch."""

    step: int = 0
    epoch: int = 0
    start: int = 0
    """Examples of this epoch already consumed (global, across ranks)."""


@dataclass(kw_only=True)
class TrainResult:
    """What a training run produced."""

    run_id: str
    run_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    """One dict per logged step (``step`` plus metric names)."""
    validations: list[dict[str, float]] = field(default_factory=list)
    best_t2i_r1: float = -1.0


def slice_batch(batch: TrainingBatch, start: int, end: int) -> TrainingBatch:
    """Rows ``start:end`` of every field of a batch."""
    return TrainingBatch(
        keys=batch.keys[start:end],
        captions=batch.captions[start:end],
        input_ids=batch.input_ids[start:end],
        attention_mask=batch.attention_mask[start:end],
        caption_len=batch.caption_len[start:end],
        vision_features=batch.vision_features[start:end],
        sd_targets=batch.sd_targets[start:end],
    )


def _all_reduce_sum(value: torch.Tensor, world: DistInfo) -> torch.Tensor:
    if world.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def global_lm_loss(logits: torch.Tensor, labels: torch.Tensor, world: DistInfo) -> tuple[torch.Tensor, float]:
    """CE normalised by the *global* token count, so averaging gradients over ranks gives the global mean.

    Returns the per-rank loss to back-propagate and the global mean value to report.
    """
    count = (labels[:, 1:] != L.IGNORE_INDEX).sum().float()  # tokens with a target, after the shift
    local_sum = L.lm_loss(logits, labels) * count
    global_count = _all_reduce_sum(count.detach(), world).clamp(min=1)
    report = float(_all_reduce_sum(local_sum.detach(), world) / global_count)
    return local_sum / global_count * world.world_size, report


class Trainer:
    """Runs :meth:`train`; :meth:`train_step` and :meth:`validate` are the units (style: small, named steps)."""

    def __init__(
        self,
        config: GILLConfig,
        model: GILLModel,
        img_tokens: ImgTokens,
        bos_token_id: int,
        train_data: TrainingData,
        val_data: TrainingData | None,
        run_dir: Path,
        *,
        device: str = "cpu",
        metrics_sink: MetricsSink | None = None,
        world: DistInfo | None = None,
        lock: RunLock | None = None,
        portable_root: Path | None = None,
    ) -> None:
        self.config, self.cfg = config, config.train
        self.portable_root = portable_root  # backbone folders inside it are recorded relative to checkpoints
        self.lock = lock  # the run's lock (rank 0 of a setup_training run); released when train() ends
        self.model = model.to(device)
        self.img_tokens = img_tokens
        self.img_ids = list(img_tokens.ids)
        self.bos = bos_token_id
        self.train_data, self.val_data = train_data, val_data
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.sink = metrics_sink
        self.world = world or DistInfo.current()
        self._check_batch_split()
        self.optimizer = build_optimizer(
            model.trainable_parameters(), self.cfg.lr, self.cfg.betas, self.cfg.weight_decay
        )
        self.scheduler = build_scheduler(
            self.optimizer, self.cfg.warmup_steps, self.cfg.decay_every, self.cfg.decay_gamma
        )
        self.objective = self.cfg.objective()
        self.concat_rng = torch.Generator().manual_seed(self.cfg.seed)
        self.position = Position()
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=self.cfg.keep_last)
        self.result = TrainResult(run_id=self.run_dir.name, run_dir=self.run_dir, steps=self.cfg.steps)

    def _check_batch_split(self) -> None:
        micro = self.cfg.batch_size // self.cfg.grad_accum
        if micro % self.world.world_size or (micro // self.world.world_size) % 2:
            raise InputError(
                f"train.batch_size {self.cfg.batch_size} / grad_accum {self.cfg.grad_accum} = {micro} must split "
                f"into an even per-process batch over {self.world.world_size} process(es) (concat-captions pairs rows)",
                [],
                hint=f"use a batch size divisible by {2 * self.world.world_size * self.cfg.grad_accum}",
            )

    # -- the loop ------------------------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> TrainResult:
        """Train to ``train.steps``, validating, logging and checkpointing on schedule; then release the run lock."""
        try:
            return self._train(resume)
        finally:
            self.close()

    def close(self) -> None:
        """Release the run lock (another process may then train this run)."""
        if self.lock is not None:
            self.lock.release()

    def _train(self, resume: bool) -> TrainResult:
        if resume:
            self.load_latest()
        self.model.train()
        micro = self.cfg.batch_size // self.cfg.grad_accum
        while self.position.step < self.cfg.steps:
            for chunk in self._optimizer_steps(micro):
                start = time.perf_counter()
                values = self.train_step(chunk)
                values["samples_per_s"] = self.cfg.batch_size / max(time.perf_counter() - start, 1e-9)
                self._after_step(values)
                if self.position.step >= self.cfg.steps:
                    break
        if self.world.is_main:  # the last weights in the release format, for inference without validation data
            self.export(self.run_dir / "final", {"step": self.position.step})
        return self.result

    def _optimizer_steps(self, micro: int) -> Iterator[list[TrainingBatch]]:
        """Groups of ``grad_accum`` global micro-batches from the current data position, across epochs."""
        pos = self.position
        loader = self.train_data.loader(micro, seed=self.cfg.seed, epoch=pos.epoch, start=pos.start)
        chunk: list[TrainingBatch] = []
        for batch in loader:
            chunk.append(batch)
            if len(chunk) == self.cfg.grad_accum:
                pos.start += micro * len(chunk)
                yield chunk
                chunk = []
        pos.epoch, pos.start = pos.epoch + 1, 0

    def _after_step(self, values: dict[str, float]) -> None:
        step = self.position.step
        if step % self.cfg.log_every == 0 or step == self.cfg.steps:
            self._log(step, values)
        if step % self.cfg.val_every == 0 or step == self.cfg.steps:
            self._validate_and_keep_best(step)
        if step % self.cfg.ckpt_every == 0 or step == self.cfg.steps:
            self.save()

    def _log(self, step: int, values: dict[str, float]) -> None:
        self.result.history.append({"step": step, **values})
        if self.world.is_main and self.sink is not None:
            self.sink(step, values)
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    # -- one optimizer step -----------------------------------------------------------------------------------------

    def train_step(self, chunk: list[TrainingBatch]) -> dict[str, float]:
        """Forward/backward over ``grad_accum`` micro-batches, then clip, step, schedule and rescale [IMG] rows."""
        totals = self.accumulate_gradients(chunk)
        if self.cfg.grad_clip > 0:
            totals["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), self.cfg.grad_clip)
            )
        totals["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.rescale_img_embeddings_()
        if self.objective.logit_scale_clamp:
            self.model.adapters.retrieval.clamp_(self.cfg.logit_scale_max)
        self.position.step += 1
        return totals

    def accumulate_gradients(self, chunk: list[TrainingBatch]) -> dict[str, float]:
        """Forward and backward over the micro-batches of one optimizer step, gradients averaged over processes:
        afterwards every parameter's ``.grad`` is the global batch's (W processes equal one process)."""
        totals: dict[str, float] = {}
        for global_batch in chunk:
            local = self._local(global_batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                backward, report = self.losses(local)
            (backward / len(chunk)).backward()
            for name, value in report.items():
                totals[name] = totals.get(name, 0.0) + value / len(chunk)
        self._sync_gradients()
        return totals

    def _local(self, batch: TrainingBatch) -> TrainingBatch:
        """This rank's contiguous slice of a global micro-batch, moved to the device."""
        per_rank = len(batch.keys) // self.world.world_size
        return self._to_device(slice_batch(batch, self.world.rank * per_rank, (self.world.rank + 1) * per_rank))

    def _to_device(self, batch: TrainingBatch) -> TrainingBatch:
        return replace(batch, **{name: getattr(batch, name).to(self.device) for name in TENSOR_FIELDS})

    def _contrastive_factor(self) -> float:
        """Factor on the contrastive loss before backward: W / O for W processes and the emulated official O.

        Each process computes the contrastive loss over the global batch but back-propagates only into its own
        slice, so averaging gradients over processes gives the adapters 1/W of the global gradient; the factor W
        restores it (and 1/O reproduces the official O-process run, :attr:`TrainConfig.contrastive_official_world`).
        """
        return self.world.world_size / self.objective.contrastive_official_world

    def _sync_gradients(self) -> None:
        """Average adapter gradients over ranks (the LM is frozen, so only adapters need it); then undo the
        contrastive factor on ``logit_scale``, which every process differentiates over the whole global batch."""
        if self.world.world_size > 1:
            for param in self.model.trainable_parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= self.world.world_size
        logit_scale = self.model.adapters.retrieval.logit_scale
        if logit_scale.grad is not None and self._contrastive_factor() != 1:
            logit_scale.grad /= self._contrastive_factor()

    def losses(self, batch: TrainingBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """All four GILL losses for one (local) micro-batch: the tensor to back-propagate and reported values.

        With ``separate_mode_passes`` retrieval and generation each run their own LM pass and concat draw, and l_p is
        ``0.5 * (ret_loss_scale * l_p[ret] + gen_loss_scale * l_p[gen])`` (official §2.4); otherwise one pass serves
        both and l_p is weighted ``0.5 * (ret_loss_scale + gen_loss_scale)`` (the same objective in expectation).
        """
        cap, cap_report = self.captioning_loss(batch)
        scales = L.LossScales(
            cap_loss_scale=self.cfg.cap_loss_scale,
            ret_loss_scale=self.cfg.ret_loss_scale,
            gen_loss_scale=self.cfg.gen_loss_scale,
        )
        if self.objective.separate_mode_passes:
            ret_pass, gen_pass = self.text_pass(batch), self.text_pass(batch)
            lp, lp_report = self._mode_weighted_lp(ret_pass, gen_pass, scales)
            ret, gen = ret_pass["ret"], gen_pass["gen"]
        else:
            text = self.text_pass(batch)
            lp, lp_report, ret, gen = text["lp"], text["lp_report"], text["ret"], text["gen"]
        total = L.combine(cap, lp, ret.loss * self._contrastive_factor(), gen, scales).total
        report = {
            "loss_cap": cap_report,
            "loss_lp": lp_report,
            "loss_ret": float(ret.loss.detach()),
            "loss_gen": float(_all_reduce_sum(gen.detach(), self.world) / self.world.world_size),
            "t2i_acc1": float(ret.t2i_acc1),
            "i2t_acc1": float(ret.i2t_acc1),
        }
        weights = {
            "loss_cap": scales.cap_loss_scale,
            "loss_lp": scales.lp_weight,
            "loss_ret": scales.ret_loss_scale,
            "loss_gen": scales.gen_loss_scale,
        }
        report["loss"] = sum(weight * report[name] for name, weight in weights.items())
        return total, report

    @staticmethod
    def _mode_weighted_lp(
        ret_pass: dict[str, Any], gen_pass: dict[str, Any], scales: L.LossScales
    ) -> tuple[torch.Tensor | None, float]:
        """The official l_p of two passes as one term for :func:`~gill.losses.combine` (which weighs l_p by
        ``lp_weight`` = 0.5 * (ret + gen)): the scale-weighted mean of the two passes' l_p."""
        total = scales.ret_loss_scale + scales.gen_loss_scale
        if total == 0:
            return None, 0.0
        w_ret, w_gen = scales.ret_loss_scale / total, scales.gen_loss_scale / total
        lp = w_ret * ret_pass["lp"] + w_gen * gen_pass["lp"]
        return lp, w_ret * ret_pass["lp_report"] + w_gen * gen_pass["lp_report"]

    def captioning_loss(self, batch: TrainingBatch) -> tuple[torch.Tensor, float]:
        """``l_c``: caption CE given the image prefix (paper eq. 1), with optional concat-captions.

        Concatenated, a pair reads ``[v1 BOS c1][v2 c2]`` as in the official code: each segment ends at its first
        pad or [IMG] token (:func:`~gill.losses.captioning_concat_drop_mask`).
        """
        k = self.config.adapters.n_visual_tokens
        visual = self.model.encode_images(batch.vision_features)  # (B, k, D)
        embeds = torch.cat([visual, self.model.embed_tokens(batch.input_ids)], dim=1)  # (B, k+T, D)
        mask = torch.cat([torch.ones_like(batch.attention_mask[:, :1]).expand(-1, k), batch.attention_mask], dim=1)
        labels = L.captioning_labels(batch.input_ids, batch.attention_mask, self.img_ids, k)  # (B, k+T)
        if L.draw_concat(self.concat_rng, self.cfg.concat_prob):
            drop = L.captioning_concat_drop_mask(batch.input_ids, self.bos, self.img_ids, n_prefix=k)
            merged = L.concat_pairs(embeds, labels, mask, drop)
            embeds, labels, mask = merged.embeds, merged.labels, merged.attention_mask
        out = self.model.forward_lm(embeds, mask)
        return global_lm_loss(out.logits, labels, self.world)

    def text_pass(self, batch: TrainingBatch) -> dict[str, Any]:
        """``l_p`` (caption then [IMG0]), retrieval and generation losses from one LM pass over the text.

        Concatenated, a pair reads ``[BOS c1 IMG0..7 c2 IMG0..7]``; c2 and its [IMG0] get l_p unless
        ``lp_second_segment`` is off (official §8 item 5).
        """
        embeds = self.model.embed_tokens(batch.input_ids)  # (B, T, D)
        labels = L.lp_labels(batch.input_ids, batch.attention_mask, self.img_ids)  # (B, T)
        positions = L.img_positions(batch.input_ids, self.img_ids)  # (B, n)
        mask, rows = batch.attention_mask, torch.arange(len(batch.keys), device=embeds.device)
        if L.draw_concat(self.concat_rng, self.cfg.concat_prob):
            merged = L.concat_pairs(
                embeds,
                labels,
                mask,
                L.second_bos_mask(batch.input_ids, self.bos),
                positions,
                second_segment_loss=self.objective.lp_second_segment,
            )
            embeds, labels, mask, positions = merged.embeds, merged.labels, merged.attention_mask, merged.positions
            rows = rows // 2
        out = self.model.forward_lm(embeds, mask)
        lp, lp_report = global_lm_loss(out.logits, labels, self.world)
        hidden = out.hidden_states[0]  # (B', S, D) the first text_emb_layers entry
        h_img = hidden[rows.unsqueeze(1), positions]  # (B, n, D) in the original example order
        ret = L.contrastive_loss(
            self.model.text_retrieval_embeddings(h_img[:, 0]),
            self.model.image_retrieval_embeddings(batch.vision_features),
            self.model.adapters.retrieval.scale(),
        )
        gen = L.generation_loss(self.model.generation_embeddings(h_img), batch.sd_targets, kind=self.cfg.gen_loss)
        return {"lp": lp, "lp_report": lp_report, "ret": ret, "gen": gen}

    # -- validation -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, batch_size: int = 64) -> dict[str, float]:
        """Caption CE and accuracy, retrieval R@1/5 both ways over the whole val set, generation loss (no concat)."""
        self.model.eval()
        sums: dict[str, float] = {"val_loss_cap": 0.0, "val_acc1": 0.0, "val_loss_gen": 0.0}
        texts, images, batches = [], [], 0
        captions: list[str] = []
        references: list[str] = []
        for batch in self.val_data.loader(batch_size, seed=0, drop_last=False):
            batch = self._to_device(batch)
            if self.cfg.val_bleu:
                captions += greedy_captions(self.model, batch.vision_features, self.val_data.collate.tokenizer)
                references += [self._without_img_strings(c) for c in batch.captions]
            sums["val_loss_cap"] += self._val_caption(batch, sums)
            hidden = self.model.forward_lm(
                self.model.embed_tokens(batch.input_ids), batch.attention_mask
            ).hidden_states[0]
            h_img = hidden.gather(
                1, L.img_positions(batch.input_ids, self.img_ids).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            )
            texts.append(self.model.text_retrieval_embeddings(h_img[:, 0]).float().cpu())
            images.append(self.model.image_retrieval_embeddings(batch.vision_features).float().cpu())
            sums["val_loss_gen"] += float(
                L.generation_loss(self.model.generation_embeddings(h_img), batch.sd_targets, kind=self.cfg.gen_loss)
            )
            batches += 1
        self.model.train()
        recall = retrieval_recall(torch.cat(texts), torch.cat(images), ks=(1, 5))
        means = {k: v / max(batches, 1) for k, v in sums.items()}
        bleu = {f"val_{k}": v for k, v in corpus_bleu(captions, references).items()} if captions else {}
        # val_samples: the size of the retrieval pool, so R@k can be read against chance (k / val_samples).
        return {
            **means,
            **{f"val_{k}": v for k, v in recall.items()},
            **bleu,
            "val_samples": float(len(torch.cat(texts))),
        }

    def _without_img_strings(self, caption: str) -> str:
        """The reference caption with any [IMG] token strings removed (official §2.7)."""
        for token in self.img_tokens.strings:
            caption = caption.replace(token, "")
        return " ".join(caption.split())

    def _val_caption(self, batch: TrainingBatch, sums: dict[str, float]) -> float:
        k = self.config.adapters.n_visual_tokens
        embeds = torch.cat(
            [self.model.encode_images(batch.vision_features), self.model.embed_tokens(batch.input_ids)], 1
        )
        mask = torch.cat([torch.ones_like(batch.attention_mask[:, :1]).expand(-1, k), batch.attention_mask], dim=1)
        labels = L.captioning_labels(batch.input_ids, batch.attention_mask, self.img_ids, k)
        logits = self.model.forward_lm(embeds, mask).logits
        sums["val_acc1"] += float(L.token_accuracy(logits, labels, k=(1,))["top1"])
        return float(L.lm_loss(logits, labels))

    def _validate_and_keep_best(self, step: int) -> None:
        if self.val_data is None or not self.world.is_main:
            return
        values = self.validate()
        self.result.validations.append({"step": step, **values})
        if self.sink is not None:
            self.sink(step, values)
        if values["val_t2i_r1"] > self.result.best_t2i_r1:
            self.result.best_t2i_r1 = values["val_t2i_r1"]
            self.export(self.run_dir / "best", {"step": step, **values})
        logger.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    # -- state ------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that a resumed run needs to continue identically (tensors and plain
        containers only: it is loaded with ``weights_only=True``)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(),
            "concat_rng": self.concat_rng.get_state(),
            "position": vars(self.position).copy(),
            "best_t2i_r1": self.result.best_t2i_r1,
            "history": self.result.history,
            "validations": self.result.validations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        self.concat_rng.set_state(state["concat_rng"])
        self.position = Position(**state["position"])
        self.result.best_t2i_r1 = state["best_t2i_r1"]
        self.result.history, self.result.validations = list(state["history"]), list(state["validations"])

    def save(self) -> None:
        """A resumable checkpoint at the current step (rank 0)."""
        if self.world.is_main:
            self.checkpoints.save(self.position.step, self.model.adapters.state_dict(), self.state_dict())
        if self.world.world_size > 1:
            dist.barrier()

    def load_latest(self) -> bool:
        """Resume from the newest checkpoint of this run; False when there is none."""
        if self.checkpoints.latest_step() is None:
            return False
        ckpt = self.checkpoints.load()
        self.model.adapters.load_state_dict(ckpt.weights, strict=True)
        self.load_state_dict(ckpt.state)
        logger.info("resumed run %s at step %d", self.run_dir.name, ckpt.step)
        return True

    def export(self, out: Path, extra: dict[str, Any]) -> Path:
        """Write the adapters in the release format (:mod:`gill.checkpoint`); backbone folders inside
        ``portable_root`` are recorded relative to the checkpoint."""

        return save_pretrained(
            out, self.model.adapters, self.config, self.img_tokens, extra=extra, portable_root=self.portable_root
        )


def new_run_id() -> str:
    """A sortable, unique run id."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def init_distributed_from_env(device: str = "cpu") -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on GPUs."""

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return DistInfo.current()


def shared_run_id(run_id: str | None, world: DistInfo) -> str:
    """The run id every rank uses: the given one, or rank 0's new id broadcast to the others."""
    chosen = [run_id or new_run_id()]
    if world.world_size > 1 and run_id is None:
        dist.broadcast_object_list(chosen, src=0)
    return chosen[0]


def setup_training(
    config: GILLConfig,
    runs: str | Path,
    train: SplitFolders,
    val: SplitFolders | None = None,
    *,
    run_id: str | None = None,
    device: str = "cpu",
    metrics_sink: MetricsSink | None = None,
    portable_root: str | Path | None = None,
) -> Trainer:
    """Load the frozen LM and tokenizer, build GILL and the data readers, and make the run folder ``runs/<run_id>``.

    Args:
        config: the run's config (preset or file, with overrides).
        runs: the folder that holds training runs; the run's folder is ``runs/<run_id>``.
        train: the precomputed training split (:mod:`gill.data.precompute`).
        val: the validation split, or None (no validation).
        run_id: the run's id (a new one when None; rank 0's is shared by every rank).
        device: torch device.
        metrics_sink: receives each logged row of metrics.
        portable_root: backbone folders inside it (a Stable Diffusion trained into the work folder) are recorded
            relative to the run's files, so this folder can be moved as a whole.

    Rank 0 takes the run's :class:`~gill.resume.RunLock` (held until :meth:`Trainer.train` ends) before writing
    anything.

    Raises:
        InputError: another process trains this run (nothing is written), or the features are not usable.
    """

    root = Path(portable_root) if portable_root is not None else None
    world = init_distributed_from_env(device)
    if device.startswith("cuda") and world.world_size > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    run_dir = Path(runs) / shared_run_id(run_id, world)
    lock = RunLock(run_dir) if world.is_main else None
    if lock is not None and run_dir.is_dir():
        lock.acquire()  # refuse at once, before loading models, when another process trains this run
    try:
        model, tokenizer, img_tokens = _build_model(config, device)
        train_data = TrainingData(train, tokenizer, img_tokens, config.max_len)
        val_data = TrainingData(val, tokenizer, img_tokens, config.max_len) if val is not None else None
        if lock is not None:
            lock.acquire()  # creates the run folder
            recorded = config.with_backbones_relative_to(run_dir, root) if root is not None else config
            atomic_write_json(run_dir / "config.json", recorded.to_dict())
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Trainer(
        config,
        model,
        img_tokens,
        tokenizer.bos_token_id,
        train_data,
        val_data,
        run_dir,
        device=device,
        metrics_sink=metrics_sink,
        world=world,
        lock=lock,
        portable_root=root,
    )


def _build_model(config: GILLConfig, device: str) -> tuple[GILLModel, Any, ImgTokens]:
    """The frozen LM with GILL's adapters (seeded initialisation), its tokenizer and the [IMG] tokens."""

    dims = derive_dims(config)
    lm_dtype = torch.bfloat16 if config.train.precision == "bf16" and device.startswith("cuda") else None
    backbones = load_backbones(config, roles=("lm",), dtype=lm_dtype)
    img_tokens = add_img_tokens(backbones.tokenizer, config.adapters.num_img_tokens)
    torch.manual_seed(config.train.seed)  # adapter initialisation
    model = GILLModel(config, dims, backbones.lm, img_tokens.ids)
    if config.train.objective().img_init == "lm_rows":
        copied = model.init_img_from_lm_rows_()
        logger.info("[IMG] rows: %d of %d copied from the LM's unused rows", copied, len(img_tokens.ids))
    return model, backbones.tokenizer, img_tokens
