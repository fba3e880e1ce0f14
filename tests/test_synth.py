"""Tests of the synthetic shapes world, read back with independent readers (csv, json, pandas, PIL)."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gill.errors import ConfigError, InputError
from gill.synth import SynthConfig, WorldSummary, caption_corpus, synthesize_world
from gill.utils.io import sha256_tree

SMALL = SynthConfig(seed=3, n_train=40, n_val=8, n_stories=12, n_dialogs=8, image_size=64)
BACK_REFERENCES = {"it", "its", "same", "first", "original"}
# Independent copies of the world's colour and grid tables: the test oracle must not import what it checks.
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
}
CELLS = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldSummary:
    return synthesize_world(tmp_path_factory.mktemp("synth") / "world", SMALL, progress=False)


def url_to_path(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file"
    return Path(unquote(parsed.path))


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def load_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sorted_stories(vist: dict) -> dict[str, list[dict]]:
    stories: dict[str, list[dict]] = defaultdict(list)
    for annotation in vist["annotations"]:
        stories[annotation[0]["story_id"]].append(annotation[0])
    return {sid: sorted(anns, key=lambda a: a["worker_arranged_photo_order"]) for sid, anns in stories.items()}


def test_cc3m_tsv_has_two_columns_and_no_header(world: WorldSummary) -> None:
    for path, n in ((world.cc3m_train_tsv, SMALL.n_train), (world.cc3m_val_tsv, SMALL.n_val)):
        raw = path.read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        assert len(rows) == n and all(len(row) == 2 for row in rows)
        assert rows[0][1].lower() not in ("url", "image") and rows[0][1].startswith("file://")
        frame = pd.read_csv(path, sep="\t", header=None, quoting=csv.QUOTE_NONE)
        assert frame.shape == (n, 2)


def test_cc3m_urls_point_to_rgb_images_of_the_configured_size(world: WorldSummary) -> None:
    frame = pd.read_csv(world.cc3m_train_tsv, sep="\t", header=None, names=["caption", "url"], quoting=csv.QUOTE_NONE)
    for url in frame["url"]:
        with Image.open(url_to_path(url)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (SMALL.image_size, SMALL.image_size)
    assert frame["caption"].str.len().min() > 10


def test_vist_json_has_the_real_top_level_keys_and_field_types(world: WorldSummary) -> None:
    vist = load_json(world.vist_sis_json)
    assert {"info", "type", "albums", "images", "annotations"} <= set(vist)
    assert all({"id", "title", "description"} <= set(album) for album in vist["albums"])
    for image in vist["images"]:
        assert {"id", "album_id", "title", "datetaken", "url_o", "tags"} <= set(image)
        assert isinstance(image["id"], str) and image["id"].isdigit()
        assert url_to_path(image["url_o"]).is_file()
    for annotation in vist["annotations"]:
        assert isinstance(annotation, list) and len(annotation) == 1
        ann = annotation[0]
        for key in ("story_id", "photo_flickr_id", "album_id", "storylet_id"):
            assert isinstance(ann[key], str) and ann[key].isdigit()
        assert isinstance(ann["worker_arranged_photo_order"], int)
        assert isinstance(ann["worker_id"], str) and isinstance(ann["setting"], str)
        assert ann["text"] == ann["text"].lower() and ann["text"].endswith(" .")


def test_vist_stories_have_five_ordered_photos_stored_unsorted(world: WorldSummary) -> None:
    vist = load_json(world.vist_sis_json)
    raw_orders: dict[str, list[int]] = defaultdict(list)
    for annotation in vist["annotations"]:
        raw_orders[annotation[0]["story_id"]].append(annotation[0]["worker_arranged_photo_order"])
    assert len(raw_orders) == SMALL.n_stories
    assert all(sorted(orders) == [0, 1, 2, 3, 4] for orders in raw_orders.values())
    assert any(orders != sorted(orders) for orders in raw_orders.values())


def test_every_vist_photo_has_an_image_file(world: WorldSummary) -> None:
    vist = load_json(world.vist_sis_json)
    for annotation in vist["annotations"]:
        path = world.vist_images_dir / f"{annotation[0]['photo_flickr_id']}.jpg"
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (SMALL.image_size,) * 2


def test_visdial_dialogs_have_ten_valid_rounds_with_100_options(world: WorldSummary) -> None:
    visdial = load_json(world.visdial_json)
    assert visdial["version"] == "1.0" and visdial["split"] == "val2018"
    data = visdial["data"]
    questions, answers = data["questions"], data["answers"]
    assert len(set(questions)) == len(questions) and len(set(answers)) == len(answers)
    assert len(data["dialogs"]) == SMALL.n_dialogs
    for dialog in data["dialogs"]:
        assert isinstance(dialog["image_id"], int) and isinstance(dialog["caption"], str)
        assert len(dialog["dialog"]) == 10
        for rnd in dialog["dialog"]:
            assert 0 <= rnd["question"] < len(questions) and 0 <= rnd["answer"] < len(answers)
            options = rnd["answer_options"]
            assert len(options) == 100 and len(set(options)) == 100
            assert all(0 <= o < len(answers) for o in options)
            assert options[rnd["gt_index"]] == rnd["answer"]


def test_visdial_text_is_lowercase_without_question_marks_or_final_periods(world: WorldSummary) -> None:
    data = load_json(world.visdial_json)["data"]
    assert all(q == q.lower() and not q.endswith("?") and "?" not in q for q in data["questions"])
    assert all(a == a.lower() and not a.endswith(".") for a in data["answers"])


def test_visdial_images_exist_with_coco_style_names(world: WorldSummary) -> None:
    for dialog in load_json(world.visdial_json)["data"]["dialogs"]:
        path = world.visdial_images_dir / f"VisualDialog_val2018_{dialog['image_id']:012d}.jpg"
        with Image.open(path) as image:
            assert image.mode == "RGB"


def test_visdial_answers_are_truthful_about_colours_and_counts(world: WorldSummary) -> None:
    data = load_json(world.visdial_json)["data"]
    truth = {d["image_id"]: d["scene"] for d in load_json(world.scenes_json)["visdial"]}
    numbers = {1: ("1", "one"), 2: ("2", "two"), 3: ("3", "three")}
    for dialog in data["dialogs"]:
        scene = truth[dialog["image_id"]]
        colour_of = {s["kind"]: s["color"] for s in scene["shapes"]}
        for rnd in dialog["dialog"]:
            question, answer = data["questions"][rnd["question"]], data["answers"][rnd["answer"]]
            if match := re.fullmatch(r"what color is the (\w+)", question):
                expected = scene["background"] if match[1] == "background" else colour_of[match[1]]
                assert expected in answer.split()
            if question == "how many shapes are there":
                assert any(n in answer.split() for n in numbers[len(scene["shapes"])])
            if match := re.fullmatch(r"is there a (\w+)", question):
                assert answer.split()[0].startswith("y" if match[1] in colour_of else "n")


def apply_change(state: dict, event: dict) -> dict:
    """Independent re-implementation of a story change, on plain dicts."""
    state = json.loads(json.dumps(state))
    if event["action"] == "background":
        state["background"] = event["value"]
    elif event["action"] == "join":
        state["shapes"].append(event["shape"])
    else:
        field = {"move": "position", "recolor": "color", "resize": "size"}[event["action"]]
        state["shapes"][0 if event["target"] == "main" else 1][field] = event["value"]
    return state


def colour_fraction(image: Image.Image, position: str, colour: str) -> float:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    row, col = CELLS[position]
    side = pixels.shape[0] / 3
    cell = pixels[int(row * side) : int((row + 1) * side), int(col * side) : int((col + 1) * side)]
    distance = np.linalg.norm(cell - np.array(RGB[colour], dtype=np.float32), axis=-1)
    return float((distance < 60).mean())


def test_story_first_caption_plus_changes_reproduce_the_final_image(world: WorldSummary) -> None:
    stories = {s["story_id"]: s for s in load_json(world.scenes_json)["vist"]}
    for story_id, anns in sorted_stories(load_json(world.vist_sis_json)).items():
        steps = stories[story_id]["steps"]
        assert [a["photo_flickr_id"] for a in anns] == [s["photo_flickr_id"] for s in steps]
        main = steps[0]["scene"]["shapes"][0]
        first = words(anns[0]["text"])
        assert {main["kind"], main["color"], main["size"], steps[0]["scene"]["background"]} <= set(first)
        state = steps[0]["scene"]
        for ann, step in zip(anns[1:], steps[1:], strict=True):
            assert set(step["event"]["value"].split()) <= set(words(ann["text"]))
            state = apply_change(state, step["event"])
            assert state == step["scene"]
        final_main = state["shapes"][0]
        with Image.open(world.vist_images_dir / f"{anns[-1]['photo_flickr_id']}.jpg") as image:
            assert colour_fraction(image, final_main["position"], final_main["color"]) > 0.03


def test_story_last_caption_alone_is_ambiguous(world: WorldSummary) -> None:
    stories = {s["story_id"]: s for s in load_json(world.scenes_json)["vist"]}
    for story_id, anns in sorted_stories(load_json(world.vist_sis_json)).items():
        last = set(words(anns[-1]["text"]))
        main_kind = stories[story_id]["steps"][-1]["scene"]["shapes"][0]["kind"]
        assert last & BACK_REFERENCES, anns[-1]["text"]
        assert main_kind not in last


def test_cc3m_images_match_their_recorded_scenes(world: WorldSummary) -> None:
    truth = load_json(world.scenes_json)["cc3m"]["train"]
    frame = pd.read_csv(world.cc3m_train_tsv, sep="\t", header=None, quoting=csv.QUOTE_NONE)
    for entry, (caption, url) in zip(truth, frame.itertuples(index=False), strict=True):
        assert entry["caption"] == caption
        with Image.open(url_to_path(url)) as image:
            for shape in entry["scene"]["shapes"]:
                assert shape["kind"] in caption and shape["color"] in caption
                assert colour_fraction(image, shape["position"], shape["color"]) > 0.03


def test_caption_corpus_covers_every_generated_word(world: WorldSummary) -> None:
    texts = []
    for path in (world.cc3m_train_tsv, world.cc3m_val_tsv):
        texts += pd.read_csv(path, sep="\t", header=None, quoting=csv.QUOTE_NONE)[0].tolist()
    for annotation in load_json(world.vist_sis_json)["annotations"]:
        texts += [annotation[0]["text"], annotation[0]["original_text"]]
    data = load_json(world.visdial_json)["data"]
    texts += data["questions"] + data["answers"] + [d["caption"] for d in data["dialogs"]]
    corpus = {w for line in caption_corpus(seed=0, n=10) for w in words(line)}
    assert set(words(" ".join(texts))) <= corpus
    assert {"Q", "A", ":", "?", *"0123456789"} <= corpus


def test_caption_corpus_is_deterministic_and_cheap() -> None:
    assert caption_corpus(seed=1, n=500) == caption_corpus(seed=1, n=500)
    assert caption_corpus(seed=1, n=3000) != caption_corpus(seed=2, n=3000)
    assert len(caption_corpus(seed=0, n=3000)) == 3000
    assert all("\n" not in line and "\t" not in line for line in caption_corpus(n=3000))


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    config = SynthConfig(seed=5, n_train=6, n_val=2, n_stories=2, n_dialogs=2, image_size=48)
    first = synthesize_world(tmp_path / "a", config, progress=False)
    digest = sha256_tree(first.root)
    os.replace(tmp_path / "a", tmp_path / "a_first")
    again = synthesize_world(tmp_path / "a", config, progress=False)
    assert sha256_tree(again.root) == digest
    elsewhere = synthesize_world(tmp_path / "b", config, progress=False)
    assert sha256_tree(elsewhere.cc3m_images_dir) == sha256_tree(tmp_path / "a_first" / "cc3m" / "images")
    other = synthesize_world(tmp_path / "c", replace(config, seed=6), progress=False)
    assert sha256_tree(other.cc3m_images_dir) != sha256_tree(elsewhere.cc3m_images_dir)
    assert other.cc3m_train_tsv.read_text() != elsewhere.cc3m_train_tsv.read_text().replace("/b/", "/c/")


def test_invalid_config_lists_every_bad_field_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        SynthConfig(seed=-1, n_train=0, n_val=-5, n_stories=True, n_dialogs=2, image_size=7)
    message = str(info.value)
    for fragment in ("seed=-1", "n_train=0", "n_val=-5", "n_stories=True", "image_size=7"):
        assert fragment in message
    assert "n_dialogs" not in message


def test_rerun_with_same_config_reuses_and_other_config_rebuilds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = SynthConfig(seed=1, n_train=3, n_val=1, n_stories=1, n_dialogs=1, image_size=32)
    built = synthesize_world(tmp_path / "w", config, progress=False)
    stamp = built.manifest_json.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="gill.synth"):
        reused = synthesize_world(tmp_path / "w", config, progress=False)
    assert reused == built and reused.manifest_json.stat().st_mtime_ns == stamp
    assert any("reusing" in record.getMessage() for record in caplog.records)
    bigger = replace(config, n_train=5)
    rebuilt = synthesize_world(tmp_path / "w", bigger, progress=False)
    assert load_json(rebuilt.manifest_json)["config"]["n_train"] == 5
    assert len(rebuilt.cc3m_train_tsv.read_text().splitlines()) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_refuses_to_replace_a_non_empty_directory_that_is_not_a_world(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError):
        synthesize_world(
            tmp_path / "precious", SynthConfig(n_train=2, n_val=1, n_stories=1, n_dialogs=1), progress=False
        )
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_manifest_records_config_counts_and_file_hashes(world: WorldSummary) -> None:
    manifest = load_json(world.manifest_json)
    assert manifest["config"] == {
        "seed": 3,
        "n_train": 40,
        "n_val": 8,
        "n_stories": 12,
        "n_dialogs": 8,
        "image_size": 64,
    }
    assert manifest["counts"]["n_images"] == world.n_images == 40 + 8 + 12 * 5 + 8
    assert len(list(world.root.rglob("*.jpg"))) == world.n_images
    assert set(manifest["sha256"]) >= {
        "cc3m/cc3m_train.tsv",
        "cc3m/cc3m_val.tsv",
        "vist/sis/val.story-in-sequence.json",
        "visdial/visdial_1.0_val.json",
    }
    assert json.loads(json.dumps(world.to_dict()))["n_train"] == 40
