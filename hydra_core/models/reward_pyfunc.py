"""A Hydra directory's reward head as an MLflow pyfunc model, logged from code.

MLflow runs this file to build the model it serves (models-from-code), so nothing is pickled: the
logged model holds this code, the hydra_core package and the Hydra directory (artifact `hydra`).
`predict` takes prompt/response pairs (a DataFrame or a list of dicts with `prompt` and `response`)
and returns one reward per pair, encoded and scored as the reward-model judge and PPO do.
"""

from __future__ import annotations

import mlflow
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema

from hydra_core.data.encoding import encode_pair_of, pad_right
from hydra_core.models.hydra import load_hydra
from hydra_core.runtime import pick_device

ARTIFACT = "hydra"
# what loading and scoring import; the logged model pins the versions installed where it was logged
REQUIREMENTS = ("torch", "transformers", "safetensors", "peft", "pandas")
# a served model's request rows and answer, as MLflow checks and documents them
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "response")]),
                           outputs=Schema([ColSpec("double")]))


@torch.no_grad()
def reward_scores(model, pairs: list[tuple[str, str]]) -> list[float]:
    """The reward head's score of each (prompt, response), as one right-padded batch."""
    max_length = getattr(model.base_model.config, "max_position_embeddings", 2048)
    rows = [encode_pair_of(model.tokenizer, prompt, response, max_length)[0] for prompt, response in pairs]
    batch = {"input_ids": pad_right(rows, model.tokenizer.pad_token_id),
             "attention_mask": pad_right([[1] * len(r) for r in rows], 0)}
    out = model(**{k: v.to(model.device) for k, v in batch.items()}, lm=False, reward=True)
    return out.rewards.float().tolist()


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
