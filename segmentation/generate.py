"""A seeded synthetic multi-channel transaction feed, generated in Spark.

Customers come from `spark.range`, so nothing loops over customers on the driver. Each one
gets an archetype (VIP, regular, occasional, one-off) with its own purchase rate, dropout
probability, spend level, channel and category preferences; purchases then follow the
"buy till you die" process (exponential gaps between purchases, a coin flip for dropout
after each one, more likely for discount seekers and customers who return more), thinned
by a seasonal curve. Orders have one or more lines, some lines are
returned later, and a configurable share of rows is made defective on purpose.

All randomness is a hash of (seed, customer, stream, index): the output is the same for
the same seed whatever the partitioning.

`treatment_response` plants a response to treatment into a generated feed, as a second step
once a tiers snapshot exists (see its docstring).
"""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.config import DropoutLogOdds, GenerateConfig
from segmentation.schema import RAW_COLUMNS

CHANNELS = ["store", "web", "app", "marketplace", "call_centre"]
REGIONS = ["north", "south", "east", "west", "central", "islands"]
# category -> margin rate
CATEGORIES = {
    "grocery": 0.18, "fashion": 0.55, "beauty": 0.50, "home": 0.35,
    "electronics": 0.15, "sports": 0.40, "toys": 0.38, "books": 0.25,
}
# name, share of customers, purchases per year, dropout Beta(1, b) parameter b,
# median order value, channel weights (store, web, app, marketplace, call centre),
# share of orders in another channel than the preferred one, discount-seeker share, return rate
ARCHETYPES = [
    ("vip", 0.05, 36.0, 80.0, 120.0, (0.45, 0.25, 0.25, 0.00, 0.05), 0.45, 0.15, 0.04),
    ("regular", 0.22, 14.0, 25.0, 70.0, (0.45, 0.25, 0.20, 0.05, 0.05), 0.25, 0.30, 0.05),
    ("occasional", 0.43, 6.0, 6.0, 45.0, (0.40, 0.25, 0.15, 0.18, 0.02), 0.15, 0.45, 0.07),
    ("one_off", 0.30, 3.0, 1.2, 35.0, (0.35, 0.30, 0.10, 0.25, 0.00), 0.05, 0.55, 0.10),
]
MAX_REPEAT_PURCHASES = 200
# Seasonal weight per month (thinning of candidate purchases): November and December peak.
SEASONALITY = [0.85, 0.75, 0.9, 0.95, 1.0, 0.95, 0.9, 0.9, 1.0, 1.05, 1.3, 1.6]
DEFECTS = [
    "duplicate", "missing_customer", "missing_amount", "bad_amount_text", "extreme_amount",
    "future_timestamp", "malformed_timestamp", "unknown_channel", "return_sign_mismatch",
]
_MASK53 = (1 << 53) - 1


def _uniform(seed: int, *parts: Column | str | int) -> Column:
    """A uniform number in (0, 1), a pure function of the seed and `parts`."""
    cols = [p if isinstance(p, Column) else F.lit(p) for p in parts]
    return ((F.xxhash64(F.lit(seed), *cols).bitwiseAND(F.lit(_MASK53)) + 0.5) / float(1 << 53))


def _normal(seed: int, *parts: Column | str | int) -> Column:
    """A standard normal number (Box-Muller on two of the uniforms)."""
    u1, u2 = _uniform(seed, *parts, "n1"), _uniform(seed, *parts, "n2")
    return F.sqrt(-2.0 * F.log(u1)) * F.cos(2.0 * math.pi * u2)


def _pick(u: Column, names: list[str], weights: list[float] | tuple[float, ...] | list[Column]) -> Column:
    """The name whose cumulative-weight bucket contains `u`; numeric weights are normalised,
    Column weights (per-row probabilities) must already sum to one."""
    if all(isinstance(w, (int, float)) for w in weights):
        total = float(sum(weights))  # type: ignore[arg-type]
        weights = [w / total for w in weights]  # type: ignore[operator]
    cumulative: float | Column = 0.0
    column = None
    for name, weight in zip(names, weights):
        cumulative = cumulative + weight
        condition = u <= cumulative
        column = F.when(condition, F.lit(name)) if column is None else column.when(condition, F.lit(name))
    return column.otherwise(F.lit(names[-1]))


def _by_archetype(values: list[float | str]) -> Column:
    column = None
    for (name, *_), value in zip(ARCHETYPES, values):
        condition = F.col("archetype") == name
        column = F.when(condition, F.lit(value)) if column is None else column.when(condition, F.lit(value))
    return column


def generate_customers(spark: SparkSession, config: GenerateConfig) -> DataFrame:
    """One row per customer with the latent behaviour the transactions are drawn from."""
    seed, days = config.seed, (config.end_date - config.start_date).days
    partitions = config.partitions or max(2, math.ceil(config.customers / 50_000))
    customer = F.col("customer_idx")
    archetype = _pick(_uniform(seed, customer, "archetype"), [a[0] for a in ARCHETYPES], [a[1] for a in ARCHETYPES])
    base = spark.range(0, config.customers, numPartitions=partitions).withColumnRenamed("id", "customer_idx")
    with_type = base.select(customer, archetype.alias("archetype"))
    channel_weights = [_by_archetype([a[5][position] for a in ARCHETYPES]) for position in range(len(CHANNELS))]
    preferred_channel = _pick(_uniform(seed, customer, "channel"), CHANNELS, channel_weights)
    dropout_b = _by_archetype([a[3] for a in ARCHETYPES])
    return with_type.select(
        customer,
        F.format_string("C%09d", customer).alias("customer_id"),
        "archetype",
        F.floor(_uniform(seed, customer, "acquired") * days).cast("int").alias("acquisition_day"),
        (_by_archetype([a[2] for a in ARCHETYPES]) / 365.0 * F.exp(0.5 * _normal(seed, customer, "rate"))).alias(
            "purchase_rate"
        ),
        # Beta(1, b) by inversion of its CDF.
        (1.0 - F.pow(1.0 - _uniform(seed, customer, "dropout"), 1.0 / dropout_b)).alias("base_dropout"),
        (_by_archetype([a[4] for a in ARCHETYPES]) * F.exp(0.45 * _normal(seed, customer, "spend"))).alias(
            "order_value"
        ),
        preferred_channel.alias("preferred_channel"),
        _by_archetype([a[6] for a in ARCHETYPES]).alias("channel_switch_rate"),
        _pick(_uniform(seed, customer, "category"), list(CATEGORIES), [1.0] * len(CATEGORIES)).alias(
            "preferred_category"
        ),
        (_uniform(seed, customer, "discount") < _by_archetype([a[7] for a in ARCHETYPES])).alias("discount_seeker"),
        (_by_archetype([a[8] for a in ARCHETYPES]) * 2.0 * _uniform(seed, customer, "returns")).alias("return_rate"),
        _pick(_uniform(seed, customer, "region"), REGIONS, [1.0] * len(REGIONS)).alias("region"),
    ).transform(_with_dropout_probability, config.dropout_log_odds)


def _with_dropout_probability(customers: DataFrame, log_odds: DropoutLogOdds) -> DataFrame:
    """The dropout probability after each purchase: the Beta draw, its odds raised for discount
    seekers and for customers who return more, each relative to their archetype's average.

    Dropout is not only the buy-till-you-die draw: as in retail, deal seekers leave sooner and
    so do customers who send more back. Centred on the archetype's discount-seeker share and
    mean return rate, each shift leaves its average dropout about the same. The churn features
    see them (discount_share, return_rate); BG/NBD does not."""
    base = F.col("base_dropout")
    shift = (
        log_odds.discount_seeker * (F.col("discount_seeker").cast("double") - _by_archetype([a[7] for a in ARCHETYPES]))
        + log_odds.return_rate * (F.col("return_rate") - _by_archetype([a[8] for a in ARCHETYPES]))
    )
    odds = base / (1.0 - base) * F.exp(shift)
    return customers.select(*[c for c in customers.columns if c != "base_dropout"], (odds / (1.0 + odds)).alias("dropout_probability"))


def generate_transactions(customers: DataFrame, config: GenerateConfig) -> DataFrame:
    """The raw feed (every column as text, as it lands from a source system)."""
    seed, days = config.seed, (config.end_date - config.start_date).days
    start_epoch = int(dt.datetime.combine(config.start_date, dt.time(), tzinfo=dt.timezone.utc).timestamp())
    customer = F.col("customer_idx")
    season_max = max(SEASONALITY)

    # Number of repeat purchases before dropout: geometric, failures before the first success.
    p = F.greatest(F.col("dropout_probability"), F.lit(1e-6))
    repeats = F.least(
        F.floor(F.log(_uniform(seed, customer, "repeats")) / F.log(1.0 - p)), F.lit(MAX_REPEAT_PURCHASES)
    ).cast("int")
    # Candidate purchase times (days after acquisition): 0, then cumulative exponential gaps at a
    # rate raised to compensate for the seasonal thinning below.
    rate = F.col("purchase_rate") * (season_max / (sum(SEASONALITY) / 12.0))
    gaps = F.transform(
        F.sequence(F.lit(1), F.greatest(repeats, F.lit(1))),
        lambda j: -F.log(_uniform(seed, customer, "gap", j)) / rate,
    )
    times = F.aggregate(
        F.slice(gaps, 1, repeats),
        F.array(F.lit(0.0)),
        lambda acc, gap: F.concat(acc, F.array(F.element_at(acc, -1) + gap)),
    )
    purchases = customers.select("*", F.posexplode(times).alias("order_no", "day_offset"))
    absolute_day = F.col("acquisition_day") + F.col("day_offset")
    seconds = (
        F.lit(start_epoch)
        + F.floor(absolute_day).cast("long") * 86400
        + F.floor((8 + 14 * _uniform(seed, customer, "hour", F.col("order_no"))) * 3600).cast("long")
    )
    orders = purchases.where(absolute_day < days).select("*", F.timestamp_seconds(seconds).alias("order_ts"))
    season = F.element_at(F.array(*[F.lit(w / season_max) for w in SEASONALITY]), F.month("order_ts"))
    # The first purchase is the acquisition itself and is always kept.
    orders = orders.where((F.col("order_no") == 0) | (_uniform(seed, customer, "season", F.col("order_no")) <= season))

    switch = _uniform(seed, customer, "switch", F.col("order_no")) < F.col("channel_switch_rate")
    other_channel = _pick(_uniform(seed, customer, "other", F.col("order_no")), CHANNELS, [0.35, 0.3, 0.2, 0.12, 0.03])
    lines_in_order = (1 + F.floor(-F.log(_uniform(seed, customer, "lines", F.col("order_no"))) * 1.4)).cast("int")
    orders = orders.select(
        "*",
        F.when(switch, other_channel).otherwise(F.col("preferred_channel")).alias("channel"),
        F.format_string("O%09d-%04d", customer, F.col("order_no")).alias("order_id"),
        F.least(lines_in_order, F.lit(6)).alias("lines_in_order"),
        (F.exp(0.35 * _normal(seed, customer, "basket", F.col("order_no")))).alias("basket_noise"),
        (F.col("discount_seeker") & (_uniform(seed, customer, "promo", F.col("order_no")) < 0.6)).alias("discounted"),
    )
    lines = orders.select("*", F.explode(F.sequence(F.lit(1), F.col("lines_in_order"))).alias("line_no"))
    line_key = [customer, F.col("order_no"), F.col("line_no")]
    category = F.when(
        _uniform(seed, *line_key, "same_category") < 0.6, F.col("preferred_category")
    ).otherwise(_pick(_uniform(seed, *line_key, "category"), list(CATEGORIES), [1.0] * len(CATEGORIES)))
    quantity = (1 + F.floor(-F.log(_uniform(seed, *line_key, "qty")) * 0.6)).cast("int")
    gross = F.col("order_value") * F.col("basket_noise") / F.col("lines_in_order") * F.exp(
        0.3 * _normal(seed, *line_key, "price")
    )
    discount_rate = F.when(F.col("discounted"), 0.1 + 0.2 * _uniform(seed, *line_key, "rate")).otherwise(0.0)
    margin_rate = F.element_at(F.create_map(*[F.lit(x) for kv in CATEGORIES.items() for x in kv]), F.col("category"))
    lines = lines.select(
        "*",
        category.alias("category"),
        quantity.alias("quantity"),
        F.round(gross * (1 - discount_rate), 2).alias("net_amount"),
        F.round(gross * discount_rate, 2).alias("discount_amount"),
        (_uniform(seed, *line_key, "returned") < F.col("return_rate")).alias("returned"),
    ).select("*", F.round(F.col("net_amount") * (margin_rate - 0.1 * F.col("discounted").cast("double")), 2).alias("gross_margin"))

    # A returned line adds a second row 1-30 days later with negative quantity and amount.
    kinds = F.when(F.col("returned"), F.array(F.lit(0), F.lit(1))).otherwise(F.array(F.lit(0)))
    rows = lines.select("*", F.explode(kinds).alias("is_return_row"))
    is_return = F.col("is_return_row") == 1
    sign = F.when(is_return, F.lit(-1)).otherwise(F.lit(1))
    row_ts = F.when(
        is_return,
        F.col("order_ts") + F.make_interval(days=(1 + F.floor(30 * _uniform(seed, *line_key, "return_day"))).cast("int")),
    ).otherwise(F.col("order_ts"))
    store = F.when(F.col("channel") == "store", F.format_string("S-%s-%02d", F.col("region"), (F.abs(F.xxhash64(customer)) % 12).cast("int")))
    site = F.when(F.col("channel") == "marketplace", F.lit("MKT-01")).otherwise(F.upper(F.col("channel")))
    clean = rows.select(
        F.format_string("T%09d-%04d-%02d%s", customer, F.col("order_no"), F.col("line_no"), F.when(is_return, "R").otherwise("")).alias(
            "transaction_id"
        ),
        "order_id",
        "customer_id",
        row_ts.alias("ts"),
        "channel",
        F.coalesce(store, site).alias("store_id"),
        "region",
        F.col("category").alias("product_category"),
        (sign * F.col("quantity")).alias("quantity"),
        (sign * F.col("net_amount")).alias("net_amount"),
        "discount_amount",
        (sign * F.col("gross_margin")).alias("gross_margin"),
        is_return.alias("is_return"),
        customer,
        F.col("order_no"),
        F.col("line_no"),
        F.col("is_return_row"),
    ).where(F.col("ts") < F.lit(dt.datetime.combine(config.end_date, dt.time())))
    return clean.transform(_as_raw_text).transform(_with_defects, config)


def _as_raw_text(df: DataFrame) -> DataFrame:
    text = {c: F.col(c).cast("string") for c in RAW_COLUMNS if c != "transaction_ts"}
    text["transaction_ts"] = F.date_format("ts", "yyyy-MM-dd HH:mm:ss")
    return df.select(*[text[c].alias(c) for c in RAW_COLUMNS], "customer_idx", "order_no", "line_no", "is_return_row")


def _with_defects(df: DataFrame, config: GenerateConfig) -> DataFrame:
    """Turn a `defect_share` of rows into the defects real feeds carry."""
    seed = config.seed
    key = [F.col("customer_idx"), F.col("order_no"), F.col("line_no"), F.col("is_return_row")]
    defective = _uniform(seed, *key, "defect") < config.defect_share
    kind = F.when(defective, _pick(_uniform(seed, *key, "defect_kind"), DEFECTS, [1.0] * len(DEFECTS)))
    replaced = {
        "customer_id": F.when(kind == "missing_customer", F.lit("")),
        "net_amount": F.when(kind == "missing_amount", F.lit(""))
        .when(kind == "bad_amount_text", F.concat(F.regexp_replace("net_amount", r"\.", ","), F.lit(" EUR")))
        .when(kind == "extreme_amount", F.lit("9999999.99")),
        "transaction_ts": F.when(kind == "future_timestamp", F.lit("2099-01-01 12:00:00")).when(
            kind == "malformed_timestamp", F.lit("31/02/2024 25:61")
        ),
        "channel": F.when(kind == "unknown_channel", F.lit("fax")),
        "is_return": F.when(
            kind == "return_sign_mismatch", F.when(F.col("is_return") == "true", "false").otherwise("true")
        ),
    }
    columns = [
        (F.when(kind.isNotNull() & replaced[c].isNotNull(), replaced[c]).otherwise(F.col(c)) if c in replaced else F.col(c)).alias(c)
        for c in RAW_COLUMNS
    ]
    copies = F.when(kind == "duplicate", F.array(F.lit(1), F.lit(2))).otherwise(F.array(F.lit(1)))
    return df.select(*columns, F.explode(copies).alias("_copy")).drop("_copy")


RESPONSE_SUFFIX = "-response-"
RAW_TIMESTAMP_FORMAT = "yyyy-MM-dd HH:mm:ss"


def treatment_response(
    raw: DataFrame, treated: DataFrame, after: dt.date, window_days: int, shares: dict[str, float], seed: int
) -> DataFrame:
    """Extra purchase lines for the treated customers of the snapshot `after`: each of their
    orders in the window (after, after + window_days] is bought once more, with probability
    the share of their treatment, on a seeded day of the window (same lines, amounts and time
    of day; ids suffixed "-response-<after>"). So, in expectation, a treated customer's orders
    in the window rise by that share over what the generator gave them, which is what it gives
    the control customers; control customers and other treatments are untouched. Only
    purchase lines are copied (not returns), and only lines whose timestamp parses.

    `raw` is the generated feed (text columns), `treated` the raw `customer_id` and
    `treatment` of each treated customer. The result has `RAW_COLUMNS` and `treatment`."""
    stamped = F.try_to_timestamp(F.col("transaction_ts"), F.lit(RAW_TIMESTAMP_FORMAT))
    start = F.lit(dt.datetime.combine(after + dt.timedelta(days=1), dt.time()))
    end = F.lit(dt.datetime.combine(after + dt.timedelta(days=window_days + 1), dt.time()))
    # A line planted before is not copied again, so planting twice adds nothing new.
    planted_before = F.col("transaction_id").contains(RESPONSE_SUFFIX)
    in_window = raw.where((stamped >= start) & (stamped < end) & (F.col("is_return") == "false") & ~planted_before)
    planted = treated.where(F.col("treatment").isin(list(shares)))
    lines = in_window.join(planted, on="customer_id", how="inner")
    share = F.element_at(F.create_map(*[F.lit(v) for item in shares.items() for v in item]), F.col("treatment"))
    order = F.col("order_id")
    copied = lines.where(_uniform(seed, order, after.isoformat(), "response") < share)
    day = F.date_add(F.lit(after), (1 + F.floor(_uniform(seed, order, after.isoformat(), "response_day") * window_days)).cast("int"))
    suffix = F.lit(f"{RESPONSE_SUFFIX}{after.isoformat()}")
    new = {
        "transaction_id": F.concat(F.col("transaction_id"), suffix),
        "order_id": F.concat(order, suffix),
        "transaction_ts": F.concat_ws(" ", F.date_format(day, "yyyy-MM-dd"), F.date_format(stamped, "HH:mm:ss")),
    }
    return copied.select(*[new.get(c, F.col(c)).alias(c) for c in RAW_COLUMNS], "treatment")
