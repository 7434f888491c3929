# The two commands of the README:
#   make demo   install everything, run the whole pipeline on generated data, print where results are
#   make test   install everything, run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: setup demo test java-check clean

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
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/segmentation run --env local $(ARGS)

test: setup
	$(BIN)/pytest $(ARGS)

clean:
	rm -rf segmentation-data spark-warehouse metastore_db derby.log .pytest_cache
