"""Decision candidates: an SD-baseline image and the top bank image per prompt, resumable, into DuckDB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shard_helpers import trained_workdir

from flows.stages.candidates import read_prompts
from flows.store import db_path, query
from gill.errors import InputError


@pytest.fixture(scope="module")
def workdir(tiny_config, small_world, tmp_path_factory) -> Path:
    """16 precomputed pairs, a 6-step run and its retrieval bank."""
    root = tmp_path_factory.mktemp("candidates-work")
    return trained_workdir(root, small_world, tiny_config, steps=6, run_id="cand", bank=True)


def test_the_shipped_partiprompts_are_the_default_prompts():
    rows = read_prompts()
    assert len(rows) == 1632 and rows[0].prompt == "bond" and rows[0].category == "Abstract"
    assert [r.prompt_id for r in rows[:3]] == [0, 1, 2]


def test_a_prompts_file_without_prompt_column_or_with_empty_prompts_is_refused(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Text\tCategory\nhello\tx\n")
    with pytest.raises(InputError, match="no 'Prompt' column"):
        read_prompts(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_text("Prompt\tCategory\n \tx\nfine\ty\n\tz\n")
    with pytest.raises(InputError) as err:
        read_prompts(empty)
    assert err.value.problems == ["line 2: empty prompt", "line 4: empty prompt"]


def test_annotate_build_writes_both_images_and_rows_and_resumes(workdir, capsys):
    from flows.command.parser import main

    argv = ["annotate", "build", "--workdir", str(workdir), "--limit", "3", "--sd-steps", "2"]
    assert main(argv) == 0
    assert "3 prompts (3 built, 0 already done)" in capsys.readouterr().out
    rows = query(db_path(workdir), "SELECT * FROM decision_candidates ORDER BY prompt_id")
    assert list(rows["prompt_id"]) == [0, 1, 2] and list(rows["prompt"]) == ["bond", "element", "molecule"]
    for gen, ret, score in zip(rows["gen_image"], rows["ret_image"], rows["ret_score"], strict=True):
        assert Image.open(workdir / gen).size == (64, 64) and Image.open(workdir / ret).size[0] > 0
        assert -1.0 <= score <= 1.0
    first = (workdir / rows["gen_image"][0]).read_bytes()
    rebuilt = np.asarray(Image.open(workdir / rows["gen_image"][1]), dtype=np.int16)  # made in a batch of 3 prompts
    (workdir / rows["ret_image"][1]).unlink()  # a lost image is rebuilt; the others are kept
    assert main([*argv[:-4], "--limit", "4", "--sd-steps", "2", "--gen-batch-size", "1"]) == 0
    assert "4 prompts (2 built, 2 already done)" in capsys.readouterr().out
    assert (workdir / rows["gen_image"][0]).read_bytes() == first
    # one generator per prompt: alone, prompt 1 gets the image it got in its batch (up to 1/255 of float rounding)
    again = np.asarray(Image.open(workdir / rows["gen_image"][1]), dtype=np.int16)
    assert np.abs(again - rebuilt).max() <= 2
    assert (workdir / rows["ret_image"][1]).is_file()
    assert int(query(db_path(workdir), "SELECT count(*) n FROM decision_candidates")["n"][0]) == 4


def test_on_a_workdir_with_a_world_the_candidates_are_world_prompts_with_their_scenes(workdir, small_world, capsys):
    from annotations.store import JudgingStore
    from flows.command.parser import main
    from flows.stages.candidates import HELD_NOTE, NOVEL_NOTE

    world = workdir / "world"
    world.symlink_to(small_world.root, target_is_directory=True)
    try:
        assert main(["annotate", "build", "--workdir", str(workdir), "--limit", "6", "--sd-steps", "2"]) == 0
    finally:
        world.unlink()
    out = capsys.readouterr().out
    assert "6 item(s) with images, open to judges" in out
    rows = query(db_path(workdir), "SELECT * FROM decision_candidates ORDER BY prompt_id")
    assert list(rows["prompt_id"]) == list(range(6)) and set(rows["note"]) == {HELD_NOTE, NOVEL_NOTE}
    assert rows["scene"].notna().all() and not any("bond" == p for p in rows["prompt"])
    store = JudgingStore(workdir)
    assert store.judgeable_items() == 6 and all(item.scene for item in store.items())
