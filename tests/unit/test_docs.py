"""The README's tables are generated from the code's own contracts and must not drift."""

from segmentation.features.customer import feature_markdown
from segmentation.schema import schema_markdown
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_lists_the_transaction_schema():
    assert schema_markdown() in README


def test_readme_lists_every_feature_column():
    assert feature_markdown() in README
