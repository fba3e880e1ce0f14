"""The retrieve-or-generate classifier: features, the official recipe and split, stratified CV, and the full fit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from shard_helpers import pipeline_in, trained_workdir

from flows.workdir import Workdir
from gill.decision import (
    GEN,
    RET,
    cross_validate,
    decision_features,
    evaluate_official,
    fit_decision_head,
    macro_f1,
    official_split,
    predict,
    stratified_folds,
)
from gill.errors import InputError
from gill.pipeline import GenerationSettings, GILLPipeline

ASSETS = Path(__file__).parent / "assets" / "official"
FAST = GenerationSettings(max_new_tokens=4, num_inference_steps=2, seed=5)
PROMPTS = ["a red star", "a very small blue circle on the left of a big green square", "shapes", "a dog [IMG0] cat"]


@pytest.fixture(scope="module")
def workdir(tiny_config, small_world, tmp_path_factory) -> Path:
    """The small world's 16 pairs, a 12-step tiny run (``runs/dec/final``) and its retrieval bank."""
    root = tmp_path_factory.mktemp("decision-work")
    return trained_workdir(root, small_world, tiny_config, steps=12, run_id="dec", bank=True)


@pytest.fixture(scope="module")
def pipe(workdir) -> GILLPipeline:
    return pipeline_in(workdir, load_sd=False)


def _usable_labels() -> list[str]:
    from annotations.aggregate import confident_labels
    from annotations.votes import default_votes_path, read_votes

    return [label for label in confident_labels(read_votes(default_votes_path())) if label != "same"]


# -- features -------------------------------------------------------------------------------------------------------


def test_features_are_the_img0_states_batched_like_one_by_one(pipe):
    x = decision_features(pipe, PROMPTS, batch_size=3)
    d = pipe.model.dims.lm_hidden
    assert x.shape == (len(PROMPTS), d) and x.dtype == torch.float32 and torch.isfinite(x).all()
    for i, prompt in enumerate(PROMPTS):  # the unpadded pass, as the pipeline's text_query encodes it
        embeds = pipe.encode_prompt([prompt + pipe.img_suffix()])
        h = pipe.model.forward_lm(embeds, compute_logits=False).hidden_states[0][0, -len(pipe.img_ids)]
        torch.testing.assert_close(x[i], h.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(x[0], x[1])


def test_the_retrieval_score_feature_is_the_top_scaled_bank_score(pipe):
    x = decision_features(pipe, PROMPTS[:3], with_retrieval_score=True, batch_size=2)
    assert x.shape == (3, pipe.model.dims.lm_hidden + 1)
    for i, prompt in enumerate(PROMPTS[:3]):
        best = pipe.retrieve(pipe.text_query(prompt), 1)[0]
        assert float(x[i, -1]) == pytest.approx(best.scaled_score, abs=1e-3)
    torch.testing.assert_close(x[:, :-1], decision_features(pipe, PROMPTS[:3]), atol=1e-5, rtol=1e-5)


def test_bad_feature_inputs_are_named(pipe):
    with pytest.raises(InputError, match="non-empty"):
        decision_features(pipe, ["ok", "  "])
    bankless = GILLPipeline(pipe.model, pipe.tokenizer, pipe.vision, pipe.image_processor)
    with pytest.raises(InputError, match="retrieval bank"):
        decision_features(bankless, ["ok"], with_retrieval_score=True)


# -- metric, split, recipe, CV --------------------------------------------------------------------------------------


def test_macro_f1_equals_torchmetrics_and_the_annotations_version():
    from torchmetrics.functional.classification import multiclass_f1_score

    from annotations.aggregate import macro_f1 as string_f1

    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 50):
        t, p = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
        expected = float(multiclass_f1_score(p, t, num_classes=2, average="macro"))
        assert macro_f1(t, p) == pytest.approx(expected)
        names = ("gen", "ret")
        assert macro_f1(t, p) == pytest.approx(string_f1([names[i] for i in t], [names[i] for i in p]))
    assert macro_f1([0, 0, 0], [0, 0, 0]) == 1.0  # only class 0 present: averaged over it alone


def test_the_official_split_of_the_shipped_votes_is_600_train_and_311_test_in_file_order():
    labels = _usable_labels()
    train, test = official_split(len(labels))
    assert (len(labels), len(train), len(test)) == (911, 600, 311)
    assert train.tolist() == list(range(600)) and test[0] == 600
    counts = [(sum(labels[i] == c for i in part.tolist())) for part in (train, test) for c in ("gen", "ret")]
    assert counts == [391, 209, 201, 110]  # docs/official-gill.md §5


def _blobs(n: int, d: int, seed: int, separable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.35).long()
    x = torch.randn(n, d, generator=g)
    if separable:
        x[:, 0] += 4.0 * (2 * y - 1)
    return x, y


def test_separable_features_reach_f1_one_and_random_labels_about_half():
    x, y = _blobs(500, 16, 0, separable=True)
    official = evaluate_official(x, y, n_train=300, steps=300)
    assert official.n_train == 300 and official.n_test == 200
    assert official.test_f1 > 0.97 and official.best_on_test_f1 >= official.test_f1
    assert [s for s, _ in official.history] == [100, 200, 300]
    x, y = _blobs(500, 16, 1, separable=False)
    cv = cross_validate(x, y, folds=5, steps=300)
    assert 0.35 < cv.mean_f1 < 0.65 and len(cv.per_fold) == 5 and cv.std_f1 >= 0


def test_the_recipe_is_seeded_and_leaves_the_global_rng_alone():
    x, y = _blobs(120, 8, 2, separable=True)
    torch.manual_seed(99)
    before = torch.rand(3)
    torch.manual_seed(99)
    a = fit_decision_head(x, y, steps=50)
    assert torch.equal(torch.rand(3), before)  # fork_rng restored the caller's stream
    b = fit_decision_head(x, y, steps=50)
    c = fit_decision_head(x, y, steps=50, seed=7)
    assert torch.equal(a.linear.weight, b.linear.weight) and not torch.equal(a.linear.weight, c.linear.weight)
    assert not a.training and set(predict(a, x).tolist()) <= {GEN, RET}
    scored = fit_decision_head(torch.cat([x, torch.rand(120, 1)], 1), y, steps=20, with_retrieval_score=True)
    assert scored.with_retrieval_score and scored.linear.in_features == 9


def test_cv_folds_are_stratified_balanced_and_deterministic():
    y = torch.tensor([GEN] * 592 + [RET] * 319)[torch.randperm(911, generator=torch.Generator().manual_seed(3))]
    folds = stratified_folds(y, 5, seed=11)
    overall = float(y.float().mean())
    sizes = torch.bincount(folds, minlength=5)
    assert int(sizes.max() - sizes.min()) <= 1
    for k in range(5):
        assert abs(float(y[folds == k].float().mean()) - overall) < 0.01
    assert torch.equal(folds, stratified_folds(y, 5, seed=11))
    assert not torch.equal(folds, stratified_folds(y, 5, seed=12))
    x, y2 = _blobs(100, 4, 4, separable=False)
    assert cross_validate(x, y2, steps=30, seed=5) == cross_validate(x, y2, steps=30, seed=5)


# -- the full fit on the shipped votes ------------------------------------------------------------------------------


def test_fit_decision_on_the_shipped_votes_records_figures_and_the_pipeline_uses_the_head(workdir, tmp_path):
    from annotations.votes import default_votes_path
    from flows.stages.decision import fit_decision
    from flows.store import db_path, query
    from gill.checkpoint import ADAPTERS_FILE, load_adapters
    from gill.retrieval import checkpoint_id
    from gill.utils.paths import resolve_stored

    ckpt = Workdir(Path(workdir)).checkpoint()
    out = tmp_path / "with-head"
    result = fit_decision(workdir, ckpt, out_checkpoint=out)
    assert (result.n_train, result.n_test, result.n_gen, result.n_ret, result.n_same) == (600, 311, 592, 319, 721)
    assert (result.n_train_gen, result.n_test_ret) == (391, 110)
    assert result.human_official_f1 == pytest.approx(0.8510681024099351)
    assert 0 < result.human_loo_f1 < result.human_official_f1
    for f1 in (result.official_test_f1, result.official_best_on_test_f1, result.cv_mean_f1, *result.cv_per_fold):
        assert 0.0 <= f1 <= 1.0
    assert result.official_best_on_test_f1 >= result.official_test_f1
    assert "ON TEST" in result.render() and "leave-one-out" in result.render()

    rows = query(db_path(workdir), "SELECT protocol, metric, value, n FROM decision_eval")
    figures = {(r.protocol, r.metric): r.value for r in rows.itertuples()}
    assert figures[("official-600", "macro_f1")] == pytest.approx(result.official_test_f1)
    assert figures[("official-600", "best_on_test_f1")] == pytest.approx(result.official_best_on_test_f1)
    assert figures[("cv5", "macro_f1")] == pytest.approx(result.cv_mean_f1)
    assert figures[("cv5", "macro_f1_std")] == pytest.approx(result.cv_std_f1)
    assert figures[("human", "macro_f1_official")] == pytest.approx(0.8510681024099351)
    assert ("human", "macro_f1_leave_one_out") in figures
    (tn, fp), (fn, tp) = result.official_confusion  # the test part's counts, stored with the F1's interval
    stored = query(
        db_path(workdir),
        "SELECT * FROM decision_eval WHERE protocol = 'official-600' AND metric = 'macro_f1'",
    ).iloc[0]
    assert [stored.true_gen_pred_gen, stored.true_gen_pred_ret, stored.true_ret_pred_gen, stored.true_ret_pred_ret] == [
        tn,
        fp,
        fn,
        tp,
    ]
    assert tn + fp + fn + tp == 311 and stored.ci_low <= result.official_test_f1 <= stored.ci_high
    stored = query(db_path(workdir), "SELECT DISTINCT checkpoint, votes FROM decision_eval WHERE protocol = 'human'")
    assert len(stored) == 1  # the checkpoint inside the workdir relative to it, the shipped votes file absolute
    assert not Path(stored.checkpoint[0]).is_absolute() and resolve_stored(stored.checkpoint[0], workdir) == ckpt
    assert stored.votes[0] == str(default_votes_path())

    assert not (ckpt / "decision.safetensors").exists()  # the source checkpoint is untouched with out_checkpoint
    assert (out / ADAPTERS_FILE).read_bytes() == (ckpt / ADAPTERS_FILE).read_bytes()
    assert checkpoint_id(out) == checkpoint_id(ckpt)  # so the bank built by the source serves the copy
    loaded = load_adapters(out)
    assert loaded.decision_head is not None and not loaded.decision_head.with_retrieval_score
    assert loaded.record["extra"]["decision"]["figures"]["n_test"] == 311

    banked = pipeline_in(workdir, out)
    image = banked(["a blue circle"], FAST, force_image=True).images[0]
    assert image.decision.reason == "classifier" and image.kind == image.decision.label
    assert image.decision.p_gen + image.decision.p_ret == pytest.approx(1.0)


def test_gill_decision_fit_rewrites_the_checkpoint_in_place_with_the_score_head(workdir, tmp_path, capsys):
    import argparse

    from flows.command.decision import add_decision_parsers
    from gill.checkpoint import ADAPTERS_FILE, load_adapters
    from gill.retrieval import RetrievalBank

    ckpt = tmp_path / "ckpt"
    shutil.copytree(Workdir(Path(workdir)).checkpoint(), ckpt)
    adapters = (ckpt / ADAPTERS_FILE).read_bytes()
    parser = argparse.ArgumentParser(prog="gill")
    add_decision_parsers(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(
        [
            "decision",
            "fit",
            "--workdir",
            str(workdir),
            "--checkpoint",
            str(ckpt),
            "--with-retrieval-score",
            "--steps",
            "100",
            "--folds",
            "3",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "test macro-F1, final model" in printed and "human macro-F1, official" in printed and "3-fold" in printed
    assert (ckpt / ADAPTERS_FILE).read_bytes() == adapters
    loaded = load_adapters(ckpt)
    assert loaded.decision_head.with_retrieval_score
    assert loaded.decision_head.linear.in_features == loaded.adapters.img_embeddings.weight.shape[1] + 1
    RetrievalBank.open(Workdir(Path(workdir)).banks, ckpt)  # the bank still belongs to the rewritten checkpoint
    assert not list(tmp_path.glob(".ckpt.*"))  # no temporary folders left behind


# -- the official head ------------------------------------------------------------------------------------------


def test_the_official_decision_model_runs_on_4096_d_states():
    """``import_official`` reads ``decision_model.pth.tar`` with :func:`load_official_decision_head`; the released
    ``pretrained_ckpt.pth.tar`` is not in the test assets, so the head is loaded and run on its own."""
    from gill.factory import derive_dims
    from gill.official import load_official_decision_head
    from gill.presets import paper_config

    head = load_official_decision_head(ASSETS / "decision_model.pth.tar", derive_dims(paper_config())).eval()
    h = torch.randn(6, 4096, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = torch.softmax(head(h), dim=-1)
    assert probs.shape == (6, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    assert set(predict(head, h).tolist()) <= {GEN, RET}


def _panel_rows() -> list:
    from annotations.votes import VoteRow

    return [
        VoteRow(
            f"a {'red' if i % 2 else 'blue'} star number {i}",
            "Shapes world",
            "",
            "",
            votes=["gen" if i % 2 else "ret"] * 5,
        )
        for i in range(60)
    ]


def test_a_fit_on_the_simulated_panel_names_the_panel_and_scales_the_official_split(workdir, tmp_path):
    from annotations.votes import write_votes
    from flows.stages.decision import InsufficientLabelsError, fit_decision
    from flows.store import db_path, query

    rows = _panel_rows()
    votes = write_votes(tmp_path / "Decisions_Alignment_simulated.tsv", rows)
    result = fit_decision(
        workdir,
        Workdir(Path(workdir)).checkpoint(),
        votes_path=votes,
        out_checkpoint=tmp_path / "c",
        steps=50,
        panel="simulated",
    )
    assert (result.n_train, result.n_test, result.panel) == (36, 24, "simulated")  # 60% of 60: not the 600 of 911
    assert result.human_loo_f1 == pytest.approx(1.0)  # unanimous judges agree with the others' label
    assert "SIMULATED judges macro-F1, leave-one-out" in result.render()
    protocols = set(
        query(db_path(workdir), "SELECT protocol FROM decision_eval WHERE votes = ?", [str(votes)]).protocol
    )
    assert protocols == {"official-36", "cv5", "simulated-panel"}  # never filed as a human baseline

    few = write_votes(tmp_path / "few.tsv", rows[:8])
    with pytest.raises(InsufficientLabelsError, match="too few confident labels"):
        fit_decision(workdir, Workdir(Path(workdir)).checkpoint(), votes_path=few, out_checkpoint=tmp_path / "d")


def _familiarity_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Twice as many gen as ret labels; 16 uninformative centred columns and a last column like the retrieval
    score (about 12 +- 0.7) that is 0.7 higher on ret examples, as on the shapes world's decision set."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 1 / 3).long()  # 1 = ret
    noise = torch.randn(n, 16, generator=g)
    score = 12 + 0.5 * torch.randn(n, generator=g) + 0.7 * y.float()
    return torch.cat([noise, score[:, None]], 1), y


def test_the_balanced_recipe_uses_a_small_offset_feature_the_official_one_ignores_and_takes_raw_features():
    x, y = _familiarity_data(600, 0)
    official = evaluate_official(x, y, n_train=400, steps=500, with_retrieval_score=True)
    balanced = evaluate_official(x, y, n_train=400, steps=500, with_retrieval_score=True, recipe="balanced")
    assert balanced.test_f1 >= official.test_f1 + 0.15 and balanced.test_f1 > 0.65
    # The standardisation is folded into the saved head: it predicts from raw features, with no extra state.
    head = fit_decision_head(x[:400], y[:400], steps=500, with_retrieval_score=True, recipe="balanced")
    assert set(head.state_dict()) == {"linear.weight", "linear.bias"}
    # trained and scored on standardised features, then folded: the raw-feature predictions give the same F1
    assert macro_f1(y[400:], predict(head, x[400:])) == pytest.approx(balanced.test_f1)
    with pytest.raises(InputError, match="unknown decision recipe"):
        fit_decision_head(x, y, steps=1, recipe="tuned")


def test_the_decision_stage_records_the_official_head_and_saves_the_bank_aware_one(workdir, tmp_path):
    from annotations.votes import write_votes
    from flows.stages.decision import InsufficientLabelsError, fit_decision_stage
    from flows.store import db_path, query
    from gill.checkpoint import load_adapters

    ckpt = tmp_path / "ckpt"
    shutil.copytree(Workdir(Path(workdir)).checkpoint(), ckpt)
    votes = write_votes(tmp_path / "Decisions_Alignment_simulated.tsv", _panel_rows())
    fits = fit_decision_stage(workdir, ckpt, votes_path=votes, panel="simulated", head="bank-aware", steps=50)
    assert fits.saved == "bank-aware" and fits.official.recipe == "official" and not fits.official.with_retrieval_score
    assert fits.bank_aware is not None and fits.bank_aware.recipe == "balanced" and fits.bank_aware.with_retrieval_score
    head = load_adapters(ckpt).decision_head
    assert head is not None and head.with_retrieval_score  # the checkpoint keeps the bank-aware head
    recorded = query(
        db_path(workdir),
        "SELECT DISTINCT recipe, with_retrieval_score FROM decision_eval WHERE votes = ?",
        [str(votes)],
    )
    assert set(zip(recorded.recipe, recorded.with_retrieval_score, strict=True)) == {
        ("official", False),
        ("balanced", True),
    }
    official_only = tmp_path / "official"
    shutil.copytree(Workdir(Path(workdir)).checkpoint(), official_only)
    assert fit_decision_stage(workdir, official_only, votes_path=votes, panel="simulated", steps=50).bank_aware is None
    assert not load_adapters(official_only).decision_head.with_retrieval_score
    untouched = tmp_path / "untouched"
    shutil.copytree(Workdir(Path(workdir)).checkpoint(), untouched)
    few = write_votes(tmp_path / "few.tsv", _panel_rows()[:8])
    with pytest.raises(InsufficientLabelsError):
        fit_decision_stage(workdir, untouched, votes_path=few, head="bank-aware")
    assert load_adapters(untouched).decision_head is None  # refused: nothing saved
    with pytest.raises(InputError, match="unknown decision head"):
        fit_decision_stage(workdir, untouched, votes_path=votes, head="best")
