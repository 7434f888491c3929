"""First-match rule tables: an ordered list of (name, Spark SQL condition) rows.

RFM segments, lifecycle stages and the business's threshold rules are all rule tables. A
customer gets the name of the first row whose condition is true; a null condition counts as
false; a customer no row matches gets `UNMATCHED`. Rules are checked against the columns of
the DataFrame they apply to before anything runs: a rule that does not parse, names an
unknown column or is not a true/false condition fails with the rule's name and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segmentation.errors import ConfigError

UNMATCHED = "Other"


@dataclass(frozen=True)
class Rule:
    name: str
    condition: str


def compile_rules(df: DataFrame, rules: Sequence[Rule], table: str) -> list[tuple[str, Column]]:
    """Each rule's condition as a Column, checked against `df`'s columns (analysis only, no job)."""
    compiled = []
    for rule in rules:
        where = f"{table} rule '{rule.name}' ({rule.condition})"
        try:
            # In parentheses, so that a trailing word cannot pass as an alias: alone,
            # "value_tier = 'gold' AND" parses as the comparison named "AND".
            condition = F.expr(f"({rule.condition}\n)")
            dtype = df.select(condition.alias("_rule")).schema["_rule"].dataType
        except ParseException as exc:
            raise ConfigError(f"{where}: does not parse: {_first_line(exc)}") from None
        except AnalysisException as exc:
            raise ConfigError(f"{where}: {_first_line(exc)}") from None
        if not isinstance(dtype, (T.BooleanType, T.NullType)):
            raise ConfigError(f"{where}: is {dtype.simpleString()}, not a true/false condition")
        compiled.append((rule.name, condition))
    return compiled


def first_match(compiled: Sequence[tuple[str, Column]], default: str = UNMATCHED) -> Column:
    """The name of the first rule whose condition is true, else `default`."""
    if not compiled:
        return F.lit(default)
    (name, condition), *rest = compiled
    column = F.when(condition, F.lit(name))
    for name, condition in rest:
        column = column.when(condition, F.lit(name))
    return column.otherwise(F.lit(default))


def with_first_match(df: DataFrame, rules: Sequence[Rule], output: str, table: str) -> DataFrame:
    """`df` plus column `output`: the first matching rule's name."""
    return df.select("*", first_match(compile_rules(df, rules, table)).alias(output))


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
