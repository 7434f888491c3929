"""The README's tables are generated from the code's own contracts and must not drift."""

import re

from segmentation.features.customer import feature_markdown
from segmentation.schema import schema_markdown
from tests.conftest import CONF_DIR, REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_lists_the_transaction_schema():
    assert schema_markdown() in README


def test_readme_lists_every_feature_column():
    assert feature_markdown() in README


def test_readme_names_every_churn_table_column_and_setting():
    from segmentation.schema import CHURN_COLUMNS
    from segmentation.config import ChurnConfig

    section = README[README.index("## Churn risk"):]
    section = section[: section.index("\n## ", 1)]
    for column in CHURN_COLUMNS:
        assert f"`{column}`" in section, column
    documented = {name for name in ChurnConfig.model_fields if f"churn.{name}" in section or f"`{name}" in section}
    assert {"horizon_days", "lookback_days", "training_cutoffs", "require_out_of_time", "class_weight", "search",
            "contact_budget", "promote_metric", "min_improvement", "risk_tiers"} <= documented


def _field_paths(model, prefix: str = "") -> list[str]:
    """Every configuration key, dotted; list items by their own model's fields (`tiers.playbook[].when`)."""
    import typing

    from pydantic import BaseModel

    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        for candidate in list(candidates):
            candidates.extend(typing.get_args(candidate))
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                is_list = typing.get_origin(annotation) is list or any(
                    typing.get_origin(c) is list for c in typing.get_args(annotation)
                )
                paths.extend(_field_paths(candidate, f"{path}[]." if is_list else f"{path}."))
                break
    return paths


def _present(data, path: str) -> bool:
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        items = data.get(head[:-2]) if isinstance(data, dict) else None
        return isinstance(items, list) and any(_present(item, rest) for item in items)
    if not isinstance(data, dict) or head not in data:
        return False
    return _present(data[head], rest) if rest else True


def test_readme_configuration_reference_is_base_yaml():
    """The reference in the README is segmentation/conf/base.yaml itself, comments and all."""
    base = (CONF_DIR / "base.yaml").read_text(encoding="utf-8")
    assert f"```yaml\n{base}```" in README


def test_base_yaml_sets_every_configuration_key():
    """No key has a default hidden in code: every field is written out in base.yaml (list
    item fields at least once), so the reference is complete. Optional item fields that the
    defaults never use are listed here and must be documented in a comment."""
    import yaml

    from segmentation.config import Config

    base_text = (CONF_DIR / "base.yaml").read_text(encoding="utf-8")
    base = yaml.safe_load(base_text)
    missing = [p for p in _field_paths(Config) if p != "environment" and not _present(base, p)]
    undocumented = [p for p in missing if p.rsplit(".", 1)[-1] + ":" not in base_text]
    assert undocumented == [], undocumented


def readme_table_schemas() -> dict[str, list[tuple[str, str]]]:
    """The (column, type) rows of each `### \\`table\\`` under the README's "## Tables"."""
    import re

    section = README[README.index("\n## Tables\n"):]
    section = section[: section.index("\n## ", 1)]
    schemas: dict[str, list[tuple[str, str]]] = {}
    for block in section.split("\n### ")[1:]:
        name = block.split("`")[1]
        schemas[name] = re.findall(r"^\| `([\w.]+)` \| ([^|]+?) \|", block, flags=re.MULTILINE)
    return schemas


def flat_schema(schema, prefix: str = "") -> list[tuple[str, str]]:
    """A Spark schema as README rows: a struct is `struct`, then one row per field (`a.b`)."""
    from pyspark.sql import types as T

    rows = []
    for field in schema.fields:
        if isinstance(field.dataType, T.StructType):
            rows.append((prefix + field.name, "struct"))
            rows.extend(flat_schema(field.dataType, f"{prefix}{field.name}."))
        else:
            rows.append((prefix + field.name, field.dataType.simpleString()))
    return rows


def test_readme_documents_every_table():
    from segmentation.config import TableLocations

    documented = set(readme_table_schemas())
    bold = {key for key in TableLocations.model_fields if f"**`{key}`**" in README}
    assert documented | bold == set(TableLocations.model_fields)


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_of_the_readme_contents_reaches_a_heading():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    headings = {_anchor(line.lstrip("#")) for line in readme.splitlines() if re.match(r"^#{1,4} ", line)}
    links = re.findall(r"\]\(#([^)]+)\)", readme)
    assert len(links) >= 20
    assert sorted(set(links) - headings) == []
    contents = readme[readme.index("## Contents"):readme.index("## What it does")]
    assert "(#defining-tiers-and-rules-and-adding-one)" in contents and "(#tables)" in contents


def test_readme_lists_the_treatment_outcomes_contract():
    from segmentation.schema import treatment_outcomes_markdown

    assert treatment_outcomes_markdown() in README
