"""Training metrics table, recall, and how the tables store paths (the figures: tests/test_figures.py)."""

from __future__ import annotations

from flows.store import db_path, query, record_metrics


def test_metrics_are_stored_per_run_step_and_name_and_replaced_on_rewrite(tmp_path):
    database = db_path(tmp_path)
    record_metrics(database, "run-a", 1, {"loss": 2.5, "lr": 1e-3})
    record_metrics(database, "run-a", 2, {"loss": 2.0, "lr": 1e-3})
    record_metrics(database, "run-a", 2, {"loss": 1.5})  # a resumed run rewrites step 2
    frame = query(database, "SELECT step, value FROM train_metrics WHERE name = 'loss' ORDER BY step")
    assert frame.to_dict("records") == [{"step": 1, "value": 2.5}, {"step": 2, "value": 1.5}]


def test_recall_counts_true_pairs_within_the_top_k():
    import torch

    from eval.metrics import retrieval_recall, true_pair_ranks

    images = torch.eye(4)
    texts = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0], [0, 0, 1.0, 0]])  # rows 2 and 3 swapped
    recall = retrieval_recall(texts, images, ks=(1, 2))
    assert recall["t2i_r1"] == 0.5 and recall["i2t_r1"] == 0.5
    assert recall["t2i_r2"] == 0.5  # the swapped pairs tie with zeros elsewhere: ties rank the true pair last
    assert true_pair_ranks(torch.ones(3, 3)).tolist() == [2, 2, 2]
    random = torch.randn(50, 8)
    assert retrieval_recall(random, random, ks=(1,))["t2i_r1"] == 1.0


def test_paths_inside_the_workdir_are_stored_relative_and_resolve_back_and_absolute_ones_stay(tmp_path, monkeypatch):
    from pathlib import Path

    from gill.utils.paths import resolve_stored, to_stored

    work = tmp_path / "work"
    inside = work / "bench" / "run" / "a b.png"
    assert to_stored(inside, work) == "bench/run/a b.png"
    assert resolve_stored("bench/run/a b.png", work) == inside
    outside = tmp_path / "vist" / "1.jpg"
    assert to_stored(outside, work) == str(outside)
    assert resolve_stored(str(outside), work) == outside  # an absolute value (e.g. an older database) as it is
    assert to_stored(work / "x" / ".." / "y.png", work) == "y.png"
    monkeypatch.chdir(tmp_path)  # a relative path is taken from the current folder, as when it was opened
    assert to_stored(Path("work/runs/final"), "work") == "runs/final"
    assert to_stored("vist/1.jpg", work) == str(outside)
    link = tmp_path / "link"
    link.symlink_to(work, target_is_directory=True)
    assert to_stored(work / "runs" / "final", link) == "runs/final"  # the work folder reached through a symlink
