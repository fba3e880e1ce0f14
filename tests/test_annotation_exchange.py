"""Exports and imports of the judging store: official TSV (the embedded default), Label Studio, offline bundle."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from annotations import exchange
from annotations.store import JudgingStore
from annotations.votes import default_votes_path
from gill.errors import InputError


def _partiprompts_store(workdir):
    """A store whose items are the 1,632 shipped PartiPrompts prompts (in file order), each with two images."""
    from annotations.votes import read_votes

    (workdir / "img").mkdir(parents=True)
    Image.new("RGB", (4, 4), "red").save(workdir / "img" / "a.png")
    store = JudgingStore(workdir)
    rows = read_votes(default_votes_path("alignment"))
    store.upsert_items(
        [
            {
                "prompt_id": i,
                "prompt": r.prompt,
                "category": r.category,
                "challenge": r.challenge,
                "note": r.note,
                "gen_image": "img/a.png",
                "ret_image": "img/a.png",
            }
            for i, r in enumerate(rows)
        ]
    )
    return store


def test_the_shipped_votes_import_onto_items_with_images_and_export_byte_for_byte(tmp_path, capsys):
    from flows.command.parser import main

    store = _partiprompts_store(tmp_path)
    assert main(["annotate", "import", "--workdir", str(tmp_path)]) == 0  # the shipped files
    assert "8158 vote(s) by 5 judge(s)" in capsys.readouterr().out  # 1632 x 5 minus the two 4-vote rows
    assert [j.name for j in store.judges()] == [f"tsv-judge-{n}" for n in range(1, 6)]
    assert (
        main(
            [
                "annotate",
                "export",
                "--workdir",
                str(tmp_path),
                "--format",
                "official-tsv",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    for aspect in ("alignment", "realism"):
        exported = (tmp_path / "out" / f"Decisions_{aspect.capitalize()}_human.tsv").read_bytes()
        assert exported == default_votes_path(aspect).read_bytes(), aspect
    assert exchange.import_official_tsv(store).votes == 8158  # re-import replaces, never duplicates
    assert store.count_votes() == 8158


def test_official_votes_never_create_items_without_images(tmp_path):
    store = JudgingStore(tmp_path)
    with pytest.raises(InputError, match="none of the 1632 prompts"):
        exchange.import_official_tsv(store)  # an empty store: nothing to put the votes on
    assert store.count_items() == 0 and store.judges() == [] and store.count_votes() == 0
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4), "red").save(tmp_path / "img" / "a.png")
    store.upsert_items([{"prompt_id": 7, "prompt": "a cat", "gen_image": "img/a.png", "ret_image": "img/a.png"}])
    votes = tmp_path / "votes.tsv"
    votes.write_text("Prompt\tCategory\tChallenge\tNote\tDecisions\na cat\t\t\t\tgen,ret\na dog\t\t\t\tgen\n")
    result = exchange.import_official_tsv(store, votes)
    assert (result.votes, result.skipped) == (2, 1) and store.count_items() == 1
    assert "not items of this store" in result.describe()


def test_items_without_images_are_never_served_or_bundled(tmp_path):
    store = JudgingStore(tmp_path)
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4), "red").save(tmp_path / "img" / "a.png")
    image = "img/a.png"
    store.upsert_items(
        [
            {"prompt_id": 0, "prompt": "old imageless item", "gen_image": "", "ret_image": ""},
            {"prompt_id": 1, "prompt": "a cat", "gen_image": image, "ret_image": image},
        ]
    )
    judge, _ = store.add_judge("ann")
    assert store.next_item(judge).id == 1 and store.progress(judge).total == 1 and store.judgeable_items() == 1
    index = exchange.export_html_bundle(store, tmp_path / "bundle")
    data = json.loads((index.parent / "items.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert [item["id"] for item in data["items"]] == [1]


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
        rows.append(
            {
                "prompt_id": i,
                "prompt": prompt,
                "category": "Shapes",
                "challenge": "Basic",
                "note": "",
                "gen_image": f"img/{i}-gen.png",
                "ret_image": f"img/{i}-ret.png",
            }
        )
    store.upsert_items(rows)
    ann, bo = store.add_judge("ann")[0], store.add_judge("bo")[0]
    store.submit_vote(ann, 0, "left", "same")
    store.submit_vote(bo, 0, "right", "left")
    store.submit_vote(ann, 1, "same", "right")
    return store


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
    again = json.loads(
        (exchange.export_html_bundle(judged, tmp_path / "b2").parent / "items.js")
        .read_text()
        .split("=", 1)[1]
        .rstrip()
        .rstrip(";")
    )
    assert data["bundle"] and again["bundle"] != data["bundle"]  # each bundle keeps its own saved votes
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
    assert exchange.import_bundle_votes(judged, [saved]).votes == 2
    assert judged.count_votes() == 5
    broken = tmp_path / "votes-x.json"
    broken.write_text(json.dumps({"judge": "x", "votes": [{"item_id": 99, "alignment": "up", "realism": "left"}]}))
    judges_before = judged.judges()
    with pytest.raises(InputError) as err:
        exchange.import_bundle_votes(judged, [saved, broken, tmp_path / "missing.json"])
    assert len(err.value.problems) == 2
    assert judged.judges() == judges_before and judged.count_votes() == 5  # refused: nothing changed


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
    assert "eve" not in {j.name for j in judged.judges()}  # and the judge it would have created


def test_decision_fit_reads_one_panel_of_the_judging_store(judged, tmp_path):
    from flows.stages.decision import store_votes_tsv

    with pytest.raises(InputError, match="no judging store"):
        store_votes_tsv(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="no votes of panel 'simulated'"):
        store_votes_tsv(judged.workdir, panel="simulated")
    path = store_votes_tsv(judged.workdir)
    assert path.name == "Decisions_Alignment_human.tsv"
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("a red star\t")  # header + the two voted items


def test_votes_files_without_rows_or_with_a_repeated_prompt_are_refused_by_line(tmp_path):
    from annotations.votes import VOTES_HEADER, read_votes

    store = _partiprompts_store(tmp_path / "w")
    header_only = tmp_path / "header.tsv"
    header_only.write_text("\t".join(VOTES_HEADER) + "\n")
    with pytest.raises(InputError, match="no vote rows after the header"):
        exchange.import_official_tsv(store, header_only)
    first = read_votes(default_votes_path("alignment"))[0]
    line = "\t".join([first.prompt, first.category, first.challenge, first.note, ",".join(first.votes)])
    repeated = tmp_path / "repeated.tsv"
    repeated.write_text("\t".join(VOTES_HEADER) + "\n" + line + "\n" + line + "\n")
    with pytest.raises(InputError) as err:
        exchange.import_official_tsv(store, repeated)
    assert any("line 3: the prompt repeats line 2" in p for p in err.value.problems)
    assert store.count_votes() == 0  # refused: nothing imported


def test_export_of_a_workdir_without_a_store_is_an_error_that_creates_nothing(tmp_path, capsys):
    from flows.command.parser import main

    typo = tmp_path / "wokrdir"
    assert (
        main(["annotate", "export", "--workdir", str(typo), "--format", "official-tsv", "--out", str(tmp_path / "out")])
        == 2
    )
    assert "no judging store" in capsys.readouterr().err
    assert not typo.exists() and not (tmp_path / "out").exists()


def test_a_bundle_that_changes_a_web_judges_vote_is_a_conflict_unless_overwriting(judged, tmp_path):
    from annotations.store import VoteConflictError

    saved = tmp_path / "votes-b-ann.json"
    saved.write_text(
        json.dumps(
            {
                "judge": "ann",
                "votes": [
                    {"item_id": 0, "alignment": "right", "realism": "right"},
                    {"item_id": 2, "alignment": "left", "realism": "left"},
                ],
            }
        )
    )
    ann = next(j for j in judged.judges() if j.name == "ann")
    with pytest.raises(VoteConflictError) as err:
        exchange.import_bundle_votes(judged, [saved])
    assert err.value.problems == ["judge 'ann', item 0: the store has left/same, the import right/right"]
    assert {(v.item_id, v.alignment, v.realism) for v in judged.votes_of(ann)} == {
        (0, "left", "same"),
        (1, "same", "right"),
    }
    same = tmp_path / "votes-b2-ann.json"  # the same answers again: no conflict, nothing changes
    same.write_text(json.dumps({"judge": "ann", "votes": [{"item_id": 0, "alignment": "left", "realism": "same"}]}))
    exchange.import_bundle_votes(judged, [same])
    exchange.import_bundle_votes(judged, [saved], overwrite=True)
    assert {(v.item_id, v.alignment, v.realism) for v in judged.votes_of(ann)} == {
        (0, "right", "right"),
        (1, "same", "right"),
        (2, "left", "left"),
    }


@pytest.mark.parametrize(
    "content",
    [
        '{"judge": "x", "votes": {"item_id": 0}}',
        '{"judge": "x", "votes": ["left"]}',
        "[1, 2]",
        '"just text"',
        '{"judge": "x", "votes": [{"item_id": true, "alignment": "left", "realism": "left"}]}',
        '{"judge": "x", "votes": [{"item_id": 99999999999999999999, "alignment": "left", "realism": "left"}]}',
    ],
)
def test_malformed_bundle_files_are_plain_errors(judged, tmp_path, content):
    path = tmp_path / "votes-bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match="nothing was imported"):
        exchange.import_bundle_votes(judged, [path])
    assert judged.count_votes() == 3
