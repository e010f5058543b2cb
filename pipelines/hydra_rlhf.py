"""The Hydra-RLHF pipeline: check settings -> data prep -> Hydra-SFT -> for each PPO variant
(Hydra-PPO -> pairwise eval -> register) -> compare.

With one PPO variant (the default) it is the method end to end. With several it is the paper's
experiment, and the compare step puts them side by side. A variant is a run label: a memory layout
(`hydra`, `lora`, ...: PPO) or a layout and a critic-free algorithm (`hydra-grpo`, `lora-rloo`).
The parameters' defaults are read from hydra_core's stage configs, so they follow them; `*_config`
parameters set any other field of a stage's config, and `ppo_variant_config` sets PPO fields per
label (PPO_VARIANT_CONFIG: each variant's learning rates, the critic-free algorithms' groups).

The paper's experiment as the paper ran it: the layouts that keep their reward model apart from the
policy (full, lora, lora-dynamic) start from a separately trained SFT model and a reward model
initialised from it, both trained on the same data with the same budget as Hydra-SFT; hydra and
j-hydra start from Hydra-SFT. The first step says whether a label needs them (`separate_sft`), and
the DAG branches on it (`dsl.If` / `dsl.Else`), so they are trained only then:
- with them, every variant and Hydra-SFT itself (the "does joint training hurt the policy" row) are
  judged against the SFT model, one baseline for every row;
- without them, every variant is judged against Hydra-SFT.
Each branch holds its own variants loop and compare step (built by one function): kfp 2.17's local
runner cannot feed a `dsl.OneOf` of artifacts to a later task ("Expected 1 artifact in
ArtifactSelectorSpec. Got: 2"), and a OneOf would also need Hydra-SFT trained inside both branches.

MLflow: a step of its own (`open_pipeline_run`, after the check) opens the pipeline's parent run with
the checked parameters, the KFP run (its id, and a link given `kfp_ui_url`) and what ran (package
version, git commit, image); every step nests its own run under it (the steps in the variants loop
find its id in that step's output artifact), and the compare step closes it. The exit step
(`close_pipeline_run`, run however the job ends) ends what is still open: the parent run FAILED after
a failed step, the run of a killed step KILLED. Each
variant's policy is registered as soon as it is judged (aliases moving as it goes); the compare
step, after all of them, settles `candidate` on the variant with the best judged lower bound and
`champion` on it too when that bound beats the threshold.

Task settings, compiled into the spec and ignored by the local runner: each task requests and is limited
to the CPU and memory of RESOURCES, and gets a scratch volume (an emptyDir of that size, which any UID can
write) for temporary files and the hub's cache; it is retried RETRY times with a growing backoff (a node
lost, a hub download cut). The steps that only record or move state (CHANGES_STATE) are never cached,
the others may be: data prep and the SFT trainings take nothing that changes from one pipeline run
to the next (no job name, no parent run id: their runs are nested by the first step that reads their
outputs, hydra_core.tracking.runs), so a run retried after a failed PPO step takes them from the
cache. Compiled with `use_gpu`, the steps of GPU_STEPS also get one accelerator of type
`accelerator` and the CUDA image; `tolerations` and `node_selector` apply to every task.

Secrets never travel as parameter values: each SECRETS entry names a pipeline parameter holding a
Kubernetes secret's name and the secret's keys that become environment variables of the tasks that
need them. Every secret is optional, so a cluster without one runs without those variables (the gold
and reward-model judges need no key; an MLflow server without authentication needs no credentials).
"""

import functools
from typing import List, Mapping, Sequence

from kfp import compiler, dsl, kubernetes

from components.check_settings.component import check_settings
from components.close_pipeline_run.component import close_pipeline_run
from components.compare_variants.component import compare_variants
from components.data_prep.component import data_prep
from components.open_pipeline_run.component import open_pipeline_run
from components.hydra_ppo.component import hydra_ppo
from components.hydra_sft.component import hydra_sft
from components.image import ACCELERATOR, CUDA_IMAGE, IMAGE
from components.pairwise_eval.component import pairwise_eval
from components.register_model.component import register_model
from hydra_core.config.fields import field_help, field_names
from hydra_core.config.settings import (STAGE_CONFIGS, DataConfig, EvalConfig, ModelInitConfig, Placement, PPOConfig,
                                        SFTConfig, run_label)
from hydra_core.registry import CHAMPION_THRESHOLD, POLICY_MODEL, SFT_MODEL
from hydra_core.tracking.mlflow_tracker import DEFAULT_EXPERIMENT

_D, _M, _T, _P, _E, _N = DataConfig(), ModelInitConfig(), SFTConfig(), PPOConfig(), EvalConfig(), Placement()

NAME = "hydra-rlhf"
RESOURCES = {  # component name: (CPU request, CPU limit, memory request and limit, scratch volume size)
    "check-settings": ("500m", "1", "1G", "1Gi"),
    "open-pipeline-run": ("500m", "1", "1G", "1Gi"),
    "data-prep": ("1", "2", "4G", "20Gi"),
    "hydra-sft": ("4", "8", "16G", "50Gi"),
    "hydra-ppo": ("4", "8", "16G", "50Gi"),
    "pairwise-eval": ("2", "4", "8G", "30Gi"),
    "register-model": ("500m", "1", "1G", "1Gi"),
    "compare-variants": ("500m", "1", "1G", "1Gi"),
    "close-pipeline-run": ("500m", "1", "1G", "1Gi"),
}
SCRATCH = "/scratch"
SCRATCH_ENV = {"TMPDIR": SCRATCH, "HF_HOME": f"{SCRATCH}/huggingface"}
# 2 retries, 1 then 2 minutes apart: long enough for a node to be replaced, short of hiding a real failure
RETRY = dict(num_retries=2, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="600s")
# a cached one would skip closing the runs or moving the aliases that this run's results call for
CHANGES_STATE = ("open-pipeline-run", "register-model", "compare-variants", "close-pipeline-run")
# A local run caches in its own output folder, so only `run --resume` finds a step there: it continues that run,
# in its parent run with its registered versions, and ends it with these
LOCAL_UNCACHED = ("compare-variants", "close-pipeline-run")
MLFLOW_STEPS = tuple(RESOURCES)
HUB_STEPS = ("data-prep", "hydra-sft", "hydra-ppo", "pairwise-eval")
# pipeline parameter: (its default secret name, {secret key: environment variable}, the steps that get it)
SECRETS = {
    "judge_secret": ("hydra-rlhf-judge", {"api-key": _E.judge_api_key_env}, ("pairwise-eval",)),
    "mlflow_secret": ("hydra-rlhf-mlflow", {key: key for key in (
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")}, MLFLOW_STEPS),
    "artifact_store_secret": ("hydra-rlhf-artifact-store", {key: key for key in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")}, MLFLOW_STEPS),
    "hf_secret": ("hydra-rlhf-hf", {"HF_TOKEN": "HF_TOKEN"}, HUB_STEPS),
}
GPU_STEPS = ("hydra-sft", "hydra-ppo", "pairwise-eval")

# The pipeline parameters that set a stage's config field: (stage, field). `seed` sets every stage's.
# Any other field goes in the stage's `*_config` parameter; WIRED fields are the pipeline's to set.
STAGE_PARAMETERS = {
    "base_model": ("sft", "model"), "base_preset": ("init-model", "preset"),
    "dataset": ("prepare", "source"), "data_format": ("prepare", "format"),
    "dataset_split": ("prepare", "dataset_split"), "max_records": ("prepare", "max_records"),
    "eval_fraction": ("prepare", "eval_fraction"),
    "sft_steps": ("sft", "steps"), "sft_learning_rate": ("sft", "learning_rate"),
    "sft_demo_batch_size": ("sft", "demo_batch_size"), "sft_pair_batch_size": ("sft", "pair_batch_size"),
    "ppo_variants": ("ppo", "variant"), "ppo_steps": ("ppo", "steps"),
    "ppo_rollout_batch_size": ("ppo", "rollout_batch_size"), "ppo_mini_batch_size": ("ppo", "mini_batch_size"),
    "ppo_learning_rate": ("ppo", "learning_rate"), "ppo_critic_learning_rate": ("ppo", "critic_learning_rate"),
    "ppo_kl_coef": ("ppo", "kl_coef"), "ppo_lora_rank": ("ppo", "lora_rank"),
    "ppo_memory_budget": ("ppo", "memory_budget"), "ppo_rollout_engine": ("ppo", "rollout_engine"),
    "judge": ("eval", "judge"), "judge_model": ("eval", "judge_model"), "judge_base_url": ("eval", "judge_base_url"),
    "eval_max_prompts": ("eval", "max_prompts"),
}
# the parameters that set the field of their name in several stages' configs
SHARED = {"seed": ("prepare", "sft", "ppo", "eval"), "checkpoint_uri": ("sft", "ppo")}
CONFIG_PARAMETERS = {"data_config": "prepare", "sft_config": "sft", "ppo_config": "ppo", "eval_config": "eval"}
WIRED = {"init-model": {"output_dir", "seed"}, "prepare": {"output_dir", "tokenizer"},
         "sft": {"data", "output_dir", "mode"}, "ppo": {"model", "reward_model", "data", "output_dir"},
         "eval": {"candidate", "baseline", "prompts", "output_dir"}}
# a list parameter of run labels -> the parameter of its per-label settings ({algorithm, layout or label: settings})
LABEL_PARAMETERS = {"ppo_variants": "ppo_variant_config"}
# The default per-label PPO settings, over the shared ppo_* parameters (ppo_config's fields win over them).
# Full fine-tuning at the LoRA rate of 1e-3 drifts. Full PPO's gold accuracy on the embedded default, actor
# and critic at one rate (docs/benchmarks.md, "The paper's experiment in one pipeline run"):
#   from the separate SFT model and reward model (as the pipeline runs it; 0.675 before): 0.705 at 1e-3,
#   0.84 at 3e-4, 0.89 at 2e-4, 0.8825 at 1e-4, 0.865 at 5e-5, 0.82 at 3e-5 (LoRA-PPO at 1e-3: 0.91);
#   from Hydra-SFT (0.6125 before): 0.815 at 1e-3, 0.9175 at 3e-4, 0.945 at 1e-4, 0.955 at 5e-5, 0.9525 at
#   3e-5, 0.9275 at 1e-5 (Hydra-PPO at 1e-3: 0.9575).
# 1e-4 is within a point of the best from either start. RLOO and GRPO compare each response with the others
# to the same prompt: 4 responses to each of 64 prompts, as many responses an iteration as PPO's 256 x 1.
PPO_VARIANT_CONFIG = {
    "full": {"learning_rate": 1e-4, "critic_learning_rate": 1e-4},
    "rloo": {"samples_per_prompt": 4, "rollout_batch_size": 64},
    "grpo": {"samples_per_prompt": 4, "rollout_batch_size": 64},
}
# Where each training step runs (hydra_core.config.Placement): {its field: the pipeline parameter}. More than one
# node or GPU makes the step a Kubeflow Trainer TrainJob's launcher (components/trainjob.py), whose nodes share
# the step's files through the pipeline's workspace (build's `workspace`).
PLACEMENTS = {stage: {field: f"{stage}_{field}" for field in field_names(Placement)} for stage in ("sft", "ppo")}
# the above as hydra_core.config.check_parameters reads them, here and in the pipeline's first step
RULES = {"fields": {name: list(target) for name, target in STAGE_PARAMETERS.items()}, "configs": CONFIG_PARAMETERS,
         "wired": {stage: sorted(fields) for stage, fields in WIRED.items()},
         "shared": {name: list(stages) for name, stages in SHARED.items()},
         "labels": LABEL_PARAMETERS, "placements": PLACEMENTS}
# the parameters the first step checks
CHECKED = (*STAGE_PARAMETERS, *SHARED, *CONFIG_PARAMETERS, *LABEL_PARAMETERS.values(),
           *(name for fields in PLACEMENTS.values() for name in fields.values()))


# what each pipeline parameter that sets no single stage field means (`run --help`, `submit --help`)
MEANINGS = {
    "base_model": "the base model, a local directory or a Hugging Face model id; \"\" for a fresh random-init "
                  "model of base_preset",
    "seed": "every stage's seed",
    "checkpoint_uri": "where the SFT and PPO steps keep their checkpoints so that a retried step resumes them: a "
                      "folder every attempt mounts or an fsspec URL (s3://, gs://); each step gets a location of "
                      "its own under it. \"\": the workspace's checkpoints/ when compiled with one, else none",
    **{name: f"any other field of the {stage} stage's config, as JSON" for name, stage in CONFIG_PARAMETERS.items()},
    "ppo_variant_config": "PPO settings per run label, algorithm or layout, as JSON (replaces the default table)",
    "tracking_uri": "MLflow tracking URI the steps log to (submit: one the pods can reach)",
    "experiment": "MLflow experiment",
    "kfp_ui_url": "the KFP UI's address, for the parent run's link to this run (submit: --host, unless given)",
    "registered_sft_model": "registered model name of Hydra-SFT",
    "registered_policy_model": "registered model name of the PPO policies",
    "champion_threshold": "the judged win-rate's lower bound above which a policy becomes champion",
    "ppo_variants": "run labels, each a PPO variant: a layout, or layout-algorithm (hydra, lora, hydra-grpo, ...)",
    **{parameters["num_nodes"]: f"nodes the {stage} steps train on; more than one (or more than one GPU) runs "
       "them as a Kubeflow Trainer TrainJob, whose nodes need the workspace (compile --workspace)"
       for stage, parameters in PLACEMENTS.items()},
    **{parameters["gpus_per_node"]: f"GPUs on each node of a {stage} step's TrainJob (0: CPU nodes)"
       for stage, parameters in PLACEMENTS.items()},
    **{name: "optional Kubernetes secret; its keys become variables of the steps that need them: "
       + ", ".join(key if key == variable else f"{key} as {variable}" for key, variable in keys.items())
       for name, (_, keys, _) in SECRETS.items()},
}


# build() is called, never run at import: each of kfp's task settings (set_cpu_limit, ...) calls inspect.stack(),
# and an import's frames (<frozen importlib...>) belong to no module, so inspect scans all of sys.modules for each
# of them: with torch loaded, 15-20 s a build on 2 cores, against 0.1-0.4 s outside an import.
def build(use_gpu: bool = False, accelerator: str = ACCELERATOR, parallelism: int = 0,
          tolerations: Sequence[Mapping[str, str]] = (), node_selector: Mapping[str, str] | None = None,
          cluster: bool = True, workspace: str = "", workspace_storage_class: str = ""):
    """The pipeline, its task settings fixed (a task's resources are not pipeline parameters).
    `parallelism`: how many variants run at once (0: all; kfp fixes it when compiling, not per run).
    `tolerations`: add_toleration's arguments, each; `node_selector`: {label: value} every task's node has.
    `cluster`: the scratch volumes, the variables that point there, the retries and the cluster's caching. Off for a
    local run: the local runner sets a task's variables in this machine's processes, where the volume's path does
    not exist, and it honours retries, which on one machine only delay a failure's report by minutes; its cache
    is the output folder's (LOCAL_UNCACHED).
    `workspace`: the size of the pipeline's workspace (kfp's, a PVC per run; ReadWriteMany, of
    `workspace_storage_class` when given), which the SFT and PPO steps share with the nodes of the TrainJobs they
    create when their `*_num_nodes` or `*_gpus_per_node` ask for more than one; "" for none (one node each)."""
    shared = {"workspace": dsl.WORKSPACE_PATH_PLACEHOLDER} if workspace else {}
    volume = {"accessModes": ["ReadWriteMany"], **({"storageClassName": workspace_storage_class}
                                                  if workspace_storage_class else {})}
    config = dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(
        size=workspace, kubernetes=dsl.KubernetesWorkspaceConfig(pvcSpecPatch=volume))) if workspace else None

    @dsl.pipeline(name=NAME, description=__doc__.split("\n\n")[0].replace("\n", " "), pipeline_config=config)
    def hydra_rlhf(
        base_model: str = "",
        base_preset: str = _M.preset,
        dataset: str = _D.source,
        data_format: str = _D.format,
        dataset_split: str = _D.dataset_split,
        max_records: int = _D.max_records,
        eval_fraction: float = _D.eval_fraction,
        seed: int = _D.seed,
        checkpoint_uri: str = _T.checkpoint_uri,
        sft_steps: int = _T.steps,
        sft_learning_rate: float = _T.learning_rate,
        sft_demo_batch_size: int = _T.demo_batch_size,
        sft_pair_batch_size: int = _T.pair_batch_size,
        sft_num_nodes: int = _N.num_nodes,
        sft_gpus_per_node: int = _N.gpus_per_node,
        ppo_variants: List[str] = [run_label(_P.variant, _P.algorithm)],
        ppo_steps: int = _P.steps,
        ppo_rollout_batch_size: int = _P.rollout_batch_size,
        ppo_mini_batch_size: int = _P.mini_batch_size,
        ppo_learning_rate: float = _P.learning_rate,
        ppo_critic_learning_rate: float = _P.critic_learning_rate,
        ppo_kl_coef: float = _P.kl_coef,
        ppo_lora_rank: int = _P.lora_rank,
        ppo_memory_budget: str = _P.memory_budget,
        ppo_rollout_engine: str = _P.rollout_engine,
        ppo_num_nodes: int = _N.num_nodes,
        ppo_gpus_per_node: int = _N.gpus_per_node,
        judge: str = _E.judge,
        judge_model: str = _E.judge_model,
        judge_base_url: str = _E.judge_base_url,
        eval_max_prompts: int = _E.max_prompts,
        data_config: dict = {},
        sft_config: dict = {},
        ppo_config: dict = {},
        ppo_variant_config: dict = PPO_VARIANT_CONFIG,
        eval_config: dict = {},
        tracking_uri: str = "",
        experiment: str = DEFAULT_EXPERIMENT,
        kfp_ui_url: str = "",
        registered_sft_model: str = SFT_MODEL,
        registered_policy_model: str = POLICY_MODEL,
        champion_threshold: float = CHAMPION_THRESHOLD,
        judge_secret: str = SECRETS["judge_secret"][0],
        mlflow_secret: str = SECRETS["mlflow_secret"][0],
        artifact_store_secret: str = SECRETS["artifact_store_secret"][0],
        hf_secret: str = SECRETS["hf_secret"][0],
    ):
        settings = {name: value for name, value in locals().items() if name in CHECKED}
        secret_names = {name: value for name, value in locals().items() if name in SECRETS}

        def configure(task):
            name = task.component_spec.name
            cpu, cpu_limit, memory, scratch_size = RESOURCES[name]
            task.set_cpu_request(cpu).set_cpu_limit(cpu_limit).set_memory_request(memory).set_memory_limit(memory)
            task.set_caching_options(name not in (CHANGES_STATE if cluster else LOCAL_UNCACHED))
            if cluster:
                task.set_retry(**RETRY)
                kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH, size_limit=scratch_size)
                for variable, value in SCRATCH_ENV.items():
                    task.set_env_variable(variable, value)
            for parameter, (_, keys, steps) in SECRETS.items():
                if name in steps:
                    kubernetes.use_secret_as_env(task, secret_name=secret_names[parameter], secret_key_to_env=keys,
                                                 optional=True)
            for toleration in tolerations:
                kubernetes.add_toleration(task, **toleration)
            for label, value in (node_selector or {}).items():
                kubernetes.add_node_selector(task, label, value)
            if use_gpu and name in GPU_STEPS:
                task.set_accelerator_type(accelerator).set_accelerator_limit(1).set_container_image(CUDA_IMAGE)
            return task

        tracking = dict(tracking_uri=tracking_uri, experiment=experiment)
        images = [IMAGE, *([CUDA_IMAGE] if use_gpu else [])]

        def judged(candidate, baseline, name: str):
            task = configure(pairwise_eval(data=data, candidate=candidate, baseline=baseline,
                                           pipeline_run=pipeline_run, judge=judge,
                                           judge_model=judge_model, judge_base_url=judge_base_url,
                                           max_prompts=eval_max_prompts, seed=seed, config=eval_config, **tracking))
            task.set_display_name(name)
            return task

        def variants(baseline, separate: dict, hydra_sft_row=None):
            """Each run label: RL -> judged against `baseline` -> registered; then the comparison.
            `separate`: the SFT model and reward model for the layouts that start from them."""
            with dsl.ParallelFor(ppo_variants, name="ppo-variants", parallelism=parallelism) as label:
                ppo = configure(hydra_ppo(data=data, sft_model=sft.outputs["model"], **separate,
                                          pipeline_run=pipeline_run, variant=label,
                                          variant_config=ppo_variant_config, steps=ppo_steps,
                                          rollout_batch_size=ppo_rollout_batch_size,
                                          mini_batch_size=ppo_mini_batch_size, learning_rate=ppo_learning_rate,
                                          critic_learning_rate=ppo_critic_learning_rate, kl_coef=ppo_kl_coef,
                                          lora_rank=ppo_lora_rank, memory_budget=ppo_memory_budget,
                                          rollout_engine=ppo_rollout_engine, seed=seed,
                                          config=ppo_config, num_nodes=ppo_num_nodes,
                                          gpus_per_node=ppo_gpus_per_node, checkpoint_uri=checkpoint_uri,
                                          **shared, **tracking))
                ppo.set_display_name("Hydra-PPO")
                evaluation = judged(ppo.outputs["policy"], baseline, "pairwise eval").outputs["evaluation"]
                registered = configure(register_model(evaluation=evaluation, policy_run_id=ppo.outputs["Output"],
                                                      registered_model=registered_policy_model,
                                                      champion_threshold=champion_threshold, **tracking))
                registered.set_display_name("register")
            row = {"hydra_sft_evaluation": hydra_sft_row} if hydra_sft_row is not None else {}
            configure(compare_variants(evaluations=dsl.Collected(evaluation), **row, parent_run_id=parent,
                                       registered_model=registered_policy_model,
                                       versions=dsl.Collected(registered.outputs["Output"]),
                                       champion_threshold=champion_threshold, **tracking)).set_display_name("compare")

        closing = configure(close_pipeline_run(pipeline_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **tracking))
        closing.set_display_name("close MLflow runs")
        with dsl.ExitHandler(closing, name="hydra-rlhf-steps"):
            checked = configure(check_settings(rules=RULES, **settings))
            checked.set_display_name("check settings")
            opened = configure(open_pipeline_run(parameters=checked.outputs["parameters"],
                                                 pipeline_job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                                 pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                                 kfp_ui_url=kfp_ui_url, images=images, **tracking))
            opened.set_display_name("open MLflow run")
            pipeline_run, parent = opened.outputs["pipeline_run"], opened.outputs["parent_run_id"]
            # the tokenizer of the model SFT starts from, where one is given: the manifest counts what the limits cut
            prep = configure(data_prep(dataset=dataset, data_format=data_format, dataset_split=dataset_split,
                                       max_records=max_records, eval_fraction=eval_fraction, seed=seed,
                                       tokenizer=base_model,
                                       config=data_config, open_parent_run=False, **tracking)).after(checked)
            prep.set_display_name("data prep")
            data = prep.outputs["data"]
            # the same data and budget for Hydra-SFT and, where needed, the SFT model and the reward model
            budget = dict(data=data, steps=sft_steps, learning_rate=sft_learning_rate,
                          demo_batch_size=sft_demo_batch_size, pair_batch_size=sft_pair_batch_size, seed=seed,
                          config=sft_config, num_nodes=sft_num_nodes, gpus_per_node=sft_gpus_per_node,
                          checkpoint_uri=checkpoint_uri, **shared, **tracking)
            sft = configure(hydra_sft(base_model=base_model, base_preset=base_preset, **budget,
                                      registered_model=registered_sft_model))
            sft.set_display_name("Hydra-SFT")
            with dsl.If(checked.outputs["separate_sft"] == True, name="separate-sft-and-reward-model"):  # noqa: E712
                plain = configure(hydra_sft(base_model=base_model, base_preset=base_preset, mode="sft", **budget))
                plain.set_display_name("SFT")
                reward = configure(hydra_sft(init_model=plain.outputs["model"], mode="rm", **budget))
                reward.set_display_name("reward model")
                row = judged(sft.outputs["model"], plain.outputs["model"], "Hydra-SFT vs SFT")
                variants(plain.outputs["model"], {"plain_sft_model": plain.outputs["model"],
                                                  "reward_model": reward.outputs["model"]},
                         row.outputs["evaluation"])
            with dsl.Else(name="hydra-sft-only"):
                variants(sft.outputs["model"], {})

    return hydra_rlhf


def compile_pipeline(path: str, defaults: dict | None = None, **settings) -> str:
    """Write the pipeline spec to `path`; `defaults` replace parameters' defaults in it (a recipe's);
    `settings` are build's."""
    compiler.Compiler().compile(build(**settings), path, pipeline_parameters=defaults or None)
    return path


@functools.cache
def parameters() -> dict:
    """The pipeline's parameters by name (kfp's InputSpec: type, default), the same whatever build()'s settings;
    built once a process."""
    return build().component_spec.inputs


def parameter_help() -> list[tuple[str, object, str]]:
    """(name, default, meaning) of each pipeline parameter, in the pipeline's order."""
    def meaning(name: str) -> str:
        if name in STAGE_PARAMETERS and name not in MEANINGS:
            stage, field = STAGE_PARAMETERS[name]
            meaning = field_help(STAGE_CONFIGS[stage])[field]
            return f"{meaning} (the {stage} stage's {field}: hydra-rlhf {stage} --{field.replace('_', '-')})"
        return MEANINGS[name]
    return [(name, spec.default, meaning(name)) for name, spec in parameters().items()]
