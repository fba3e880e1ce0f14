"""Exports and imports of the judging store: official TSV (the embedded default), Label Studio, offline bundle."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from annotations import exchange
from annotations.store import JudgingStore
from annotations.votes import default_votes_path
from gill.errors import InputError


def test_importing_the_shipped_votes_then_exporting_gives_the_released_files_back(tmp_path, capsys):
    from gill.cli import main

    assert main(["annotate", "import", "--workdir", str(tmp_path)]) == 0  # the embedded default
    assert "imported 8158 votes" in capsys.readouterr().out  # 1632 x 5 minus the two 4-vote rows
    store = JudgingStore(tmp_path)
    assert store.count_items() == 1632 and len(store.judges()) == 5
    assert main(["annotate", "export", "--workdir", str(tmp_path), "--format", "official-tsv", "--out",
                 str(tmp_path / "out")]) == 0  # fmt: skip
    for aspect in ("alignment", "realism"):
        exported = (tmp_path / "out" / f"Decisions_{aspect.capitalize()}.tsv").read_bytes()
        assert exported == default_votes_path(aspect).read_bytes(), aspect
    assert exchange.import_official_tsv(store) == 8158  # re-import replaces, never duplicates
    assert store.count_votes() == 8158


def test_a_realism_file_with_other_prompts_is_refused(tmp_path):
    alignment = tmp_path / "a.tsv"
    realism = tmp_path / "r.tsv"
    header = "Prompt\tCategory\tChallenge\tNote\tDecisions\n"
    alignment.write_text(header + "a cat\tAnimals\tBasic\t\tgen,ret\n")
    realism.write_text(header + "a dog\tAnimals\tBasic\t\tgen,gen\n")
    with pytest.raises(InputError, match="same prompts"):
        exchange.import_official_tsv(JudgingStore(tmp_path), alignment, realism)


@pytest.fixture
def judged(tmp_path):
    """A store with three items (with images) and two judges' votes."""
    store = JudgingStore(tmp_path, judges_per_item=2)
    (tmp_path / "img").mkdir()
    rows = []
    for i, prompt in enumerate(["a red star", "a <script>alert(1)</script> square", "a blue circle"]):
        for kind, colour in (("gen", "red"), ("ret", "blue")):
            Image.new("RGB", (8, 8), colour).save(tmp_path / "img" / f"{i}-{kind}.png")
        rows.append({"prompt_id": i, "prompt": prompt, "category": "Shapes", "challenge": "Basic", "note": "",
                     "gen_image": f"img/{i}-gen.png", "ret_image": f"img/{i}-ret.png"})  # fmt: skip
    store.upsert_items(rows)
    ann, bo = store.add_judge("ann")[0], store.add_judge("bo")[0]
    store.submit_vote(ann, 0, "left", "same")
    store.submit_vote(bo, 0, "right", "left")
    store.submit_vote(ann, 1, "same", "right")
    return store


def test_label_studio_export_round_trips_through_import(judged, tmp_path):
    out = tmp_path / "ls"
    exchange.export_label_studio(judged, out)
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["id"] for t in tasks] == [0, 1, 2] and '<Choices name="alignment"' in (
        out / "label_config.xml"
    ).read_text()
    assert len(tasks[0]["annotations"]) == 2 and tasks[2]["annotations"] == []
    first = tasks[0]["annotations"][0]
    assert first["completed_by"] == {"email": "ann"}
    assert first["result"][0]["value"] == {"choices": ["Left"]}
    # a third judge annotates item 2 in Label Studio; importing adds them and keeps the others
    tasks[2]["annotations"].append(
        {
            "completed_by": {"email": "cy@lab"},
            "result": [
                {"from_name": "alignment", "to_name": "left", "type": "choices", "value": {"choices": ["Right"]}},
                {
                    "from_name": "realism",
                    "to_name": "left",
                    "type": "choices",
                    "value": {"choices": ["About the same"]},
                },
            ],
        }
    )
    (out / "export.json").write_text(json.dumps(tasks))
    assert exchange.import_label_studio(judged, out / "export.json") == 4
    assert judged.count_votes() == 4 and {j.name for j in judged.judges()} == {"ann", "bo", "cy@lab"}
    (cy,) = [j for j in judged.judges() if j.name == "cy@lab"]
    assert [(v.item_id, v.alignment, v.realism) for v in judged.votes_of(cy)] == [(2, "right", "same")]
    tasks[1]["annotations"][0]["result"] = []
    (out / "bad.json").write_text(json.dumps(tasks))
    with pytest.raises(InputError, match="invalid Label Studio export"):
        exchange.import_label_studio(judged, out / "bad.json")


def test_html_bundle_is_self_contained_escaped_and_its_votes_import(judged, tmp_path):
    index = exchange.export_html_bundle(judged, tmp_path / "bundle")
    folder = index.parent
    assert sorted(p.name for p in folder.iterdir()) == ["images", "index.html", "items.js", "judge.js"]
    assert len(list((folder / "images").iterdir())) == 6
    items_js = (folder / "items.js").read_text()
    assert "<script>" not in items_js and "\\u003cscript>" in items_js  # cannot close the page's script tag
    assert "http" not in (folder / "index.html").read_text().replace("http-equiv", "")  # no external assets
    data = json.loads(items_js.split("=", 1)[1].rstrip().rstrip(";"))
    assert [item["id"] for item in data["items"]] == [0, 1, 2]
    assert all((folder / item["left"]).is_file() and (folder / item["right"]).is_file() for item in data["items"])
    saved = tmp_path / "votes-dee.json"
    saved.write_text(
        json.dumps(
            {
                "judge": "dee",
                "votes": [
                    {"item_id": 1, "alignment": "left", "realism": "left"},
                    {"item_id": 2, "alignment": "same", "realism": "right"},
                ],
            }
        )
    )
    assert exchange.import_bundle_votes(judged, [saved]) == 2
    assert judged.count_votes() == 5
    broken = tmp_path / "votes-x.json"
    broken.write_text(json.dumps({"judge": "x", "votes": [{"item_id": 99, "alignment": "up", "realism": "left"}]}))
    with pytest.raises(InputError) as err:
        exchange.import_bundle_votes(judged, [broken, tmp_path / "missing.json"])
    assert len(err.value.problems) == 2


def test_an_import_that_would_exceed_k_judges_changes_nothing(judged, tmp_path):
    saved = tmp_path / "votes-eve.json"
    saved.write_text(
        json.dumps(
            {
                "judge": "eve",
                "votes": [
                    {"item_id": 2, "alignment": "left", "realism": "left"},
                    {"item_id": 0, "alignment": "left", "realism": "left"},
                ],
            }
        )
    )
    with pytest.raises(InputError, match="more than 2"):
        exchange.import_bundle_votes(judged, [saved])
    assert judged.count_votes() == 3  # the whole batch rolled back


def test_decision_fit_can_read_the_judging_store(tmp_path):
    from eval.decision import store_votes_tsv

    with pytest.raises(InputError, match="no judging store"):
        store_votes_tsv(tmp_path)
    exchange.import_official_tsv(JudgingStore(tmp_path))
    assert store_votes_tsv(tmp_path).read_bytes() == default_votes_path("alignment").read_bytes()
