"""The promotion rule of both registered models, without Spark or an MLflow store: every
branch, with the reasons the runs are tagged with; the alias lookup and the alias moves
against a stand-in client."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from segmentation import registry
from segmentation.registry import ChampionMetric, Decision, PromotionRule, decide_promotion

# The two rules the jobs configure (cluster.promote_tolerance, churn.min_improvement defaults).
CLUSTER_RULE = PromotionRule("silhouette", tolerance=0.02)
CHURN_RULE = PromotionRule("pr_auc", min_improvement=0.0)


@pytest.mark.parametrize("rule", [CLUSTER_RULE, CHURN_RULE, PromotionRule("brier", higher_is_better=False, min_improvement=0.1)])
def test_without_a_champion_the_first_version_is_promoted(rule):
    assert decide_promotion(0.1, None, rule) == Decision(True, "no champion yet")


# ------------------------------------------------------------ tolerance (the cluster rule)


@pytest.mark.parametrize(("candidate", "champion", "promote", "reason"), [
    (0.5, 0.4, True, "silhouette 0.5000 >= champion's 0.4000 - 0.02"),  # better
    (0.39, 0.4, True, "silhouette 0.3900 >= champion's 0.4000 - 0.02"),  # worse, within the tolerance
    (0.37, 0.4, False, "silhouette 0.3700 < champion's 0.4000 - 0.02"),  # worse by more than the tolerance
    (0.4, 0.4, True, "silhouette 0.4000 >= champion's 0.4000 - 0.02"),  # the same
])
def test_tolerance_promotes_unless_worse_by_more_than_it(candidate, champion, promote, reason):
    assert decide_promotion(candidate, ChampionMetric("1", champion), CLUSTER_RULE) == Decision(promote, reason)


def test_tolerance_boundary_promotes_and_compares_as_candidate_ge_champion_minus_tolerance():
    rule = PromotionRule("silhouette", tolerance=0.25)
    assert decide_promotion(0.25, ChampionMetric("1", 0.5), rule).promote  # exactly the tolerance worse
    assert not decide_promotion(0.2499999, ChampionMetric("1", 0.5), rule).promote
    # 0.52 - 0.02 rounds to 0.5 while 0.5 - 0.52 is a little below -0.02: the comparison is
    # written as the cluster job always wrote it, so this candidate stays promoted.
    assert decide_promotion(0.5, ChampionMetric("1", 0.52), CLUSTER_RULE) == Decision(True, "silhouette 0.5000 >= champion's 0.5200 - 0.02")


def test_tolerance_on_a_lower_is_better_metric():
    rule = PromotionRule("brier", higher_is_better=False, tolerance=0.25)
    assert decide_promotion(0.5, ChampionMetric("1", 0.25), rule) == Decision(True, "brier 0.5000 <= champion's 0.2500 + 0.25")
    assert decide_promotion(0.1, ChampionMetric("1", 0.25), rule) == Decision(True, "brier 0.1000 <= champion's 0.2500 + 0.25")
    assert decide_promotion(0.6, ChampionMetric("1", 0.25), rule) == Decision(False, "brier 0.6000 > champion's 0.2500 + 0.25")


# ------------------------------------------------- required improvement (the churn rule)


@pytest.mark.parametrize(("candidate", "champion", "promote", "relation"), [
    (0.61, 0.6, True, "beats"),  # better
    (0.6, 0.6, False, "does not beat"),  # a tie keeps the champion
    (0.59, 0.6, False, "does not beat"),  # worse
])
def test_improvement_promotes_only_a_better_version(candidate, champion, promote, relation):
    decision = decide_promotion(candidate, ChampionMetric("3", champion), CHURN_RULE)
    assert decision == Decision(
        promote, f"pr_auc {candidate:.4f} {relation} champion version 3's {champion:.4f} on the same evaluation rows by more than 0.0"
    )


def test_improvement_boundary_keeps_the_champion():
    rule = PromotionRule("pr_auc", min_improvement=0.25)
    assert decide_promotion(0.75, ChampionMetric("3", 0.5), rule) == Decision(
        False, "pr_auc 0.7500 does not beat champion version 3's 0.5000 on the same evaluation rows by more than 0.25"
    )
    assert decide_promotion(0.7500001, ChampionMetric("3", 0.5), rule).promote
    assert not decide_promotion(0.7, ChampionMetric("3", 0.5), rule).promote  # better, but not by enough


def test_improvement_on_a_lower_is_better_metric():
    rule = PromotionRule("brier", higher_is_better=False, min_improvement=0.01)
    assert decide_promotion(0.1, ChampionMetric("2", 0.2), rule) == Decision(
        True, "brier 0.1000 beats champion version 2's 0.2000 on the same evaluation rows by more than 0.01"
    )
    assert decide_promotion(0.195, ChampionMetric("2", 0.2), rule) == Decision(
        False, "brier 0.1950 does not beat champion version 2's 0.2000 on the same evaluation rows by more than 0.01"
    )
    assert not decide_promotion(0.3, ChampionMetric("2", 0.2), rule).promote  # a higher Brier score is worse


# ------------------------------------------- every baseline first (the churn rule), even without a champion

BASELINES = {"recency rule": 0.359, "1 - P(alive)": 0.357, "BG/NBD purchases": 0.30}


def test_a_first_model_that_loses_to_a_baseline_is_not_promoted():
    # The grocery feed of issue 22: the GBT's PR AUC 0.232 against the recency rule's 0.359.
    decision = decide_promotion(0.232, None, CHURN_RULE, BASELINES)
    assert decision == Decision(
        False, "pr_auc 0.2320 does not beat the recency rule baseline's 0.3590 on the same evaluation rows by more than 0.0"
    )


def test_a_model_must_beat_the_best_baseline_by_more_than_min_improvement():
    rule = PromotionRule("pr_auc", min_improvement=0.05)
    assert not decide_promotion(0.40, None, rule, BASELINES).promote  # better than every baseline, not by 0.05
    assert not decide_promotion(0.409, None, rule, BASELINES).promote
    assert decide_promotion(0.4091, None, rule, BASELINES) == Decision(True, "no champion yet")
    assert not decide_promotion(0.359, None, CHURN_RULE, BASELINES).promote  # a tie with a baseline loses


def test_beating_the_baselines_then_the_champion_decides():
    assert decide_promotion(0.5, ChampionMetric("3", 0.6), CHURN_RULE, BASELINES).reason.endswith("does not beat champion version 3's 0.6000 on the same evaluation rows by more than 0.0")
    assert decide_promotion(0.7, ChampionMetric("3", 0.6), CHURN_RULE, BASELINES).promote
    # Losing to a baseline keeps even an incomparable champion.
    why = "predicts no purchase in 90 days, not the configured 60"
    assert not decide_promotion(0.2, ChampionMetric("1", None, why), CHURN_RULE, BASELINES).promote


def test_baselines_on_a_lower_is_better_metric():
    rule = PromotionRule("brier", higher_is_better=False, min_improvement=0.01)
    briers = {"recency rule": 0.080, "1 - P(alive)": 0.095}
    assert registry.best_baseline(briers, rule) == "recency rule"
    assert decide_promotion(0.069, None, rule, briers).promote
    assert decide_promotion(0.075, None, rule, briers) == Decision(
        False, "brier 0.0750 does not beat the recency rule baseline's 0.0800 on the same evaluation rows by more than 0.01"
    )
    assert registry.baseline_shortfall(0.069, briers, rule) is None


# --------------------------------------------------------------- a champion not compared


def test_a_champion_that_cannot_score_the_rows_is_replaced():
    assert decide_promotion(0.1, ChampionMetric("4", None), CHURN_RULE) == Decision(
        True, "champion version 4 cannot score the evaluation rows"
    )


def test_an_incomparable_champion_is_replaced_whatever_its_metric():
    why = "predicts no purchase in 90 days, not the configured 60"
    expected = Decision(True, "champion version 1 predicts no purchase in 90 days, not the configured 60: the metrics are not comparable")
    assert decide_promotion(0.1, ChampionMetric("1", None, why), CHURN_RULE) == expected
    assert decide_promotion(0.1, ChampionMetric("1", 0.9, why), CHURN_RULE) == expected


def test_a_rule_takes_exactly_one_of_tolerance_and_min_improvement():
    with pytest.raises(ValueError, match="exactly one"):
        PromotionRule("pr_auc")
    with pytest.raises(ValueError, match="exactly one"):
        PromotionRule("pr_auc", tolerance=0.1, min_improvement=0.1)


def test_the_outcome_is_the_champion_decision_tag():
    assert (Decision(True, "x").outcome, Decision(False, "x").outcome) == ("promoted", "kept")


# ------------------------------------------------------- the jobs' rules, wired to the registry


class Client:
    """What the registry asks of an MlflowClient, with one registered model in memory."""

    def __init__(self, aliases: dict[str, str] | None = None, runs: dict[str, SimpleNamespace] | None = None):
        self.aliases, self.runs = dict(aliases or {}), runs or {}

    def get_model_version_by_alias(self, name, alias):
        if alias not in self.aliases:
            raise MlflowException(f"Registered model alias {alias} not found.")
        return SimpleNamespace(version=int(self.aliases[alias]), run_id=f"run-{self.aliases[alias]}")

    def get_run(self, run_id):
        return self.runs[run_id]

    def set_registered_model_alias(self, name, alias, version):
        self.aliases[alias] = version


def run(tags=None, metrics=None) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(tags=tags or {}, metrics=metrics or {}))


@pytest.fixture()
def tags(monkeypatch) -> dict[str, str]:
    """The tags the decision sets on the active run."""
    recorded: dict[str, str] = {}
    monkeypatch.setattr(mlflow, "set_tags", recorded.update)
    return recorded


def test_aliased_version_reads_the_run_behind_the_alias():
    client = Client({"champion": "3"}, {"run-3": run({"horizon_days": "90"}, {"silhouette": 0.4})})
    version = registry.aliased_version(client, "customer_segments")
    assert version == registry.RegisteredVersion("customer_segments", "3", "run-3", {"horizon_days": "90"}, {"silhouette": 0.4})
    assert version.uri == "models:/customer_segments/3"
    assert registry.aliased_version(client, "customer_segments", registry.CHALLENGER) is None


def test_cluster_decision_moves_the_alias_and_tags_the_run(tags):
    from segmentation.stages import cluster

    settings = SimpleNamespace(registered_model="customer_segments", promote_tolerance=0.02)
    client = Client({"champion": "1"})
    kept = cluster._decide(client, settings, "2", silhouette=0.1, champion=cluster.Champion("1", 0.4, None))
    assert kept.as_dict() == {"model_version": "2", "promoted": False, "reason": "silhouette 0.1000 < champion's 0.4000 - 0.02",
                    "champion_version": "1"}
    assert client.aliases == {"champion": "1"}
    assert tags == {"champion_decision": "kept", "champion_reason": "silhouette 0.1000 < champion's 0.4000 - 0.02"}
    # A champion whose run logged no silhouette counts as none, as it always has.
    promoted = cluster._decide(client, settings, "3", silhouette=0.1, champion=cluster.Champion("1", None, None))
    assert promoted.promoted and promoted.reason == "no champion yet" and promoted.champion_version == "3"
    assert client.aliases == {"champion": "3"} and tags["champion_decision"] == "promoted"


@pytest.mark.parametrize(("champion_tags", "champion_metric", "promoted", "reason"), [
    ({"horizon_days": "90"}, 0.5, False, "pr_auc 0.4000 does not beat champion version 1's 0.5000 on the same evaluation rows by more than 0.0"),
    ({}, 0.3, True, "pr_auc 0.4000 beats champion version 1's 0.3000 on the same evaluation rows by more than 0.0"),
    ({"horizon_days": "90"}, None, True, "champion version 1 cannot score the evaluation rows"),
    ({"horizon_days": "60"}, None, True,
     "champion version 1 predicts no purchase in 60 days, not the configured 90: the metrics are not comparable"),
])
def test_churn_decision_moves_the_alias_and_tags_the_run(tags, champion_tags, champion_metric, promoted, reason):
    from segmentation.stages import churn

    settings = SimpleNamespace(registered_model="churn_classifier", promote_metric="pr_auc", min_improvement=0.0, horizon_days=90)
    client = Client({"champion": "1"}, {"run-1": run(champion_tags)})
    champion = registry.aliased_version(client, "churn_classifier")
    decision = churn._decide(client, settings, "2", 0.4, champion, champion_metric)
    assert decision.as_dict() == {
        "model_version": "2", "promoted": promoted, "reason": reason, "metric": "pr_auc", "value": 0.4,
        "previous_champion": "1", "champion_value": champion_metric, "champion_version": "2" if promoted else "1",
    }
    assert client.aliases["champion"] == decision.champion_version
    assert tags == {"champion_decision": "promoted" if promoted else "kept", "champion_reason": reason}


def test_a_first_churn_model_that_loses_to_a_baseline_leaves_no_champion(tags):
    from segmentation.stages import churn

    settings = SimpleNamespace(registered_model="churn_classifier", promote_metric="pr_auc", min_improvement=0.0, horizon_days=90)
    client = Client({})
    decision = churn._decide(client, settings, "1", 0.232, None, None, BASELINES)
    assert not decision.promoted and decision.champion_version is None and "champion" not in client.aliases
    assert tags["champion_decision"] == "kept" and "recency rule baseline's 0.3590" in tags["champion_reason"]


def test_churn_brier_is_lower_is_better(tags):
    from segmentation.stages import churn

    settings = SimpleNamespace(registered_model="churn_classifier", promote_metric="brier", min_improvement=0.0, horizon_days=90)
    client = Client({"champion": "1"}, {"run-1": run({"horizon_days": "90"})})
    decision = churn._decide(client, settings, "2", 0.1, registry.aliased_version(client, "churn_classifier"), 0.2)
    assert decision.promoted and decision.reason.startswith("brier 0.1000 beats champion version 1's 0.2000")
