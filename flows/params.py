"""Pydantic parameter models at the flow boundary (validated, described), converted to gill's dataclasses.

The parameters that are options of a stage are generated from that stage's options dataclass
(:func:`flows.options.params_model`): declared, described and validated once, there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from eval.bench import BenchOptions
from flows.options import ModelChoice, options_from, params_model
from flows.stages.bench_shards import ShardOptions
from flows.stages.candidates import CandidateOptions
from flows.stages.decision import FitOptions
from flows.stages.download import DownloadOptions
from flows.stages.train import TrainOptions, TrainOverrides
from flows.stages.votes import PanelConfig
from gill.config import GILLConfig
from gill.data.precompute import PrecomputeOptions
from gill.synth import SynthConfig

WORLD_FIELDS = {"seed": "seed", "n_train": "train", "n_val": "val", "n_stories": "stories", "n_dialogs": "dialogs"}
"""The synthetic world's options as pipeline parameters: ``world_seed``, ``world_train``, ..."""


class ModelParams(params_model("ModelFields", "The model fields of a flow's parameters.", groups=[(ModelChoice, {})])):
    """Which models a flow runs with: a preset or a config file, plus optional backbone overrides
    (:class:`flows.options.ModelChoice`)."""

    def gill_config(self) -> GILLConfig:
        """The validated :class:`gill.config.GILLConfig` (builds the tiny zoo on first use)."""
        return options_from(ModelChoice, self).gill_config()


DownloadParams = params_model(
    "DownloadParams",
    "Parameters of the ``download-cc3m`` flow (see ``gill data download --help``).",
    groups=[(DownloadOptions, {})],
    fields={
        "urls": (
            Path,
            Field(description="CC3M url list: Google's TSV (caption<TAB>url, no header) or csv/tsv/parquet"),
        ),
        "split": (Literal["train", "val"], Field(description="which split the list is")),
        "workdir": (Path, Field(description="work folder; shards go to <workdir>/data/cc3m/<split>/")),
    },
)


PrecomputeParams = params_model(
    "PrecomputeParams",
    "Parameters of the ``precompute-targets`` flow (see ``gill data precompute --help``).",
    base=ModelParams,
    groups=[(PrecomputeOptions, {})],
    fields={
        "split": (Literal["train", "val"], Field(description="which downloaded split to precompute")),
        "workdir": (Path, Field(description="work folder holding data/cc3m/<split>/")),
    },
)


TrainParams = params_model(
    "TrainParams",
    "Parameters of the ``train-adapters`` flow (see ``gill train --help``).",
    base=ModelParams,
    groups=[(TrainOverrides, {}), (TrainOptions, {"include": ("run_id", "device")})],
    fields={
        "workdir": (
            Path,
            Field(description="work folder with precomputed features under features/cc3m/{train,val}"),
        ),
        "resume": (
            bool,
            Field(False, description="continue the run named by run_id (or the latest) from its checkpoint"),
        ),
    },
)


CandidateParams = params_model(
    "CandidateParams",
    "Parameters of the ``build-decision-candidates`` flow (see ``gill annotate build --help``).",
    groups=[(CandidateOptions, {})],
    fields={
        "workdir": (Path, Field(description="work folder with a trained checkpoint (runs/) and precomputed features")),
        "checkpoint": (
            Path | None,
            Field(None, description="checkpoint folder (default: the newest run's best/ or final/)"),
        ),
        "build_index": (
            bool,
            Field(True, description="build (or refresh) the retrieval bank first; skipped if up to date"),
        ),
    },
)


DecisionParams = params_model(
    "DecisionParams",
    "Parameters of the ``fit-decision`` flow (see ``gill decision fit --help``).",
    groups=[(FitOptions, {})],
    fields={
        "workdir": (Path, Field(description="work folder with a trained checkpoint (runs/) and gill.duckdb")),
        "checkpoint": (
            Path | None,
            Field(None, description="checkpoint folder (default: the newest run's best/ or final/)"),
        ),
        "votes": (
            Path | None,
            Field(None, description="votes TSV in the official layout (default: the shipped votes)"),
        ),
        "from_store": (bool, Field(False, description="use the judging store's votes instead of a TSV")),
        "panel": (
            str,
            Field("human", description="with from_store: 'human' (people) or 'simulated' (answer-key judges)"),
        ),
    },
)


StageName = Literal[
    "world",
    "download",
    "precompute",
    "train",
    "index",
    "candidates",
    "votes",
    "decision",
    "vist",
    "visdial",
    "cc3m-fid",
    "ablation",
    "report",
]
STAGES: tuple[str, ...] = StageName.__args__  # type: ignore[attr-defined]


PipelineParams = params_model(
    "PipelineParams",
    """Parameters of the ``gill`` flow (deployment ``gill/full-pipeline``): every stage, end to end.

    Leave the data sources empty to run on the embedded default: the synthetic shapes world (CC3M, VIST and
    VisDial in their real formats), its world prompts as judging candidates, and a SIMULATED panel of 5
    answer-key judges whose votes fit the decision classifier (people judge the same candidates in their own panel).
    """,
    base=ModelParams,
    groups=[
        (SynthConfig, {"include": WORLD_FIELDS, "rename": {k: f"world_{v}" for k, v in WORLD_FIELDS.items()}}),
        (DownloadOptions, {"include": ("processes", "threads", "distributor")}),
        (PrecomputeOptions, {"include": ("batch_size",), "prefix": "precompute_", "defaults": {"batch_size": 32}}),
        (
            BenchOptions,
            {
                "include": ("seeds", "limit", "sd_steps", "fid_bootstrap", "gen_batch_size"),
                "rename": {
                    "seeds": "bench_seeds",
                    "limit": "bench_limit",
                    "sd_steps": "bench_sd_steps",
                    "gen_batch_size": "bench_gen_batch_size",
                },
            },
        ),
        (ShardOptions, {"include": ("num_workers",), "rename": {"num_workers": "bench_workers"}}),
        (PanelConfig, {"include": ("seed",), "prefix": "panel_"}),
    ],
    fields={
        "workdir": (
            Path,
            Field(Path("work/pipeline"), description="work folder: every output, cache and the DuckDB file"),
        ),
        "stages": (
            list[StageName],
            Field(
                list(STAGES),
                description="stages to run, in pipeline order; the others are "
                "skipped and later stages read their outputs from the workdir",
            ),
        ),
        "refresh": (bool, Field(False, description="ignore cached stage results and re-run every selected stage")),
        "device": (str, Field("cpu", description="torch device for every stage: cpu or cuda")),
        "cc3m_train_urls": (
            Path | None,
            Field(None, description="CC3M training url list (Google's TSV); default: world's"),
        ),
        "cc3m_val_urls": (Path | None, Field(None, description="CC3M validation url list; default: the world's")),
        "vist_sis_json": (Path | None, Field(None, description="VIST story-in-sequence JSON; default: the world's")),
        "vist_images": (Path | None, Field(None, description="folder of VIST photos {photo_flickr_id}.jpg")),
        "visdial_json": (Path | None, Field(None, description="VisDial 1.0 JSON; default: the world's")),
        "visdial_images": (Path | None, Field(None, description="folder of VisualDialog_val2018_{id:012d}.jpg")),
        "image_size": (
            int | None,
            Field(None, ge=8, description="stored image side (default: 64 for tiny, 224 otherwise)"),
        ),
        "shard_size": (
            int | None,
            Field(None, ge=1, description="samples per shard (default: 100 for the world, 10000)"),
        ),
        "steps": (int | None, Field(None, ge=1, description="training steps (default: the preset's)")),
        "batch_size": (int | None, Field(None, ge=2, description="training batch (default: the preset's)")),
        "train_seed": (int, Field(0, ge=0, description="training seed")),
        "run_id": (str, Field("pipeline", description="training run folder name under <workdir>/runs")),
        "candidate_limit": (
            int | None,
            Field(
                None,
                ge=1,
                description="prompts to build judging candidates for (default: "
                "400 world prompts on the embedded default, else all 1,632 PartiPrompts)",
            ),
        ),
        "candidate_sd_steps": (int, Field(50, ge=1, description="SD steps of the judging candidates")),
        "votes": (
            Path | None,
            Field(
                None,
                description="votes TSV (official layout) to fit the decision classifier on; "
                "default: the SIMULATED answer-key panel's votes on the embedded default, else the "
                "shipped PartiPrompts votes",
            ),
        ),
        "decision_steps": (int | None, Field(None, ge=1, description="classifier steps (default: the official 2000)")),
        "decision_head": (
            Literal["official", "bank-aware"] | None,
            Field(
                None,
                description="the decision head saved into the checkpoint (auto mode uses it): 'official' "
                "(h[IMG0], the notebook's recipe) or 'bank-aware' (h[IMG0] + the top retrieval score, standardised "
                "and class-weighted); the official head is always fitted and recorded; default: bank-aware on the "
                "embedded default, else official",
            ),
        ),
        "vist_settings": (
            list[Literal["1cap", "5cap", "5cap4img"]],
            Field(["1cap", "5cap", "5cap4img"], description="VIST settings (paper Table 1)"),
        ),
        "visdial_rounds": (
            list[int],
            Field([1, 5, 10], min_length=1, description="VisDial rounds of context (Table 2)"),
        ),
        "ablation_mappers": (
            list[Literal["linear", "mlp3", "transformer_encoder"]],
            Field(
                [],
                description="stage ablation: train one more checkpoint per mapper kind (same steps and data as the "
                "main run) and score its gill-gen on VIST 5 captions + 4 images and CC3M FID (view "
                "table_mapper_ablation)",
            ),
        ),
    },
)
