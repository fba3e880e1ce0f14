"""One declaration per option: the command's arguments and the flows' parameters come from the options dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from eval.bench import BenchOptions
from flows.command.parser import build_parser
from flows.options import ModelChoice, add_options, field_docs, options_from, params_model
from flows.params import DownloadParams, PipelineParams, PrecomputeParams
from flows.stages.candidates import CandidateOptions
from flows.stages.decision import FitOptions
from flows.stages.download import DownloadOptions
from flows.stages.train import TrainOverrides
from flows.stages.votes import PanelConfig
from gill.data.precompute import PrecomputeOptions
from gill.errors import ConfigError
from gill.synth import SynthConfig

STAGE_OPTIONS = (
    DownloadOptions,
    PrecomputeOptions,
    SynthConfig,
    BenchOptions,
    PanelConfig,
    ModelChoice,
    CandidateOptions,
    FitOptions,
    TrainOverrides,
)


@pytest.mark.parametrize("cls", STAGE_OPTIONS, ids=lambda c: c.__name__)
def test_every_stage_option_is_described_where_it_is_declared(cls):
    """Each field has an attribute docstring: the one description the command's help and the flow's schema show."""
    docs = field_docs(cls)
    undocumented = [f.name for f in dataclasses.fields(cls) if f.init and not docs.get(f.name)]
    assert undocumented == []


def test_command_arguments_are_generated_from_the_dataclass_and_round_trip():
    parser = argparse.ArgumentParser()
    add_options(parser, DownloadOptions)
    args = parser.parse_args(["--threads", "3", "--resize-mode", "original", "--no-respect-noai"])
    options = options_from(DownloadOptions, args)
    assert options == DownloadOptions(threads=3, resize_mode="original", respect_noai=False)
    assert "Download threads per process. (default: 16)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):  # a Literal is a choice
        parser.parse_args(["--resize-mode", "stretch"])


def test_comma_separated_tuples_and_per_command_defaults():
    parser = argparse.ArgumentParser()
    add_options(parser, BenchOptions, defaults={"seeds": (1, 2)})
    assert options_from(BenchOptions, parser.parse_args([])).seeds == (1, 2)
    options = options_from(
        BenchOptions, parser.parse_args(["--seeds", "7,8", "--systems", "sd,gill", "--no-retrieval"])
    )
    assert options.seeds == (7, 8) and options.systems == ("sd", "gill") and options.retrieval is False


def test_the_dataclass_validates_what_the_command_parsed():
    parser = argparse.ArgumentParser()
    add_options(parser, DownloadOptions)
    with pytest.raises(ConfigError) as info:
        options_from(DownloadOptions, parser.parse_args(["--threads", "0", "--retries", "-1"]))
    assert any("threads" in p for p in info.value.problems) and any("retries" in p for p in info.value.problems)


def test_the_gill_command_uses_the_declarations():
    """``gill data download --help`` shows the dataclass's descriptions, and the parsed values build the options."""
    parser = build_parser()
    args = parser.parse_args(["data", "download", "--urls", "u.tsv", "--split", "train", "--workdir", "w"])
    assert options_from(DownloadOptions, args) == DownloadOptions()
    args = parser.parse_args(["data", "synth", "--out", "o", "--n-train", "5"])
    assert options_from(SynthConfig, args) == SynthConfig(n_train=5)


def test_flow_parameters_are_generated_and_every_problem_is_reported_at_once():
    with pytest.raises(ValidationError) as info:
        DownloadParams(urls=Path("u.tsv"), split="test", workdir=Path("w"), threads=0, colour="red")
    located = {e["loc"][0] for e in info.value.errors()}
    assert {"split", "colour", "threads"} <= located
    assert DownloadParams.model_fields["threads"].description == "Download threads per process."


def test_pipeline_parameters_keep_their_names_and_take_the_stage_declarations():
    fields = PipelineParams.model_fields
    assert fields["world_train"].description == field_docs(SynthConfig)["n_train"]
    assert fields["bench_seeds"].default == [42] and fields["precompute_batch_size"].default == 32
    with pytest.raises(ValidationError) as info:
        PipelineParams(world_train=0, bench_seeds=[1, 1], panel_seed=-1)
    assert {e["loc"][0] for e in info.value.errors()} >= {"world_train", "bench_seeds"}
    params = PrecomputeParams(split="train", workdir=Path("w"), batch_size=4, num_workers=2)
    assert options_from(PrecomputeOptions, params) == PrecomputeOptions(batch_size=4, num_workers=2)


def test_a_generated_model_refuses_unknown_parameters():
    model = params_model("P", "doc", groups=[(PanelConfig, {"include": ("judges",)})])
    assert model(judges=3).judges == 3
    with pytest.raises(ValidationError):
        model(judges=3, noise=0.5)  # not selected: unknown
    with pytest.raises(ValidationError) as info:
        model(judges=1)
    assert "judges" in str(info.value)


def test_the_generation_batch_size_has_one_name_in_the_benchmarks_the_candidates_and_the_pipeline():
    """--gen-batch-size: images per Stable Diffusion call (bench default 8, candidates 16), bench_gen_batch_size in
    the full flow; refused below 1 under each name."""
    parser = build_parser()
    bench = ["bench", "cc3m-fid", "--workdir", "w"]
    assert options_from(BenchOptions, parser.parse_args(bench)).gen_batch_size == 8
    assert options_from(BenchOptions, parser.parse_args([*bench, "--gen-batch-size", "3"])).gen_batch_size == 3
    build = ["annotate", "build", "--workdir", "w"]
    assert options_from(CandidateOptions, parser.parse_args(build)).gen_batch_size == 16
    assert options_from(CandidateOptions, parser.parse_args([*build, "--gen-batch-size", "2"])).gen_batch_size == 2
    with pytest.raises(ConfigError, match="gen_batch_size"):
        BenchOptions(gen_batch_size=0)
    assert PipelineParams.model_fields["bench_gen_batch_size"].default == 8
    with pytest.raises(ValidationError) as info:
        PipelineParams(bench_gen_batch_size=0)
    assert [e["loc"][0] for e in info.value.errors()] == ["bench_gen_batch_size"]
