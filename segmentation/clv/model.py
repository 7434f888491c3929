"""The fitted CLV models as one MLflow pyfunc model, so a reviewer or another job can load a
run's model and score customers again without refitting."""

from __future__ import annotations

import pandas as pd
from mlflow.pyfunc import PythonModel

from segmentation.clv.bgnbd import BgNbdParams
from segmentation.clv.gamma_gamma import GammaGammaParams
from segmentation.clv.scoring import ScoringSettings, customer_scores

INPUT_COLUMNS = ["x", "t_x", "T", "m"]


class ClvModel(PythonModel):
    """Scores rows of (x, t_x, T, m) with the parameters and settings it was logged with."""

    def __init__(self, bgnbd: BgNbdParams, spend: GammaGammaParams | None, settings: ScoringSettings):
        self.bgnbd = bgnbd.as_dict()
        self.spend = None if spend is None else spend.as_dict()
        self.settings = settings.as_dict()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        spend = None if self.spend is None else GammaGammaParams(**self.spend)
        columns = [model_input[c] for c in INPUT_COLUMNS]
        return customer_scores(BgNbdParams(**self.bgnbd), spend, ScoringSettings(**self.settings), *columns)
