"""Shipped data files are intact and described (source, format, licence)."""

from __future__ import annotations

import csv

from gill.manifests import dataset_manifest, shipped_file, verify_shipped_files


def test_every_dataset_names_its_source_format_and_licence():
    for name, entry in dataset_manifest().items():
        for key in ("source", "format", "licence", "shipped"):
            assert entry.get(key) not in (None, ""), f"{name} lacks {key}"


def test_shipped_files_match_their_recorded_checksums(tmp_path, monkeypatch):
    assert verify_shipped_files() == []
    import gill.manifests as manifests

    fake = tmp_path / "data_manifests"
    (fake / "official").mkdir(parents=True)
    (fake / "datasets.json").write_text((manifests.manifests_dir() / "datasets.json").read_text())
    (fake / "official" / "model_args.json").write_text("{}")
    monkeypatch.setattr(manifests, "manifests_dir", lambda: fake)
    problems = verify_shipped_files()
    assert any("model_args" in p and "sha256" in p for p in problems)
    assert any("decision_model" in p and "missing" in p for p in problems)


def test_shipped_votes_are_the_released_1632_prompts_with_five_judges():
    with open(shipped_file("partiprompts_votes", "alignment"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 1632
    assert list(rows[0]) == ["Prompt", "Category", "Challenge", "Note", "Decisions"]
    judges = [len(r["Decisions"].split(",")) for r in rows]
    assert judges.count(5) == 1630 and judges.count(4) == 2  # two prompts have only 4 votes (docs/official-gill.md §5)
    assert {v for r in rows for v in r["Decisions"].split(",")} == {"ret", "gen", "same"}
