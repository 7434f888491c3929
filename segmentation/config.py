"""Configuration: YAML files in a configuration folder loaded into typed, validated objects.

The package ships its own folder, `segmentation/conf/` (base.yaml and the overlays), which
is the one copy in the repository and the wheel's package data; a deployment can point
`--conf-dir` or $SEGMENTATION_CONF_DIR at a folder of its own (a copy it edits).

Layers, later wins: `base.yaml` (every default), `<env>.yaml` (local, cluster, databricks),
then `--set key.path=value` overrides from the command line. The models below hold types and
validation only: a default lives in base.yaml and nowhere else. Every leaf remembers the file
(or override) it came from, so an unknown key or a bad value is reported as
`conf/local.yaml: ingest.max_rejected_share: Input should be less than or equal to 1`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segmentation.errors import ConfigError

CONF_DIR_ENV = "SEGMENTATION_CONF_DIR"
# The package's own configuration: base.yaml and the environment overlays (package data).
PACKAGE_CONF_DIR = Path(__file__).resolve().parent / "conf"
# What the product keeps between runs on this machine, per user: Delta's jars (spark.py) and
# an empty MLflow store to copy (tracking.py).
CACHE_DIR = Path.home() / ".cache" / "segmentation"
# Free-form mappings whose keys contain dots themselves (Spark settings, reader options):
# in `--set spark.conf.spark.sql.shuffle.partitions=8` everything after the prefix is one key.
_FREEFORM_MAPPINGS = [("spark", "conf"), ("ingest", "source", "options")]
_METASTORE_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*){1,2}$")
# Channels become column names (revenue_share_<channel>), so they must be identifiers.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_SCORE_RANGE = re.compile(r"^\s*([1-5])\s*(?:-\s*([1-5])\s*)?$")


class _Section(BaseModel):
    """A section of the configuration: types and validation only. Every value, defaults
    included, comes from the YAML files (base.yaml sets every key), so no field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Row(_Section):
    """One row of a configured list (a rule, a tier, an event). base.yaml sets whole lists,
    not rows, so a row's optional fields keep their defaults here."""


class _KeysError(ValueError):
    """A value that contradicts another: names the keys (full paths), so that the error
    names the files or overrides that set them rather than every layer of the section."""

    def __init__(self, keys: tuple[str, ...], reason: str) -> None:
        super().__init__(reason)
        self.keys = keys


class TableLocations(_Section):
    """Where each table lives: a path (absolute, or relative to `storage.root`), or a
    `catalog.schema.table` / `schema.table` name when `storage.catalog` is `metastore`."""

    raw_transactions: str
    transactions: str
    transactions_quarantine: str
    ingest_log: str
    customer_features: str
    customer_clv: str
    customer_clusters: str
    customer_churn: str
    customer_tiers: str
    customer_tier_history: str
    tier_migrations: str
    tier_events: str
    treatment_outcomes: str


class StorageConfig(_Section):
    root: str
    catalog: Literal["path", "metastore"]
    tables: TableLocations

    @model_validator(mode="after")
    def _names_fit_catalog(self) -> "StorageConfig":
        if self.catalog == "metastore":
            for key, value in self.tables.model_dump().items():
                if not _METASTORE_NAME.match(value):
                    raise ValueError(
                        f"tables.{key}: '{value}' is not a 'catalog.schema.table' or 'schema.table' "
                        "name, which storage.catalog 'metastore' requires"
                    )
        return self


class SparkConfig(_Section):
    master: str | None
    app_name: str
    # auto: use an existing session (Databricks, notebooks) or local Delta jars from
    # `segmentation setup`, else let Spark resolve them from Maven Central (needs network).
    delta: Literal["auto", "local-jars", "packages", "provided"]
    jars_dir: str | None
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"]
    conf: dict[str, str | int | float | bool]
    # sc://host:port of a Spark Connect server (null: pyspark's SPARK_REMOTE, else a classic session)
    remote: str | None
    # map the class-data archive `segmentation setup` makes when starting the driver's JVM (segmentation.jvm)
    class_archive: bool


class MlflowConfig(_Section):
    tracking_uri: str | None  # null: sqlite:///<storage.root>/mlflow.db
    registry_uri: str | None
    artifact_location: str | None  # null: <storage.root>/mlartifacts
    experiment: str


class PrivacyConfig(_Section):
    pseudonymise: bool
    key_env: str
    key_file: str | None
    # Only for demos and tests: a fixed, publicly known key. Never for real customer data.
    allow_demo_key: bool


class DropoutLogOdds(_Section):
    """The generator's planted covariate effects on dropout: the shift in the log-odds of
    dropping out after a purchase per unit of each, relative to the archetype's average."""

    discount_seeker: float = Field(allow_inf_nan=False)  # per unit of discount seeker (0 or 1)
    return_rate: float = Field(allow_inf_nan=False)  # per unit of return rate (a share)


class GenerateConfig(_Section):
    dataset: Literal["synthetic", "cdnow_sample", "cdnow_master"]
    customers: int = Field(gt=0)
    seed: int
    start_date: dt.date
    end_date: dt.date
    defect_share: float = Field(ge=0.0, le=0.5)
    partitions: int | None = Field(gt=0)
    cdnow_path: str | None
    # A planted response to treatment (segmentation generate --response-after S): per
    # treatment, the share by which its treated customers of snapshot S buy more often in
    # the outcome window than the generator has them buy (control customers: untouched).
    treatment_response: dict[str, float]
    response_after: dt.date | None
    dropout_log_odds: DropoutLogOdds

    @field_validator("treatment_response")
    @classmethod
    def _response_shares(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, share in value.items() if not 0.0 <= share <= 1.0]
        if bad:
            raise ValueError(f"{', '.join(bad)}: a response share is from 0 to 1")
        return value

    @model_validator(mode="after")
    def _dates_ordered(self) -> "GenerateConfig":
        if self.end_date <= self.start_date:
            raise _KeysError(
                ("generate.start_date", "generate.end_date"),
                f"end_date {self.end_date} must be after start_date {self.start_date}",
            )
        return self


class SourceConfig(_Section):
    """An ingest source: a configured table key, or a path with its format."""

    table: str | None
    path: str | None
    format: Literal["delta", "parquet", "csv"]
    options: dict[str, str | int | float | bool]

    @model_validator(mode="after")
    def _one_location(self) -> "SourceConfig":
        if (self.table is None) == (self.path is None):
            raise ValueError("set exactly one of 'table' (a key of storage.tables) or 'path'")
        return self


class IngestConfig(_Section):
    source: SourceConfig
    channels: list[str]
    min_timestamp: dt.date
    # Rows stamped later than the ingest time plus this tolerance are "timestamp_in_future".
    future_tolerance_days: int = Field(ge=0)
    # Overrides the ingest time as the reference for the future check (reproducible runs).
    reference_time: dt.datetime | None
    max_abs_amount: float = Field(gt=0)
    max_abs_quantity: int = Field(gt=0)
    max_rejected_share: float = Field(ge=0.0, le=1.0)
    # Reject a row whose quantity's sign contradicts its amount's (quantity -2 on a sale).
    quantity_sign_mismatch: bool
    # Values that mean "no value" in a feed, in any case (as an empty field does).
    missing_values: list[str]

    @model_validator(mode="after")
    def _reference_after_min_timestamp(self) -> "IngestConfig":
        if self.reference_time is None:
            return self
        latest = self.reference_time + dt.timedelta(days=self.future_tolerance_days)
        if latest.date() < self.min_timestamp:
            raise _KeysError(
                ("ingest.reference_time", "ingest.min_timestamp"),
                f"reference_time {self.reference_time} (plus future_tolerance_days) is before min_timestamp "
                f"{self.min_timestamp}: every row would be too old or in the future",
            )
        return self

    @field_validator("channels")
    @classmethod
    def _channels_normalised(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one channel is required")
        normalised = [c.strip().lower() for c in value]
        if len(set(normalised)) != len(normalised):
            raise ValueError(f"duplicate channel in {value}")
        for channel in normalised:
            if not _IDENTIFIER.match(channel):
                raise ValueError(f"channel '{channel}' must be letters, digits and underscores (it names feature columns)")
        return normalised


class ExpressionRule(_Row):
    """One row of a first-match rule table: a name and a Spark SQL condition over feature columns."""

    name: str = Field(min_length=1)
    when: str = Field(min_length=1)


class SegmentRule(_Row):
    """One row of the RFM segment map: score ranges such as "5", "4-5" or "any"."""

    name: str = Field(min_length=1)
    r: str = "any"
    f: str = "any"
    m: str = "any"

    @field_validator("r", "f", "m", mode="before")
    @classmethod
    def _score_range(cls, value: Any) -> str:
        text = str(value).strip().lower()
        if text == "any":
            return text
        match = _SCORE_RANGE.match(text)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ValueError(f"'{value}' is not a score range: use a score 1-5, a range like 4-5, or any")
        return text.replace(" ", "")

    def condition(self) -> str:
        """The row as a condition over r_score, f_score and m_score."""
        parts = []
        for letter in "rfm":
            spec = getattr(self, letter)
            if spec == "any":
                continue
            low, _, high = spec.partition("-")
            parts.append(f"{letter}_score = {low}" if not high else f"{letter}_score BETWEEN {low} AND {high}")
        return " AND ".join(parts) or "true"


class RfmConfig(_Section):
    # The feature columns scored 1-5 (recency inverted: fewest days = 5).
    recency: str
    frequency: str
    monetary: str
    segments: list[SegmentRule]

    @field_validator("segments")
    @classmethod
    def _segments_named_once(cls, value: list[SegmentRule]) -> list[SegmentRule]:
        return _unique_names(value, "segment")


class ValueTier(_Row):
    name: str = Field(min_length=1)
    share: float | None = Field(None, gt=0.0, lt=1.0)  # share of customers; the last tier takes the rest


class ValuePyramidConfig(_Section):
    rank_by: str
    tiers: list[ValueTier]

    @field_validator("tiers")
    @classmethod
    def _shares_add_up(cls, value: list[ValueTier]) -> list[ValueTier]:
        _last_takes_the_rest(value, "share", "tier", "a share")
        total = sum(tier.share for tier in value[:-1])  # type: ignore[misc]
        if total >= 1.0:
            raise ValueError(f"the shares add up to {total:g}; they must leave some customers for '{value[-1].name}'")
        return value


class FeaturesConfig(_Section):
    # Relative error of the approximate quantiles behind RFM scores and value tiers (0 = exact, slow).
    quantile_relative_error: float = Field(ge=0.0, lt=0.5)
    rfm: RfmConfig
    value_pyramid: ValuePyramidConfig
    lifecycle: list[ExpressionRule]
    business_rules: list[ExpressionRule]

    @field_validator("lifecycle", "business_rules")
    @classmethod
    def _rules_named_once(cls, value: list[ExpressionRule]) -> list[ExpressionRule]:
        return _unique_names(value, "rule")


def _last_takes_the_rest(tiers: list[Any], bound: str, kind: str, what: str) -> None:
    """Named once, at least two, every tier but the last has `bound`, the last has none."""
    _unique_names(tiers, kind)
    if len(tiers) < 2:
        raise ValueError(f"at least two {kind}s are needed")
    if any(getattr(t, bound) is None for t in tiers[:-1]) or getattr(tiers[-1], bound) is not None:
        raise ValueError(f"every {kind} but the last needs {what}; the last takes the rest and has none")


def _unique_names(items: list[Any], kind: str) -> list[Any]:
    names = [item.name for item in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{kind} name(s) used twice: {', '.join(duplicates)}")
    return items


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ClvConfig(_Section):
    """BG/NBD + Gamma-Gamma lifetime value: the fit, the scoring horizon and the holdout check."""

    # Purchases are counted per day; t_x and T are measured in this unit (FHL 2005 use weeks).
    time_unit: Literal["day", "week"]
    # > 0: fit on the transactions up to as_of minus this many days, and compare the
    # predictions with what customers actually bought in those days.
    holdout_days: int = Field(ge=0)
    horizon_days: int = Field(gt=0)  # expected purchases over the next N days
    # next_purchase_date stays null below this P(alive), or beyond this many days.
    next_purchase_min_alive: float = Field(ge=0.0, le=1.0)
    next_purchase_horizon_days: int = Field(gt=0)
    months: int = Field(gt=0)  # discounted CLV over this many months
    monthly_discount_rate: float = Field(ge=0.0, lt=1.0)
    penalizer: float = Field(ge=0.0)  # L2 penalty of the BG/NBD fit (lifetimes' penalizer_coef)
    spend_penalizer: float = Field(ge=0.0)  # the same for Gamma-Gamma
    # Up to this many distinct triples (or spend groups) are fitted on the driver; beyond,
    # each optimiser step sums the likelihood in Spark instead of collecting the rows.
    max_driver_rows: int = Field(gt=0)
    # Data sufficiency (checked before the fit, segmentation/sufficiency.py): customers with a
    # repeat purchase, and the calibration period's length in time units.
    min_repeat_customers: int = Field(ge=1)
    min_calibration_units: int = Field(ge=1)


class ClusterConfig(_Section):
    """K-means segmentation over customer features (see segmentation/clustering)."""

    algorithm: Literal["kmeans", "bisecting_kmeans"]
    features: list[str]
    # Skewed amounts and counts enter as log(1 + max(value, 0)).
    log_features: list[str]
    k: int | None = Field(ge=2)  # a fixed k; null: the best silhouette in k_min..k_max
    k_min: int = Field(ge=2)
    k_max: int = Field(ge=2)
    # K-means is fitted on a seeded sample of at most this many customers (null: all of
    # them); every customer is assigned to a cluster.
    fit_sample: int | None = Field(ge=100)
    # Silhouette is computed on a sample of at most this many customers, whatever their number.
    silhouette_sample: int = Field(ge=100)
    seed: int
    # K-means finds a local optimum: fit this many times (seeds seed, seed+1, ...) per k on the
    # driver's sample and keep the lowest cost; the fit on the fit sample starts from them.
    restarts: int = Field(ge=1)
    # A K-means retrain of the champion's k starts from the champion's centres (no search on
    # the driver for a fixed k), so barely changed data keeps its clusters, their ids and
    # names; false: it starts from the driver's centres like a first fit.
    warm_start: bool
    max_iterations: int = Field(gt=0)
    registered_model: str
    # The new model becomes champion when its silhouette is at least the champion's minus this.
    promote_tolerance: float = Field(ge=0.0)
    # Clusters whose centroids lie within this distance (in standardised units) of a champion
    # cluster keep that cluster's id and name; farther ones get new ids.
    max_match_distance: float = Field(gt=0.0)
    # Data sufficiency: distinct customers per cluster of the largest k to fit.
    min_customers_per_cluster: int = Field(ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterConfig":
        if self.k_max < self.k_min:
            raise _KeysError(("cluster.k_min", "cluster.k_max"), f"k_max {self.k_max} is below k_min {self.k_min}")
        unknown = sorted(set(self.log_features) - set(self.features))
        if unknown:
            raise ValueError(f"log_features not in features: {', '.join(unknown)}")
        if len(set(self.features)) != len(self.features) or not self.features:
            raise ValueError("features must be a non-empty list without repeats")
        return self


class RiskTier(_Row):
    name: str = Field(min_length=1)
    # Customers with a churn probability at or above this; the last tier takes the rest.
    min_probability: float | None = Field(None, gt=0.0, lt=1.0)


class ChurnConfig(_Section):
    """The churn classifier (see segmentation/churn): labels, model, evaluation, registry, risk tiers."""

    # Label at a cutoff C: no purchase in (C, C + horizon_days]. Eligible at C: a purchase in
    # the lookback_days ending on C.
    horizon_days: int = Field(gt=0)
    lookback_days: int = Field(gt=0)
    # Evaluation cutoff; null: as_of minus horizon_days (the latest whose window is observed).
    evaluation_cutoff: dt.date | None
    # Training cutoffs: a number of cutoffs horizon_days apart before the evaluation cutoff,
    # or a list of dates.
    training_cutoffs: int | list[dt.date]
    # Training label windows must end on or before the evaluation cutoff (out of time). Only
    # turn off for short histories, and say so: the evaluation is then not fully out of time.
    require_out_of_time: bool
    model: Literal["gbt", "logistic_regression"]
    # Training and evaluation rows come from a seeded sample of at most this many customers
    # (null: all of them); every eligible customer is scored.
    sample_customers: int | None = Field(ge=100)
    features: list[str]
    # balanced: each class weighs half of the training rows; the probabilities are corrected
    # back to the observed churn rate, so they stay calibrated. none: no weights.
    class_weight: Literal["balanced", "none"]
    seed: int
    # Spark ML parameters of the classifier (GBTClassifier / LogisticRegression names).
    gbt: dict[str, int | float | str]
    logistic_regression: dict[str, int | float | str]
    # Optional search: parameter -> candidate values, chosen by TrainValidationSplit on the
    # training rows by PR AUC (the evaluation cutoff stays unseen); {} for none.
    search: dict[str, list[int | float | str]]
    search_train_ratio: float = Field(gt=0.0, lt=1.0)
    # The non-learned recency baseline ranks customers by this feature (larger = riskier).
    recency_baseline: str
    # Operating threshold for the confusion matrix: the top contact_budget share of customers,
    # or the threshold of best F1.
    operating_point: Literal["budget", "best_f1"]
    contact_budget: float = Field(gt=0.0, lt=1.0)
    registered_model: str
    # A new model becomes champion when it beats the champion on the same evaluation rows by
    # more than min_improvement in this metric.
    promote_metric: Literal["pr_auc", "roc_auc", "lift_10", "lift_20", "brier"]
    min_improvement: float = Field(ge=0.0)
    # Data sufficiency: churners (positives) and stayers (negatives) needed in the training
    # rows and in the evaluation rows.
    min_positives: int = Field(ge=1)
    min_negatives: int = Field(ge=1)
    risk_tiers: list[RiskTier]

    @field_validator("risk_tiers")
    @classmethod
    def _tiers_descend(cls, value: list[RiskTier]) -> list[RiskTier]:
        _last_takes_the_rest(value, "min_probability", "risk tier", "min_probability")
        bounds = [t.min_probability for t in value[:-1]]
        if bounds != sorted(bounds, reverse=True) or len(set(bounds)) != len(bounds):
            raise ValueError(f"min_probability must fall strictly from the first tier to the last: {bounds}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ChurnConfig":
        if len(set(self.features)) != len(self.features) or not self.features:
            raise ValueError("features must be a non-empty list without repeats")
        if isinstance(self.training_cutoffs, int) and self.training_cutoffs < 1:
            raise ValueError("training_cutoffs must be at least 1 (or a list of dates)")
        if isinstance(self.training_cutoffs, list) and not self.training_cutoffs:
            raise ValueError("training_cutoffs: the list of dates is empty")
        return self


class PlaybookRule(_Row):
    """One row of the treatment playbook: the first row whose condition holds gives the
    customer's recommended action, channel and priority (1 = most urgent)."""

    name: str = Field(min_length=1)
    when: str = Field(min_length=1)
    action: str = Field(min_length=1)
    # A channel name, or "preferred": the customer's preferred channel (default_channel if none).
    channel: str = "preferred"
    priority: int = Field(3, ge=1, le=9)
    # The share of this treatment's customers held out as a control group; null: tiers.holdout_share.
    holdout_share: float | None = Field(None, ge=0.0, lt=1.0)


class TierEvent(_Row):
    """A movement between two snapshots that triggers an action, e.g. an upgrade invitation
    when value_tier moves up, or a win-back when lifecycle_stage enters lapsed."""

    name: str = Field(min_length=1)
    dimension: str = Field(min_length=1)
    # upgrade / downgrade need an ordered dimension (value_tier, churn_risk_tier, r/f/m scores).
    direction: Literal["upgrade", "downgrade", "any"] = "any"
    from_tiers: list[str] = Field(default_factory=list)  # empty: any tier
    to_tiers: list[str] = Field(default_factory=list)
    action: str = Field(min_length=1)


class TiersConfig(_Section):
    """The customer tier table, its history, migrations and the playbook (see segmentation/tiers)."""

    # The value pyramid of the tier table ranks by this column: clv (predicted lifetime
    # value) or a feature such as revenue_365d (trailing revenue). Shares from features.value_pyramid.
    value_rank_by: str
    stickiness: list[ExpressionRule]
    playbook: list[PlaybookRule]
    default_channel: str
    # Per treatment, this share of its customers is a control group that gets no action
    # (0: none), drawn by a hash of holdout_seed, the treatment and the customer.
    holdout_share: float = Field(ge=0.0, lt=1.0)
    holdout_seed: int
    # Tier columns whose changes open a new row of customer_tier_history, and the
    # dimensions of tier_migrations.
    tracked: list[str]
    events: list[TierEvent]

    @field_validator("stickiness", "playbook", "events")
    @classmethod
    def _named_once(cls, value: list[Any]) -> list[Any]:
        return _unique_names(value, "rule")

    @field_validator("tracked")
    @classmethod
    def _tracked_once(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must be a non-empty list without repeats")
        return value


class OutcomesConfig(_Section):
    """Measured uplift: the treated against the control customers of a snapshot S over
    (S, S + window_days] (see segmentation/treatments)."""

    window_days: int = Field(gt=0)
    # A group with fewer customers makes every metric of its treatment "too small to tell".
    min_group_customers: int = Field(ge=2)
    confidence: float = Field(gt=0.5, lt=1.0)  # of the uplift intervals


class Config(_Section):
    environment: str
    # The snapshot date of every stage: only transactions on or before it are used.
    # Null: the date of the latest transaction.
    as_of: dt.date | None
    storage: StorageConfig
    spark: SparkConfig
    mlflow: MlflowConfig
    privacy: PrivacyConfig
    generate: GenerateConfig
    ingest: IngestConfig
    features: FeaturesConfig
    clv: ClvConfig
    cluster: ClusterConfig
    churn: ChurnConfig
    tiers: TiersConfig
    outcomes: OutcomesConfig
    logging: LoggingConfig

    @model_validator(mode="after")
    def _source_table_known(self) -> "Config":
        table = self.ingest.source.table
        if table is not None and table not in TableLocations.model_fields:
            raise _KeysError(
                ("ingest.source.table",),
                f"'{table}' is not a key of storage.tables ({', '.join(TableLocations.model_fields)})",
            )
        return self

    @model_validator(mode="after")
    def _as_of_after_min_timestamp(self) -> "Config":
        if self.as_of is not None and self.as_of < self.ingest.min_timestamp:
            raise _KeysError(
                ("as_of", "ingest.min_timestamp"),
                f"as_of {self.as_of} is before ingest.min_timestamp {self.ingest.min_timestamp}: "
                "ingest rejects every transaction that old, so no snapshot can have any",
            )
        return self

    @property
    def root(self) -> Path:
        return Path(self.storage.root)

    def fingerprint(self) -> str:
        """A short hash of the effective configuration, for run tags and lineage."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def default_conf_dir() -> Path:
    """`$SEGMENTATION_CONF_DIR`, else `./conf` if it holds a base.yaml, else the package's own."""
    if os.environ.get(CONF_DIR_ENV):
        return Path(os.environ[CONF_DIR_ENV])
    cwd_conf = Path.cwd() / "conf"
    if (cwd_conf / "base.yaml").is_file():
        return cwd_conf
    return PACKAGE_CONF_DIR


def load_config(
    env: str = "local",
    conf_dir: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Load `base.yaml`, the `<env>.yaml` overlay and `key.path=value` overrides."""
    directory = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    _merge(merged, _read_yaml(directory / "base.yaml"), origin, str(directory / "base.yaml"), ())
    if env != "base":
        overlay = directory / f"{env}.yaml"
        if not overlay.is_file():
            available = sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "base")
            raise ConfigError(
                f"{overlay}: no such environment file (environment '{env}'; available: {', '.join(available)})"
            )
        _merge(merged, _read_yaml(overlay), origin, str(overlay), ())
    for item in overrides:
        key, value = _parse_override(item)
        update: dict[str, Any] = value
        for part in reversed(key):
            update = {part: update}
        _merge(merged, update, origin, f"--set {item}", ())
    merged.setdefault("environment", env)
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    return _resolved(config, directory)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an impossible date such as 2025-02-30
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[tuple[str, ...], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {item}: expected KEY.PATH=VALUE, e.g. ingest.max_rejected_share=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an impossible date such as 2025-02-30
        raise ConfigError(f"--set {item}: value is not valid YAML: {exc}") from None
    parts = tuple(key.strip().split("."))
    for prefix in _FREEFORM_MAPPINGS:
        if parts[: len(prefix)] == prefix and len(parts) > len(prefix) + 1:
            parts = (*prefix, ".".join(parts[len(prefix):]))
    return parts, value


def _merge(
    target: dict[str, Any],
    update: dict[str, Any],
    origin: dict[tuple[str, ...], str],
    source: str,
    prefix: tuple[str, ...],
) -> None:
    for key, value in update.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, origin, source, path)
        else:
            target[key] = value
            origin[path] = source


def _describe(exc: ValidationError, origin: dict[tuple[str, ...], str]) -> str:
    lines = []
    for error in exc.errors():
        path = tuple(str(p) for p in error["loc"])
        source = _origin_of(path, origin)
        key = ".".join(path) or "(top level)"
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _KeysError):
            source = " + ".join(dict.fromkeys(_origin_of(tuple(k.split(".")), origin) for k in cause.keys))
            key = ", ".join(cause.keys)
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        elif error["type"] == "missing":
            reason = "required key is missing"
        lines.append(f"{source}: {key}: {reason}")
    return "invalid configuration: " + "; ".join(lines)


def _origin_of(path: tuple[str, ...], origin: dict[tuple[str, ...], str]) -> str:
    """The file(s) that set `path`: the nearest layer that set it or a parent, plus every
    layer that set something below it (a section-level error may come from any of them)."""
    sources: list[str] = []
    for length in range(len(path), 0, -1):
        if path[:length] in origin:
            sources.append(origin[path[:length]])
            break
    for key, source in origin.items():
        if len(key) > len(path) and key[: len(path)] == path and source not in sources:
            sources.append(source)
    return " + ".join(sources) if sources else "configuration"


def _resolved(config: Config, conf_dir: Path) -> Config:
    """Make relative paths absolute once, so every stage sees the same locations: storage.root
    against the current directory, privacy.key_file against the configuration folder (the
    current directory with the package's own configuration: nobody keeps a key in there)."""
    root = Path(config.storage.root).expanduser()
    if not root.is_absolute():
        root = (Path.cwd() / root).resolve()
    update: dict[str, Any] = {"storage": config.storage.model_copy(update={"root": str(root)})}
    if config.privacy.key_file:
        key_file = Path(config.privacy.key_file).expanduser()
        if not key_file.is_absolute():
            folder = Path.cwd() if conf_dir.resolve() == PACKAGE_CONF_DIR else conf_dir
            key_file = (folder / key_file).resolve()
        update["privacy"] = config.privacy.model_copy(update={"key_file": str(key_file)})
    return config.model_copy(update=update)
