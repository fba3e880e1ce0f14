"""Stage ``bench``: the paper's benchmarks (VIST Table 1, VisDial Table 2, CC3M FID, the mapper ablation Table 3)
scored into the ``samples`` and ``results`` tables of the store; each resumes at its first unscored sample.

A benchmark is three pieces, run by :class:`BenchSession`: :class:`eval.bench.ImageProducer` makes each sample's
images (through the systems of :mod:`eval.bench_systems`) and saves them, :mod:`eval.bench_scoring` scores them
(pure functions of the images and the metric models), and :class:`flows.stages.bench_record.BenchRecorder` writes
the ``runs``, ``samples`` and ``results`` rows (the only piece that touches the store). Images go to
``W/bench/<run_id>/<benchmark>/<setting>/<system>/seed<seed>/``.

Every benchmark can be sharded over processes (:mod:`flows.stages.bench_shards`: torchrun ranks, ``--num-workers``
local workers or ``--shard-index``): each shard process scores its share of every setting into shard files, and
one writer merges them into the store and computes the retrieval recall, FID and ``results`` once, as a single
process does (:meth:`BenchSession.run_sharded`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from eval import bench_data as data
from eval.bench import (
    FID_SYSTEMS,
    GENERATION_SYSTEMS,
    RETRIEVAL_SYSTEMS,
    BenchItem,
    BenchOptions,
    BenchSummary,
    ImageProducer,
    ItemImages,
    SampleRequest,
    cc3m_item,
    digest,
    load_item_images,
    visdial_items,
    vist_items,
)
from eval.bench_scoring import fid_features, fid_fields, pick_oracle, result_rows, score_images
from eval.bench_systems import SYSTEMS, UNSUPPORTED_SYSTEMS, ClipBank, Produced, SystemRunner
from eval.metric_models import MetricModelSpec, resolve_metric_models
from eval.metrics import target_ranks
from flows.stages.bench_record import BenchRecorder, Counts
from flows.stages.bench_shards import Sharding, ShardRecorder, WorkerCall, merge_shard_files, run_workers
from flows.stages.index import existing_bank
from flows.workdir import Workdir
from gill.checkpoint import read_checkpoint_config, source_git_sha
from gill.errors import InputError
from gill.pipeline import GILLPipeline
from gill.retrieval import checkpoint_id

logger = logging.getLogger(__name__)


class BenchSession:
    """A checkpoint's pipeline, metric models, run id and output folder, shared by the benchmarks of one call.

    It runs each benchmark as producing images (:class:`ImageProducer`), scoring them (:mod:`eval.bench_scoring`)
    and recording rows (:class:`~flows.stages.bench_record.BenchRecorder`).
    """

    def __init__(
        self,
        workdir: Path,
        checkpoint: Path,
        pipe: Any,
        metrics: Any,
        options: BenchOptions,
        run_id: str,
        config: Any,
        sharding: Sharding = Sharding(),
    ) -> None:
        self.workdir = workdir
        self.checkpoint = checkpoint
        self.pipe = pipe
        self.metrics = metrics
        self.options = options
        self.run_id = run_id
        self.config = config
        self.sharding = sharding
        self.store = BenchRecorder(workdir, run_id)
        """The store's recorder (the writer's)."""
        self.recorder: BenchRecorder = (
            ShardRecorder(workdir, run_id, sharding.index) if sharding.is_sharded else self.store
        )
        """Where rows go now: this shard's files while a shard process scores its share, else the store."""
        self.merged: dict[str, Counts] = {}
        """Rows new to the store from merged shard files, per benchmark, not yet reported by :meth:`summary`."""
        self.database = self.store.database
        self.out_dir = workdir / "bench" / run_id
        self._clip_bank: ClipBank | None = None
        self.clip_override = False
        """Whether the metric CLIP was given by the user (then bank images are encoded, not their features)."""
        self.runner = SystemRunner(pipe, metrics.clip, options.image_options)
        self.producer = ImageProducer(self.runner, self.out_dir)

    @classmethod
    def open(
        cls,
        workdir: str | Path,
        *,
        checkpoint: str | Path | None = None,
        options: BenchOptions = BenchOptions(),
        metric_spec: Any = None,
        need_fid: bool = False,
        sharding: Sharding = Sharding(),
    ) -> BenchSession:
        """Resolve the checkpoint, check the metric models (failing before any heavy load), load the pipeline.

        The writer (an unsharded process, or rank 0 under torchrun) registers the run and merges shard files an
        earlier call left; under torchrun the other ranks wait for it, so every shard resumes from the same store.
        A shard process runs on its own GPU (:meth:`Sharding.device`).
        """

        workdir = Path(workdir)
        options = dataclasses.replace(options, device=sharding.device(options.device))
        work = Workdir.at(workdir)
        ckpt = work.checkpoint(checkpoint)
        config = read_checkpoint_config(ckpt)
        metrics = resolve_metric_models(
            config, metric_spec or MetricModelSpec(), device=options.device, need_fid=need_fid
        )
        chosen = options.systems or tuple(SYSTEMS)
        wants_bank = any(s in SYSTEMS and (SYSTEMS[s].needs_bank or s == "gill") for s in chosen)
        bank = existing_bank(work, ckpt) if wants_bank else None
        pipe = GILLPipeline.from_pretrained(ckpt, bank=bank, device=options.device)
        ckpt_id = checkpoint_id(ckpt)
        # FID is recomputed from the saved images at every call, so its feature model is not part of the identity
        scorers = {k: v for k, v in metrics.names.items() if k != "fid"}
        identity = {
            "checkpoint": ckpt_id,
            "images": dataclasses.asdict(options.image_options),
            "metric_models": scorers,
        }
        run_id = options.run_id or f"{ckpt_id[:10]}-{digest(identity)[:6]}"
        session = cls(workdir, ckpt, pipe, metrics, options, run_id, config, sharding)
        session.clip_override = bool(getattr(metric_spec, "clip", None))
        if sharding.merges:
            session._register(identity)
            session._merge()
        sharding.barrier()
        return session

    def _register(self, identity: dict[str, Any]) -> None:
        document = {"model": self.config.to_dict(), "bench": identity}  # no absolute paths: the folder can move
        self.store.register(
            checkpoint=self.checkpoint, preset=self.config.preset, git_sha=source_git_sha(), config=document
        )
        logger.info("benchmark run %s (checkpoint %s) -> %s", self.run_id, self.checkpoint, self.database)

    # -- sharding -----------------------------------------------------------------------------------------------

    @property
    def shard_phase(self) -> bool:
        """Whether this process is scoring its share into shard files (then it neither ranks retrieval pools nor
        writes results: the writer does, after the merge)."""
        return self.recorder is not self.store

    def run_sharded(self, benchmark: str, work: Callable[[], list[BenchSummary]]) -> list[BenchSummary]:
        """Run one benchmark call, ``work``, over the processes of :attr:`sharding`.

        Unsharded, ``work`` runs once. Sharded, it runs on this process's share into shard files (its
        :attr:`shard_phase`); then under torchrun the ranks wait for each other and rank 0 merges every shard's
        files and runs ``work`` again on the store: every sample is scored by then, so it only ranks the retrieval
        pools and computes FID and ``results``, as a single process would (and scores anything a shard missed).
        A ``--num-workers`` worker or a ``--shard-index`` process returns after its share.
        """
        if not self.sharding.is_sharded:
            return work()
        mine = work()
        self.sharding.barrier()
        if not self.sharding.merges:
            return mine
        with self._writing():
            self._merge([benchmark])
            return work()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Rows go to the store while inside (the writer's part of a sharded call)."""
        shard_recorder, self.recorder = self.recorder, self.store
        try:
            yield
        finally:
            self.recorder = shard_recorder

    def _merge(self, benchmarks: Sequence[str] | None = None) -> None:
        """Merge the run's shard files (of ``benchmarks``, default all) into the store."""
        for benchmark, counts in merge_shard_files(self.workdir, self.database, self.run_id, benchmarks).items():
            self.merged.setdefault(benchmark, Counts()).add(counts)

    def shard_summary(self, benchmark: str, counts: Counts, unsupported: dict[str, str]) -> BenchSummary:
        """What a shard process did (no ``results``: the writer computes them)."""
        return BenchSummary(
            run_id=self.run_id,
            benchmark=benchmark,
            database=self.database,
            out_dir=self.out_dir,
            scored=counts.scored,
            skipped=counts.skipped,
            resumed=counts.resumed,
            unsupported=unsupported,
        )

    # -- systems ------------------------------------------------------------------------------------------------

    def resolve_systems(self, benchmark: str, defaults: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The systems to run and the unsupported ones with reasons (recorded in ``unsupported_systems``)."""
        requested = list(self.options.systems) if self.options.systems else list(defaults)
        unsupported = {s: UNSUPPORTED_SYSTEMS[s] for s in requested if s in UNSUPPORTED_SYSTEMS}
        if self.options.systems is None:
            unsupported.update({s: UNSUPPORTED_SYSTEMS[s] for s in UNSUPPORTED_SYSTEMS})
        systems = [s for s in requested if s in SYSTEMS]
        if self.pipe.bank is None:
            needing = [s for s in systems if SYSTEMS[s].needs_bank]
            if needing and self.options.systems is not None:
                raise InputError(
                    f"systems {', '.join(needing)} retrieve from a bank, but checkpoint {self.checkpoint} has none",
                    [f"no bank under {Workdir.at(self.workdir).banks}"],
                    hint="build it with `gill index build --workdir W`, or leave those systems out of --systems",
                )
            reason = "no retrieval bank for this checkpoint (gill index build --workdir W)"
            unsupported.update({s: reason for s in needing})
            systems = [s for s in systems if s not in needing]
        if unsupported:
            self.recorder.record_unsupported(benchmark, unsupported)
            for system, reason in unsupported.items():
                logger.warning("%s: system %s not run: %s", benchmark, system, reason)
        return systems, unsupported

    @property
    def clip_bank(self) -> ClipBank | None:
        """CLIP embeddings of the bank (built on first use), for the ``clip-retrieval`` system."""
        if self._clip_bank is None and self.pipe.bank is not None:
            same = self.config.backbones.clip_metric == self.config.backbones.vision and not self.clip_override
            self._clip_bank = ClipBank.build(
                self.pipe,
                self.metrics.clip,
                self.workdir / "bench" / "clip-bank",
                from_features=same,
                progress=self.options.progress,
            )
        return self._clip_bank

    # -- generation benchmarks ----------------------------------------------------------------------------------

    def run_generation(
        self, benchmark: str, setting: str, items: Sequence[BenchItem], systems: Sequence[str]
    ) -> Counts:
        """Score ``systems`` on every item of one setting for every seed, skipping rows already scored."""

        counts = Counts()
        if "clip-retrieval" in systems:
            self.runner.clip_bank = self.clip_bank
        done = self.recorder.scored_keys(benchmark, setting)
        for seed_index, seed in enumerate(self.options.seeds):
            active = [s for s in systems if SYSTEMS[s].uses_seed or seed_index == 0]
            todo = []
            for item in items:
                need = [s for s in active if (s, seed, item.sample_id) not in done]
                counts.resumed += len(active) - len(need)
                if need:
                    todo.append((item, need))
            counts.add(self._generate_rows(benchmark, setting, seed, todo, len(active)))
        return counts

    def _generate_rows(
        self, benchmark: str, setting: str, seed: int, todo: list[tuple[BenchItem, list[str]]], n_active: int
    ) -> Counts:
        """Produce ``todo`` in batches of ``gen_batch_size`` samples and write their rows every ``write_every``
        samples: a crash loses at most the batch in progress and the rows not yet written."""
        counts, rows = Counts(), []
        size = self.options.gen_batch_size
        desc = f"{benchmark} {setting} seed {seed}"
        with tqdm(total=len(todo), desc=desc, unit="sample", disable=not self.options.progress) as bar:
            for first in range(0, len(todo), size):
                batch = todo[first : first + size]
                requests = [SampleRequest(item=item, systems=tuple(need)) for item, need in batch]
                produced = self.producer.produce_batch(requests, seed)
                for (item, need), images in zip(batch, produced, strict=True):
                    rows += self._sample_rows(benchmark, setting, seed, item, need, images)
                    if len(rows) >= self.options.write_every * n_active:
                        counts.add(self.recorder.write_samples(rows))
                        rows = []
                bar.update(len(batch))
        counts.add(self.recorder.write_samples(rows))
        return counts

    def _sample_rows(
        self, benchmark: str, setting: str, seed: int, item: BenchItem, need: list[str], images: ItemImages
    ) -> list[dict[str, Any]]:
        """Score and save the images ``need`` produced for one item: its ``samples`` rows."""
        base = _base_row(self.run_id, benchmark, setting, seed, item)
        if images.unreadable is not None:
            return [{**base, "system": s, "status": "skipped", "skip_reason": images.unreadable} for s in need]
        produced = images.produced
        scores = score_images(produced, images.reference, item.scene, self.metrics)
        if "gill-oracle" in need:
            produced["gill-oracle"], scores["gill-oracle"] = pick_oracle(produced, scores)
        rows = []
        for system in need:
            result = produced.get(system) or Produced(image=None, skip_reason="system produced nothing")
            row = {
                **base,
                "system": system,
                "decision": result.decision,
                "p_ret": result.p_ret,
                "ret_key": result.ret_key,
                "sd_seed": images.sd_seed if SYSTEMS[system].uses_seed else None,
            }
            if result.image is None:
                rows.append({**row, "status": "skipped", "skip_reason": result.skip_reason})
                continue
            path = self.producer.save(result.image, benchmark, setting, system, seed, item.sample_id)
            rows.append({**row, "status": "ok", "generated_path": path, **scores[system]})
        return rows

    # -- retrieval tasks ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def run_retrieval(self, benchmark: str, setting: str, items: Sequence[BenchItem]) -> Counts:
        """Recall@k: rank each sample's true image among the true images of every evaluated sample (the pool)."""
        counts = Counts()
        seed = self.options.seeds[0]
        loaded, rows = [], []
        for item in items:
            base = _base_row(self.run_id, benchmark, setting, seed, item)
            try:
                load_item_images(item)  # only readable samples join the pool (decoded again when embedded)
                loaded.append((item, base))
            except data.UnreadableImage as err:
                rows += [{**base, "system": s, "status": "skipped", "skip_reason": str(err)} for s in RETRIEVAL_SYSTEMS]
        ids = {item.sample_id for item, _ in loaded}
        previous = self.recorder.scored_pools(benchmark, setting)
        if len(loaded) >= 2 and all(_same_pool(previous[previous.system == s], ids) for s in RETRIEVAL_SYSTEMS):
            counts.resumed = len(ids) * len(RETRIEVAL_SYSTEMS)
            return counts + self.recorder.write_samples(rows)
        if len(loaded) < 2:
            reason = "fewer than 2 readable samples: no retrieval pool"
            rows += [
                {**b, "system": s, "status": "skipped", "skip_reason": reason}
                for _, b in loaded
                for s in RETRIEVAL_SYSTEMS
            ]
            return counts + self.recorder.write_samples(rows)
        queries, pools = self._retrieval_embeddings([item for item, _ in loaded])
        targets = torch.arange(len(loaded))
        for system in RETRIEVAL_SYSTEMS:
            ranks = target_ranks(queries[system], pools[system], targets).tolist()
            rows += [
                {**base, "system": system, "status": "ok", "target_rank": int(r), "pool_size": len(loaded)}
                for (_, base), r in zip(loaded, ranks, strict=True)
            ]
        return counts + self.recorder.write_samples(rows)

    def _retrieval_embeddings(self, items: list[BenchItem]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:

        pipe, clip = self.pipe, self.metrics.clip
        q_gill, q_clip, p_gill, p_clip = [], [], [], []
        for item in tqdm(items, desc="retrieval queries", unit="sample", disable=not self.options.progress):
            reference, context = load_item_images(item)
            q_gill.append(self.runner.fromage_query(item.make_prompt(context)))
            features = pipe.vision_features([reference]).to(pipe._adapter_dtype)
            embedding = pipe.model.image_retrieval_embeddings(features).float()
            p_gill.append(torch.nn.functional.normalize(embedding, dim=-1)[0])
            q_clip.append(clip.text_features([item.text])[0])
            p_clip.append(clip.image_features([reference])[0])
        stack = torch.stack
        return (
            {"fromage-retrieval": stack(q_gill), "clip-retrieval": stack(q_clip)},
            {"fromage-retrieval": stack(p_gill), "clip-retrieval": stack(p_clip)},
        )

    # -- FID ----------------------------------------------------------------------------------------------------

    def fid_rows(self, benchmark: str, setting: str, systems: Sequence[str]) -> list[dict[str, Any]]:
        """FID of each system's generated images against the real images of the same samples (per seed)."""
        samples = self.recorder.scored_images(benchmark, setting)
        cache: dict[Path, np.ndarray] = {}
        rows = []
        for system in systems:
            own = samples[samples.system == system]
            if own.empty:
                continue
            seeds = sorted(own.seed.unique())
            common = sorted(set.intersection(*(set(own[own.seed == s].sample_id) for s in seeds)))
            if len(common) < 2:
                continue
            by_seed = {s: own[own.seed == s].set_index("sample_id").loc[common] for s in seeds}
            ref = fid_features(self.metrics.fid, by_seed[seeds[0]].reference_path, cache)
            gens = [fid_features(self.metrics.fid, by_seed[s].generated_path, cache) for s in seeds]
            fields = fid_fields(gens, ref, n_boot=self.options.fid_bootstrap, confidence=self.options.confidence)
            rows.append(
                {
                    "run_id": self.run_id,
                    "benchmark": benchmark,
                    "setting": setting,
                    "system": system,
                    "metric": "fid",
                    **fields,
                    "metric_model": self.metrics.names["fid"],
                }
            )
        return rows

    # -- results ------------------------------------------------------------------------------------------------

    def summarise(self, benchmark: str, extra: Sequence[dict[str, Any]] = ()) -> Any:
        """Recompute ``results`` of one benchmark from its ``samples`` (replacing the benchmark's old rows)."""
        rows = list(extra) + result_rows(
            self.recorder.samples(benchmark),
            run_id=self.run_id,
            benchmark=benchmark,
            metric_models=self.metrics.names,
            confidence=self.options.confidence,
            n_boot=self.options.n_boot,
        )
        return self.recorder.write_results(benchmark, rows)

    def summary(self, benchmark: str, counts: Counts, unsupported: dict[str, str], extra=()) -> BenchSummary:
        """The benchmark's ``results`` (recomputed) and counts; rows a merge of shard files brought into the store
        count as scored (by the shards), not as already scored (by an earlier call)."""
        results = self.summarise(benchmark, extra)
        merged = self.merged.pop(benchmark, Counts())
        return BenchSummary(
            run_id=self.run_id,
            benchmark=benchmark,
            database=self.database,
            out_dir=self.out_dir,
            scored=counts.scored + merged.scored,
            skipped=counts.skipped,
            resumed=max(0, counts.resumed - merged.scored),
            results=results,
            unsupported=unsupported,
        )


def _base_row(run_id: str, benchmark: str, setting: str, seed: int, item: BenchItem) -> dict[str, Any]:
    """The key and reference columns every ``samples`` row of ``item`` shares (paths as paths: the recorder stores
    them relative to the workdir)."""
    return {
        "run_id": run_id,
        "benchmark": benchmark,
        "setting": setting,
        "seed": seed,
        "sample_id": item.sample_id,
        "context_length": item.context_length,
        "reference_path": item.reference,
        "prompt": item.text,
        "context_paths": item.context,
    }


def run_vist(
    workdir: str | Path,
    sis_json: str | Path,
    images: str | Path,
    *,
    settings: Sequence[str] = data.VIST_SETTINGS,
    checkpoint: str | Path | None = None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
    session: BenchSession | None = None,
    sharding: Sharding = Sharding(),
) -> list[BenchSummary]:
    """VIST contextual generation (Table 1) for each setting, and recall@k (``vist-retrieval``); ``sharding``: this
    process's share (a given ``session`` brings its own)."""
    bad = [s for s in settings if s not in data.VIST_SETTINGS]
    if bad:
        raise InputError(f"unknown VIST settings {', '.join(bad)}", [f"known: {', '.join(data.VIST_SETTINGS)}"])
    stories = data.read_vist(sis_json, images, limit=options.limit)
    session = session or BenchSession.open(
        workdir, checkpoint=checkpoint, options=options, metric_spec=metric_spec, sharding=sharding
    )
    items = [(s, vist_items(stories, s)) for s in settings]
    return session.run_sharded("vist", lambda: _contextual(session, "vist", items))


def run_visdial(
    workdir: str | Path,
    dialogs_json: str | Path,
    images: str | Path,
    *,
    rounds: Sequence[int] = (1, 5, 10),
    checkpoint: str | Path | None = None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
    session: BenchSession | None = None,
    sharding: Sharding = Sharding(),
) -> list[BenchSummary]:
    """VisDial contextual generation (Table 2) for R rounds of dialog, and text-to-image recall@k; ``sharding``:
    this process's share (a given ``session`` brings its own)."""
    if not rounds or any(r < 1 for r in rounds):
        raise InputError(f"rounds: give positive integers, got {list(rounds)}", [])
    dialogs = data.read_visdial(dialogs_json, images, limit=options.limit)
    session = session or BenchSession.open(
        workdir, checkpoint=checkpoint, options=options, metric_spec=metric_spec, sharding=sharding
    )
    items = [(data.visdial_setting(r), visdial_items(dialogs, r)) for r in rounds]
    return session.run_sharded("visdial", lambda: _contextual(session, "visdial", items))


def _contextual(
    session: BenchSession, benchmark: str, settings: list[tuple[str, list[BenchItem]]]
) -> list[BenchSummary]:
    """Generation for every setting, then (with ``options.retrieval``) the ``<benchmark>-retrieval`` recall task.
    A shard process scores its share of each setting's generation only."""
    systems, unsupported = session.resolve_systems(benchmark, GENERATION_SYSTEMS)
    if session.shard_phase:
        counts = Counts()
        for setting, items in settings:
            counts.add(session.run_generation(benchmark, setting, session.sharding.select(items), systems))
        return [session.shard_summary(benchmark, counts, unsupported)]
    counts, retrieval = Counts(), Counts()
    for setting, items in settings:
        counts.add(session.run_generation(benchmark, setting, items, systems))
        if session.options.retrieval:
            retrieval.add(session.run_retrieval(f"{benchmark}-retrieval", setting, items))
    out = [session.summary(benchmark, counts, unsupported)]
    if session.options.retrieval:
        out.append(session.summary(f"{benchmark}-retrieval", retrieval, {}))
    return out


def run_cc3m_fid(
    workdir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
    split: str = "val",
    session: BenchSession | None = None,
    sharding: Sharding = Sharding(),
) -> BenchSummary:
    """clean-fid (mode ``clean``) of images generated from CC3M validation captions against the real images;
    ``sharding``: this process's share (a given ``session`` brings its own)."""
    samples = data.read_cc3m_val(Workdir.at(workdir).images(split), limit=options.limit)
    session = session or BenchSession.open(
        workdir, checkpoint=checkpoint, options=options, metric_spec=metric_spec, need_fid=True, sharding=sharding
    )
    reference_dir = session.out_dir / "cc3m-fid" / split / "reference"

    def work() -> list[BenchSummary]:
        systems, unsupported = session.resolve_systems("cc3m-fid", FID_SYSTEMS)
        share = session.sharding.select(samples) if session.shard_phase else samples
        bar = tqdm(share, desc="cc3m-fid reference images", unit="img", disable=not options.progress)
        items = [cc3m_item(s, reference_dir) for s in bar]
        counts = session.run_generation("cc3m-fid", split, items, systems)
        if session.shard_phase:
            return [session.shard_summary("cc3m-fid", counts, unsupported)]
        fid = session.fid_rows("cc3m-fid", split, systems)
        return [session.summary("cc3m-fid", counts, unsupported, extra=fid)]

    return session.run_sharded("cc3m-fid", work)[0]


def run_mapper_ablation(
    workdir: str | Path,
    checkpoints: Sequence[str | Path],
    *,
    sis_json: str | Path | None,
    images: str | Path | None,
    options: BenchOptions = BenchOptions(),
    metric_spec: Any = None,
    sharding: Sharding = Sharding(),
    workers: int = 1,
) -> list[BenchSummary]:
    """The paper's mapper ablation: CC3M FID and VIST (5 captions + 4 images) CLIP similarity of ``gill-gen``,
    one benchmark run per checkpoint (rows of the ``table_mapper_ablation`` view). ``sharding`` and ``workers``
    as for :func:`run`."""
    if not checkpoints:
        raise InputError("the mapper ablation needs checkpoints", [], hint="pass --checkpoint DIR (repeat)")
    options = dataclasses.replace(options, systems=("gill-gen",), retrieval=False, run_id=None)
    if workers > 1:
        data = {"sis_json": sis_json, "images": images}
        _run_workers(workdir, "ablation", options, metric_spec, workers, data=data, checkpoints=list(checkpoints))
    out = []
    for ckpt in checkpoints:
        session = BenchSession.open(
            workdir, checkpoint=ckpt, options=options, metric_spec=metric_spec, need_fid=True, sharding=sharding
        )
        out.append(run_cc3m_fid(workdir, options=options, session=session))
        if sis_json is not None and images is not None:
            out += run_vist(workdir, sis_json, images, settings=("5cap4img",), options=options, session=session)
    return out


def _same_pool(previous: Any, ids: set[str]) -> bool:
    """Whether a retrieval system's stored rows rank exactly ``ids`` (then they are reused)."""
    return set(previous.sample_id) == ids and bool((previous.pool_size == len(ids)).all())


BENCHMARKS = ("vist", "visdial", "cc3m-fid")


def run(
    workdir: Workdir,
    benchmark: str,
    *,
    checkpoint: Path | None,
    data: Mapping[str, Any],
    options: BenchOptions,
    settings: Sequence[Any] | None = None,
    metric_spec: Any = None,
    sharding: Sharding = Sharding(),
    workers: int = 1,
) -> list[BenchSummary]:
    """One benchmark. ``data`` names its files (vist: ``sis_json``, ``images``; visdial: ``dialogs_json``,
    ``images``; cc3m-fid: optionally ``split``, the work folder's shards it reads, default val). ``settings`` are
    VIST settings or VisDial rounds (default: all).

    ``sharding``: this process's share (torchrun rank or ``--shard-index``). ``workers`` > 1: first score the
    samples in that many local worker processes (:func:`flows.stages.bench_shards.run_workers`), then merge their
    rows and compute the results here."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if workers > 1:
        chosen = list(settings) if settings is not None else None
        _run_workers(
            workdir.root, benchmark, options, metric_spec, workers, data=data, settings=chosen, checkpoint=checkpoint
        )
    common: dict[str, Any] = {
        "checkpoint": checkpoint,
        "options": options,
        "metric_spec": metric_spec,
        "sharding": sharding,
    }
    if benchmark == "vist":
        chosen = {"settings": settings} if settings is not None else {}
        return run_vist(workdir.root, data["sis_json"], data["images"], **chosen, **common)
    if benchmark == "visdial":
        chosen = {"rounds": settings} if settings is not None else {}
        return run_visdial(workdir.root, data["dialogs_json"], data["images"], **chosen, **common)
    return [run_cc3m_fid(workdir.root, split=data.get("split", "val"), **common)]


def _run_workers(
    workdir: str | Path,
    benchmark: str,
    options: BenchOptions,
    metric_spec: Any,
    workers: int,
    *,
    data: Mapping[str, Any],
    settings: list[Any] | None = None,
    checkpoint: str | Path | None = None,
    checkpoints: Sequence[str | Path] | None = None,
) -> None:
    """Score a benchmark call's samples in ``workers`` local processes (their rows wait in shard files)."""
    call = WorkerCall(
        workdir=str(workdir),
        benchmark=benchmark,
        options=dataclasses.asdict(options),
        data={k: str(v) if isinstance(v, Path) else v for k, v in data.items()},
        settings=settings,
        checkpoints=[str(c) for c in checkpoints] if checkpoints else [str(checkpoint) if checkpoint else None],
        metric_spec=dataclasses.asdict(metric_spec) if metric_spec is not None else None,
    )
    run_workers(call, workers, options.device)


def run_call(call: WorkerCall, options: BenchOptions, metric_spec: Any, sharding: Sharding) -> list[BenchSummary]:
    """A worker's share of the benchmark call ``call`` (options and metric models already rebuilt)."""
    if call.benchmark == "ablation":
        data = call.data
        return run_mapper_ablation(
            call.workdir,
            [c for c in call.checkpoints if c],
            sis_json=data.get("sis_json"),
            images=data.get("images"),
            options=options,
            metric_spec=metric_spec,
            sharding=sharding,
        )
    return run(
        Workdir.at(call.workdir),
        call.benchmark,
        checkpoint=Path(call.checkpoints[0]) if call.checkpoints[0] else None,
        data=call.data,
        options=options,
        settings=call.settings,
        metric_spec=metric_spec,
        sharding=sharding,
    )
