# The two commands of the README:
#   make demo   install everything, run the whole pipeline on generated data, print where results are
#   make test   install everything, run the test suite
# And for reviewers:
#   make mlflow-server   an MLflow tracking server (SQLite + artifact folder under MLFLOW_DIR) on MLFLOW_PORT;
#                        point the pipeline at it with --set mlflow.tracking_uri=http://127.0.0.1:$(MLFLOW_PORT)
#   make connect-server  a Spark Connect server with Delta (cached jars, no network) on CONNECT_PORT;
#                        point the pipeline at it with SPARK_REMOTE=sc://localhost:$(CONNECT_PORT)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
TEST_WORKERS ?= 2
MLFLOW_DIR  ?= segmentation-data/mlflow-server
MLFLOW_PORT ?= 5000
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_BACKEND_STORE_URI ?= sqlite:///$(abspath $(MLFLOW_DIR))/mlflow.db
MLFLOW_ARTIFACTS ?= $(abspath $(MLFLOW_DIR))/artifacts
CONNECT_PORT ?= 15002

.PHONY: setup demo test mlflow-server connect-server java-check clean

setup: $(VENV)/.installed
	@$(BIN)/segmentation setup

java-check:
	@command -v java >/dev/null 2>&1 || { echo "Java 17 is required but 'java' is not on PATH. Install it, e.g. 'apt-get install openjdk-17-jdk-headless' (Debian/Ubuntu) or 'brew install openjdk@17' (macOS), then set JAVA_HOME." >&2; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	  [ "$$v" = "17" ] || [ "$$v" = "21" ] || { echo "Java 17 is required (found major version '$$v'). Install openjdk-17 and point JAVA_HOME at it." >&2; exit 1; }

$(VENV)/.installed: pyproject.toml | java-check
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) is required: install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[spark,dev]'
	@touch $@

demo: setup
	$(BIN)/segmentation run --env local $(ARGS)

# Two pytest workers (pytest-xdist), each with its own Spark session; a test file runs whole
# in one worker (tests/conftest.py groups them). TEST_WORKERS=0 runs the suite in one process.
test: setup
	$(BIN)/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no pool of GenAI job workers (this project runs none).
mlflow-server: $(VENV)/.installed
	@mkdir -p $(MLFLOW_DIR)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server \
	  --backend-store-uri $(MLFLOW_BACKEND_STORE_URI) --artifacts-destination $(MLFLOW_ARTIFACTS) \
	  --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 1

# The server's Spark settings are those of the local environment (ARGS="--set key=value ..." changes them).
connect-server: setup
	$(BIN)/python -m segmentation.connect serve --port $(CONNECT_PORT) $(ARGS)

clean:
	rm -rf segmentation-data spark-warehouse metastore_db derby.log .pytest_cache
