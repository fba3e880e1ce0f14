"""``--distributor pyspark`` works as is: a local-mode session whose workers run this interpreter, the Java check,
and a user's spark-submit or SparkSession respected (flows.stages.download_spark).

The Spark tests run real Spark (pyspark from PyPI, Java from Debian; ``make test`` installs both) against the
loopback image server of ``tests/fault_server.py``, with PATH ordered so that the system ``python3`` (which lacks
img2dataset) comes first and no ``PYSPARK_PYTHON``: as a new user runs it. Without the session set-up every Spark
task fails with ``ModuleNotFoundError: No module named 'img2dataset'``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.stages import download_manager, download_spark
from flows.stages.download_manager import DownloadOptions, collect_report, download_split
from flows.stages.download_spark import SparkPlan, check_java, java_major_version, spark_child_env, spark_mode
from gill.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import serve  # noqa: E402
from test_download import tar_samples, write_tsv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 40
FAST = ["--image-size", "64", "--threads", "4", "--timeout", "5", "--retries", "0"]
SPARK_TIMEOUT_S = 300
INSTALL_HINT = (
    "run `make test` (it installs pyspark with the 'spark' extra and Java with `make java-deps`), or: "
    "pip install -c requirements.lock -e '.[spark]' && apt-get install default-jre-headless"
)


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def spark_ready() -> None:
    """pyspark and Java must be here: these tests fail (never skip) with how to install them."""
    if importlib.util.find_spec("pyspark") is None:
        pytest.fail(f"pyspark is not installed: {INSTALL_HINT}")
    try:
        check_java()
    except InputError as err:
        pytest.fail(f"{err}\n{INSTALL_HINT}")


def user_env(**extra: str) -> dict[str, str]:
    """This environment as a new user has it: no PYSPARK_* variables, and a PATH on which ``python3`` is the system
    one (this interpreter's folder removed, /usr/bin first), so Spark's default worker Python lacks img2dataset."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_") and k != "SPARK_HOME"}
    venv_bin = str(Path(sys.executable).parent)
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin", *rest])
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def path_python3(env: dict[str, str]) -> str | None:
    return shutil.which("python3", path=env["PATH"])


def log_text(workdir: Path, split: str) -> str:
    return (workdir / "data" / "cc3m" / "_logs" / f"{split}.log").read_text(encoding="utf-8", errors="replace")


def successes(workdir: Path, split: str, n_input: int) -> tuple[int, int]:
    report = collect_report(split, workdir, n_input=n_input)
    return report.successes, report.total


# ----------------------------------------------------------------------------------------------- local mode


def test_gill_data_download_with_pyspark_works_as_is_and_matches_multiprocessing(spark_ready, tmp_path):
    env = user_env()
    assert path_python3(env) != sys.executable, "the system python3 must come first on PATH to reproduce the bug"
    with serve() as server:
        rows = [(f"caption {i}", server.url(f"good/{i}.jpg")) for i in range(N_IMAGES)]
        urls = write_tsv(tmp_path / "urls.tsv", rows)
        spark_work, mp_work = tmp_path / "spark", tmp_path / "mp"
        command = [sys.executable, "-m", "flows.command", "data", "download", "--urls", str(urls), "--split"]
        command += ["train", "--workdir", str(spark_work), "--distributor", "pyspark", "--processes", "2"]
        command += ["--shard-size", "10", "--quiet", *FAST]
        with ThreadPoolExecutor(max_workers=1) as pool:
            spark_run = pool.submit(
                subprocess.run, command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SPARK_TIMEOUT_S
            )
            options = DownloadOptions(processes=2, shard_size=10, image_size=64, threads=4, timeout=5, retries=0)
            mp_report = download_split(urls, "train", mp_work, options, progress=False)
            done = spark_run.result()
    assert done.returncode == 0, done.stderr[-3000:] + log_text(spark_work, "train")[-3000:]
    assert f"cc3m train: {N_IMAGES}/{N_IMAGES} ok (100.0%) in 4 shard(s)" in done.stdout
    assert successes(spark_work, "train", N_IMAGES) == (N_IMAGES, N_IMAGES)
    assert (mp_report.successes, mp_report.total) == (N_IMAGES, N_IMAGES)
    log = log_text(spark_work, "train")
    assert f"spark session (local): master=local[2] app=gill-download workers run {sys.executable}" in log
    spark_samples, mp_samples = tar_samples(spark_work), tar_samples(mp_work)
    assert sorted(spark_samples) == sorted(mp_samples) and len(spark_samples) == N_IMAGES
    for key, sample in mp_samples.items():
        assert spark_samples[key]["txt"] == sample["txt"], key
        assert spark_samples[key]["jpg"] == sample["jpg"], key
    assert not any((spark_work / "data" / "cc3m" / "_spark").iterdir()), "Spark left its scratch space behind"


# ----------------------------------------------------------------------------------------------- spark-submit


SUBMITTED = """\
import json, sys
from pathlib import Path
from pyspark.sql import SparkSession
from flows.stages.download_manager import DownloadOptions, download_split

urls, workdir = Path(sys.argv[1]), Path(sys.argv[2])
options = DownloadOptions(distributor="pyspark", shard_size=4, image_size=64, threads=4, timeout=5, retries=0)
submitted = download_split(urls, "train", workdir, options, progress=False)  # no session yet: spark-submit's conf
spark = SparkSession.builder.getOrCreate()  # the user's own session, then a download that must run in it
attached = download_split(urls, "val", workdir, options, progress=False)
context = spark.sparkContext
result = {
    "train": [submitted.successes, submitted.total],
    "val": [attached.successes, attached.total],
    "jobs_in_user_context": len(context.statusTracker().getJobIdsForGroup()),
    "still_usable": context.parallelize(range(5), 2).count(),
}
spark.stop()
sys.stdout.write("RESULT " + json.dumps(result) + "\\n")
"""


def test_spark_submit_and_an_existing_session_are_respected(spark_ready, tmp_path):
    """Under spark-submit, the download's session takes spark-submit's master and name; once the user has a
    session, the download joins it (its jobs show in that context, which stays usable)."""
    import pyspark

    n = 8
    script = tmp_path / "submitted.py"
    script.write_text(textwrap.dedent(SUBMITTED))
    env = user_env(PYSPARK_DRIVER_PYTHON=sys.executable)  # how spark-submit finds this Python for the driver
    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    with serve() as server:
        urls = write_tsv(tmp_path / "urls.tsv", [(f"caption {i}", server.url(f"good/{i}.jpg")) for i in range(n)])
        command = [str(spark_submit), "--master", "local[3]", "--name", "user-app", "--conf", "spark.ui.enabled=false"]
        command += [str(script), str(urls), str(tmp_path / "work")]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SPARK_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["train"] == [n, n] and result["val"] == [n, n]
    assert result["jobs_in_user_context"] >= 1 and result["still_usable"] == 5
    work = tmp_path / "work"
    assert f"spark session (submit): master=local[3] app=user-app workers run {sys.executable}" in log_text(
        work, "train"
    )
    assert f"spark session (attach): master=local[3] app=user-app workers run {sys.executable}" in log_text(work, "val")


# ----------------------------------------------------------------------------------------------- checks, environment


def fake_java(home: Path, version_line: str) -> Path:
    """A JAVA_HOME whose bin/java prints ``version_line`` to stderr, as ``java -version`` does."""
    java = home / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return home


def test_missing_or_old_java_is_refused_before_anything_is_downloaded(tmp_path, monkeypatch):
    urls = write_tsv(tmp_path / "urls.tsv", [("a", "http://127.0.0.1:9/a.jpg")])
    workdir = tmp_path / "work"
    options = DownloadOptions(distributor="pyspark")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv(download_spark.GATEWAY_PORT_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InputError) as caught:
        download_split(urls, "train", workdir, options)
    assert caught.value.message == "the pyspark distributor needs Java 17 or 21 (java not found on PATH or JAVA_HOME)"
    assert caught.value.hint == (
        "install it with `apt-get install default-jre-headless` or use --distributor multiprocessing"
    )
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match=r"needs Java 17 or 21 \(JAVA_HOME=.*nowhere has no bin/java\)"):
        download_split(urls, "train", workdir, options)
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path / "jdk11", 'openjdk version "11.0.2" 2019-01-15')))
    with pytest.raises(InputError, match=r"needs Java 17 or 21; .*jdk11/bin/java is Java 11") as caught:
        download_split(urls, "train", workdir, options)
    assert "JAVA_HOME" in caught.value.hint
    assert not workdir.exists()
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path / "jdk21", 'openjdk version "21" 2023-09-19')))
    check_java()  # accepted


@pytest.mark.parametrize(
    ("line", "major"),
    [('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_392"', 8), ('openjdk version "21"', 21)],
)
def test_java_versions_are_read_like_spark_needs_them(tmp_path, line, major):
    assert java_major_version(str(fake_java(tmp_path / "jdk", line) / "bin" / "java")) == major
    assert java_major_version(str(tmp_path / "no-java")) is None


def test_workers_get_this_python_only_where_the_user_named_none(monkeypatch, tmp_path):
    plan = SparkPlan(mode="local", cores=2, local_dir=str(tmp_path))
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.delenv("PYSPARK_DRIVER_PYTHON", raising=False)
    before = dict(os.environ)
    assert spark_child_env(plan) == {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/cluster-env/bin/python")
    assert spark_child_env(plan) == {"PYSPARK_DRIVER_PYTHON": sys.executable}
    child = download_manager._child_env(spark_child_env(plan))
    assert child["PYSPARK_PYTHON"] == "/opt/cluster-env/bin/python"
    assert child["PYSPARK_DRIVER_PYTHON"] == sys.executable
    assert dict(os.environ) == {**before, "PYSPARK_PYTHON": "/opt/cluster-env/bin/python"}  # only the test set it


def test_spark_mode_follows_what_the_user_set_up(monkeypatch):
    monkeypatch.delenv(download_spark.GATEWAY_PORT_ENV, raising=False)
    monkeypatch.setattr(download_spark, "caller_spark_context", lambda: None)
    assert spark_mode() == "local"
    monkeypatch.setenv(download_spark.GATEWAY_PORT_ENV, "40000")
    assert spark_mode() == "submit"
    monkeypatch.setattr(download_spark, "caller_spark_context", lambda: object())
    assert spark_mode() == "attach"


def test_a_failed_run_names_the_python_error_above_the_jvm_stack(tmp_path):
    log = tmp_path / "train.log"
    stack = [f"\tat org.apache.spark.Frame{i}(Frame.scala:{i})" for i in range(30)]
    earlier_run = ["=== 2026-01-01 00:00:00 old run", "ValueError: from an earlier run"]
    this_run = ["=== 2026-01-02 00:00:00 new run", "Traceback (most recent call last):"]
    this_run += ["ModuleNotFoundError: No module named 'img2dataset'", *stack]
    log.write_text("\n".join(earlier_run + this_run) + "\n")
    tail = download_manager._tail(log)
    assert tail[0] == "ModuleNotFoundError: No module named 'img2dataset'"
    assert tail[1:] == stack[-15:]
    log.write_text("\n".join(earlier_run + ["=== 2026-01-02 00:00:00 new run", *stack]) + "\n")
    assert download_manager._tail(log) == stack[-15:]
