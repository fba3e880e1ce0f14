"""Panels of the judging store (people vs the SIMULATED answer-key judges), one-transaction imports, world prompts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from annotations.store import HUMAN_PANEL, SIMULATED_PANEL, ItemFullError, JudgingStore, UnknownItemError
from eval.scene_answers import scene_from_dict
from flows.stages.candidates import HELD_NOTE, NOVEL_NOTE, world_prompts
from flows.stages.votes import JUDGE_NAME, PanelConfig, run_simulated_panel
from gill.errors import InputError
from gill.synth.render import render_scene
from gill.synth.scenes import NOVEL_PAIRS, novel_shapes


def _world_store(workdir: Path, n: int = 6, k: int = 2) -> JudgingStore:
    """Items whose prompt scene is known: side A is the render of the prompt's scene, side B of another scene."""
    import random

    from gill.synth.scenes import sample_scene

    rng = random.Random(3)
    (workdir / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        scene, other = sample_scene(rng), sample_scene(rng)
        render_scene(scene, 64).save(workdir / "img" / f"{i}-match.png")
        render_scene(other, 64).save(workdir / "img" / f"{i}-other.png")
        rows.append(
            {
                "prompt_id": i,
                "prompt": f"world prompt {i}",
                "gen_image": f"img/{i}-match.png",
                "ret_image": f"img/{i}-other.png",
                "scene": json.dumps(scene.to_dict()),
            }
        )
    store = JudgingStore(workdir, judges_per_item=k)
    store.upsert_items(rows)
    return store


def test_simulated_votes_never_take_a_persons_slot_and_never_mix(tmp_path):
    store = _world_store(tmp_path, n=3, k=2)
    summary = run_simulated_panel(tmp_path, PanelConfig(judges=2, noise=0.0), store=store)
    assert summary.votes == 6 and summary.judges == (JUDGE_NAME.format(n=1), JUDGE_NAME.format(n=2))
    assert store.complete_items(SIMULATED_PANEL) == 3 and store.complete_items(HUMAN_PANEL) == 0
    person, _ = store.add_judge("ann")
    assert store.next_item(person).id == 0 and store.progress(person).total == 3  # every item still open to people
    store.submit_vote(person, 0, "right", "right")
    assert store.count_votes(HUMAN_PANEL) == 1 and store.count_votes(SIMULATED_PANEL) == 6
    assert [e.judges for e in store.votes_table()] == [["ann"]]  # human by default: no simulated vote
    assert all(
        name.startswith("simulated-judge-") for e in store.votes_table(panel=SIMULATED_PANEL) for name in e.judges
    )
    second, _ = store.add_judge("bo")
    store.submit_vote(second, 0, "left", "left")
    with pytest.raises(ItemFullError, match="panel 'human'"):  # k = 2 people, whatever the simulated panel did
        store.submit_vote(store.add_judge("cy")[0], 0, "left", "left")


def test_simulated_judges_follow_the_answer_key_and_reproduce_from_their_seed(tmp_path):
    store = _world_store(tmp_path / "a", n=6, k=5)
    run_simulated_panel(tmp_path / "a", PanelConfig(noise=0.0), store=store)
    for entry in store.votes_table(panel=SIMULATED_PANEL):  # side A is the scene itself: it always matches better
        assert entry.alignment == ["gen"] * 5, entry.item.id
        assert entry.realism == ["same"] * 5  # both are clean renders

    def votes(folder: Path, seed: int) -> list:
        s = _world_store(folder, n=6, k=5)
        run_simulated_panel(folder, PanelConfig(seed=seed, noise=0.5), store=s)
        return [(e.item.id, e.alignment, e.realism) for e in s.votes_table(panel=SIMULATED_PANEL)]

    first = votes(tmp_path / "b", 1)
    assert first == votes(tmp_path / "c", 1)
    assert votes(tmp_path / "d", 2) != first  # the noise is real, and seeded
    again = run_simulated_panel(tmp_path / "a", PanelConfig(noise=0.0), store=store)
    assert again.votes == 0  # resumes: judged items are kept


def test_every_output_names_the_simulated_panel(tmp_path):
    from annotations.app import render_admin
    from annotations.exchange import export_official_tsv
    from flows.command.annotate_app import status_lines

    store = _world_store(tmp_path, n=3, k=5)
    run_simulated_panel(tmp_path, store=store)
    assert any("SIMULATED judges" in line for line in status_lines(tmp_path))
    assert "SIMULATED judges (answer-key panel, not people)" in render_admin(store)
    paths = export_official_tsv(store, tmp_path / "out", panel=SIMULATED_PANEL)
    assert [p.name for p in paths] == ["Decisions_Alignment_simulated.tsv", "Decisions_Realism_simulated.tsv"]
    assert export_official_tsv(store, tmp_path / "out")[0].read_text().count("\n") == 1  # people: header only


def test_a_refused_import_creates_no_judge_and_judge_ids_do_not_depend_on_input_order(tmp_path):
    store = _world_store(tmp_path, n=3, k=2)
    with pytest.raises(UnknownItemError, match="nothing was imported"):
        store.import_named_votes([("zed", 0, "left", "left"), ("amy", 99, "left", "left")])
    with pytest.raises(InputError, match="nothing was imported"):
        store.import_named_votes([("zed", 0, "left", "up")])
    assert store.judges() == [] and store.count_votes() == 0
    store.import_named_votes([("zed", 1, "left", "left"), ("amy", 0, "right", "same"), ("zed", 0, "same", "left")])
    assert [j.name for j in store.judges()] == ["amy", "zed"]
    run_simulated_panel(tmp_path, PanelConfig(judges=2), store=store)
    with pytest.raises(InputError, match="another panel"):
        store.import_named_votes([(JUDGE_NAME.format(n=1), 2, "left", "left")])  # a person cannot pose as one


EARLIER_SCHEMA = """
    CREATE TABLE judges (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                         token_hash TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
    CREATE TABLE items (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL, category TEXT NOT NULL DEFAULT '',
        challenge TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '', gen_image TEXT NOT NULL,
        ret_image TEXT NOT NULL, ret_key TEXT, ret_score REAL, gen_side TEXT NOT NULL);
    CREATE TABLE votes (judge_id INTEGER NOT NULL REFERENCES judges(id), item_id INTEGER NOT NULL
        REFERENCES items(id), alignment TEXT NOT NULL, realism TEXT NOT NULL, created TEXT NOT NULL,
        updated TEXT NOT NULL, UNIQUE (judge_id, item_id));
"""
"""The judging store's tables as an earlier gill made them (no panels, no scenes, no retired votes)."""


def _earlier_store(workdir: Path, rows_sql: str) -> Path:
    path = workdir / "annotations" / "judging.sqlite"
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.executescript(EARLIER_SCHEMA + rows_sql)
    con.commit()
    con.close()
    return path


def test_a_store_of_an_earlier_version_gains_panels_scenes_and_revocation(tmp_path):
    from annotations.store import hash_token

    _earlier_store(
        tmp_path,
        f"""
        INSERT INTO judges (name, token_hash, created) VALUES ('old', '{hash_token("old-token")}', 'then');
        INSERT INTO items (id, prompt, gen_image, ret_image, gen_side) VALUES (0, 'p', 'a.png', 'b.png', 'left');
        INSERT INTO votes VALUES (1, 0, 'left', 'same', 't', 't');
    """,
    )
    store = JudgingStore(tmp_path)
    assert [(j.name, j.panel, j.revoked_at) for j in store.judges()] == [("old", HUMAN_PANEL, None)]
    assert store.item(0).scene is None and store.item(0).has_images()
    assert store.judge_for_token("old-token").name == "old"
    revoked = store.revoke_judge("old")
    assert store.judge_for_token("old-token") is None and store.judges() == [revoked]
    assert store.count_votes() == 1  # the votes of a revoked judge stay


def test_world_prompts_split_bank_compositions_from_novel_ones(small_world):
    document = json.loads(Path(small_world.scenes_json).read_text())
    train = [scene_from_dict(e["scene"]) for e in document["cc3m"]["train"]]
    assert train and not any(novel_shapes(s) for s in train)  # the bank never holds a novel pair
    rows = world_prompts(small_world.root, 20, seed=5)
    assert rows == world_prompts(small_world.root, 20, seed=5)  # deterministic
    assert [r.prompt_id for r in rows] == list(range(20))
    held = [r for r in rows if r.note == HELD_NOTE]
    novel = [r for r in rows if r.note == NOVEL_NOTE]
    assert len(held) == 10 and len(novel) == 10
    train_keys = {json.dumps(s.to_dict(), sort_keys=True) for s in train}
    assert all(r.scene in train_keys for r in held)
    assert all(novel_shapes(scene_from_dict(json.loads(r.scene))) for r in novel)
    assert all(r.category == "Shapes world" for r in rows) and len(NOVEL_PAIRS) == 14
    with pytest.raises(InputError, match="fewer than"):
        world_prompts(small_world.root, 10 * len(train) + 10)


def test_world_candidates_load_into_the_store_with_images_and_scenes(tmp_path):
    """``import_candidates`` carries the scene column from DuckDB into the items."""
    from flows.stages.candidates import import_candidates
    from flows.store import db_path, replace_rows

    (tmp_path / "c").mkdir()
    for name in ("g.png", "r.png"):
        Image.new("RGB", (8, 8), "blue").save(tmp_path / "c" / name)
    scene = json.dumps(
        {"background": "white", "shapes": [{"kind": "star", "color": "red", "size": "large", "position": "center"}]}
    )
    replace_rows(
        db_path(tmp_path),
        "decision_candidates",
        [
            {
                "prompt_id": 0,
                "prompt": "a red star",
                "gen_image": "c/g.png",
                "ret_image": "c/r.png",
                "scene": scene,
                "note": HELD_NOTE,
            }
        ],
    )
    assert import_candidates(tmp_path) == 1
    item = JudgingStore(tmp_path).item(0)
    assert item.scene == scene and item.has_images() and item.note == HELD_NOTE


def test_a_store_left_by_an_earlier_demo_retires_its_imageless_items_and_keeps_peoples_votes(tmp_path):
    path = _earlier_store(
        tmp_path,
        """
        INSERT INTO judges (name, token_hash, created) VALUES ('partiprompts-judge-1', 'a', 't'), ('ann', 'b', 't');
        INSERT INTO items (id, prompt, gen_image, ret_image, gen_side) VALUES (0, 'bond', '', '', 'left'),
            (1, 'element', '', '', 'right'), (2, 'a cat', 'c/2-gen.png', 'c/2-ret.png', 'left');
        INSERT INTO votes VALUES (1, 0, 'left', 'left', 't', 't'), (1, 1, 'same', 'left', 't', 't'),
            (2, 2, 'right', 'same', 't', 't');
    """,
    )
    store = JudgingStore(tmp_path)
    assert [i.id for i in store.items()] == [2] and [j.name for j in store.judges()] == ["ann"]
    assert store.count_votes() == 1 and store.votes_of(store.judges()[0])[0].alignment == "right"
    retired = sqlite3.connect(path).execute("SELECT item_id, prompt, reason FROM retired_votes ORDER BY item_id")
    rows = retired.fetchall()
    assert [(r[0], r[1]) for r in rows] == [(0, "bond"), (1, "element")] and "without images" in rows[0][2]


def test_an_item_whose_prompt_changes_sets_its_old_votes_aside(tmp_path):
    store = _world_store(tmp_path, n=2, k=2)
    ann, _ = store.add_judge("ann")
    store.submit_vote(ann, 0, "left", "left")
    store.submit_vote(ann, 1, "right", "right")
    item = store.item(1)
    store.upsert_items(
        [{"prompt_id": 1, "prompt": "another prompt", "gen_image": item.gen_image, "ret_image": item.ret_image}]
    )
    assert [v.item_id for v in store.votes_of(ann)] == [0]  # the vote on the old prompt no longer counts
    assert store.next_item(ann).id == 1  # and the new item is open to ann again
    kept = sqlite3.connect(store.path).execute("SELECT prompt, alignment FROM retired_votes").fetchall()
    assert kept == [("world prompt 1", "right")]
    store.upsert_items(
        [{"prompt_id": 0, "prompt": "world prompt 0", "gen_image": "img/0-match.png", "ret_image": "img/0-other.png"}]
    )  # unchanged: its votes stay
    assert [v.item_id for v in store.votes_of(ann)] == [0]
