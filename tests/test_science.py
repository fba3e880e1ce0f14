"""The science the toy world must show, through the benchmarks a user runs (scene metric, answer key).

On a fresh world seed (7; the shipped zoo never saw it), after the tiny preset's training run:

* GILL-gen gets the described shapes' colours right on CC3M validation captions far more often than the same
  model with an untrained (random) mapper: breaking the mapper or the SD conditioning fails this test;
* GILL at 5 captions is at least as good as at 1 caption on VIST, whose last captions all refer back ("then it
  turns blue") and so cannot be drawn from the last caption alone;
* the GILLMapper beats a linear mapper trained for the same steps (paper Table 3).

Directions and floors are asserted with margins, never exact values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from shard_helpers import bank_in, setup_in, split_folders, world_samples

from eval.bench import BenchOptions
from eval.scene_metric import CHANCE
from flows.stages.bench import run_cc3m_fid, run_vist
from flows.store import db_path, query

N_TRAIN, N_VAL, N_STORIES = 1024, 32, 24
CANDIDATES = 400
OPTIONS = dict(seeds=(42,), sd_steps=10, n_boot=200, fid_bootstrap=0, retrieval=False, progress=False)


def _train(root: Path, config, kind: str, steps: int | None, run_id: str) -> Path:
    """A checkpoint of the tiny preset's training (its default steps unless ``steps``) with the given mapper."""

    mapper = dataclasses.replace(config.adapters.mapper, kind=kind)
    steps = steps or config.train.steps
    train = dataclasses.replace(config.train, steps=steps, log_every=50, val_every=steps, ckpt_every=steps)
    config = dataclasses.replace(config, adapters=dataclasses.replace(config.adapters, mapper=mapper), train=train)
    setup_in(config, root, run_id=run_id).train()
    return root / "runs" / run_id / "final"


@pytest.fixture(scope="module")
def science(tmp_path_factory, tiny_config):
    """A fresh world (seed 7), its shards and features, and three checkpoints: GILLMapper, linear, untrained."""
    from gill.data.precompute import PrecomputeOptions, precompute_split
    from gill.data.shards import write_image_shard
    from gill.synth import SynthConfig, synthesize_world

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("science")
    world = synthesize_world(
        root / "world",
        SynthConfig(seed=7, n_train=N_TRAIN, n_val=N_VAL, n_stories=N_STORIES, n_dialogs=2),
        progress=False,
    )
    write_image_shard(split_folders("train", root).images / "00000.tar", world_samples(world, N_TRAIN))
    write_image_shard(split_folders("val", root).images / "00000.tar", world_samples(world, N_VAL, split="val"))
    for split in ("train", "val"):
        precompute_split(split_folders(split, root), tiny_config, PrecomputeOptions(batch_size=64), progress=False)
    checkpoints = {
        "gill_mapper": _train(root, tiny_config, "gill_mapper", None, "mapper"),
        "linear": _train(root, tiny_config, "linear", None, "linear"),
        "untrained": _train(root, tiny_config, "gill_mapper", 1, "untrained"),
    }
    return root, world, checkpoints


def _cc3m(root: Path, checkpoint: Path, metric: str) -> float:
    options = BenchOptions(systems=("gill-gen",), **OPTIONS)
    summary = run_cc3m_fid(root, checkpoint=checkpoint, options=options)
    rows = query(
        db_path(root),
        "SELECT mean FROM results WHERE run_id = ? AND benchmark = 'cc3m-fid' AND system = 'gill-gen' AND metric = ?",
        [summary.run_id, metric],
    )
    return float(rows["mean"].iloc[0])


def test_trained_gill_gets_caption_colours_right_far_above_an_untrained_mapper(science):
    root, _, checkpoints = science
    trained = _cc3m(root, checkpoints["gill_mapper"], "scene_color")
    untrained = _cc3m(root, checkpoints["untrained"], "scene_color")
    assert trained >= 3 * CHANCE["color"]
    assert trained >= untrained + 0.2


def test_gill_at_five_captions_is_at_least_as_good_as_at_one_on_stories_that_refer_back(science):
    root, world, checkpoints = science
    options = BenchOptions(systems=("gill-gen",), **OPTIONS)
    summaries = run_vist(
        root,
        world.vist_sis_json,
        world.vist_images_dir,
        settings=("1cap", "5cap"),
        checkpoint=checkpoints["gill_mapper"],
        options=options,
    )
    scores = query(
        db_path(root),
        "SELECT setting, mean FROM results WHERE run_id = ? AND benchmark = 'vist' AND metric = 'scene_score'",
        [summaries[0].run_id],
    ).set_index("setting")["mean"]
    assert scores["5cap"] >= scores["1cap"]


def test_the_gill_mapper_beats_a_linear_mapper_trained_for_the_same_steps(science):
    root, _, checkpoints = science
    gill = _cc3m(root, checkpoints["gill_mapper"], "scene_score")
    linear = _cc3m(root, checkpoints["linear"], "scene_score")
    assert gill >= linear + 0.05


@pytest.fixture(scope="module")
def judged(science):
    """The science world's bank, 160 world candidates (half bank compositions, half novel) and the SIMULATED
    answer-key panel's votes on them."""
    from annotations.store import JudgingStore
    from flows.stages.candidates import build_candidates, import_candidates
    from flows.stages.votes import run_simulated_panel

    root, _, checkpoints = science
    bank_in(root, checkpoints["gill_mapper"], progress=False)
    build_candidates(root, checkpoint=checkpoints["gill_mapper"], limit=CANDIDATES, sd_steps=10, progress=False)
    store = JudgingStore(root)
    import_candidates(root, store)
    run_simulated_panel(root, store=store)
    return root, checkpoints["gill_mapper"], store


def test_the_simulated_judges_prefer_retrieval_for_bank_compositions_and_generation_for_novel_ones(judged):
    """Section 3.3 in miniature: on world prompts the answer-key panel's confident labels favour the retrieved image
    when the bank holds the composition, and the generated one when the (colour, kind) pair is new to the bank."""
    from annotations.aggregate import confident_label
    from annotations.store import SIMULATED_PANEL
    from flows.stages.candidates import HELD_NOTE, NOVEL_NOTE

    _, _, store = judged
    labels: dict[str, list[str]] = {HELD_NOTE: [], NOVEL_NOTE: []}
    for entry in store.votes_table(panel=SIMULATED_PANEL):
        labels[entry.item.note].append(confident_label(entry.alignment))

    def ret_share(note: str) -> float:
        confident = [label for label in labels[note] if label != "same"]
        return sum(label == "ret" for label in confident) / len(confident)

    print(f"\nret share of confident labels: bank {ret_share(HELD_NOTE):.2f}, novel {ret_share(NOVEL_NOTE):.2f}")
    assert len(labels[HELD_NOTE]) == len(labels[NOVEL_NOTE]) == CANDIDATES // 2
    assert ret_share(HELD_NOTE) >= ret_share(NOVEL_NOTE) + 0.25
    assert ret_share(NOVEL_NOTE) <= 0.25  # the bank cannot show a novel pair: generation wins most novel prompts


def test_a_bank_aware_decision_classifier_fitted_on_the_simulated_votes_beats_chance(judged):
    """Section 3.3's classifier, fitted on the SIMULATED panel's labels: with the top retrieval score beside h[IMG0]
    (balanced recipe, as the embedded default's pipeline saves it) its cross-validated macro-F1 beats chance with
    a margin. The official head on h[IMG0] alone is fitted and printed too; the tiny LM's state does not tell a
    novel composition from a familiar one, so it is not asserted (docs/judging.md)."""
    from annotations.store import SIMULATED_PANEL
    from eval.claims import CHANCE_MACRO_F1
    from flows.stages.decision import fit_decision, store_votes_tsv

    root, checkpoint, _ = judged
    votes = store_votes_tsv(root, panel=SIMULATED_PANEL)
    common = dict(votes_path=votes, panel=SIMULATED_PANEL, steps=500, save_head=False)
    official = fit_decision(root, checkpoint, **common)
    aware = fit_decision(root, checkpoint, recipe="balanced", with_retrieval_score=True, **common)
    print(
        f"\ndecision macro-F1, {aware.cv_folds}-fold CV on {aware.n_gen} gen / {aware.n_ret} ret SIMULATED labels: "
        f"official head {official.cv_mean_f1:.3f} +- {official.cv_std_f1:.3f}, bank-aware "
        f"{aware.cv_mean_f1:.3f} +- {aware.cv_std_f1:.3f}; panel leave-one-out {aware.human_loo_f1:.3f}"
    )
    assert aware.panel == SIMULATED_PANEL and aware.recipe == "balanced" and aware.with_retrieval_score
    assert aware.cv_mean_f1 >= CHANCE_MACRO_F1 + 0.05
    assert aware.human_loo_f1 is not None and aware.human_loo_f1 >= aware.cv_mean_f1  # judges stay the ceiling
