"""The README's tables are generated from the code's own contracts and must not drift."""

from segmentation.features.customer import feature_markdown
from segmentation.schema import schema_markdown
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_lists_the_transaction_schema():
    assert schema_markdown() in README


def test_readme_lists_every_feature_column():
    assert feature_markdown() in README


def test_readme_names_every_churn_table_column_and_setting():
    from jobs.churn import CHURN_COLUMNS
    from segmentation.config import ChurnConfig

    section = README[README.index("## Churn risk"):]
    section = section[: section.index("\n## ", 1)]
    for column in CHURN_COLUMNS:
        assert f"`{column}`" in section, column
    documented = {name for name in ChurnConfig.model_fields if f"churn.{name}" in section or f"`{name}" in section}
    assert {"horizon_days", "lookback_days", "training_cutoffs", "require_out_of_time", "class_weight", "search",
            "contact_budget", "promote_metric", "min_improvement", "risk_tiers"} <= documented
