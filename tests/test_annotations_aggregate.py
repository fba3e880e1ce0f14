"""The official confident-label rule, the human baseline, agreement statistics, the votes TSV and ``gill annotate``."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from annotations.aggregate import (
    aggregate_file,
    confident_label,
    confident_labels,
    count_labels,
    human_baseline,
    leave_one_out_labels,
    macro_f1,
)
from annotations.agreement import (
    category_counts,
    fleiss_kappa,
    fleiss_kappa_from_counts,
    krippendorff_alpha_nominal,
)
from annotations.votes import (
    VoteRow,
    default_votes_path,
    read_confident,
    read_votes,
    write_confident,
    write_votes,
)
from flows.command.annotate_work import add_annotate_parsers
from gill.errors import InputError

OFFICIAL_HUMAN_F1 = 0.8510681024099351  # official human macro-F1 on the Alignment votes
OFFICIAL_CONFIDENT_CHARS = 130330  # len() of the released PartiPromptsDecisionsConfident.tsv


@pytest.fixture(scope="module")
def alignment() -> list[VoteRow]:
    return read_votes(default_votes_path("alignment"))


# -- the official rule ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("votes", "label"),
    [
        ("gen,gen,gen,gen,gen", "gen"),
        ("ret,gen,ret,ret,ret", "ret"),  # 4-1
        ("gen,gen,gen,ret,same", "gen"),  # 3-1-1
        ("ret,same,ret,same,ret", "ret"),  # 3-0-2
        ("gen,gen,gen,ret,ret", "same"),  # 3-2 split: dropped
        ("gen,gen,ret,same,same", "same"),
        ("same,same,same,same,gen", "same"),
        ("ret,same,ret,gen", "same"),  # a released 4-vote row
        ("ret,ret,ret,gen", "ret"),  # 4 votes: 3 of 4
        ("gen,gen,gen", "gen"),  # 3 votes: unanimous
        ("gen,gen,ret", "same"),
    ],
)
def test_confident_label_follows_the_official_rule(votes, label):
    assert confident_label(votes.split(",")) == label


def test_aggregating_the_released_alignment_votes_gives_the_official_counts(alignment, tmp_path):
    counts = count_labels(confident_labels(alignment))
    assert (counts.gen, counts.ret, counts.same, counts.usable) == (592, 319, 721, 911)

    out = tmp_path / "PartiPromptsDecisionsConfident.tsv"
    assert aggregate_file(default_votes_path("alignment"), out) == counts
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "Prompt\tCategory\tChallenge\tNote\tDecision"
    assert len(text) == OFFICIAL_CONFIDENT_CHARS
    confident = read_confident(out)
    assert [r.text_fields() for r, _ in confident] == [r.text_fields() for r in alignment]  # same order, Note kept
    assert [label for _, label in confident] == confident_labels(alignment)
    # Spot checks against the released PartiPromptsDecisionsConfident.tsv.
    first = [label for _, label in confident[:10]]
    assert first == ["gen", "ret", "gen", "ret", "ret", "ret", "gen", "ret", "gen", "same"]
    assert [label for _, label in confident[-3:]] == ["same", "gen", "same"]


# -- human baseline ---------------------------------------------------------------------------------------------------


def test_human_baseline_reproduces_the_official_number_and_the_leave_one_out_is_lower(alignment):
    baseline = human_baseline(alignment)
    assert baseline.official == pytest.approx(OFFICIAL_HUMAN_F1, abs=1e-12)
    assert [s.judge for s in baseline.official_judges] == [0, 1, 2, 3, 4]
    assert baseline.official == pytest.approx(np.mean([s.f1 for s in baseline.official_judges]), abs=1e-15)
    assert all(0 < s.n <= 911 for s in baseline.official_judges)
    assert math.isfinite(baseline.leave_one_out)
    assert 0.5 < baseline.leave_one_out < baseline.official - 0.1
    for official, loo in zip(baseline.official_judges, baseline.leave_one_out_judges, strict=True):
        assert loo.f1 < official.f1


def test_leave_one_out_labels_use_the_other_judges_only():
    rows = [
        VoteRow("p1", "", "", "", ["gen", "gen", "gen", "ret", "ret"]),
        VoteRow("p2", "", "", "", ["ret", "gen", "gen", "gen", "same"]),
        VoteRow("p3", "", "", "", ["gen", "gen", "same", "gen"]),
    ]
    # Without judge 3: p1 is gen,gen,gen,ret (3 of 4), p2 ret,gen,gen,same (2), p3 gen,gen,same (not unanimous).
    assert leave_one_out_labels(rows, 3) == ["gen", "same", "same"]
    # Without judge 0: p1 gen,gen,ret,ret -> same; p2 gen,gen,gen,same -> gen; p3 gen,same,gen -> same.
    assert leave_one_out_labels(rows, 0) == ["same", "gen", "same"]
    # Judge 4 did not vote on p3, so all four of its votes remain (3 gen of 4).
    assert leave_one_out_labels(rows, 4)[2] == "gen"


def test_macro_f1_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import multiclass_f1_score

    rng = np.random.default_rng(0)
    index = {"gen": 0, "ret": 1}
    for size, p_gen in ((50, 0.5), (7, 0.9), (3, 1.0)):
        truth = ["gen" if x else "ret" for x in rng.random(size) < p_gen]
        pred = ["gen" if x else "ret" for x in rng.random(size) < p_gen]
        preds, target = torch.tensor([index[p] for p in pred]), torch.tensor([index[t] for t in truth])
        expected = multiclass_f1_score(preds, target, num_classes=2, average="macro")
        assert macro_f1(truth, pred) == pytest.approx(float(expected), abs=1e-6)
    assert macro_f1(["gen", "gen"], ["gen", "gen"]) == 1.0  # 'ret' absent from both: left out of the average
    assert macro_f1(["gen", "ret"], ["ret", "gen"]) == 0.0
    # a label outside the classes is a miss for the class on the other side: gen F1 = 2/(2+1) ('same' for a gen), ret 1
    assert macro_f1(["gen", "gen", "ret"], ["gen", "same", "ret"]) == pytest.approx((2 / 3 + 1.0) / 2)
    assert macro_f1([], []) == 0.0
    with pytest.raises(ValueError, match="y_true has 2 items but y_pred 1"):
        macro_f1(["gen", "ret"], ["gen"])


def test_the_string_macro_f1_is_gill_decisions_on_class_indices():
    from gill.decision import macro_f1 as indexed

    rng = np.random.default_rng(1)
    for size in (1, 9, 40):
        truth = list(rng.choice(["gen", "ret", "same"], size))
        pred = list(rng.choice(["gen", "ret", "same"], size))
        index = {"gen": 0, "ret": 1, "same": 2}
        as_index = indexed([index[t] for t in truth], [index[p] for p in pred], num_classes=2)
        assert macro_f1(truth, pred) == as_index  # one implementation: exactly equal
        assert macro_f1(truth, pred, classes=("gen", "ret", "same")) == indexed(
            [index[t] for t in truth], [index[p] for p in pred], num_classes=3
        )


# -- agreement --------------------------------------------------------------------------------------------------------

WIKIPEDIA_FLEISS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_on_the_wikipedia_example():
    result = fleiss_kappa_from_counts(WIKIPEDIA_FLEISS)
    assert result.kappa == pytest.approx(0.20993, abs=5e-5)
    assert result.observed == pytest.approx(0.37802, abs=5e-5)
    assert result.expected == pytest.approx(0.21276, abs=5e-5)
    assert (result.n_items, result.raters) == (10, 14)
    assert fleiss_kappa_from_counts(WIKIPEDIA_FLEISS, mode="generalised").kappa == pytest.approx(result.kappa)


def test_fleiss_kappa_with_missing_ratings_by_hand():
    table = [["a", "a"], ["a", "b", "b"]]
    # complete: only item 2 (3 ratings): P = 2/6, shares (1/3, 2/3), Pe = 5/9, kappa = (1/3 - 5/9) / (4/9) = -1/2.
    complete = fleiss_kappa(table)
    assert complete.kappa == pytest.approx(-0.5) and (complete.n_items, complete.n_dropped) == (1, 1)
    # generalised: P = (1 + 1/3) / 2 = 2/3, shares (3/5, 2/5), Pe = 13/25, kappa = (2/3 - 13/25) / (12/25) = 11/36.
    assert fleiss_kappa(table, mode="generalised").kappa == pytest.approx(11 / 36)
    assert fleiss_kappa([["a", "a", None], ["a", "b", "b"]], mode="generalised").kappa == pytest.approx(11 / 36)


def test_krippendorff_alpha_on_the_textbook_example_with_missing_data():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers x 12 units, values 1..5.
    n = None
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    result = krippendorff_alpha_nominal([list(unit) for unit in zip(*observers, strict=True)])
    assert round(result.alpha, 3) == 0.743
    assert (result.n_pairable, result.n_items) == (40, 11)  # unit 12 has a single value: not pairable
    # Same paper, two observers and binary data: alpha = 0.095.
    a, b = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert round(krippendorff_alpha_nominal(list(zip(a, b, strict=True))).alpha, 3) == 0.095


def test_perfect_agreement_is_one_and_a_single_category_is_undefined():
    perfect = [["gen"] * 5, ["ret"] * 5, ["same"] * 4, ["ret"] * 5]
    assert fleiss_kappa(perfect).kappa == pytest.approx(1.0)
    assert fleiss_kappa(perfect, mode="generalised").kappa == pytest.approx(1.0)
    assert krippendorff_alpha_nominal(perfect).alpha == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([["gen"] * 3] * 4).kappa)
    assert math.isnan(krippendorff_alpha_nominal([["gen"] * 3] * 4).alpha)


def test_category_counts_rejects_unknown_labels():
    counts, cats = category_counts([["ret", None, "gen"], ["gen"]], categories=("ret", "gen", "same"))
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0]] and cats == ["ret", "gen", "same"]
    with pytest.raises(ValueError, match="maybe"):
        category_counts([["ret", "maybe"]], categories=("ret", "gen", "same"))


# -- the votes TSV ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aspect", ["alignment", "realism"])
def test_released_votes_round_trip_byte_identically(aspect, tmp_path):
    source = default_votes_path(aspect)
    rows = read_votes(source)
    assert len(rows) == 1632
    assert sorted(len(r.votes) for r in rows)[:3] == [4, 4, 5]
    mug = next(r for r in rows if r.prompt == "a coffee mug floating in the sky")
    assert len(mug.votes) == 4 and mug.note == ""
    out = write_votes(tmp_path / "votes.tsv", rows)
    assert out.read_bytes() == source.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["votes.tsv"]  # atomic: no temporary file left behind


def test_reader_lists_every_bad_line_in_one_error(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text(
        "Prompt\tCategory\tChallenge\tNote\tDecisions\n"
        "a cat\tAnimals\tBasic\t\tgen,ret,gen,gen,gen\n"
        "a dog\tAnimals\tBasic\t\tgen,maybe,gen,gen,GEN\n"
        "a cow\tAnimals\tBasic\tgen,gen,gen\n"
        "a pig\tAnimals\tBasic\t\t\n"
        "a bee\tAnimals\tBasic\t\tret,ret,ret,ret,yes\n",
        encoding="utf-8",
    )
    with pytest.raises(InputError) as caught:
        read_votes(path)
    err = caught.value
    assert str(path) in err.message and err.exit_code == 2
    assert len(err.problems) == 4
    assert err.problems[0].startswith("line 3:") and "'maybe'" in err.problems[0] and "'GEN'" in err.problems[0]
    assert err.problems[1].startswith("line 4:") and "4 tab-separated column(s), expected 5" in err.problems[1]
    assert err.problems[2] == "line 5: no votes in Decisions"
    assert err.problems[3].startswith("line 6:") and "'yes'" in err.problems[3]


def test_reader_names_missing_header_columns_and_missing_files(tmp_path):
    path = tmp_path / "noheader.tsv"
    path.write_text("Prompt\tCategory\tNote\tVotes\na cat\tAnimals\t\tgen\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_votes(path)
    assert "missing column(s) Challenge, Decisions" in caught.value.problems[0]
    assert "line 2: 4 tab-separated column(s), expected 5" in caught.value.problems
    with pytest.raises(InputError, match="does not exist"):
        read_votes(tmp_path / "absent.tsv")


def test_writers_round_trip_and_refuse_bad_cells(tmp_path):
    rows = [
        VoteRow('say "hi"', "Arts", "Basic", "a note, with comma", ["ret", "same", "gen"]),
        VoteRow("a horse", "Animals", "Simple Detail", "", ["same", "same", "same", "same"]),
    ]
    assert read_votes(write_votes(tmp_path / "v.tsv", rows)) == rows
    labels = confident_labels(rows)
    assert [lab for _, lab in read_confident(write_confident(tmp_path / "c.tsv", rows, labels))] == labels
    with pytest.raises(InputError, match="tab or newline"):
        write_votes(tmp_path / "x.tsv", [VoteRow("a\tb", "", "", "", ["gen"])])
    with pytest.raises(InputError, match="unknown vote"):
        write_votes(tmp_path / "x.tsv", [VoteRow("a", "", "", "", ["yes"])])
    assert not (tmp_path / "x.tsv").exists()


# -- CLI --------------------------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gill")
    groups = parser.add_subparsers(dest="group", required=True)
    commands = add_annotate_parsers(groups)
    assert isinstance(commands, argparse._SubParsersAction)  # open for more ``gill annotate`` subcommands
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_aggregate_writes_the_confident_file_and_prints_counts(tmp_path, capsys):
    out = tmp_path / "confident.tsv"
    assert _run(["annotate", "aggregate", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gen 592  ret 319  same 721  (usable 911 of 1632)" in printed
    assert len(out.read_text(encoding="utf-8")) == OFFICIAL_CONFIDENT_CHARS


def test_cli_human_baseline_reports_f1_and_agreement(capsys, tmp_path):
    assert _run(["annotate", "human-baseline", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["human_macro_f1"]["official"] == pytest.approx(OFFICIAL_HUMAN_F1, abs=1e-12)
    assert report["human_macro_f1"]["leave_one_out"] < report["human_macro_f1"]["official"]
    assert len(report["human_macro_f1"]["official_judges"]) == 5
    assert report["fleiss_kappa"]["items"] == 1630 and report["fleiss_kappa"]["dropped"] == 2
    assert -1 < report["fleiss_kappa"]["kappa"] < 1 and -1 < report["krippendorff_alpha_nominal"]["alpha"] < 1
    assert report["labels"]["usable"] == 911

    realism = default_votes_path("realism")
    assert _run(["annotate", "human-baseline", "--votes", str(realism)]) == 0
    printed = capsys.readouterr().out
    assert "official" in printed and "leave-one-out" in printed and "Fleiss" in printed and "Krippendorff" in printed

    bad = tmp_path / "bad.tsv"
    bad.write_text("Prompt\tDecisions\nx\tgen\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        _run(["annotate", "human-baseline", "--votes", str(bad)])
    assert caught.value.exit_code == 2 and str(bad) in caught.value.message


def test_annotations_never_import_prefect():
    code = (
        "import sys, flows.command.annotate, annotations.aggregate, annotations.agreement, annotations.votes; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect']"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_aggregating_the_released_votes_reproduces_the_released_confident_file_byte_for_byte(tmp_path):
    from pathlib import Path

    # the released data/PartiPromptsDecisionsConfident.tsv of kohjingyu/gill (Apache-2.0): see assets/official/README.md
    official = Path(__file__).parent / "assets" / "official" / "PartiPromptsDecisionsConfident.tsv"
    out = tmp_path / "PartiPromptsDecisionsConfident.tsv"
    aggregate_file(default_votes_path("alignment"), out)
    assert out.read_bytes() == official.read_bytes()
