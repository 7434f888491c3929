"""Command-line argument types and options shared by the stages: a bad value fails with one
line naming the option as the user typed it."""

from __future__ import annotations

import argparse
import datetime as dt


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (expected YYYY-MM-DD)") from None


def optional_iso_date(text: str) -> dt.date | None:
    """A date, or None for an empty value: schedulers such as Databricks jobs pass a job
    parameter left blank as the empty string, and blank means "not given"."""
    return iso_date(text) if text.strip() else None


def positive_int(text: str, least: int = 1) -> int:
    """A whole number of at least `least`, as an argument type: a bad value fails naming the option."""
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {least}")
    return value


def share(text: str, most: float = 1.0) -> float:
    """A share from 0 to `most`, as an argument type: a bad value fails naming the option."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= most:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to {most:g}")
    return value


def add_as_of_argument(parser: argparse.ArgumentParser) -> None:
    """--as-of, shared by every stage that takes a snapshot date (it sets the top-level as_of)."""
    parser.add_argument(
        "--as-of", type=optional_iso_date, metavar="YYYY-MM-DD",
        help="snapshot date (default, or empty: the latest transaction date)",
    )


def as_of_overrides(args: argparse.Namespace) -> list[str]:
    as_of = getattr(args, "as_of", None)
    return [f"as_of={as_of.isoformat()}"] if as_of else []


def option_overrides(args: argparse.Namespace, keys: dict[str, str]) -> list[str]:
    """`key=value` configuration overrides for the options given on the command line:
    `keys` maps an option's attribute (e.g. "holdout_days") to its key ("clv.holdout_days");
    options left out (None, or absent from `args`) override nothing."""
    values = {key: getattr(args, attribute, None) for attribute, key in keys.items()}
    return [f"{key}={value}" for key, value in values.items() if value is not None]


def treatment_shares(text: str) -> dict[str, float]:
    """`name=share,name=share` (e.g. win_back=0.25,onboarding=0.10), as an argument type."""
    shares: dict[str, float] = {}
    try:
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise argparse.ArgumentTypeError(item)
            shares[name.strip()] = share(value.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of TREATMENT=SHARE with shares from 0 to 1 (e.g. win_back=0.25,onboarding=0.10)"
        ) from None
    return shares
