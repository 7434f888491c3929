"""Pseudonymisation of customer ids with a keyed hash (HMAC-SHA256).

The hash runs in a vectorised (Arrow) pandas UDF that closes over the key. A native
`sha2` construction would be faster, but it would put key material into the query plan as
literals, and Spark prints plans in error messages and logs. The key never comes from the repository: an environment variable or a secret file, or, for
demos only, a fixed and publicly known demo key that is logged as such.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F

from segmentation.config import PrivacyConfig
from segmentation.errors import ConfigError

log = logging.getLogger(__name__)

DEMO_KEY = b"segmentation-DEMO-KEY-not-secret-do-not-use-for-real-data"
_MIN_KEY_BYTES = 16


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


def hmac_sha256_hex(value: Column, key: bytes) -> Column:
    """HMAC-SHA256 of a string column as 64 lowercase hex characters (null stays null)."""

    @F.pandas_udf("string")  # type: ignore[call-overload]
    def keyed_hash(ids: pd.Series) -> pd.Series:
        return pd.Series(
            [None if v is None else hmac.new(key, v.encode("utf-8"), hashlib.sha256).hexdigest() for v in ids],
            dtype=object,
        )

    return keyed_hash(value)


def pseudonymised(value: Column, key: bytes | None) -> Column:
    """The keyed hash of an id, or the id unchanged when pseudonymisation is off (key None)."""
    return value if key is None else hmac_sha256_hex(value, key)
