"""A Hydra directory's reward head as an MLflow pyfunc model, logged from code.

MLflow runs this file to build the model it serves (models-from-code), so nothing is pickled: the
logged model holds this code, the hydra_core package and the Hydra directory (artifact `hydra`).
`predict` takes prompt/response pairs (a DataFrame or a list of dicts with `prompt` and `response`)
and returns one reward per pair, scored by `hydra_core.models.hydra.reward_scores`, as the
reward-model judge scores responses.
"""

from __future__ import annotations

import mlflow
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema

from hydra_core.models.hydra import load_hydra, reward_scores
from hydra_core.runtime import pick_device

ARTIFACT = "hydra"
# what loading and scoring import (pandas: the rows arrive as a DataFrame; not peft: load_hydra reads
# plain weights); the logged model pins the versions installed where it was logged
REQUIREMENTS = ("torch", "transformers", "safetensors", "pandas")
# a served model's request rows and answer, as MLflow checks and documents them
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "response")]),
                           outputs=Schema([ColSpec("double")]))


def _pairs(model_input) -> list[tuple[str, str]]:
    rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
    missing = [i for i, row in enumerate(rows) if not {"prompt", "response"} <= set(row)]
    if missing:
        raise ValueError(f"reward model input: row {missing[0]} lacks 'prompt' or 'response' "
                         "(give a DataFrame or a list of dicts with both)")
    return [(str(row["prompt"]), str(row["response"])) for row in rows]


class RewardModel(PythonModel):
    def load_context(self, context):
        self.model = load_hydra(context.artifacts[ARTIFACT], heads=("reward",), device=pick_device()).eval()

    def predict(self, context, model_input, params=None) -> list[float]:
        return reward_scores(self.model, _pairs(model_input))


mlflow.models.set_model(RewardModel())
