"""Label Studio export/import without a server: the files gill writes, and hand-written Label Studio exports in the
shapes Label Studio 1.23.2 really produces (checked live by tests/test_label_studio_live.py)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from annotations import label_studio as ls
from annotations.store import JudgingStore
from gill.errors import InputError

PROMPTS = ["a red star", "a <b>bold</b> square", "a blue circle"]


def make_store(workdir, *, images=True, extra_rows=()):
    """Three items with (optionally) real PNGs; the generated image is red, the retrieved one blue."""
    store = JudgingStore(workdir, judges_per_item=3)
    (workdir / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, prompt in enumerate(PROMPTS):
        for kind, colour in (("gen", "red"), ("ret", "blue")):
            if images:
                Image.new("RGB", (8, 8), colour).save(workdir / "img" / f"{i}-{kind}.png")
        rows.append(
            {"prompt_id": i, "prompt": prompt, "gen_image": f"img/{i}-gen.png", "ret_image": f"img/{i}-ret.png"}
        )
    store.upsert_items(rows + list(extra_rows))
    return store


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "work")


def votes_of(store):
    """{(judge name, item id): (alignment, realism)}"""
    return {(j.name, v.item_id): (v.alignment, v.realism) for j in store.judges() for v in store.votes_of(j)}


def result(alignment, realism):
    return [
        {"from_name": q, "to_name": "left", "type": "choices", "value": {"choices": [answer]}}
        for q, answer in (("alignment", alignment), ("realism", realism))
    ]


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return path


# -- export ---------------------------------------------------------------------------------------------------------


def test_export_writes_neutral_tasks_the_label_config_and_the_images(store, tmp_path):
    out = tmp_path / "ls"
    export = ls.export_label_studio(store, out)
    assert export.n_tasks == 3 and export.n_predictions == 0 and export.document_root == out.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["images", "label_config.xml", "tasks.json"]
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["gill_item_id"] for t in tasks] == [0, 1, 2]
    for task, item in zip(tasks, store.items(), strict=True):
        assert set(task) == {"data"}  # no votes by default: no annotations, no predictions
        assert set(task["data"]) == {"prompt", "image_left", "image_right", "gill_item_id"}
        assert task["data"]["prompt"] == item.prompt
        for side in ("left", "right"):
            url = task["data"][f"image_{side}"]
            assert url == f"/data/local-files/?d=images/{item.id:05d}-{side}.png"
            copied = out / url.split("?d=", 1)[1]
            assert copied.read_bytes() == (store.workdir / item.image_for(side)).read_bytes()
    text = (out / "tasks.json").read_text()
    assert "gen" not in text.replace("gill_item_id", "") and "ret" not in text  # nothing tells the sides apart
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"{i:05d}-{s}.png" for i in range(3) for s in ("left", "right")
    ]


def test_the_label_config_shows_the_prompt_and_the_images_side_by_side(store, tmp_path):
    export = ls.export_label_studio(store, tmp_path / "ls")
    root = ET.fromstring(export.label_config.read_text())
    assert root.tag == "View" and root[0].tag == "Header" and root[0].get("value") == "$prompt"
    (row,) = [v for v in root.findall("View") if "flex" in (v.get("style") or "")]
    columns = row.findall("View")
    assert [c.find("Header").get("value") for c in columns] == ["Left", "Right"]
    assert [(c.find("Image").get("name"), c.find("Image").get("value")) for c in columns] == [
        ("left", "$image_left"),
        ("right", "$image_right"),
    ]
    choices = {c.get("name"): c for c in root.iter("Choices")}
    assert set(choices) == {"alignment", "realism"}
    for c in choices.values():
        assert c.get("required") == "true" and c.get("choice") == "single" and c.get("toName") == "left"
        assert [x.get("value") for x in c.findall("Choice")] == ["Left", "Right", "About the same"]


def test_votes_go_out_as_predictions_only_when_asked(store, tmp_path):
    ann, bo = store.add_judge("ann")[0], store.add_judge("bo@lab")[0]
    store.submit_vote(ann, 0, "left", "same")
    store.submit_vote(bo, 0, "right", "left")
    assert all(
        "predictions" not in t for t in json.loads(ls.export_label_studio(store, tmp_path / "a").tasks.read_text())
    )
    export = ls.export_label_studio(store, tmp_path / "b", votes="predictions")
    tasks = json.loads(export.tasks.read_text())
    assert export.n_predictions == 2 and all("annotations" not in t for t in tasks)
    assert tasks[0]["predictions"] == [
        {"model_version": "gill:ann", "result": result("Left", "About the same")},
        {"model_version": "gill:bo@lab", "result": result("Right", "Left")},
    ]
    assert "predictions" not in tasks[1]
    with pytest.raises(InputError, match="votes must be one of"):
        ls.export_label_studio(store, tmp_path / "c", votes="annotations")


def test_image_urls_are_relative_to_the_document_root(store, tmp_path):
    export = ls.export_label_studio(
        store,
        tmp_path / "root" / "gill",
        document_root=tmp_path / "root",
        image_prefix="http://ls:8080/data/local-files/?d=",
    )
    task = json.loads(export.tasks.read_text())[0]
    assert task["data"]["image_left"] == "http://ls:8080/data/local-files/?d=gill/images/00000-left.png"
    with pytest.raises(InputError, match="not inside the document root"):
        ls.export_label_studio(store, tmp_path / "elsewhere", document_root=tmp_path / "root")
    with pytest.raises(InputError, match="not inside the document root"):  # Label Studio refuses a storage on it
        ls.export_label_studio(store, tmp_path / "x", document_root=tmp_path / "x" / "images")


def test_missing_images_are_all_named_and_nothing_is_written(tmp_path):
    store = make_store(tmp_path / "work")
    (tmp_path / "work" / "img" / "0-gen.png").unlink()
    (tmp_path / "work" / "img" / "2-ret.png").unlink()
    (tmp_path / "work" / "img" / "2-gen.png").unlink()
    with pytest.raises(InputError) as err:
        ls.export_label_studio(store, tmp_path / "ls")
    assert len(err.value.problems) == 2
    assert err.value.problems[0].startswith("item 0 ") and err.value.problems[1].startswith("item 2 ")
    assert "left image" in err.value.problems[1] and "right image" in err.value.problems[1]
    assert not (tmp_path / "ls").exists()


def test_items_without_image_paths_are_left_out_and_counted(tmp_path):
    store = make_store(
        tmp_path / "work", extra_rows=[{"prompt_id": 7, "prompt": "votes only", "gen_image": "", "ret_image": ""}]
    )
    export = ls.export_label_studio(store, tmp_path / "ls")
    assert export.n_tasks == 3 and export.items_without_images == 1 and "left out" in export.describe()
    empty = JudgingStore(tmp_path / "empty")
    with pytest.raises(InputError, match="no item with images"):
        ls.export_label_studio(empty, tmp_path / "ls2")


# -- import: full JSON export ---------------------------------------------------------------------------------------


def full_task(task_id, item_id, *annotations, **extra):
    return {
        "id": task_id,
        "data": {"prompt": "p", "gill_item_id": item_id},
        "annotations": list(annotations),
        "predictions": [],
        **extra,
    }


def annotation(ann_id, who, answers=None, *, cancelled=False, updated="2026-01-01T00:00:00Z", **extra):
    return {
        "id": ann_id,
        "completed_by": who,
        "result": result(*answers) if answers else [],
        "was_cancelled": cancelled,
        "updated_at": updated,
        **extra,
    }


def test_full_json_export_imports_with_emails_and_counts_what_it_skips(store, tmp_path):
    path = write(
        tmp_path,
        "export.json",
        [
            full_task(
                1,
                0,
                annotation(1, {"id": 1, "email": "ann@lab"}, ("Left", "About the same")),
                annotation(2, 2, ("Right", "Left")),
            ),  # a bare id: the email comes from task 2
            full_task(
                2,
                1,
                annotation(3, {"id": 2, "email": "bo@lab", "first_name": ""}, ("About the same", "Right")),
                annotation(4, {"id": 1, "email": "ann@lab"}, cancelled=True),
            ),
            full_task(3, 2, annotation(5, 1, None)),  # submitted without answers
            full_task(4, 2),  # nobody annotated it
        ],
    )
    before = store.count_votes()
    done = ls.import_label_studio(store, path)
    assert (done.format, done.votes, done.skipped, done.tasks_without_annotations) == ("JSON", 3, 2, 1)
    assert done.skipped_by_reason == {ls.SKIP_CANCELLED: 1, ls.SKIP_EMPTY: 1}
    assert done.judges == ("ann@lab", "bo@lab") and "2 annotation(s) skipped" in done.describe()
    assert store.count_votes() == before + 3
    assert votes_of(store) == {
        ("ann@lab", 0): ("left", "same"),
        ("bo@lab", 0): ("right", "left"),
        ("bo@lab", 1): ("same", "right"),
    }
    assert {j.panel for j in store.judges()} == {"human"}


def test_bare_user_ids_use_created_username_then_users_then_a_stable_fallback(store, tmp_path):
    rows = [
        full_task(
            1,
            0,
            annotation(1, 1, ("Left", "Left"), created_username=" ann@lab, 1"),
            annotation(2, 2, ("Right", "Right")),
        ),
        full_task(2, 1, annotation(3, 2, ("Left", "Right"))),
    ]
    path = write(tmp_path, "ids.json", rows)
    read = ls.read_label_studio_votes(path)
    assert read.records == (
        ("ann@lab", 0, "left", "left"),
        ("label-studio-user-2", 0, "right", "right"),
        ("label-studio-user-2", 1, "left", "right"),
    )
    read = ls.read_label_studio_votes(path, users={2: "bo@lab"})
    assert [r[0] for r in read.records] == ["ann@lab", "bo@lab", "bo@lab"]


def test_a_later_annotation_of_the_same_user_replaces_the_earlier(store, tmp_path):
    path = write(
        tmp_path,
        "twice.json",
        [
            full_task(
                1,
                0,
                annotation(7, {"id": 1, "email": "ann@lab"}, ("Left", "Left"), updated="2026-01-02T00:00:00Z"),
                annotation(3, {"id": 1, "email": "ann@lab"}, ("Right", "Right"), updated="2026-01-01T00:00:00Z"),
            )
        ],
    )
    done = ls.import_label_studio(store, path)
    assert done.votes == 1 and done.skipped_by_reason == {ls.SKIP_SUPERSEDED: 1}
    assert votes_of(store) == {("ann@lab", 0): ("left", "left")}


def test_records_reach_the_store_sorted_by_judge_then_item(store, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(
        store, "import_named_votes", lambda records, panel, overwrite=False: seen.append((records, panel)) or 3
    )
    path = write(
        tmp_path,
        "order.json",
        [
            full_task(1, 2, annotation(1, {"id": 9, "email": "zed@lab"}, ("Left", "Left"))),
            full_task(2, 1, annotation(2, {"id": 9, "email": "zed@lab"}, ("Right", "Left"))),
            full_task(3, 0, annotation(3, {"id": 4, "email": "amy@lab"}, ("Left", "Right"))),
        ],
    )
    assert ls.import_label_studio(store, path, panel="lab-panel").votes == 3
    assert seen == [
        (
            [("amy@lab", 0, "left", "right"), ("zed@lab", 1, "right", "left"), ("zed@lab", 2, "left", "left")],
            "lab-panel",
        )
    ]


# -- import: JSON_MIN export ----------------------------------------------------------------------------------------


def min_row(task_id, item_id, annotator, alignment, realism, annotation_id):
    row = {
        "prompt": "p",
        "image_left": "/data/local-files/?d=images/x-left.png",
        "gill_item_id": item_id,
        "id": task_id,
        "annotator": annotator,
        "annotation_id": annotation_id,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "lead_time": None,
    }
    for question, answer in (("alignment", alignment), ("realism", realism)):
        if answer is not None:
            row[question] = answer
    return row


def test_json_min_export_imports(store, tmp_path):
    path = write(
        tmp_path,
        "min.json",
        [
            min_row(1, 0, "bo@lab", "Right", "Left", 2),
            min_row(1, 0, "ann@lab", "Left", "About the same", 1),
            min_row(2, 1, 5, {"choices": ["Right"]}, ["Left"], 3),  # an id without email; other value shapes
            min_row(3, 2, None, None, None, None),  # an exported task without annotation
            min_row(4, 2, "ann@lab", None, None, 4),  # an annotation without answers
        ],
    )
    done = ls.import_label_studio(store, path)
    assert (done.format, done.votes, done.skipped, done.tasks_without_annotations) == ("JSON_MIN", 3, 1, 1)
    assert votes_of(store) == {
        ("ann@lab", 0): ("left", "same"),
        ("bo@lab", 0): ("right", "left"),
        ("label-studio-user-5", 1): ("right", "left"),
    }


# -- import: problems -----------------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_and_nothing_is_written(store, tmp_path):
    ann = {"id": 1, "email": "ann@lab"}
    path = write(
        tmp_path,
        "bad.json",
        [
            full_task(1, 0, annotation(1, ann, ("Left", "Left"))),  # fine, but not written either
            full_task(2, 99, annotation(2, ann, ("Left", "Left"))),  # unknown item
            full_task(3, 1, annotation(3, ann, ("Maybe", "Left"))),  # not an answer
            full_task(4, 2, {"id": 4, "completed_by": ann, "result": result("Left", "Left")[:1]}),  # realism missing
            {"id": 5, "data": {"prompt": "not from gill"}, "annotations": []},  # no gill_item_id
        ],
    )
    before = (store.count_votes(), len(store.judges()))
    with pytest.raises(InputError) as err:
        ls.import_label_studio(store, path)
    assert str(path) in err.value.message and "nothing was imported" in err.value.message
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 4, text
    assert "gill_item_id 99" in text and "'Maybe'" in text and "realism not answered" in text
    assert "no gill_item_id" in text
    assert (store.count_votes(), len(store.judges())) == before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"tasks": []}', "not a list"),
        ("not json", "cannot read"),
        ('[{"foo": 1}]', "neither a task"),
    ],
)
def test_files_that_are_no_label_studio_export_are_refused(store, tmp_path, content, match):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        ls.import_label_studio(store, path)
    assert str(path) in err.value.message and match in err.value.render()


def test_an_empty_export_imports_nothing(store, tmp_path):
    done = ls.import_label_studio(store, write(tmp_path, "empty.json", []))
    assert (done.format, done.votes, done.skipped, done.judges) == ("empty", 0, 0, ())


def test_votes_exported_as_predictions_come_back_through_annotations_with_the_same_sides(store, tmp_path):
    """A judge who accepts gill's predictions in Label Studio gives the store's votes back, side for side."""
    ann = store.add_judge("ann")[0]
    store.submit_vote(ann, 0, "left", "same")
    store.submit_vote(ann, 2, "right", "right")
    tasks = json.loads(ls.export_label_studio(store, tmp_path / "ls", votes="predictions").tasks.read_text())
    exported = [
        full_task(
            i + 1,
            t["data"]["gill_item_id"],
            *[
                annotation(i + 1, {"id": 3, "email": "cy@lab"}, None, result=p["result"])
                for p in t.get("predictions", [])
            ],
        )
        for i, t in enumerate(tasks)
    ]
    fresh = make_store(tmp_path / "fresh", images=False)
    done = ls.import_label_studio(fresh, write(tmp_path, "accepted.json", exported))
    assert done.votes == 2 and votes_of(fresh) == {("cy@lab", 0): ("left", "same"), ("cy@lab", 2): ("right", "right")}


def test_server_environment_and_venv_location():
    env = ls.server_environment(
        "/srv/gill-export", data_dir="/srv/ls-data", username="me@lab", password="pw", token="tok123456"
    )
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true" and env["LOCAL_FILES_DOCUMENT_ROOT"] == "/srv/gill-export"
    assert env["LABEL_STUDIO_USERNAME"] == "me@lab" and env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_LATEST_VERSION_CHECK"] == "false"
    assert ls.default_venv_dir({"HOME": "/h"}).as_posix() == "/h/.cache/gill/label-studio-1.23.2"
    assert ls.default_venv_dir({"HOME": "/h", "XDG_CACHE_HOME": "/c"}).as_posix() == "/c/gill/label-studio-1.23.2"
    assert ls.default_venv_dir({"GILL_LABEL_STUDIO_VENV": "/v"}).as_posix() == "/v"
