"""Every recipe in configs/ runs, so none can rot: each stage's command with `--config RECIPE`, two steps
a stage, on the recipe's stand-in (a random-init model of its architecture with a tokenizer of the same
kind, built here, and a few records in its data format); the pipeline compiles with the recipe's defaults;
and `hydra-rlhf run --config RECIPE --stand-in` runs the whole pipeline."""

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from hydra_core import cli
from hydra_core.config.fields import ConfigError
from hydra_core.config.files import read_config_file
from hydra_core.data import chat
from pipelines.arguments import ArgumentError, STAND_IN_BUDGET, pipeline_arguments

ROOT = Path(__file__).resolve().parents[1]
# accelerate-*.yaml are launcher configs (`accelerate launch --config_file`), not recipes
RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("accelerate-"))
# what stands in for each recipe's hub model: the model class of the real one
ARCHITECTURES = {"EleutherAI/pythia-410m": "GPTNeoXForCausalLM", "Qwen/Qwen2.5-0.5B-Instruct": "Qwen2ForCausalLM",
                 "meta-llama/Llama-3.2-1B": "LlamaForCausalLM"}
# the end of an assistant turn in each stand-in's chat template (none: EOS)
TURN_ENDS = {"tiny-qwen2": "<|im_end|>", "tiny-llama3": "<|eot_id|>"}


def recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_recipes_are_the_four_the_docs_name():
    assert [p.name for p in RECIPES] == ["embedded-default.yaml", "llama-3.2-1b-stack-exchange-paired.yaml",
                                         "pythia-410m-hh-rlhf.yaml", "qwen2.5-0.5b-instruct-ultrafeedback.yaml"]
    page = (ROOT / "docs" / "recipes.md").read_text()
    assert all(f"configs/{p.name}" in page for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_lists_every_hub_id_it_names_and_a_stand_in_of_the_same_architecture(path):
    data = read_config_file(path)  # a recipe the config reader accepts, its hub and stand_in sections checked
    named_models = {data[s][f] for s, f in (("sft", "model"), ("ppo", "reward_model"), ("eval", "reward_model"))
                    if (data.get(s) or {}).get(f)}
    named_data = {data["prepare"]["source"]} if data["prepare"].get("source") else set()
    assert set(data["hub"]["models"]) == named_models and set(data["hub"]["datasets"]) == named_data
    assert named_models <= set(ARCHITECTURES)  # each hub model's architecture is known, for its stand-in's check
    if named_data:
        assert (path.parent / data["stand_in"]["dataset"]).is_file()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.slow
def test_every_stage_runs_the_recipe_on_its_stand_in_for_two_steps(tmp_path, path):
    data = recipe(path)
    stand_in = data["stand_in"]
    base, prepared = tmp_path / "base", tmp_path / "data"
    sft, ppo, evaluation = tmp_path / "sft", tmp_path / "ppo", tmp_path / "eval"
    run = ["--config", str(path)]
    assert cli.main(["init-model", "--preset", stand_in["preset"], "--output-dir", str(base)]) == 0
    architecture = json.loads((base / "config.json").read_text())["architectures"]
    assert architecture == [ARCHITECTURES.get(data["sft"].get("model"), "LlamaForCausalLM")]
    source = ["--source", str(path.parent / stand_in["dataset"]), "--dataset-split", "train"] if "dataset" in stand_in \
        else ["--max-records", "400", "--arithmetic-eval-prompts", "16"]
    assert cli.main(["prepare", *run, *source, "--eval-fraction", "0.25", "--tokenizer", str(base),
                     "--output-dir", str(prepared)]) == 0
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["task"] == data["prepare"]["format"] and manifest["truncation"]["tokenizer"] == str(base)
    assert cli.main(["sft", *run, "--model", str(base), "--data", str(prepared), "--output-dir", str(sft),
                     "--steps", "2", "--demo-batch-size", "4", "--pair-batch-size", "2", "--eval-every", "2",
                     "--greedy-eval-prompts", "4", "--checkpoint-every", "0"]) == 0
    assert cli.main(["ppo", *run, "--model", str(sft), "--data", str(prepared), "--output-dir", str(ppo),
                     "--steps", "2", "--rollout-batch-size", "4", "--mini-batch-size", "0",
                     "--greedy-eval-prompts", "4"]) == 0
    assert cli.main(["eval", *run, "--candidate", str(ppo), "--baseline", str(sft), "--prompts", str(prepared),
                     "--max-prompts", "4", "--output-dir", str(evaluation)]) == 0

    # each stage ran with the recipe's settings, the flags above on top
    ran = json.loads((ppo / "ppo_config.json").read_text())
    flags = ("steps", "rollout_batch_size", "mini_batch_size")
    recipe_settings = {k: v for k, v in data["ppo"].items() if k not in flags}
    assert {k: ran[k] for k in recipe_settings} == recipe_settings
    assert json.loads((sft / "sft_config.json").read_text())["max_length"] == data["sft"].get("max_length", 512)
    rows = [json.loads(line) for line in (ppo / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "objective/kl" in r] == [1, 2]
    assert next(r for r in rows if "objective/kl" in r)["objective/kl"] == 0.0  # the adapters start at zero
    summary = json.loads((evaluation / "eval_summary.json").read_text())
    assert summary["pairs"] == min(4, manifest["counts"]["prompts_eval"]) and summary["errors"] == 0
    # the stand-in's template went with the model: the policy's tokenizer still ends a turn the same way
    tokenizer = AutoTokenizer.from_pretrained(ppo)
    turn_end = TURN_ENDS.get(stand_in["preset"], tokenizer.eos_token)
    assert chat.uses_template(tokenizer) == (stand_in["preset"] in TURN_ENDS)
    assert tokenizer.convert_ids_to_tokens(chat.end_of_turn_id(tokenizer)) == turn_end


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_the_pipeline_compiles_with_the_recipes_defaults(tmp_path, path):
    data = recipe(path)
    spec = tmp_path / "pipeline.yaml"
    assert cli.main(["compile", "--config", str(path), "-o", str(spec)]) == 0
    pipeline, _platform = yaml.safe_load_all(spec.read_text())  # the second document: the Kubernetes settings
    inputs = pipeline["root"]["inputDefinitions"]["parameters"]
    assert inputs["base_model"].get("defaultValue", "") == data["sft"].get("model", "")
    assert inputs["ppo_kl_coef"]["defaultValue"] == data["ppo"]["kl_coef"]
    assert inputs["ppo_variants"]["defaultValue"] == [data["ppo"]["variant"]]
    ppo_config = inputs["ppo_config"]["defaultValue"]
    assert ppo_config["max_new_tokens"] == data["ppo"]["max_new_tokens"]


def test_stand_in_runs_need_a_recipe_with_a_stand_in(tmp_path):
    with pytest.raises(ArgumentError, match="--stand-in runs a recipe on its stand-in: give the recipe with --config"):
        pipeline_arguments([], None, stand_in=True)
    bare = tmp_path / "bare.yaml"
    bare.write_text("sft: {steps: 3}\n")
    with pytest.raises(ArgumentError, match=r"bare.yaml: --stand-in needs the recipe's stand_in section"):
        pipeline_arguments([], str(bare), stand_in=True)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("stand_in: {preset: tiny-bert}\nsft: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: stand_in.preset: 'tiny-bert' is not one of"):
        pipeline_arguments([], str(wrong), stand_in=True)
    arguments, _ = pipeline_arguments(["sft_steps=3"], str(RECIPES[-1]), stand_in=True)
    assert arguments["base_model"] == "" and arguments["base_preset"] == "tiny-qwen2"
    assert Path(arguments["dataset"]).is_file() and arguments["sft_steps"] == 3  # -p wins over the stand-in
    assert arguments["ppo_steps"] == STAND_IN_BUDGET["ppo_steps"]
