"""A non-learned churn score turned into a probability, for when no learned model beats it.

The score (larger = riskier) of the evaluation rows is cut into quantile buckets
(`evaluate_scores`, with their rows and churners). Their churn rates, made monotone by pooling
adjacent buckets out of order (pool adjacent violators: isotonic regression on the buckets),
are a step function from score to probability. It is fitted on the evaluation rows, holds at
most one step per bucket, and is saved with the training run (`churn/baseline_scorer.json`)
so that `churn score` applies it later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from segmentation.churn.evaluation import Bucket

ARTIFACT = "churn/baseline_scorer.json"


@dataclass(frozen=True)
class Step:
    low: float  # the step's probability holds from this score up to the next step's low
    probability: float
    rows: int
    churners: int


def calibration_steps(buckets: list[Bucket]) -> list[Step]:
    """The monotone (non-decreasing in the score) churn rate per pooled bucket, lowest score first."""
    blocks: list[list] = []  # [low, rows, churners]
    for bucket in sorted(buckets, key=lambda b: b.low):
        blocks.append([bucket.low, bucket.rows, bucket.churners])
        # pool while the previous block's rate is not below this one's (cross-multiplied rates)
        while len(blocks) > 1 and blocks[-2][2] * blocks[-1][1] >= blocks[-1][2] * blocks[-2][1]:
            _, rows, churners = blocks.pop()
            blocks[-1][1] += rows
            blocks[-1][2] += churners
    return [Step(low, churners / rows, rows, churners) for low, rows, churners in blocks]


def step_probability(steps: list[Step], score: float) -> float:
    """The probability the steps give a score (below the first step: the first step's)."""
    return next((s.probability for s in reversed(steps) if score >= s.low), steps[0].probability)


def calibrated_brier(steps: list[Step]) -> float:
    """The Brier score of the steps on the rows they were fitted on: each step's rows get its
    churn rate p, so they contribute rows * p * (1 - p)."""
    rows = sum(s.rows for s in steps)
    return sum(s.rows * s.probability * (1.0 - s.probability) for s in steps) / rows if rows else 0.0


def calibrated_probability(score: Column, steps: list[Step]) -> Column:
    """`step_probability` as a Column (null stays null)."""
    lowest, *higher = steps
    probability = F.when(score.isNull(), F.lit(None).cast("double"))
    for step in reversed(higher):
        probability = probability.when(score >= F.lit(step.low), F.lit(step.probability))
    return probability.otherwise(F.lit(lowest.probability))


@dataclass(frozen=True)
class BaselineScorer:
    """The best baseline of a training run, calibrated on its evaluation rows."""

    name: str  # the baseline, e.g. "recency rule"
    score: str  # its score column (larger = riskier)
    steps: list[Step]
    evaluation_cutoff: str
    horizon_days: int
    metric: str  # the promotion metric, and each baseline's value of it on the evaluation rows
    baselines: dict[str, float]

    @property
    def source(self) -> str:
        """The `churn_score_source` of the customers it scores."""
        return f"baseline:{self.name}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BaselineScorer:
        return cls(**{**data, "steps": [Step(**step) for step in data["steps"]]})
