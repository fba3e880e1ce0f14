"""The Spark session behind ``distributor="pyspark"``, set up so that a download works as is on one machine.

img2dataset 1.47's pyspark distributor uses the active Spark session, or else makes a local one of its own. Its own
one starts the Python workers with whatever ``python3`` comes first on PATH (usually the system Python, which lacks
img2dataset: every task fails with ``ModuleNotFoundError: No module named 'img2dataset'``) and asks for a 16 GB
driver. So img2dataset's process (:mod:`flows.stages.download_manager` runs img2dataset in a child process) sets up
the session itself first, in one of three ways (:class:`SparkPlan`):

* ``local``: nobody set up Spark. A local-mode session, ``local[processes]``, loopback only, no web UI, scratch
  space in the work folder, stopped when the download ends.
* ``submit``: the caller runs under ``spark-submit`` (or the pyspark shell), whose JVM and configuration (master,
  app name, resources) the child reaches through the inherited ``PYSPARK_GATEWAY_*`` variables; the child makes its
  session from that configuration and stops it when the download ends.
* ``attach``: the calling process has an active SparkContext. The child joins that very context through its py4j
  gateway, so the download runs on the caller's cluster and application, and leaves it running.

Workers run ``PYSPARK_PYTHON``. Where the user has not set it (nor ``PYSPARK_DRIVER_PYTHON``), the child's
environment gets this interpreter (``sys.executable``); this process's environment is never changed. On a cluster
every worker therefore needs the same Python environment (gill and img2dataset) at the same path, or
``PYSPARK_PYTHON`` naming one that has them, and Java on every node.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gill.errors import InputError

logger = logging.getLogger(__name__)

SparkMode = Literal["local", "submit", "attach"]
PYTHON_VARIABLES = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")
GATEWAY_PORT_ENV = "PYSPARK_GATEWAY_PORT"
GATEWAY_SECRET_ENV = "PYSPARK_GATEWAY_SECRET"
APP_NAME = "gill-download"
LOCAL_CONF = {
    "spark.ui.enabled": "false",  # no web UI (and no port to find) per download
    "spark.ui.showConsoleProgress": "false",  # no progress bars in the download log
    "spark.driver.bindAddress": "127.0.0.1",  # one machine: never depend on the host name resolving
    "spark.driver.host": "127.0.0.1",
    "spark.log.level": "ERROR",  # task failures still show; Spark's start-up warnings do not
    "spark.python.daemon.module": "flows.stages.download_spark_daemon",  # workers without torch
}
"""Settings of the ``local`` session (Spark's defaults otherwise: 1 GB driver, results are small status rows)."""
JAVA_VERSIONS = {4: ("17 or 21", 17), 3: ("8, 11 or 17", 8)}
"""Per pyspark major version: the Java versions Spark supports (for messages) and the oldest one."""
JAVA_HINT = "install it with `apt-get install default-jre-headless` or use --distributor multiprocessing"
JAVA_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class SparkPlan:
    """How img2dataset's process gets its Spark session (see the module docstring); saved with its run config."""

    mode: SparkMode
    cores: int
    """Worker slots of the ``local`` session: the download's ``processes``."""
    local_dir: str
    """``spark.local.dir`` of the ``local`` session (Spark's scratch space), inside the work folder."""


# ----------------------------------------------------------------------------------------------- calling process


def caller_spark_context() -> Any | None:
    """The calling process's active pyspark SparkContext, or None (pyspark is not imported just to ask)."""
    if "pyspark" not in sys.modules:
        return None
    from pyspark import SparkContext

    return getattr(SparkContext, "_active_spark_context", None)


def spark_mode() -> SparkMode:
    """``attach`` when this process has a SparkContext, ``submit`` under spark-submit, else ``local``."""
    if caller_spark_context() is not None:
        return "attach"
    if os.environ.get(GATEWAY_PORT_ENV):
        return "submit"
    return "local"


def spark_plan(processes: int, local_dir: Path) -> SparkPlan:
    """The plan for a download now, from this process's Spark state."""
    return SparkPlan(mode=spark_mode(), cores=processes, local_dir=str(local_dir))


def spark_child_env(plan: SparkPlan) -> dict[str, str]:
    """Variables to add to img2dataset's environment: this interpreter for the workers and the driver where the user
    named none, and for ``attach`` the caller's gateway (passed in the environment, never written to disk)."""
    env = {name: sys.executable for name in PYTHON_VARIABLES if not os.environ.get(name)}
    if plan.mode == "attach":
        context = caller_spark_context()
        params = context._gateway.gateway_parameters
        env[GATEWAY_PORT_ENV] = str(params.port)
        env[GATEWAY_SECRET_ENV] = str(params.auth_token)
    return env


def check_java() -> None:
    """Fail before anything is downloaded when the ``local`` session cannot start: no Java, or one too old.

    Finds Java as Spark's launcher does: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java`` on PATH.

    Raises:
        InputError: Java is missing, or its version is older than the installed pyspark supports.
    """
    supported, oldest = _java_requirement()
    java = _java_path()
    if java is None:
        home = os.environ.get("JAVA_HOME")
        where = f"JAVA_HOME={home} has no bin/java" if home else "java not found on PATH or JAVA_HOME"
        raise InputError(f"the pyspark distributor needs Java {supported} ({where})", hint=JAVA_HINT)
    version = java_major_version(java)
    if version is not None and version < oldest:
        raise InputError(
            f"the pyspark distributor needs Java {supported}; {java} is Java {version}",
            hint=f"{JAVA_HINT} (or point JAVA_HOME at a Java {supported})",
        )


def _java_requirement() -> tuple[str, int]:
    try:
        major = int(importlib.metadata.version("pyspark").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major = max(JAVA_VERSIONS)
    return JAVA_VERSIONS.get(major, JAVA_VERSIONS[max(JAVA_VERSIONS)])


def _java_path() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        return str(java) if java.is_file() and os.access(java, os.X_OK) else None
    return shutil.which("java")


def java_major_version(java: str) -> int | None:
    """The major version ``java -version`` reports (``1.8.0_x`` is 8), or None when it cannot be read."""
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=JAVA_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


# ----------------------------------------------------------------------------------------------- img2dataset's process


@contextlib.contextmanager
def spark_session(plan: SparkPlan | None) -> Iterator[None]:
    """Make ``plan``'s session the active one for the block (img2dataset's ``getActiveSession()`` finds it); stop it
    afterwards unless it is the caller's (``attach``). ``None``: no Spark."""
    if plan is None:
        yield
        return
    if plan.mode == "attach":
        session, owned = _attached_session(), False
    elif plan.mode == "submit":
        session, owned = _submitted_session(), True
    else:
        session, owned = _local_session(plan), True
    context = session.sparkContext
    logger.info(
        "spark session (%s): master=%s app=%s workers run %s",
        plan.mode,
        context.master,
        context.appName,
        context.pythonExec,
    )
    try:
        yield
    finally:
        if owned:
            session.stop()


def _local_session(plan: SparkPlan) -> Any:
    from pyspark.sql import SparkSession

    Path(plan.local_dir).mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master(f"local[{plan.cores}]").appName(APP_NAME)
    for key, value in {**LOCAL_CONF, "spark.local.dir": plan.local_dir}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _submitted_session() -> Any:
    """A session from spark-submit's configuration (the JVM it started holds it as system properties)."""
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


def _attached_session() -> Any:
    """The caller's SparkContext, joined through its gateway: the JVM allows one context, so this wraps that one."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    SparkContext._ensure_initialized()
    jvm = SparkContext._jvm
    active = jvm.org.apache.spark.SparkContext.getOrCreate()
    context = SparkContext(
        conf=SparkConf(_jconf=active.getConf()), jsc=jvm.org.apache.spark.api.java.JavaSparkContext(active)
    )
    return SparkSession(context)
