"""Kubeflow components: thin wrappers that call hydra_core, one folder each, with the compiled
spec (`component.yaml`) beside the code so that other DAGs can load it. `python -m components.build`
(or `hydra-rlhf compile --components`) regenerates the specs."""
