"""The pipeline's `hydra-rlhf` commands: compile, submit, run.

They join `hydra_core.cli`'s registry through the `hydra_rlhf.commands` entry point (pyproject.toml).
This module imports nothing heavy: kfp and MLflow load only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from components.image import ACCELERATOR
from hydra_core.cli import Command
from pipelines.runners import RUNNERS


def _add_task_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", action="store_true",
                   help="give the SFT, PPO and eval steps one accelerator each and the CUDA image")
    p.add_argument("--accelerator", default=ACCELERATOR, help=f"accelerator type with --gpu (default: {ACCELERATOR})")
    p.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                   help="every task tolerates this taint (kubectl taint's syntax), repeatable: e.g. "
                        "nvidia.com/gpu:NoSchedule, or dedicated=ml:NoSchedule")
    p.add_argument("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
                   help="every task runs on a node with this label, repeatable: e.g. pool=training")
    p.add_argument("--workspace", default="", metavar="SIZE",
                   help="give the run a workspace of SIZE (e.g. 200Gi: a ReadWriteMany PVC per run, kfp's), which "
                        "the SFT and PPO steps share with the nodes of the Kubeflow Trainer TrainJobs they create "
                        "when *_num_nodes or *_gpus_per_node ask for more than one")
    p.add_argument("--workspace-storage-class", default="", metavar="NAME",
                   help="the workspace's storage class, one that provides ReadWriteMany (default: the cluster's)")


EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _toleration(text: str) -> dict:
    taint, _, effect = text.partition(":")
    key, equals, value = taint.partition("=")
    if not key or (equals and not value) or (effect and effect not in EFFECTS):
        raise ValueError(f"--toleration {text!r}: expected KEY[=VALUE][:EFFECT], EFFECT one of {', '.join(EFFECTS)}")
    return {"key": key, "operator": "Equal" if value else "Exists", "value": value or None, "effect": effect or None}


def _node_selector(pairs: list[str]) -> dict:
    labels = {}
    for pair in pairs:
        label, _, value = pair.partition("=")
        if not label or not value:
            raise ValueError(f"--node-selector {pair!r}: expected LABEL=VALUE")
        labels[label] = value
    return labels


def _task_settings(args) -> dict:
    """build()'s settings from the flags of _add_task_settings."""
    if args.workspace:
        from kfp import dsl

        try:
            dsl.WorkspaceConfig(size=args.workspace)
        except ValueError as e:
            raise ValueError(f"--workspace {args.workspace!r}: {e}") from None
    return dict(use_gpu=args.gpu, accelerator=args.accelerator, tolerations=[_toleration(t) for t in args.toleration],
                node_selector=_node_selector(args.node_selector), workspace=args.workspace,
                workspace_storage_class=args.workspace_storage_class)


def _parameter_table() -> str:
    from pipelines.hydra_rlhf import parameter_help

    return "pipeline parameters (-p NAME=VALUE), each with its default and meaning:\n" + "\n".join(
        f"  {name} = {json.dumps(default)}\n      {meaning}" for name, default, meaning in parameter_help())


def _add_params(p: argparse.ArgumentParser) -> None:
    # the table needs kfp, which every `hydra-rlhf` command would then load: it is made only for --help
    format_help = p.format_help

    def with_parameters() -> str:
        p.epilog = _parameter_table()
        return format_help()

    p.format_help = with_parameters
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the table's lines
    p.add_argument("--config", metavar="RECIPE", help="a recipe file (YAML or JSON): a section per stage "
                   "(prepare, init-model, sft, ppo, eval) and 'pipeline' for the pipeline's own parameters")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a pipeline parameter, repeatable, over the recipe's: e.g. sft_steps=300, "
                        "ppo_variants=lora,hydra, ppo_config='{\"eval_every\": 4}'")


def _arguments(args) -> dict:
    from pipelines.arguments import pipeline_arguments

    arguments, wired = pipeline_arguments(args.param, args.config, getattr(args, "stand_in", False))
    if wired:
        print(f"{args.config}: left to the pipeline, which connects the steps itself: {', '.join(wired)}")
    return arguments


def _add_compile(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="hydra_rlhf.yaml", help="where to write the pipeline spec")
    p.add_argument("--components", action="store_true",
                   help="instead, regenerate the component specs components/<name>/component.yaml")
    _add_task_settings(p)
    _add_params(p)


def _compile(args) -> None:
    if args.components:
        from components.build import build

        for path in build():
            print(f"component spec written to {path}")
        return
    from pipelines.arguments import check_shared_storage
    from pipelines.hydra_rlhf import compile_pipeline

    defaults, settings = _arguments(args), _task_settings(args)
    check_shared_storage(defaults, bool(settings["workspace"]), "compile with --workspace SIZE")
    path = compile_pipeline(args.output, defaults=defaults, **settings)
    print(f"pipeline spec written to {path}")


def _add_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="the KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    p.add_argument("--package", help="a compiled pipeline spec to submit (default: compile one now)")
    p.add_argument("--run-name")
    p.add_argument("--experiment-name")
    p.add_argument("--namespace")
    p.add_argument("--service-account", help="the Kubernetes service account the run's pods run as (default: the "
                   "KFP profile's); a step on several nodes needs one allowed to create TrainJobs (docs/scale-out.md)")
    p.add_argument("--no-tracking", action="store_true",
                   help="submit without an MLflow tracking URI: the run records nothing and registers no model")
    _add_task_settings(p)
    _add_params(p)


def _submit(args) -> None:
    from pipelines.submit import submit

    run_id = submit(args.host, _arguments(args), package=args.package, run_name=args.run_name,
                    experiment_name=args.experiment_name, namespace=args.namespace, tracked=not args.no_tracking,
                    settings=_task_settings(args), service_account=args.service_account)
    print(f"submitted: run {run_id} on {args.host}")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", help="where everything goes (default: runs/<timestamp>)")
    p.add_argument("--resume", metavar="OUTPUT_DIR",
                   help="continue the failed or killed run in OUTPUT_DIR with the settings it was started with: "
                        "the steps that finished are taken from their folders, a training step resumes from its "
                        "last checkpoint, and the MLflow runs go on (no other setting is taken with it)")
    p.add_argument("--tracking-uri", default="",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<output-dir>/mlflow.db)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every line of every step as kfp streams it (executor inputs, each progress "
                        "update), instead of a line per step; either way each step's log is written to "
                        "<output-dir>/logs/<step>.log")
    p.add_argument("--runner", choices=RUNNERS, default="subprocess",
                   help="where each step runs: 'subprocess' (default), a process of this Python; 'docker', a "
                        "container of the project's CPU image (build it with containers/build.sh), with the "
                        "outputs and the MLflow store on this machine at the same paths")
    p.add_argument("--stand-in", action="store_true",
                   help="run the --config recipe on its stand-in (its stand_in section): a random-init model of "
                        "its architecture, a few records in its data format, two steps a stage; every step of the "
                        "recipe runs, with nothing downloaded")
    _add_params(p)


def _run(args) -> None:
    from pipelines.local_run import PipelineFailed, browse_command, run_local

    if args.resume:
        given = [flag for flag, value in (("--output-dir", args.output_dir), ("--config", args.config),
                                          ("-p", args.param), ("--tracking-uri", args.tracking_uri),
                                          ("--stand-in", args.stand_in), ("--runner", args.runner != "subprocess"))
                 if value]
        if given:
            raise ValueError(f"--resume continues a run with the settings it was started with; drop {', '.join(given)}")
        arguments = None
    else:
        arguments = _arguments(args)
        if args.tracking_uri:
            arguments["tracking_uri"] = args.tracking_uri
    try:
        result = run_local(arguments, args.output_dir, args.verbose, args.runner, resume=args.resume)
    except PipelineFailed as e:
        log = (f"The end of the failed step's log, {e.log}:\n" + "".join(f"    {line}\n" for line in e.tail)
               if e.log else "")
        print(f"\nhydra-rlhf run: {e}\n{log}Its files are under {e.output_dir}, its logs in "
              f"{e.output_dir / 'logs'}.\nIts MLflow runs are closed (FAILED): {browse_command(e.tracking_uri)}\n"
              f"Continue it (the finished steps kept, a training step from its last checkpoint): "
              f"hydra-rlhf run --resume {e.output_dir}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"\npipeline finished in {result['seconds']:.0f} s")
    print(f"outputs:  {result['run_dir']}")
    for report in result["reports"]:
        print(f"report:   {report}")
    print(f"logs:     {result['logs']}")
    if result["comparison"]:
        print(f"\n{result['comparison'].read_text(encoding='utf-8')}")
    print(f"MLflow:   {result['tracking_uri']}")
    print(f"browse:   {browse_command(result['tracking_uri'])}")


COMMANDS = [
    Command("compile", "write the Kubeflow pipeline spec (or, with --components, the component specs)",
            _add_compile, _compile),
    Command("submit", "start a pipeline run on a Kubeflow Pipelines endpoint", _add_submit, _submit),
    Command("run", "run the whole pipeline locally, tracked in MLflow", _add_run, _run),
]
