"""The judging product on what ``make demo`` leaves behind (a small demo workdir): world candidates with images in
the store, the SIMULATED panel apart from people, and every export path working."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from shard_helpers import DEMO_PIPELINE

from annotations.aggregate import confident_labels
from annotations.store import HUMAN_PANEL, SIMULATED_PANEL, JudgingStore
from annotations.votes import read_votes
from flows.command.parser import main
from flows.stages.candidates import HELD_NOTE, NOVEL_NOTE
from flows.store import db_path, query
from flows.workdir import Workdir
from gill.checkpoint import load_adapters

N = DEMO_PIPELINE["candidate_limit"]
"""World candidates of the demo workdir."""


def test_the_demo_store_holds_world_candidates_with_images_open_to_people(demo_workdir):
    workdir, _ = demo_workdir
    store = JudgingStore(workdir)
    items = store.items()
    assert len(items) == N and store.judgeable_items() == N  # no imageless PartiPrompts items
    assert {i.note for i in items} == {HELD_NOTE, NOVEL_NOTE} and all(i.scene for i in items)
    for item in items:
        for side in ("left", "right"):
            with Image.open(workdir / item.image_for(side)) as image:
                assert image.size[0] >= 64
    assert store.judges_per_item == 5
    assert {j.panel for j in store.judges()} == {SIMULATED_PANEL}
    assert store.complete_items(SIMULATED_PANEL) == N and store.count_votes(HUMAN_PANEL) == 0
    assert store.complete_items(HUMAN_PANEL) == 0  # every item still has all its k slots for people
    # A small demo's bank holds 32 scenes and its model trained 4 steps, so the panel's labels are almost all gen:
    # the decision stage says the classifier is not fitted, and why, and records no figure (a full demo fits it).
    labels = confident_labels(read_votes(workdir / "annotations" / "exports" / "Decisions_Alignment_simulated.tsv"))
    assert len(labels) == N and min(labels.count("gen"), labels.count("ret")) < 5  # too few for 5-fold CV
    assert query(db_path(workdir), "SELECT count(*) AS n FROM decision_eval").n.iloc[0] == 0
    assert load_adapters(Workdir(Path(workdir)).checkpoint()).decision_head is None


def test_every_export_works_on_the_demo_workdir_and_hides_the_generated_side(demo_workdir, tmp_path, capsys):
    workdir, _ = demo_workdir
    bundle, ls = tmp_path / "bundle", tmp_path / "ls"
    assert main(["annotate", "export", "--workdir", str(workdir), "--format", "html-bundle", "--out", str(bundle)]) == 0
    assert len(list((bundle / "images").iterdir())) == 2 * N
    assert main(["annotate", "export", "--workdir", str(workdir), "--format", "label-studio", "--out", str(ls)]) == 0
    tasks = json.loads((ls / "tasks.json").read_text())
    assert len(tasks) == N and all(
        set(t["data"]) == {"prompt", "image_left", "image_right", "gill_item_id"} for t in tasks
    )
    assert not any("annotations" in t or "predictions" in t for t in tasks)  # no votes unless asked for
    urls = [t["data"][side] for t in tasks for side in ("image_left", "image_right")]
    assert not any("gen" in u or "ret" in u for u in urls)
    config = (ls / "label_config.xml").read_text()
    assert "flex" in config and config.index('name="left"') < config.index('name="right"')  # side by side
    assert (
        main(
            [
                "annotate",
                "export",
                "--workdir",
                str(workdir),
                "--format",
                "official-tsv",
                "--panel",
                "simulated",
                "--out",
                str(tmp_path / "tsv"),
            ]
        )
        == 0
    )
    lines = (tmp_path / "tsv" / "Decisions_Alignment_simulated.tsv").read_text().splitlines()
    assert len(lines) == N + 1 and all(len(line.split("\t")[4].split(",")) == 5 for line in lines[1:])
    assert (
        main(
            [
                "annotate",
                "export",
                "--workdir",
                str(workdir),
                "--format",
                "label-studio",
                "--votes",
                "predictions",
                "--panel",
                "simulated",
                "--out",
                str(tmp_path / "ls-sim"),
            ]
        )
        == 0
    )
    offered = json.loads((tmp_path / "ls-sim" / "tasks.json").read_text())
    versions = {p["model_version"] for t in offered for p in t["predictions"]}
    assert versions == {f"gill:simulated-judge-{n}" for n in range(1, 6)}  # named as simulated, never annotations
    assert not any("annotations" in t for t in offered)
    out = capsys.readouterr().out
    assert f"{N} task(s)" in out
