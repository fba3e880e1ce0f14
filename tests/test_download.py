"""CC3M download on img2dataset: input validation, exact yield reports against a fault-injecting server, resume.

Real downloads go to ``tests/fault_server.py`` on 127.0.0.1 (and to file:// URLs of the synthetic world), with
a 2 s timeout and no retries so the whole file stays fast.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from flows.stages import download_manager as download
from flows.stages.download_manager import (
    DownloadOptions,
    DownloadReport,
    FailureRow,
    ShardStats,
    collect_report,
    completed_shards,
    download_split,
    normalise_error,
    read_url_file,
    remove_incomplete,
    split_dir,
)
from gill.errors import ConfigError, GillError, InputError

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer, serve  # noqa: E402

FAST = {"image_size": 64, "threads": 8, "timeout": 2, "retries": 0}
N_GOOD = 5
FAULTS = {  # path on the fault server -> (status, normalised error message)
    "missing.jpg": ("failed_to_download", "HTTP Error 404: Not Found"),
    "error.jpg": ("failed_to_download", "HTTP Error 500: Internal Server Error"),
    "slow.jpg": ("failed_to_download", "timed out"),
    "html.jpg": ("failed_to_resize", "Image decoding error"),
    "truncated.jpg": ("failed_to_resize", "Image decoding error"),
    "loop.jpg": ("failed_to_download", "HTTP Error 302: redirect loop"),
    "noai.jpg": ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive"),
    "refused": ("failed_to_download", "[Errno 111] Connection refused"),
    "nofile": ("failed_to_download", "[Errno 2] No such file or directory"),
}
LARGE = "large.jpg"  # 6000x6000: img2dataset decodes and downsizes it, so it is a success


# ----------------------------------------------------------------------------------------------- helpers


def write_tsv(path: Path, rows: list[tuple[str, str]], header: str | None = None) -> Path:
    lines = ([header] if header else []) + [f"{caption}\t{url}" for caption, url in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def shard_table(workdir: Path, split: str = "train") -> pd.DataFrame:
    """Every row of every complete shard's parquet (successes and failures), by uid."""
    frames = [pd.read_parquet(tar.with_suffix(".parquet")) for tar in completed_shards(split, workdir)]
    return pd.concat(frames).astype({"uid": int}).sort_values("uid").reset_index(drop=True)


def tar_samples(workdir: Path, split: str = "train") -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} over all complete shards (fails on a duplicate key)."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar in completed_shards(split, workdir):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                key, ext = member.name.split(".", 1)
                assert ext not in samples.setdefault(key, {}), f"duplicate {member.name}"
                samples[key][ext] = archive.extractfile(member).read()
    return samples


def stats_mtimes(workdir: Path, split: str = "train") -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in split_dir(workdir, split).glob("*_stats.json")}


# ----------------------------------------------------------------------------------------------- options


def test_options_reject_every_bad_field_at_once():
    with pytest.raises(ConfigError) as caught:
        DownloadOptions(
            processes=0,
            threads=-1,
            image_size=0,
            resize_mode="stretch",
            shard_size=0,
            timeout=0,
            retries=-1,
            distributor="dask",
            respect_noai="yes",
        )  # type: ignore[arg-type]
    fields = [p.split("=", 1)[0] for p in caught.value.problems]
    assert fields == [
        "processes",
        "threads",
        "image_size",
        "shard_size",
        "retries",
        "timeout",
        "resize_mode",
        "distributor",
        "respect_noai",
    ]
    assert DownloadOptions().shard_size == 10000


# ----------------------------------------------------------------------------------------------- input files


def test_google_tsv_is_read_exactly(tmp_path):
    captions = ['a "quoted" caption, with comma', "line\u2028separator and \x85 inside", "ünïcödé café"]
    path = write_tsv(
        tmp_path / "Train_GCC-training.tsv", [(c, f"http://x.org/{i}.jpg") for i, c in enumerate(captions)]
    )
    frame = read_url_file(path)
    assert list(frame.columns) == ["caption", "url", "uid"]
    assert frame["caption"].tolist() == captions
    assert frame["uid"].tolist() == ["0", "1", "2"]


def test_crlf_bom_and_trailing_blank_lines_are_tolerated(tmp_path):
    path = tmp_path / "in.tsv"
    path.write_bytes(b"\xef\xbb\xbfa cat\thttps://x.org/1.jpg\r\nFILE\tfile:///tmp/a.jpg\r\n\r\n\n")
    frame = read_url_file(path)
    assert frame[["caption", "url"]].values.tolist() == [
        ["a cat", "https://x.org/1.jpg"],
        ["FILE", "file:///tmp/a.jpg"],
    ]


@pytest.mark.parametrize("kind", ["tsv", "csv", "parquet"])
def test_headered_files_are_accepted_and_extra_columns_ignored(tmp_path, kind):
    frame = pd.DataFrame(
        {
            "id": [7, 8],
            "URL": ["http://x.org/a.jpg", "http://x.org/b.jpg"],
            "Caption": ["one, two", 'say "hi"\nthere' if kind == "csv" else "say hi"],
        }
    )
    path = tmp_path / f"in.{kind}"
    if kind == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)
    got = read_url_file(path)
    assert got["url"].tolist() == frame["URL"].tolist()
    assert got["caption"].tolist() == frame["Caption"].tolist()
    assert got["uid"].tolist() == ["0", "1"]


def test_malformed_tsv_reports_every_problem_with_its_line_number(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text(
        "good\thttp://x.org/1.jpg\n"  # 1
        "only one column\n"  # 2
        "a\tb\tc\n"  # 3
        "\thttp://x.org/4.jpg\n"  # 4 empty caption
        "empty url\t\n"  # 5
        "no scheme\twww.x.org/6.jpg\n"  # 6
        "ftp\tftp://x.org/7.jpg\n"  # 7
        "\n"  # 8 blank line in the middle
        "good\tHTTPS://x.org/9.jpg\n",  # 9
        encoding="utf-8",
    )
    with pytest.raises(InputError) as caught:
        read_url_file(path)
    err = caught.value
    assert str(path) in err.message and "7 problems" in err.message
    assert err.problems == [
        "line 2: expected 2 tab-separated columns (caption<TAB>url), found 1 column(s)",
        "line 3: expected 2 tab-separated columns (caption<TAB>url), found 3 column(s)",
        "line 4: empty caption",
        "line 5: empty url",
        "line 6: url 'www.x.org/6.jpg' has no http://, https:// or file:// scheme",
        "line 7: url 'ftp://x.org/7.jpg' has no http://, https:// or file:// scheme",
        "line 8: expected 2 tab-separated columns (caption<TAB>url), found an empty line",
    ]
    assert "caption<TAB>url" in err.hint and "Fix or remove" in err.hint


def test_bad_utf8_lines_are_reported_by_number(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes(
        "ok\thttp://x.org/1.jpg\ncaf\xe9\thttp://x.org/2.jpg\nok\thttp://x.org/3.jpg\n\xff\xfe\tx\n".encode("latin-1")
    )
    with pytest.raises(InputError) as caught:
        read_url_file(path)
    problems = caught.value.problems
    assert problems[:2] == [
        "line 2: not valid UTF-8 (byte 4 of the line)",
        "line 4: not valid UTF-8 (byte 1 of the line)",
    ]
    assert problems[2:] == ["line 4: url 'x' has no http://, https:// or file:// scheme"]


def test_headered_csv_problems_use_the_starting_line_of_each_record(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('url,caption\nhttp://x.org/1.jpg,"two\nlines"\nhttp://x.org/2.jpg\n,empty url\n', encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_url_file(path)
    assert caught.value.problems == [
        "line 4: expected 2 comma-separated columns, found 1 column(s)",
        "line 5: empty url",
    ]


@pytest.mark.parametrize("kind", ["tsv", "csv", "parquet"])
def test_missing_required_columns_are_named(tmp_path, kind):
    path = tmp_path / f"in.{kind}"
    frame = pd.DataFrame({"caption": ["a"], "image_url": ["http://x.org/a.jpg"]})
    if kind == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)
    with pytest.raises(InputError) as caught:
        read_url_file(path)
    [problem] = caught.value.problems
    assert "lacks the required column(s) url" in problem and "'image_url'" in problem


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.tsv", ""), ("blank.tsv", "\n\n"), ("header_only.csv", "caption,url\n"), ("empty.parquet", None)],
)
def test_empty_files_are_rejected(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        pd.DataFrame({"caption": pd.Series([], dtype=str), "url": pd.Series([], dtype=str)}).to_parquet(path)
    else:
        path.write_text(content)
    with pytest.raises(InputError) as caught:
        read_url_file(path)
    assert len(caught.value.problems) == 1 and "no caption/url rows" in caught.value.problems[0]


def test_problem_listing_is_capped(tmp_path):
    path = write_tsv(tmp_path / "many.tsv", [(f"c{i}", f"bad{i}") for i in range(50)])
    with pytest.raises(InputError) as caught:
        read_url_file(path)
    assert "50 problems" in caught.value.message
    assert len(caught.value.problems) == 21 and caught.value.problems[-1] == "... and 30 more problem(s)"
    assert caught.value.problems[19].startswith("line 20:")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_url_file(tmp_path / "nope.tsv")
    (tmp_path / "urls.txt").write_text("a\thttp://x.org/a.jpg\n")
    with pytest.raises(InputError, match="unsupported extension '.txt'"):
        read_url_file(tmp_path / "urls.txt")


def test_bad_input_is_rejected_before_any_download(tmp_path, monkeypatch):
    bad = write_tsv(tmp_path / "bad.tsv", [("a", "www.x.org/a.jpg")])
    good = write_tsv(tmp_path / "good.tsv", [("a", "http://127.0.0.1:9/a.jpg")])
    workdir = tmp_path / "work"
    with pytest.raises(InputError, match="not a valid CC3M URL list"):
        download_split(bad, "train", workdir, DownloadOptions(**FAST))
    with pytest.raises(InputError, match="unknown split 'test'"):
        download_split(good, "test", workdir)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("pyspark", "ray") else real_find_spec(name, *a)
    )
    for distributor in ("pyspark", "ray"):
        with pytest.raises(InputError, match=f"needs the '{distributor}' package") as caught:
            download_split(good, "train", workdir, DownloadOptions(distributor=distributor))
        assert f"pip install {distributor}" in caught.value.hint
    assert not workdir.exists()


# ----------------------------------------------------------------------------------------------- report pieces


def test_error_messages_are_normalised():
    assert normalise_error("HTTP Error 404: Not Found") == "HTTP Error 404: Not Found"
    assert normalise_error("<urlopen error [Errno 2] No such file or directory: '/a/b.jpg'>") == (
        "[Errno 2] No such file or directory"
    )
    assert normalise_error("<urlopen error timed out>") == normalise_error("timed out") == "timed out"
    loop = (
        "HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.\n"
        "The last 30x error message was:\nFound"
    )
    assert normalise_error(loop) == "HTTP Error 302: redirect loop"
    assert normalise_error("bad http://x.org/a?b=c thing") == "bad <url> thing"
    assert normalise_error(None) == "unknown error"


def test_report_rows_fit_the_database(tmp_path):
    pytest.importorskip("duckdb")
    from flows.store import query, record_download

    shard = ShardStats(
        split="val", shard="00000", count=3, successes=1, failed_to_download=1, failed_to_resize=1, duration_s=0.5
    )
    failures = [
        FailureRow(
            split="val", shard="00000", url=f"http://x/{i}", caption="c", status="failed_to_download", error_message=msg
        )
        for i, msg in enumerate(["HTTP Error 404: Not Found", "timed out"])
    ]
    report = DownloadReport(split="val", shards=[shard], failures=failures, n_input=4)
    assert (report.total, report.successes, report.yield_ratio, report.complete) == (3, 1, 1 / 3, False)
    assert report.summary().splitlines()[0] == "cc3m val: 1/3 ok (33.3%) in 1 shard(s)"
    assert "incomplete: 1 of 4 input rows" in report.summary()
    db = tmp_path / "gill.duckdb"
    record_download(db, "val", shards=report.shard_rows(), failures=report.failure_rows())
    assert query(db, "SELECT shard, count, successes FROM download_shards").values.tolist() == [["00000", 3, 1]]
    assert query(db, "SELECT count(*) FROM download_failures WHERE split = 'val'").iloc[0, 0] == 2


def _fake_shard(out: Path, name: str, stats: str | None) -> None:
    (out / f"{name}.tar").write_bytes(b"")
    (out / f"{name}.parquet").write_bytes(b"PAR1")
    if stats is not None:
        (out / f"{name}_stats.json").write_text(stats)


def test_only_shards_with_valid_stats_count_and_leftovers_are_removed(tmp_path):
    out = split_dir(tmp_path, "train")
    (out / "_tmp").mkdir(parents=True)
    (out / "_tmp" / "1.feather").write_bytes(b"x")
    good = json.dumps({"count": 2, "successes": 2, "failed_to_download": 0, "failed_to_resize": 0, "duration": 1.0})
    _fake_shard(out, "00000", good)
    _fake_shard(out, "00001", None)  # killed while writing
    _fake_shard(out, "00002", good[:30])  # killed while writing its stats
    (out / "00003.tar").write_bytes(b"")
    (out / "notes.txt").write_text("kept")
    assert completed_shards("train", tmp_path) == [out / "00000.tar"]
    removed = remove_incomplete(out)
    assert sorted(p.name for p in removed) == [
        "00001.parquet",
        "00001.tar",
        "00002.parquet",
        "00002.tar",
        "00002_stats.json",
        "00003.tar",
        "_tmp",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json", "notes.txt"]
    (out / "mine.json").write_text("{}")
    with pytest.raises(InputError, match="not img2dataset shards"):
        remove_incomplete(out)


def test_a_second_download_of_the_same_split_is_refused_while_one_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "LOCK_WAIT_S", 0.2)
    good = write_tsv(tmp_path / "good.tsv", [("a", "http://127.0.0.1:9/a.jpg")])
    with download._split_lock(tmp_path / "work", "train"):
        with pytest.raises(InputError, match="another download of cc3m train"):
            download_split(good, "train", tmp_path / "work")


def test_a_failing_img2dataset_run_raises_with_its_log(tmp_path, monkeypatch):
    real = download.img2dataset_kwargs
    monkeypatch.setattr(download, "img2dataset_kwargs", lambda *args: {**real(*args), "no_such_option": 1})
    urls = write_tsv(tmp_path / "urls.tsv", [("a", "http://127.0.0.1:9/a.jpg")])
    with pytest.raises(GillError, match="img2dataset exited with status 1") as caught:
        download_split(urls, "train", tmp_path / "work", DownloadOptions(**FAST), progress=False)
    assert any("unexpected keyword argument 'no_such_option'" in line for line in caught.value.problems)
    assert "train.log" in caught.value.hint and completed_shards("train", tmp_path / "work") == []


# ----------------------------------------------------------------------------------------------- real downloads


@pytest.fixture(scope="module")
def server():
    with serve(slow_s=5) as running:
        yield running


@dataclass
class Run:
    workdir: Path
    report: DownloadReport
    names: list[str]  # server path (or fault name) of each input row, in uid order


def fault_rows(server: FaultServer) -> tuple[list[str], list[tuple[str, str]]]:
    """Good images interleaved with every fault, as (caption, url) rows."""
    names = [f"good/{i}.jpg" for i in range(N_GOOD)] + list(FAULTS) + [LARGE]
    order = [names[i] for i in (0, 5, 1, 6, 7, 2, 8, 9, 3, 10, 11, 4, 12, 13, 14)]
    special = {"refused": "http://127.0.0.1:1/refused.jpg", "nofile": "file:///nonexistent-gill-test/such.jpg"}
    return order, [(f"caption of {n}", special.get(n) or server.url(n)) for n in order]


def run_faults(server: FaultServer, tmp: Path, respect_noai: bool, fmt: str) -> Run:
    names, rows = fault_rows(server)
    frame = pd.DataFrame({"caption": [c for c, _ in rows], "url": [u for _, u in rows], "source": "test"})
    path = tmp / f"urls.{fmt}"
    frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    options = DownloadOptions(shard_size=5, respect_noai=respect_noai, **FAST)
    report = download_split(path, "train", tmp / "work", options, progress=respect_noai)
    return Run(tmp / "work", report, names)


@pytest.fixture(scope="module")
def fault_runs(server, tmp_path_factory) -> dict[bool, Run]:
    """Two downloads of the same rows, run at once from two threads: respecting noai (parquet input) and not (CSV)."""
    jobs = {True: "parquet", False: "csv"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            respect: pool.submit(run_faults, server, tmp_path_factory.mktemp(f"noai-{respect}"), respect, fmt)
            for respect, fmt in jobs.items()
        }
        return {respect: future.result() for respect, future in futures.items()}


@pytest.fixture(scope="module")
def respect_run(fault_runs) -> Run:
    return fault_runs[True]


@pytest.fixture(scope="module")
def ignore_run(fault_runs) -> Run:
    return fault_runs[False]


def test_report_counts_exactly_what_was_served(respect_run):
    report = respect_run.report
    assert (report.n_input, report.total, report.successes) == (15, 15, N_GOOD + 1)
    assert [s.shard for s in report.shards] == ["00000", "00001", "00002"]
    assert [s.count for s in report.shards] == [5, 5, 5]
    assert sum(s.failed_to_download for s in report.shards) == 7
    assert sum(s.failed_to_resize for s in report.shards) == 2
    assert report.yield_ratio == pytest.approx(6 / 15) and report.complete
    assert report.summary().splitlines()[0] == "cc3m train: 6/15 ok (40.0%) in 3 shard(s)"
    assert report.top_errors(1) == [("Image decoding error", 2)]


def test_each_fault_fails_with_its_own_reason(respect_run):
    got = {
        row.caption.removeprefix("caption of "): (row.status, normalise_error(row.error_message))
        for row in respect_run.report.failures
    }
    assert got == FAULTS
    by_name = {row.caption.removeprefix("caption of "): row for row in respect_run.report.failures}
    assert (
        by_name["slow.jpg"].url.endswith("/slow.jpg")
        and by_name["slow.jpg"].shard == f"{respect_run.names.index('slow.jpg') // 5:05d}"
    )
    assert by_name["refused"].error_message == "<urlopen error [Errno 111] Connection refused>"
    assert by_name["loop.jpg"].error_message.startswith("HTTP Error 302: The HTTP server returned a redirect error")


def test_samples_hold_the_good_and_the_large_images(respect_run):
    table = shard_table(respect_run.workdir)
    assert table["uid"].tolist() == list(range(15))
    ok = table[table["status"] == "success"]
    assert sorted(respect_run.names[uid] for uid in ok["uid"]) == sorted(
        [f"good/{i}.jpg" for i in range(N_GOOD)] + [LARGE]
    )
    samples = tar_samples(respect_run.workdir)
    assert sorted(samples) == sorted(ok["key"]) and all(set(s) == {"jpg", "txt", "json"} for s in samples.values())
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        assert Image.open(io.BytesIO(sample["jpg"])).size == (64, 64)
        assert sample["txt"].decode() == meta["caption"] == f"caption of {respect_run.names[int(meta['uid'])]}"
        assert key.startswith(f"{int(meta['uid']) // 5:05d}")
    large = ok[ok["uid"] == respect_run.names.index(LARGE)].iloc[0]
    assert (large["original_width"], large["original_height"], large["width"]) == (6000, 6000, 64)


def test_rerun_skips_completed_shards(respect_run, server, tmp_path):
    before = stats_mtimes(respect_run.workdir)
    requests = len(server.requests)
    start = time.monotonic()
    again = download_split(
        respect_run.workdir.parent / "urls.parquet",
        "train",
        respect_run.workdir,
        DownloadOptions(shard_size=5, **FAST),
        progress=False,
    )
    assert time.monotonic() - start < 3
    assert again == respect_run.report == collect_report("train", respect_run.workdir)
    assert stats_mtimes(respect_run.workdir) == before and len(before) == 3
    assert len(server.requests) == requests


def test_changed_input_or_settings_are_refused(respect_run):
    before = stats_mtimes(respect_run.workdir)
    with pytest.raises(InputError, match="another input or with other settings") as caught:
        download_split(
            respect_run.workdir.parent / "urls.parquet",
            "train",
            respect_run.workdir,
            DownloadOptions(shard_size=4, **FAST),
        )
    assert caught.value.problems == ["shard_size: 5 before, 4 now"]
    assert stats_mtimes(respect_run.workdir) == before


def test_ignoring_noai_downloads_it_and_keys_are_stable(respect_run, ignore_run):
    assert ignore_run.report.successes == respect_run.report.successes + 1
    assert "noai.jpg" not in {r.caption.removeprefix("caption of ") for r in ignore_run.report.failures}
    assert len(ignore_run.report.failures) == len(respect_run.report.failures) - 1
    first, second = shard_table(respect_run.workdir), shard_table(ignore_run.workdir)
    assert first[["uid", "key", "url", "caption"]].equals(second[["uid", "key", "url", "caption"]])
    assert first["key"].is_unique


def test_file_urls_work_from_a_script_without_a_main_guard(small_world, tmp_path):
    script = tmp_path / "plain_script.py"
    script.write_text(
        textwrap.dedent("""\
        import sys
        from pathlib import Path
        from flows.stages.download_manager import DownloadOptions, download_split
        options = DownloadOptions(image_size=64, shard_size=10, threads=4)
        report = download_split(Path(sys.argv[1]), "train", Path(sys.argv[2]), options, progress=False)
        sys.stdout.write(f"{report.successes} {report.total} {report.n_input}\\n")
        """)
    )
    workdir = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(script), str(small_world.cc3m_train_tsv), str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["16", "16", "16"]
    assert [p.name for p in completed_shards("train", workdir)] == ["00000.tar", "00001.tar"]
    captions = read_url_file(small_world.cc3m_train_tsv)["caption"].tolist()
    table = shard_table(workdir)
    assert table["caption"].tolist() == captions and set(table["status"]) == {"success"}


def test_original_mode_keeps_the_source_bytes_for_the_official_preprocessing(small_world, tmp_path):
    """``resize_mode="original"``: neither resized nor re-encoded, so precompute's processor sees the original image
    (the official pipeline preprocesses the source image, not a 224 px JPEG of it)."""
    script = tmp_path / "original.py"
    script.write_text(
        textwrap.dedent("""\
        import sys
        from pathlib import Path
        from flows.stages.download_manager import DownloadOptions, download_split
        options = DownloadOptions(resize_mode="original", shard_size=16, threads=4)
        download_split(Path(sys.argv[1]), "train", Path(sys.argv[2]), options, progress=False)
        """)
    )
    workdir = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(script), str(small_world.cc3m_train_tsv), str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_url_file(small_world.cc3m_train_tsv)
    urls = dict(zip(rows["caption"], rows["url"], strict=True))
    checked = 0
    for shard in completed_shards("train", workdir):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for name, data in members.items():
            if name.endswith(".txt"):
                source = Path(urls[data.decode()].removeprefix("file://"))
                assert members[name[: -len(".txt")] + ".jpg"] == source.read_bytes()
                checked += 1
    assert checked == 16


def test_repeated_urls_are_reported_and_can_be_dropped(small_world, tmp_path):
    lines = small_world.cc3m_train_tsv.read_text().splitlines()
    urls = tmp_path / "with-repeats.tsv"
    urls.write_text("\n".join(lines[:6] + lines[:2]) + "\n")  # rows 7 and 8 repeat rows 1 and 2
    assert download.duplicate_url_rows(read_url_file(urls)) == [7, 8]
    kept = download.DownloadReport(split="train", n_input=8, duplicate_urls=2)
    assert "2 row(s) repeat an earlier url: fetched again (drop them with --drop-duplicate-urls)" in kept.summary()
    script = tmp_path / "repeats.py"
    script.write_text(
        textwrap.dedent("""\
        import sys
        from pathlib import Path
        from flows.stages.download_manager import DownloadOptions, download_split
        options = DownloadOptions(image_size=32, shard_size=16, threads=2, drop_duplicate_urls=True)
        report = download_split(Path(sys.argv[1]), "train", Path(sys.argv[2]), options, progress=False)
        sys.stdout.write(f"{report.n_input} {report.successes} {report.duplicate_urls}\\n{report.summary()}\\n")
        """)
    )
    done = subprocess.run(
        [sys.executable, str(script), str(urls), str(tmp_path / "work")], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("6 6 2\n")  # each url fetched once
    assert "2 row(s) repeat an earlier url: dropped" in done.stdout
    assert "data rows 7, 8" in done.stderr  # the warning names the rows


# ----------------------------------------------------------------------------------------------- kill -9, resume

KILLED_RUN = """\
import sys
from pathlib import Path
from flows.stages.download_manager import DownloadOptions, download_split
download_split(Path(sys.argv[1]), "train", Path(sys.argv[2]),
               DownloadOptions(image_size=64, shard_size=4, threads=4, timeout=30, retries=0), progress=False)
"""


def wait_for(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; output:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def test_kill_9_mid_run_then_resume(tmp_path):
    with serve() as gated:
        rows = [(f"good {i}", gated.url(f"good/{100 + i}.jpg")) for i in range(4)]
        rows += [(f"gated {i}", gated.url(f"gate/{i}.jpg")) for i in range(8)]  # shards 1-2 wait for the gate
        urls = write_tsv(tmp_path / "urls.tsv", rows, header="caption\turl")
        workdir, log = tmp_path / "work", tmp_path / "killed.log"
        out = split_dir(workdir, "train")
        proc = start_killable_run(urls, workdir, log)
        try:
            wait_for(lambda: len(completed_shards("train", workdir)) == 1, 60, "shard 00000", log)
            wait_for(lambda: any(p.startswith("/gate/") for p in gated.requests), 30, "shard 00001", log)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wait_for(lambda: not live_group_members(proc.pid), 15, "the killed processes to go", log)
        first_stats = (out / "00000_stats.json").stat().st_mtime_ns
        left = sorted(p.name for p in out.iterdir())
        assert "_tmp" in left and "00001.tar" in left and "00001.parquet" in left and "00001_stats.json" not in left
        assert sorted(p.name for p in (out / "_tmp").iterdir()) == ["1.feather", "2.feather"]
        partial = collect_report("train", workdir)
        assert (len(partial.shards), partial.total, partial.n_input, partial.complete) == (1, 4, 12, False)

        gated.gate.set()
        report = download_split(
            urls,
            "train",
            workdir,
            DownloadOptions(image_size=64, shard_size=4, threads=4, timeout=5, retries=0),
            progress=False,
        )
    assert [s.shard for s in report.shards] == ["00000", "00001", "00002"]
    assert (report.total, report.successes, report.n_input, report.failures) == (12, 12, 12, [])
    assert (out / "00000_stats.json").stat().st_mtime_ns == first_stats
    assert not (out / "_tmp").exists()
    samples = tar_samples(workdir)
    assert len(samples) == 12 and sorted(s["txt"].decode() for s in samples.values()) == sorted(c for c, _ in rows)


def start_killable_run(urls: Path, workdir: Path, log: Path) -> subprocess.Popen:
    """Start a download in its own process group (so the test can SIGKILL all of it), logging to ``log``."""
    with open(log, "wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, str(urls), str(workdir)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def live_group_members(pgid: int) -> list[int]:
    """Pids of processes in a process group that are not zombies."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and PR_SET_PDEATHSIG")
def test_killing_only_the_caller_stops_img2dataset_and_frees_the_lock(tmp_path):
    with serve() as gated:
        urls = write_tsv(tmp_path / "urls.tsv", [(f"gated {i}", gated.url(f"gate/{i}.jpg")) for i in range(4)])
        workdir, log = tmp_path / "work", tmp_path / "killed.log"
        proc = start_killable_run(urls, workdir, log)
        try:
            wait_for(lambda: bool(gated.requests), 30, "the first request", log)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            wait_for(lambda: not live_group_members(proc.pid), 15, "img2dataset's processes to stop", log)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    with download._split_lock(workdir, "train"):
        assert completed_shards("train", workdir) == []
