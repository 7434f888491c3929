"""The notebooks in notebooks/, executed headless in order as a user would run them in
Jupyter: the quick start builds two snapshots and two churn models on a small generated
feed, the analyst and reviewer notebooks read them back. Any cell error fails the test."""

from __future__ import annotations

import re
import sys

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from segmentation import tracking
from segmentation.registry import CHAMPION, aliased_version
from tests.conftest import CONF_DIR, FRESH_JVM_SETTINGS, PLANTED_DROPOUT, REPO, SMALL_FEED, make_config

NOTEBOOKS = REPO / "notebooks"
ORDER = ["01_quickstart.ipynb", "02_analyst_tiers.ipynb", "03_reviewer_mlflow.ipynb"]
# Small and fast: what tests/integration/test_pipeline.py runs, with a quick GBT champion.
SMALL = [
    "generate.customers=400", "cluster.k=3", "cluster.restarts=1", "churn.training_cutoffs=2", "churn.gbt={maxIter: 10, maxDepth: 3}",
    *SMALL_FEED, *PLANTED_DROPOUT,
]
RAW_CUSTOMER_ID = re.compile(r"\bC\d{9}\b")  # the generator's ids before pseudonymisation
CELL_TIMEOUT = 1800  # seconds; a quick-start cell runs the whole pipeline on a shared 2-core machine


# What the reviewer notebook prints of the stored scores: the champion rescoring them (the
# largest difference, 0 or a rounding error), or without one the baseline that scores today.
RESCORED = re.compile(r"largest difference (0\.00e\+00|\d\.\d\de-(1\d|[6-9]))")
SCORED_BY_BASELINE = re.compile(r"stored scores by source \{'baseline:[^']+': \d+\}; today baseline:[^;(]+ scores customers \(the same\)")


def notebook_env(monkeypatch, settings: list[str], **extra: str) -> None:
    """The notebooks' kernels' environment (they inherit it): the local overlay, the package's
    configuration with `settings`, this venv's Python for Spark's workers, the demo key, and `extra`."""
    values = {"SEGMENTATION_ENV": "local", "SEGMENTATION_CONF_DIR": str(CONF_DIR), "SEGMENTATION_SET": "\n".join(settings),
              "PYSPARK_PYTHON": sys.executable, **extra}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SEGMENTATION_PSEUDONYMISATION_KEY", raising=False)  # the local demo key
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


def assert_reviewer_scoring(reviewer: str, champion: str | None) -> None:
    """The reviewer notebook's account of the stored scores, for the churn champion's version
    (None: no model is champion)."""
    if champion is not None:  # it reproduces the stored scores
        assert f"champion: version {champion}" in reviewer and RESCORED.search(reviewer)
    else:  # the stored scores name the baseline that scores today
        assert "champion: none" in reviewer and "customers are scored by the" in reviewer
        assert SCORED_BY_BASELINE.search(reviewer)


def execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # The kernel starts in the notebook's folder, as in Jupyter; it inherits the environment.
    NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """Everything the notebook printed or displayed as text, and how many images it showed."""
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            data = output.get("data", {})
            texts += [data.get("text/plain", ""), data.get("text/html", "")]
            images += "image/png" in data
    return "\n".join(texts), images


def test_the_notebooks_are_saved_clean():
    for name in ORDER:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), f"{name} has outputs"
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: the first code cell holds the parameters"


@pytest.mark.slow
def test_the_notebooks_run_in_order_on_generated_data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    settings = [f"storage.root={root}", *FRESH_JVM_SETTINGS, f"spark.conf.spark.sql.warehouse.dir={tmp_path / 'warehouse'}", *SMALL]
    notebook_env(monkeypatch, settings)

    quickstart, quickstart_images = outputs(execute(ORDER[0]))
    reports = sorted(p.name for p in (root / "reports").glob("customer_tiers_*.html"))
    assert len(reports) == 2, reports  # two snapshots, each with its report
    assert all(name[len("customer_tiers_"):-len(".html")] in quickstart for name in reports)
    assert "customer_tiers" in quickstart and "mlflow ui --backend-store-uri" in quickstart
    # What the quick start says scores customers is what the registry holds: the champion, or
    # without one (no model beat every baseline) the best baseline.
    tracking.configure_mlflow(make_config(root, *SMALL))
    champion = aliased_version(MlflowClient(), "churn_classifier", CHAMPION)
    if champion is not None:
        assert f"Customers are scored by model version {champion.version} (champion)." in quickstart
    else:
        assert "stays challenger" in quickstart and "No churn model is champion: customers are scored by the" in quickstart

    analyst, analyst_images = outputs(execute(ORDER[1]))
    assert analyst_images >= 6  # pyramid, Pareto curve, segments, clusters, uplift intervals, migration heat map
    # The quick start's first snapshot is 92 days before the second: its 90-day outcome window has ended.
    assert re.search(r"treatment_outcomes measured as of \d{4}-\d{2}-\d{2}: snapshot \d{4}-\d{2}-\d{2}, window 90 days", analyst)
    assert "of customers by trailing revenue bring" in analyst
    assert "from tier_migrations" in analyst  # the pair the tiers stage recorded, not recomputed

    reviewer, reviewer_images = outputs(execute(ORDER[2]))
    assert "2 churn training runs compared" in reviewer
    assert "challenger: version" in reviewer
    assert_reviewer_scoring(reviewer, champion.version if champion is not None else None)
    assert reviewer_images >= 3  # stage times, PR AUC against baselines, the logged precision-recall curves

    for text in (quickstart, analyst, reviewer):  # ids are shown pseudonymised only
        assert not RAW_CUSTOMER_ID.search(text)
