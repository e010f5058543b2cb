"""Settings: one coercion and check for flags, config files, component parameters and pipeline
arguments; saved configs read back with --config reproduce a stage; recipes feed the pipeline."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import logged_rows
from hydra_core import cli
from hydra_core.config.fields import ConfigError, bounds, build, field_help, field_names, field_type, flag
from hydra_core.config.files import config_file_name, load_config, save_config
from hydra_core.config.parameters import SEPARATE_MODEL_VARIANTS, from_parameters, label_config, uses_separate_models
from hydra_core.config.settings import (DATA_FORMATS, MODEL_PRESETS, PPO_VARIANTS, QUANTIZABLE_VARIANTS, RUN_LABELS,
                                        STAGE_CONFIGS)
from hydra_core.config.settings import DataConfig, PPOConfig, SFTConfig
from hydra_core.models.hydra import load_hydra

ROOT = Path(__file__).resolve().parents[1]
GENERIC = str(ROOT / "tests" / "fixtures" / "data" / "generic.jsonl")


def test_text_and_values_become_the_field_type_one_way():
    cfg = build(PPOConfig, ({"steps": "3", "learning_rate": "5e-4", "whiten_advantages": "no"}, flag),
                  ({"kl_coef": 1, "eval_every": 4.0, "variant": "lora"}, lambda n: n))
    assert (cfg.steps, cfg.learning_rate, cfg.whiten_advantages) == (3, 5e-4, False)
    assert type(cfg.kl_coef) is float and type(cfg.eval_every) is int and cfg.variant == "lora"


@pytest.mark.parametrize("values, message", [
    ({"steps": "ten"}, "--steps: expected an integer, got 'ten'"),
    ({"steps": 2.5}, "--steps: expected an integer, got 2.5"),
    ({"steps": True}, "--steps: expected an integer, got True"),
    ({"mode": "dpo"}, "--mode: 'dpo' is not one of sft, rm, hydra"),
    ({"stpes": 3}, "--stpes: 'hydra-rlhf sft' has no such setting; did you mean 'steps'?"),
    ({"gradient_checkpointing": "maybe"}, "--gradient-checkpointing: expected true or false, got 'maybe'"),
])
def test_a_bad_setting_is_named_as_its_source_names_it(values, message):
    with pytest.raises(ConfigError) as error:
        build(SFTConfig, (values, flag))
    assert str(error.value) == message


def test_component_parameters_then_their_config_dict():
    cfg = from_parameters(PPOConfig, {"eval_every": 4.0, "kl_coef": 1}, steps=3, variant="lora", lora_rank=None)
    assert (cfg.steps, cfg.eval_every, cfg.kl_coef, cfg.variant) == (3, 4, 1.0, "lora")
    assert cfg.lora_rank == PPOConfig().lora_rank  # None keeps the default
    with pytest.raises(ConfigError, match="steps: given both as a component parameter and in its `config`"):
        from_parameters(PPOConfig, {"steps": 2}, steps=3)
    with pytest.raises(ConfigError, match=r"config\['kl_coeff'\]: .*did you mean 'kl_coef'"):
        from_parameters(PPOConfig, {"kl_coeff": 2})


def test_the_choices_are_written_once():
    from hydra_core.data.loaders import PAIR_FORMATS
    from hydra_core.models.presets import PRESETS
    from hydra_core.ppo.roles import LAYOUTS

    assert tuple(LAYOUTS) == PPO_VARIANTS
    assert tuple(PRESETS) == MODEL_PRESETS
    assert set(PAIR_FORMATS) | {"arithmetic"} == set(DATA_FORMATS)
    assert field_type(PPOConfig, "variant") == (str, list(PPO_VARIANTS))



# --- config files ----------------------------------------------------------------------------------


def write(path: Path, data) -> str:
    path.write_text(yaml.safe_dump(data) if path.suffix in (".yaml", ".yml") else json.dumps(data))
    return str(path)


def parse(argv):
    registry = cli.commands()
    args = cli.build_parser(registry).parse_args(argv)
    return cli.config_from_args(STAGE_CONFIGS[args.command], args)


def test_flags_override_the_file_and_a_recipe_gives_each_stage_its_section(tmp_path):
    flat = write(tmp_path / "ppo.yaml", {"steps": 5, "learning_rate": "5e-4", "variant": "lora"})
    cfg = parse(["ppo", "--config", flat, "--steps", "7"])
    assert (cfg.steps, cfg.learning_rate, cfg.variant) == (7, 5e-4, "lora")

    recipe = write(tmp_path / "recipe.yaml", {"sft": {"steps": 9, "mode": "rm"}, "ppo": {"kl_coef": 0.02}})
    assert (parse(["sft", "--config", recipe]).steps, parse(["sft", "--config", recipe]).mode) == (9, "rm")
    assert parse(["ppo", "--config", recipe]).kl_coef == 0.02
    assert parse(["ppo", "--config", recipe, "--kl-coef", "0.1"]).kl_coef == 0.1


@pytest.mark.parametrize("name, data, command, message", [
    ("saved.json", {"type": "PPOConfig", "steps": 3}, "sft",
     "holds a PPOConfig, not the SFTConfig of 'hydra-rlhf sft'"),
    ("r.yaml", {"ppo": {"steps": 3}}, "sft", "the recipe has no 'sft' section (it has: ppo)"),
    ("r.yaml", {"sft": {"setps": 3}}, "sft", "r.yaml: sft.setps: 'hydra-rlhf sft' has no such setting; did you mean"),
    ("f.yaml", {"learning_rate": "fast"}, "sft", "f.yaml: learning_rate: expected a number, got 'fast'"),
    ("f.yaml", [1, 2], "sft", "f.yaml: expected a mapping of settings, got list"),
    ("r.yaml", {"sft": {"steps": 3}, "ppo": 7}, "sft", "r.yaml: section 'ppo' must be a mapping of settings, got int"),
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(tmp_path, capsys, name, data, command, message):
    path = write(tmp_path / name, data)
    assert cli.main([command, "--config", path, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_malformed_files_name_the_file(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"steps": 3,}')
    (tmp_path / "bad.yaml").write_text("steps: [3\n")
    for name in ("bad.json", "bad.yaml"):
        assert cli.main(["sft", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name}" in err and "malformed" in err and err.count("\n") == 1
    assert cli.main(["sft", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


# --- a saved config reproduces its stage -----------------------------------------------------------


def rerun(stage: str, first: Path, second: Path) -> None:
    """Run `stage` again from the config the first run saved, into `second`."""
    saved = first / config_file_name(STAGE_CONFIGS[stage])
    assert cli.main([stage, "--config", str(saved), "--output-dir", str(second)]) == 0
    a, b = (json.loads((d / saved.name).read_text()) for d in (first, second))
    assert {**a, "output_dir": ""} == {**b, "output_dir": ""}


def same_weights(a: Path, b: Path, heads=()) -> bool:
    pa, pb = load_hydra(str(a), heads=heads), load_hydra(str(b), heads=heads)
    return all(torch.equal(p, q) for (_, p), (_, q) in zip(pa.named_parameters(), pb.named_parameters()))


def test_prepare_and_init_model_from_their_saved_configs(tmp_path):
    first, second = tmp_path / "data-a", tmp_path / "data-b"
    assert cli.main(["prepare", "--format", "generic", "--source", GENERIC, "--eval-fraction", "0.3", "--seed", "4",
                     "--output-dir", str(first)]) == 0
    rerun("prepare", first, second)
    for split in ("pairs_train", "pairs_eval", "demos_train", "prompts_eval"):
        assert (first / f"{split}.jsonl").read_text() == (second / f"{split}.jsonl").read_text()

    assert cli.main(["init-model", "--seed", "3", "--output-dir", str(tmp_path / "m-a")]) == 0
    rerun("init-model", tmp_path / "m-a", tmp_path / "m-b")
    assert same_weights(tmp_path / "m-a", tmp_path / "m-b")


def test_sft_ppo_and_eval_from_their_saved_configs(tmp_path, base_model_dir, arithmetic_dir, hydra_sft_dir):
    sft = ["sft", "--model", base_model_dir, "--data", arithmetic_dir, "--steps", "4", "--demo-batch-size", "8",
           "--pair-batch-size", "4", "--eval-every", "2", "--log-every", "2", "--greedy-eval-prompts", "8",
           "--warmup-steps", "1", "--checkpoint-every", "0"]
    assert cli.main([*sft, "--output-dir", str(tmp_path / "sft-a")]) == 0
    rerun("sft", tmp_path / "sft-a", tmp_path / "sft-b")
    assert logged_rows(tmp_path / "sft-a" / "metrics.jsonl") == logged_rows(tmp_path / "sft-b" / "metrics.jsonl")
    assert same_weights(tmp_path / "sft-a", tmp_path / "sft-b", heads=("reward",))

    ppo = ["ppo", "--model", hydra_sft_dir, "--data", arithmetic_dir, "--steps", "2", "--rollout-batch-size", "8",
           "--mini-batch-size", "4", "--ppo-epochs", "1", "--lora-rank", "4", "--greedy-eval-prompts", "8"]
    assert cli.main([*ppo, "--output-dir", str(tmp_path / "ppo-a")]) == 0
    rerun("ppo", tmp_path / "ppo-a", tmp_path / "ppo-b")
    assert logged_rows(tmp_path / "ppo-a" / "metrics.jsonl") == logged_rows(tmp_path / "ppo-b" / "metrics.jsonl")
    assert same_weights(tmp_path / "ppo-a", tmp_path / "ppo-b")

    assert cli.main(["eval", "--candidate", str(tmp_path / "ppo-a"), "--prompts", arithmetic_dir, "--max-prompts", "6",
                     "--output-dir", str(tmp_path / "eval-a")]) == 0
    rerun("eval", tmp_path / "eval-a", tmp_path / "eval-b")
    a, b = (json.loads((tmp_path / d / "eval_summary.json").read_text()) for d in ("eval-a", "eval-b"))
    assert {k: a[k] for k in ("wins", "ties", "losses", "baseline")} == {k: b[k] for k in ("wins", "ties", "losses",
                                                                                          "baseline")}
    judged = [(tmp_path / d / "judgments.jsonl").read_text() for d in ("eval-a", "eval-b")]
    assert judged[0] == judged[1]


def test_every_stage_saves_the_config_it_ran_with(tmp_path):
    assert save_config(DataConfig(seed=5), tmp_path).name == "prepare_config.json"
    assert load_config(DataConfig, tmp_path / "prepare_config.json") == DataConfig(seed=5)


# --- recipes for the pipeline ----------------------------------------------------------------------


def test_a_recipe_becomes_pipeline_arguments(tmp_path):
    from pipelines.arguments import pipeline_arguments

    recipe = write(tmp_path / "recipe.yaml", {
        "init-model": {"preset": "llama-30m"},
        "prepare": {"format": "generic", "source": GENERIC, "output_dir": "outputs/data", "seed": 2},
        "sft": {"steps": 50, "warmup_steps": 5, "data": "outputs/data", "seed": 2},
        "ppo": {"variant": "lora", "kl_coef": 0.02, "lr_schedule": "constant", "model": "outputs/hydra-sft"},
        "eval": {"judge": "reward-model", "max_new_tokens": 32},
        "pipeline": {"champion_threshold": 0.6, "ppo_variants": "lora,hydra"},
    })
    arguments, wired = pipeline_arguments(["ppo_kl_coef=0.05", 'sft_config={"log_every": 5}'], recipe)
    assert arguments["base_preset"] == "llama-30m" and arguments["data_format"] == "generic"
    assert arguments["seed"] == 2 and arguments["sft_steps"] == 50 and arguments["judge"] == "reward-model"
    assert arguments["sft_config"] == {"warmup_steps": 5, "log_every": 5}  # merged with -p
    assert arguments["ppo_config"] == {"lr_schedule": "constant"} and arguments["ppo_kl_coef"] == 0.05
    assert arguments["eval_config"] == {"max_new_tokens": 32}
    assert arguments["ppo_variants"] == ["lora", "hydra"]  # the pipeline section is read after the ppo one
    assert arguments["champion_threshold"] == 0.6
    assert sorted(wired) == ["ppo.model", "prepare.output_dir", "sft.data"]


@pytest.mark.parametrize("recipe, message", [
    ({"sft": {"seed": 1}, "ppo": {"seed": 2}}, "sft.seed is 1 but another stage's is 2"),
    ({"sft": {"steps": "many"}}, "sft.steps: expected an integer, got 'many'"),
    ({"export": {"model": "x"}}, "export.model: the pipeline does not take this setting"),
    ({"pipeline": {"sft_stpes": 3}}, "unknown pipeline parameter 'sft_stpes'"),
    ({"steps": 3}, "not a recipe"),
    ({"ppo": {"variant": "hydra"}, "pipeline": {"ppo_variants": ["hydra", "dpo"]}},
     "pipeline parameter ppo_variants: 'dpo' is not a variant or variant-algorithm pair"),
    ({"ppo": {"algorithm": "dpo"}}, "recipe.yaml: ppo.algorithm: 'dpo' is not one of ppo, rloo, grpo, remax"),
])
def test_a_bad_recipe_is_refused_before_the_pipeline_runs(tmp_path, capsys, recipe, message):
    path = write(tmp_path / "recipe.yaml", recipe)
    assert cli.main(["run", "--config", path, "--output-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_compile_writes_a_recipes_settings_as_the_spec_defaults(tmp_path):
    recipe = write(tmp_path / "recipe.yaml", {"sft": {"steps": 77, "warmup_steps": 3}, "ppo": {"variant": "lora"}})
    spec = tmp_path / "spec.yaml"
    assert cli.main(["compile", "--config", recipe, "-o", str(spec), "-p", "ppo_steps=5"]) == 0
    parameters = next(yaml.safe_load_all(spec.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert parameters["sft_steps"]["defaultValue"] == 77 and parameters["ppo_steps"]["defaultValue"] == 5
    assert parameters["sft_config"]["defaultValue"] == {"warmup_steps": 3}
    assert parameters["ppo_variants"]["defaultValue"] == ["lora"]



def test_a_recipes_ppo_variant_and_algorithm_make_one_run_label(tmp_path):
    from pipelines.arguments import pipeline_arguments

    recipe = write(tmp_path / "recipe.yaml", {"ppo": {"variant": "lora", "algorithm": "grpo", "samples_per_prompt": 8}})
    assert pipeline_arguments([], recipe)[0] == {"ppo_variants": ["lora-grpo"], "ppo_config": {"samples_per_prompt": 8}}
    recipe = write(tmp_path / "recipe.yaml", {"ppo": {"algorithm": "rloo"}})  # the default layout
    assert pipeline_arguments([], recipe)[0] == {"ppo_variants": ["hydra-rloo"]}


# --- run labels and per-label settings ---------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["ppo_variants=hydra,hydra-dpo"], "pipeline parameter ppo_variants: 'hydra-dpo' is not a variant or "
     "variant-algorithm pair (e.g. hydra, hydra-grpo, lora-rloo)"),
    (['ppo_variant_config={"hydraa": {}}'], "pipeline parameter ppo_variant_config: 'hydraa' is not an algorithm "
     "(ppo, rloo, grpo, remax), a layout (full, lora, lora-dynamic, j-hydra, hydra) or a run label"),
    (['ppo_variant_config={"grpo": 4}'], "pipeline parameter ppo_variant_config['grpo']: expected an object of ppo "
     "settings, got 4"),
    (['ppo_variant_config={"full": {"model": "x"}}'], "pipeline parameter ppo_variant_config['full']['model']: a "
     "label's settings cannot hold it; the pipeline sets it"),
    (['ppo_variant_config={"grpo": {"algorithm": "ppo"}}'], "ppo_variant_config['grpo']['algorithm']: a label's "
     "settings cannot hold it; the run label sets it"),
    (['ppo_variant_config={"full": {"learnig_rate": 1}}'], "ppo_variant_config['full']['learnig_rate']: 'hydra-rlhf "
     "ppo' has no such setting; did you mean 'learning_rate'?"),
    (["ppo_variants=full", 'ppo_variant_config={"full": {"learning_rate": 0}}'], "pipeline parameter "
     "ppo_variant_config['full']['learning_rate']: 0 is out of range; it must be more than 0 (for the ppo_variants "
     "item 'full')"),
    # rloo needs a group; the default table gives it one, an empty table does not
    (["ppo_variants=hydra-rloo", "ppo_variant_config={}"], "pipeline parameter ppo_config['samples_per_prompt']: "
     "rloo compares each response with the others to the same prompt; it needs at least 2 (got 1) (for the "
     "ppo_variants item 'hydra-rloo')"),
    (["ppo_variants=lora-grpo", "ppo_mini_batch_size=512"], "pipeline parameter ppo_mini_batch_size: 512 is more "
     "than the 256 responses of a rollout (pipeline parameter ppo_variant_config['grpo']['rollout_batch_size'] x "
     "pipeline parameter ppo_variant_config['grpo']['samples_per_prompt'])"),
    (['ppo_config={"algorithm": "grpo"}'], "pipeline parameter ppo_config: set 'algorithm' with the pipeline "
     "parameter ppo_variants, whose run labels name a variant and an algorithm"),
    (['sft_config={"mode": "rm"}'], "pipeline parameter sft_config: 'mode' is set by the pipeline itself"),
])
def test_run_labels_and_their_settings_are_checked_before_the_run(argv, message, tmp_path, capsys):
    err = refused(["run", "--output-dir", str(tmp_path / "run"), *[a for arg in argv for a in ("-p", arg)]], capsys)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_every_run_label_passes_with_the_default_settings():
    from pipelines.arguments import check

    check({"ppo_variants": list(RUN_LABELS)})  # rloo and grpo get their groups from the default table
    check({"ppo_variants": ["hydra-ppo", "lora-dynamic-grpo"], "ppo_config": {"samples_per_prompt": 2}})


def test_a_run_label_takes_its_table_entries_most_specific_last():
    table = {"grpo": {"samples_per_prompt": 4, "rollout_batch_size": 64, "kl_coef": 0.1},
             "full": {"learning_rate": 1e-4}, "full-grpo": {"kl_coef": 0.3}, "hydra": {"lora_rank": 4}}
    cfg = label_config(PPOConfig, "full-grpo", table, {"ppo_epochs": 2, "samples_per_prompt": 8}, steps=3,
                         learning_rate=1e-3, rollout_batch_size=256)
    assert (cfg.variant, cfg.algorithm, cfg.steps, cfg.ppo_epochs) == ("full", "grpo", 3, 2)
    assert cfg.learning_rate == 1e-4 and cfg.rollout_batch_size == 64  # an entry wins over a parameter
    assert cfg.samples_per_prompt == 8  # the component's `config` wins over an entry
    assert cfg.kl_coef == 0.3 and cfg.lora_rank == PPOConfig().lora_rank  # the label's own entry; not hydra's
    cfg = label_config(PPOConfig, "hydra-ppo", table)
    assert (cfg.variant, cfg.algorithm, cfg.lora_rank, cfg.kl_coef) == ("hydra", "ppo", 4, PPOConfig().kl_coef)
    with pytest.raises(ConfigError, match=r"config\['algorithm'\]: the run label \(parameter variant"):
        label_config(PPOConfig, "hydra", {}, {"algorithm": "grpo"})
    with pytest.raises(ConfigError, match=r"parameter variant 'hydra-dpo': 'hydra-dpo' is not a variant"):
        label_config(PPOConfig, "hydra-dpo")
    with pytest.raises(ConfigError, match=r"parameter variant_config\['full'\]\['model'\]: a label's settings"):
        label_config(PPOConfig, "full", {"full": {"model": "x"}}, refused=("model",))
    with pytest.raises(ConfigError, match=r"parameter variant_config\['lora-rloo'\]\['samples_per_prompt'\]: rloo "
                                            r"compares each response"):
        label_config(PPOConfig, "lora-rloo", {"lora-rloo": {"samples_per_prompt": 1}})


def test_the_layouts_that_start_from_a_separate_sft_model_are_those_with_a_reward_model_apart():
    from hydra_core.ppo.roles import LAYOUTS, SOURCES

    apart = {variant for variant, (_, _, _, reward) in LAYOUTS.items() if SOURCES[reward.model] == "reward"}
    assert apart == set(SEPARATE_MODEL_VARIANTS)
    assert [label for label in RUN_LABELS if uses_separate_models(label)] == [
        label for label in RUN_LABELS if not label.startswith(("hydra", "j-hydra"))]


def test_the_quantisable_layouts_are_those_whose_every_role_is_an_adapted_or_adapters_off_backbone():
    from hydra_core.ppo.roles import FULL, LAYOUTS

    adapted = {variant for variant, roles in LAYOUTS.items() if all(role.adapter != FULL for role in roles)}
    assert adapted == set(QUANTIZABLE_VARIANTS)

# --- every range and relation, from every source ---------------------------------------------------


def out_of_range(cls, name):
    """A value just outside the declared range of field `name`."""
    bound = bounds(cls, name)
    step = 1 if field_type(cls, name)[0] is int else 0.5
    if "ge" in bound:
        return bound["ge"] - step
    if "gt" in bound:
        return bound["gt"]
    return bound["le"] + step if "le" in bound else bound["lt"]


RANGED = [(stage, name) for stage, cls in STAGE_CONFIGS.items() for name in field_names(cls)
          if bounds(cls, name)]
RELATIONS = [
    (["ppo", "--rollout-batch-size", "4", "--mini-batch-size", "16"], "--mini-batch-size: 16 is more than "
     "the 4 responses of a rollout (--rollout-batch-size x --samples-per-prompt)"),
    (["ppo", "--device", "gpu"], "--device: 'gpu' is not cpu, cuda or cuda:N"),
    (["prepare", "--format", "generic"], "--source: is required with --format generic"),
    (["eval", "--judge", "openai", "--judge-base-url", "api.example.com"], "--judge-base-url: 'api.example.com' is "
     "not an http(s) URL"),
    (["eval", "--max-prompts", "0"], "--max-prompts: 0 is out of range; it must be at least 1"),
    (["ppo", "--learning-rate", "nan"], "--learning-rate: nan is not a finite number"),
    (["ppo", "--variant", "lora", "--quantize-backbone", "4bit"], "--quantize-backbone: 4bit needs a layout whose "
     "reference and reward are the frozen backbone with the adapters off (lora-dynamic, j-hydra, hydra); --variant "
     "lora holds unadapted reference and reward copies"),
    (["ppo", "--variant", "full", "--quantize-backbone", "8bit"], "--variant full trains its backbones in full"),
    (["ppo", "--lora-target-modules", " , "], "--lora-target-modules: is empty; give all-linear or module names"),
    (["sft", "--lora-target-modules", "all-linear,q_proj"], "--lora-target-modules: all-linear already names every "
     "linear module"),
]


def refused(argv, capsys) -> str:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("stage, name", RANGED, ids=[f"{s}.{n}" for s, n in RANGED])
def test_every_flag_out_of_its_range_is_refused_in_one_line(stage, name, tmp_path, capsys):
    bad = out_of_range(STAGE_CONFIGS[stage], name)
    err = refused([stage, flag(name), str(bad), "--output-dir", str(tmp_path / "out")], capsys)
    assert err.startswith(f"hydra-rlhf {stage}: error: {flag(name)}: {bad:g} is out of range; it must be")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", RELATIONS, ids=[" ".join(a[:2]) for a, _ in RELATIONS])
def test_every_relation_between_flags_is_refused_in_one_line(argv, message, capsys):
    assert message in refused(argv, capsys)


def test_a_gpu_that_is_not_there_is_refused_before_any_model_loads(tmp_path, capsys, hydra_sft_dir, arithmetic_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = refused(["ppo", "--device", "cuda", "--model", hydra_sft_dir, "--data", arithmetic_dir, "--output-dir",
                   str(tmp_path / "out")], capsys)
    assert "device 'cuda': this machine has no CUDA device" in err


PIPELINE_RANGED = [name for name, (stage, field) in __import__("pipelines.hydra_rlhf", fromlist=["x"])
                   .STAGE_PARAMETERS.items() if bounds(STAGE_CONFIGS[stage], field)]


@pytest.mark.parametrize("name", PIPELINE_RANGED)
def test_every_pipeline_parameter_out_of_its_range_is_refused_before_the_run(name, tmp_path, capsys):
    from pipelines.hydra_rlhf import STAGE_PARAMETERS

    stage, field = STAGE_PARAMETERS[name]
    bad = out_of_range(STAGE_CONFIGS[stage], field)
    err = refused(["run", "--output-dir", str(tmp_path / "run"), "-p", f"{name}={bad}"], capsys)
    assert f"pipeline parameter {name}: {bad:g} is out of range" in err
    assert not (tmp_path / "run").exists()


def test_a_stage_config_parameter_out_of_range_is_named_by_its_key(capsys):
    err = refused(["run", "-p", 'ppo_config={"top_p": 1.5}'], capsys)
    assert "pipeline parameter ppo_config['top_p']: 1.5 is out of range; it must be more than 0 and at most 1" in err
    err = refused(["run", "-p", "ppo_rollout_batch_size=4", "-p", "ppo_mini_batch_size=16"], capsys)
    assert ("pipeline parameter ppo_mini_batch_size: 16 is more than the 4 responses of a rollout "
            "(pipeline parameter ppo_rollout_batch_size x pipeline parameter ppo_config['samples_per_prompt'])") in err


def test_a_component_refuses_a_bad_parameter_before_its_stage_runs():
    with pytest.raises(ConfigError, match=r"parameter steps: 0 is out of range; it must be at least 1"):
        from_parameters(PPOConfig, {}, steps=0)
    with pytest.raises(ConfigError, match=r"config\['top_p'\]: 1.5 is out of range"):
        from_parameters(PPOConfig, {"top_p": 1.5})


@dataclass
class _Commented:
    """A config whose fields' comments are their meanings."""

    beside: int = 1  # the comment on its line
    # a comment above
    # that goes on
    above: int = 2
    both: int = 3  # and its own
    # a note that belongs to no field: a blank line follows it

    bare: int = 4
    # above, and beside too
    mixed: int = 5  # its own


def test_a_fields_meaning_is_the_comment_beside_or_above_it():
    assert field_help(_Commented) == {"beside": "the comment on its line", "above": "a comment above that goes on",
                                      "both": "and its own", "bare": "", "mixed": "above, and beside too its own"}
