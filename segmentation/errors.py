"""Typed errors: each says what failed and where, so a user can act on the message alone."""


class SegmentationError(Exception):
    """Base class of every error the product raises on purpose."""


class ConfigError(SegmentationError, ValueError):
    """A configuration file, key or value is missing or invalid."""


class SetupError(SegmentationError, RuntimeError):
    """The runtime (Java, Delta jars, Spark) is not usable as configured."""


class DataQualityError(SegmentationError, ValueError):
    """Input data cannot be processed: missing columns, or too many rejected rows."""


class ModelFitError(SegmentationError, RuntimeError):
    """A model fit did not reach a usable optimum; the message says what to try instead."""


class ModelRegistryError(SegmentationError, LookupError):
    """A registered model, version or alias the stage needs does not exist."""


class InsufficientDataError(DataQualityError):
    """The data are too few for a model stage to fit (see segmentation/sufficiency.py): the
    message names the shortfall and what to do. `segmentation run` skips the stage."""

    def __init__(self, stage: str, shortfall: str) -> None:
        super().__init__(shortfall)
        self.stage = stage
        self.shortfall = shortfall
