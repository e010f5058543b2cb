"""How each PPO variant assembles its models. This is the only place the variants differ.

PPO needs four roles: the actor (policy, LM head), the critic (value head), the reference policy
(LM head) and the reward model (reward head). A role is a model plus the adapter that must be
active for it: a named LoRA adapter, FULL (no adapters, the weights themselves train) or OFF
(adapters switched off, i.e. the frozen model underneath):

| variant      | actor          | critic           | reference   | reward      | backbones |
|--------------|----------------|------------------|-------------|-------------|-----------|
| full         | policy FULL    | critic FULL      | ref FULL    | rm FULL     | 4         |
| lora         | policy "actor" | critic "critic"  | ref FULL    | rm FULL     | 4         |
| lora-dynamic | policy "actor" | critic "critic"  | policy OFF  | critic OFF  | 2         |
| j-hydra      | hydra "shared" | hydra "shared"   | hydra OFF   | hydra OFF   | 1         |
| hydra        | hydra "actor"  | hydra "critic"   | hydra OFF   | hydra OFF   | 1         |

Roles that name the same model and adapter share one forward pass: in j-hydra and hydra the
reference log-probs and the reward come from ONE pass with the adapters off, reading the LM head
and the reward head together; in j-hydra the actor's logits and the critic's values likewise.

The critic-free algorithms (rloo, grpo, remax) use the same table without its critic column: no
critic adapter, no value head, no critic model (lora-dynamic's reward is then the plain frozen
reward model), and `hydra` is one backbone with ONE adapter, the actor's.

Where no role trains a model in FULL and the reference and reward are models with their adapters OFF
(lora-dynamic, j-hydra, hydra: `config.QUANTIZABLE_VARIANTS`), every backbone may be quantised
(`quantize_backbone`): the roles then all read the same quantised weights, and the step-0 KL stays 0.

With `shard_backbone` (data-parallel processes, every layout but `full`) each model is sharded over the
processes by FSDP2 once its adapters are on (`models.hydra.shard_across_processes`); the roles, adapter
switches and passes above are unchanged, and the saved policy is merged into a copy loaded afresh.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from hydra_core.config.settings import CRITIC_FREE, PPOConfig
from hydra_core.models.hydra import (HEAD_NAMES, HydraModel, checkpoint_decoder_layers, load_hydra, require_reward_head,
                                     shard_across_processes)
from hydra_core.models.lora import adapter_weights, add_lora, merged_full_precision
from hydra_core.runtime import mixed_precision

FULL, OFF = "<full>", "<off>"


@dataclass(frozen=True)
class Role:
    model: str  # a key of PolicyStack.models
    adapter: str  # a LoRA adapter name, FULL or OFF


# variant -> (actor, critic, reference, reward)
LAYOUTS = {
    "full": (Role("policy", FULL), Role("critic", FULL), Role("reference", FULL), Role("reward", FULL)),
    "lora": (Role("policy", "actor"), Role("critic", "critic"), Role("reference", FULL), Role("reward", FULL)),
    "lora-dynamic": (Role("policy", "actor"), Role("critic", "critic"), Role("policy", OFF), Role("critic", OFF)),
    "j-hydra": (Role("hydra", "shared"), Role("hydra", "shared"), Role("hydra", OFF), Role("hydra", OFF)),
    "hydra": (Role("hydra", "actor"), Role("hydra", "critic"), Role("hydra", OFF), Role("hydra", OFF)),
}

# model key -> the model it is loaded from: the SFT policy (`model`) or the reward model
SOURCES = {"policy": "policy", "reference": "policy", "reward": "reward", "critic": "reward", "hydra": "policy"}


def _paths(cfg: PPOConfig) -> dict[str, str]:
    return {"policy": cfg.model, "reward": cfg.reward_model or cfg.model}


def actor_source(cfg: PPOConfig) -> str:
    """The model (directory or hub id) the actor's backbone is loaded from: what a rollout engine loads too."""
    return _paths(cfg)[SOURCES[LAYOUTS[cfg.variant][0].model]]


def adapter_sources(cfg: PPOConfig) -> list[str]:
    """The models (directories or hub ids) this layout puts LoRA adapters on, so that their
    `lora_target_modules` can be checked before any work."""
    actor, critic, _, _ = LAYOUTS[cfg.variant]
    trained = [actor] if cfg.algorithm in CRITIC_FREE else [actor, critic]
    return list(dict.fromkeys(_paths(cfg)[SOURCES[role.model]] for role in trained if role.adapter not in (FULL, OFF)))


class PolicyStack:
    """The models of one variant and the forward passes the RL loop asks of them."""

    def __init__(self, cfg: PPOConfig, device: torch.device):
        if cfg.variant not in LAYOUTS:
            raise ValueError(f"unknown PPO variant {cfg.variant!r}; choose one of {sorted(LAYOUTS)}")
        self.variant = cfg.variant
        self.actor, critic, self.reference, self.reward = LAYOUTS[cfg.variant]
        self.critic: Role | None = None if cfg.algorithm in CRITIC_FREE else critic
        self.device = device
        self.precision = mixed_precision(cfg.mixed_precision, device)
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.cfg = cfg
        paths = _paths(cfg)
        require_reward_head(paths[SOURCES[self.reward.model]], f"the reward model of --variant {cfg.variant}")
        # Each model carries the heads its roles read: the critic the value head, the reward model the reward head.
        reads = {"value": self.critic, "reward": self.reward}
        roles = [role for role in (self.actor, self.critic, self.reference, self.reward) if role is not None]
        trains_a_model_in_full = any(r.adapter == FULL for r in (self.actor, self.critic) if r is not None)
        self.frozen_dtype = frozen_weights_dtype(self.precision, trains_a_model_in_full)

        self.models: dict[str, HydraModel] = {}
        for role in roles:
            if role.model in self.models:
                continue
            heads = tuple(head for head in HEAD_NAMES if reads.get(head) and reads[head].model == role.model)
            trains_in_full = role in (self.actor, self.critic) and role.adapter == FULL
            dtype = torch.float32 if trains_in_full else self.frozen_dtype
            model = load_hydra(paths[SOURCES[role.model]], heads=heads, device=device, dtype=dtype,
                               trust_remote_code=cfg.trust_remote_code, chat_template=cfg.chat_template,
                               quantization=cfg.quantize_backbone)
            model.requires_grad_(trains_in_full)
            self.models[role.model] = model
        for role in dict.fromkeys(r for r in (self.actor, self.critic) if r):  # ordered: adapter init draws RNG
            if role.adapter not in (FULL, OFF):
                add_lora(self.models[role.model], cfg.lora_rank, cfg.lora_alpha, name=role.adapter,
                         target_modules=cfg.lora_target_modules)
                self.models[role.model].to(device)
        if cfg.gradient_checkpointing:  # the models step 3 trains; the others never record gradients
            for key in dict.fromkeys(role.model for role in (self.actor, self.critic) if role):
                checkpoint_decoder_layers(self.models[key])
        if self.critic:
            self.models[self.critic.model].heads["value"].float().requires_grad_(True)
        for model in self.models.values():
            model.eval()  # dropout off in every model during RL
            if cfg.shard_backbone:  # replaces every parameter: the lists below must be taken after it
                shard_across_processes(model)
        value_head = list(self.models[self.critic.model].heads["value"].parameters()) if self.critic else []

        self.actor_params = self._params_of(self.actor)
        self.critic_params = self._params_of(self.critic, extra=value_head) if self.critic else []
        if self.actor == self.critic:  # j-hydra: the shared adapter trains at the actor's rate
            self.critic_params = [p for p in self.critic_params if all(p is not q for q in self.actor_params)]

    # --- parameters ----------------------------------------------------------------------
    def _params_of(self, role: Role, extra=()) -> list[nn.Parameter]:
        model = self.models[role.model]
        if role.adapter == FULL:
            params = [p for name, p in model.backbone.named_parameters()]
        else:
            params = [p for name, p in model.backbone.named_parameters() if f".{role.adapter}." in name
                      and "lora_" in name]
        return _unique([*params, *extra])

    def named_trainable(self) -> dict[str, nn.Parameter]:
        """Every trained parameter under a stable name, for checkpoints."""
        wanted = {id(p) for p in self.actor_params + self.critic_params}
        return {f"{key}.{name}": p for key, model in self.models.items()
                for name, p in model.named_parameters() if id(p) in wanted}

    # --- forward passes ------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self, role: Role):
        """Make `role`'s adapter the active one (or switch adapters off) for a forward pass."""
        backbone = self.models[role.model].backbone
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype else contextlib.nullcontext())
        # A model that never got an adapter (lora-dynamic's reward model without a critic) is already off.
        if role.adapter == OFF and hasattr(backbone, "disable_adapter"):
            with backbone.disable_adapter(), autocast:
                yield self.models[role.model]
            return
        if role.adapter not in (FULL, OFF):
            backbone.set_adapter(role.adapter)
        with autocast:
            yield self.models[role.model]

    def actor_forward(self, ids, mask, lm_select, with_values: bool):
        """The actor's logits; with j-hydra also the critic's values from the same pass."""
        with self.active(self.actor) as model:
            return model(ids, mask, lm_select=lm_select, value=with_values)

    def critic_values(self, ids, mask) -> torch.Tensor:
        with self.active(self.critic) as model:
            return model(ids, mask, lm=False, value=True).values

    @property
    def shared_actor_critic(self) -> bool:
        return self.actor == self.critic

    @torch.no_grad()
    def reference_and_scores(self, ids, mask, lm_select) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference logits and reward-model scores; one pass where the two roles coincide."""
        if self.reference == self.reward:
            with self.active(self.reference) as model:
                out = model(ids, mask, lm_select=lm_select, reward=True)
            return out.logits, out.rewards
        with self.active(self.reference) as model:
            logits = model(ids, mask, lm_select=lm_select).logits
        return logits, self.scores(ids, mask)

    @torch.no_grad()
    def scores(self, ids, mask) -> torch.Tensor:
        """The reward model's scores alone (ReMax's greedy baseline responses need no reference)."""
        with self.active(self.reward) as model:
            return model(ids, mask, lm=False, reward=True).rewards

    @contextlib.contextmanager
    def generator(self):
        """The actor, ready to sample rollouts."""
        with self.active(self.actor) as model:
            yield model

    @contextlib.contextmanager
    def saved_policy(self, main: bool = True):
        """The actor as the policy to save: its model with the actor's adapter active (saving merges it into a
        copy), or over a quantised or sharded backbone that adapter merged into a full-precision copy of the
        backbone, built on the main process alone (None on the others). Every process of a sharded model must
        enter: gathering the adapter is a collective."""
        if self.cfg.quantize_backbone == "no" and not self.cfg.shard_backbone:
            with self.generator() as model:
                yield model
            return
        weights = adapter_weights(self.policy_model, self.actor.adapter)
        yield merged_full_precision(self.policy_model, self.actor.adapter, _paths(self.cfg)[SOURCES[self.actor.model]],
                                    self.frozen_dtype, self.cfg.trust_remote_code, weights) if main else None

    def unique_modules(self) -> list[nn.Module]:
        return list(self.models.values())

    @property
    def policy_model(self) -> HydraModel:
        return self.models[self.actor.model]


def frozen_weights_dtype(precision: str, trains_in_full: bool) -> torch.dtype:
    """The dtype of frozen weights under a resolved precision ("bf16" or "no").

    With bf16 the frozen backbone is stored in bf16: every decoding step reads all its bytes, and autocast
    would round its weights to bf16 for every matmul anyway. Trained weights, LoRA adapters and the heads
    stay fp32. Where a layout trains a model in full (`full`), its frozen twins (reference, reward) stay
    fp32 as well: autocast rounds both copies' weights alike only if they start from the same fp32 numbers,
    which is what keeps the step-0 KL exactly 0.
    """
    return torch.bfloat16 if precision == "bf16" and not trains_in_full else torch.float32


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
