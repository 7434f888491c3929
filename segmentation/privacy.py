"""Pseudonymisation of customer ids with a keyed hash (HMAC-SHA256), and what erasure matches.

The hash runs in the JVM, built from Spark's `sha2` as RFC 2104 defines HMAC. Its padded
keys must not become literals of the query plan (Spark prints plans in error messages, logs
and its UI): they are the data of a one-row DataFrame, read by a scalar subquery, which plans
print as a reference only. The key never comes from the repository: an environment variable
or a secret file, or, for demos only, a fixed and publicly known demo key that is logged as
such.

Erasure takes customer ids as the business knows them (raw), hashes them exactly as ingest
does, and matches them by the pseudonym in every table but the raw landing tables, where
they are matched as they arrived.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.config import Config, PrivacyConfig
from segmentation.errors import ConfigError

log = logging.getLogger(__name__)

DEMO_KEY = b"segmentation-DEMO-KEY-not-secret-do-not-use-for-real-data"
_MIN_KEY_BYTES = 16
# The column that identifies a customer in every table that holds customer rows.
CUSTOMER_COLUMN = "customer_id"
# The quarantine's copy of an unparseable source line (kept only with pseudonymisation off).
RAW_RECORD_COLUMN = "raw_record"
# The landing table the generator writes: raw feeds as they arrive, customer ids not hashed.
RAW_LANDING_TABLE = "raw_transactions"


def load_key(config: PrivacyConfig) -> bytes:
    """The pseudonymisation key from the environment or the key file (demo key only if allowed)."""
    value = os.environ.get(config.key_env)
    if value:
        key, origin = value.encode("utf-8"), f"environment variable {config.key_env}"
    elif config.key_file:
        path = Path(config.key_file)
        if not path.is_file():
            raise ConfigError(f"privacy.key_file: {path} does not exist")
        key, origin = path.read_bytes().strip(), f"key file {path}"
    elif config.allow_demo_key:
        log.warning("pseudonymising with the public DEMO key: fine for generated data, never for real customers")
        return DEMO_KEY
    else:
        raise ConfigError(
            f"privacy: no pseudonymisation key. Set the environment variable {config.key_env} or "
            "privacy.key_file (or privacy.pseudonymise: false, or privacy.allow_demo_key: true for demo data)"
        )
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"privacy: the key from {origin} is shorter than {_MIN_KEY_BYTES} bytes")
    log.info("pseudonymisation key from %s (fingerprint %s)", origin, key_fingerprint(key))
    return key


def key_fingerprint(key: bytes) -> str:
    """A short, non-reversible label for the key, safe to log and to store as lineage."""
    return hashlib.sha256(b"segmentation-key-fingerprint:" + key).hexdigest()[:12]


# SHA-256 reads its input in blocks of 64 bytes; HMAC pads the key to one block (RFC 2104).
_BLOCK_BYTES = 64
_INNER_PAD, _OUTER_PAD = 0x36, 0x5C


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys: the key (hashed first when longer than a
    block) padded with zeros to a block, XOR 0x36 and XOR 0x5c."""
    block = (hashlib.sha256(key).digest() if len(key) > _BLOCK_BYTES else key).ljust(_BLOCK_BYTES, b"\0")
    return bytes(b ^ _INNER_PAD for b in block), bytes(b ^ _OUTER_PAD for b in block)


def hmac_sha256_hex(value: Column, key: bytes, spark: SparkSession) -> Column:
    """HMAC-SHA256 of a string column's UTF-8 bytes as 64 lowercase hex characters (null stays
    null): SHA-256(outer pad || SHA-256(inner pad || value)), in the JVM. The pads are a row
    of data in `spark`, read by a scalar subquery: no plan holds them as literals."""
    pads = spark.createDataFrame([tuple(bytearray(pad) for pad in hmac_pads(key))], "inner binary, outer binary")
    padded = pads.select(F.struct("inner", "outer")).scalar()
    inner = F.unhex(F.sha2(F.concat(padded["inner"], value.cast("binary")), 256))
    return F.sha2(F.concat(padded["outer"], inner), 256)


def pseudonymised(value: Column, key: bytes | None, spark: SparkSession) -> Column:
    """The keyed hash of an id, or the id unchanged when pseudonymisation is off (key None)."""
    return value if key is None else hmac_sha256_hex(value, key, spark)


# What a feed may pad a value with, trimmed from both ends of every value: ASCII whitespace
# (tabs, line breaks), Unicode spaces (no-break, thin, ideographic, ...), the zero-width
# space and the byte-order mark.
PADDING = "".join([
    " \t\n\u000b\f\r\u00a0\u1680", *map(chr, range(0x2000, 0x200C)), "\u2028\u2029\u202f\u205f\u3000\ufeff",
])


def trimmed(value: Column) -> Column:
    """The value as text without the `PADDING` around it."""
    return F.trim(value.cast("string"), F.lit(PADDING))


def trimmed_sql(column: str) -> str:
    """`trimmed` in Spark SQL, for conditions written as text."""
    escaped = "".join(c if c == " " else f"\\u{ord(c):04x}" for c in PADDING)
    return f"trim(BOTH '{escaped}' FROM {column})"


def customer_key(value: Column) -> Column:
    """A raw customer id as ingest reads it: trimmed text, empty as null (hashed after this)."""
    text = trimmed(value)
    return F.when(text != "", text)


def raw_table_keys(config: Config) -> set[str]:
    """The configured tables that hold customer ids as they arrived: the raw landing table and
    the ingest source table (the same one by default). Every other table holds pseudonyms
    when pseudonymisation is on."""
    return {RAW_LANDING_TABLE} | ({config.ingest.source.table} if config.ingest.source.table else set())


def erasure_ids(raw_ids: DataFrame, key: bytes | None) -> DataFrame:
    """`raw_id` and its `pseudonym` (the keyed hash ingest stores; the raw id itself with
    pseudonymisation off) for each distinct id in the single column of `raw_ids`."""
    normalised = raw_ids.select(customer_key(F.col(raw_ids.columns[0])).alias("raw_id"))
    distinct = normalised.where(F.col("raw_id").isNotNull()).distinct()
    return distinct.select("raw_id", pseudonymised(F.col("raw_id"), key, raw_ids.sparkSession).alias("pseudonym"))


def erasure_condition(columns: list[str], holds_raw_ids: bool) -> str | None:
    """The MERGE condition matching a table's rows (alias `t`) to the `erasure_ids` (alias
    `s`); None when the table has no customer column (aggregates such as tier_migrations).

    A quarantine `raw_record` (an unparseable line, kept only with pseudonymisation off) is
    matched when one of its fields, split at , ; | or tab and unquoted, is the raw id.
    """
    conditions = []
    if CUSTOMER_COLUMN in columns:
        column = f"t.{CUSTOMER_COLUMN}"
        conditions.append(f"{trimmed_sql(column)} = s.raw_id" if holds_raw_ids else f"{column} = s.pseudonym")
    if conditions and RAW_RECORD_COLUMN in columns:
        field = f"trim(BOTH '\"' FROM {trimmed_sql('f')})"
        conditions.append(rf"exists(split(t.{RAW_RECORD_COLUMN}, '[,;|\t]'), f -> {field} = s.raw_id)")
    return " OR ".join(f"({c})" for c in conditions) or None
