# Two commands for a newcomer: `make demo` and `make test`. Both install first (into .venv) when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gill-installed
WORKDIR ?= work/demo
PREFECT_PORT ?= 4200

# Offline-friendly defaults for every target (never override what the caller set).
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1
export NO_ALBUMENTATIONS_UPDATE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install browser-deps java-deps demo serve test lint lock clean

install: $(STAMP)

# Re-runs only when pyproject.toml or the lock changed (or the venv is new): a no-op install takes ~0 s.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[all,dev]"
	@# img2dataset pulls the ancient `dataclasses` backport, which shadows the stdlib module and breaks
	@# the Prefect server. Python >= 3.7 has it built in.
	$(BIN)/python -m pip uninstall --quiet -y dataclasses 2>/dev/null || true
	@touch $(STAMP)

# The full pipeline (flow `gill`) in-process on the embedded default: tiny preset, synthetic world, shipped votes.
demo: install
	$(BIN)/python -m flows.cli demo --workdir $(WORKDIR)

# A local Prefect server (SQLite, 127.0.0.1:$(PREFECT_PORT); skipped when PREFECT_API_URL is set) serving the
# deployment gill/full-pipeline. Then, in another shell:
#   PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/prefect deployment run gill/full-pipeline --watch
serve: install
	PREFECT_PORT=$(PREFECT_PORT) $(BIN)/python -m flows.cli serve --workdir work/pipeline

test: install browser-deps java-deps label-studio duckdb-1x
	GILL_DUCKDB1_REQUIRED=1 $(BIN)/python -m pytest -q

# Headless Chromium + chromedriver for tests/test_annotation_browser.py (Debian packages). Installed when
# missing and we are root (CI); elsewhere install them yourself (`apt-get install chromium chromium-driver`),
# or the browser test reports itself skipped.
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; \
	    else echo "note: chromium/chromedriver missing and not root: the headless-browser test will be skipped"; fi; }

# Java for the pyspark distributor (`gill data download --distributor pyspark`, tests/test_download_spark.py):
# pyspark 4.1 runs on Java 17 or 21. Spark's launcher uses $JAVA_HOME/bin/java when JAVA_HOME is set, else java on
# PATH. Installed when missing and we are root (CI: Debian's default-jre-headless, Java 17 on bookworm, 21 on trixie);
# elsewhere install it yourself, or the Spark tests fail saying how.
java-deps:
	@if [ -n "$$JAVA_HOME" ]; then test -x "$$JAVA_HOME/bin/java"; else command -v java >/dev/null; fi || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      mkdir -p /usr/share/man/man1 && apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends default-jre-headless >/dev/null; \
	    else echo "note: Java missing and not root: install Java 17 or 21 (apt-get install default-jre-headless) or the Spark tests fail"; fi; }

# Label Studio 1.23.2 in its own cached virtualenv (its pinned Django etc. never touch .venv) plus a migrated
# template database, for tests/test_label_studio_live.py. ~1.5 min the first time, instant when already there.
# Where: $GILL_LABEL_STUDIO_VENV, else ${XDG_CACHE_HOME:-~/.cache}/gill/label-studio-1.23.2.
.PHONY: label-studio
label-studio:
	@PYTHON=$(PYTHON) bash scripts/label_studio_env.sh

# A DuckDB 1.1.3 client in its own cached virtualenv, for tests/test_db_compat.py: gill writes gill.duckdb with
# DuckDB 2 in the 1.1 storage format, and that test opens the file with this client. ~10 s the first time.
# Where: ${XDG_CACHE_HOME:-~/.cache}/gill/duckdb-1.1.3; or set GILL_DUCKDB1_PYTHON to an interpreter with DuckDB 1.x.
.PHONY: duckdb-1x
duckdb-1x:
	@PYTHON=$(PYTHON) bash scripts/duckdb1_env.sh

lint: install
	$(BIN)/ruff check gill eval annotations flows tests bench
	$(BIN)/ruff format --check gill eval annotations flows tests bench

# Refresh the pinned versions from the current venv (run after changing dependencies).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(dataclasses|gill)==' > requirements.lock

clean:
	rm -rf $(VENV) work
