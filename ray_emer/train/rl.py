"""Stage 3: GRPO on the model's own sampled answers, in the shape of ``loop.train`` (no Ray here).

Per batch of prompts (``ov_labels`` questions over each row's features): ``group_size``
answers per prompt sampled from the current policy through HF ``generate`` over the prompt
embeddings (``AffectGPT.generate_ids``, the path the HF engine takes; temperature > 0, seeded
from the run seed, the optimizer step and the rank, so a resumed run draws what it would have),
scored by ``grpo.answer_rewards`` against the row's gold labels, then ``updates_per_batch``
optimizer steps on ``grpo.grpo_loss`` with per-token log-probs of the sampled tokens under the
policy, the policy that sampled them and the frozen reference (the ``--init`` checkpoint).
Log-probs come from the model's ``forward`` (prompt + answer ids as one right-padded training
batch), so FSDP2 gathers and reduces as for the other stages. ``grpo_trainer`` returns a
function with ``loop.train``'s signature: the local engine and the Ray Train wiring call it
where they call ``train``; checkpoints carry ``TrainState.reference`` (a digest of the init
checkpoint's files), checked when a run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ray_emer import storage
from ray_emer.config import ConfigError
from ray_emer.errors import TrainDataError
from ray_emer.eval.wheel import EmotionWheels
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.checkpoint import load_checkpoint
from ray_emer.model.config import TrainableConfig
from ray_emer.model.processing import IGNORE, MultimodalBatch, label_list
from ray_emer.model.seeding import sub_seed
from ray_emer.tracking import NullTracker, Tracker
from ray_emer.train.epoch import EpochFeed, TrainState, collective_world
from ray_emer.train.grpo import answer_rewards, group_advantages, grpo_loss
from ray_emer.train.loop import TrainConfig, _autocast, make_optimizer, optimizer_step, validate


def check_grpo(cfg: TrainConfig) -> None:
    cfg.grpo.check()
    if not cfg.init:
        raise ConfigError("method grpo needs --init: the stage-2 checkpoint is the policy's start and the frozen "
                          "reference of the KL penalty")
    if cfg.optim.grad_accum != 1:
        raise ConfigError("method grpo takes one batch of prompts per optimizer step: set optim.grad_accum to 1 "
                          "(data.batch_size sets the prompts per step)")


def reference_id(init: str) -> str:
    """The identity of the frozen reference: sha256 over the names and bytes of the ``--init`` checkpoint's files."""
    digest = hashlib.sha256()
    for uri in sorted(storage.list_files(init, recursive=True)):
        digest.update(uri[len(init.rstrip("/")):].encode() + b"\0" + storage.read_bytes(uri))
    return digest.hexdigest()


# ---------------------------------------------------------------- rollouts and log-probs
@dataclasses.dataclass
class Rollout:
    full: MultimodalBatch  # prompt + sampled answer per sample, answer tokens as labels
    rewards: list[dict[str, float]]
    advantages: torch.Tensor
    zero_share: float  # groups whose rewards were all equal
    tokens: list[int]  # answer length per sample (end-of-answer included)
    answers: list[str]


def completion_batch(prompt: MultimodalBatch, answers: list[list[int]], pad_id: int) -> MultimodalBatch:
    """The prompt batch with each sample's answer ids appended: right padded, the answer ids as ``labels``."""
    mask = prompt.attention_mask.bool()
    seqs = [prompt.input_ids[i][mask[i]].tolist() for i in range(len(prompt))]
    width = max(len(s) + len(a) for s, a in zip(seqs, answers, strict=True))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn, labels = torch.zeros_like(ids), torch.full_like(ids, IGNORE)
    for i, (seq, ans) in enumerate(zip(seqs, answers, strict=True)):
        ids[i, :len(seq) + len(ans)] = torch.tensor(seq + ans, dtype=torch.long)
        attn[i, :len(seq) + len(ans)] = 1
        labels[i, len(seq):len(seq) + len(ans)] = torch.tensor(ans, dtype=torch.long)
    return dataclasses.replace(prompt, input_ids=ids, attention_mask=attn, labels=labels, packed=None)


def token_logprobs(model: AffectGPT, full: MultimodalBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ``[B, L-1]`` of the answer tokens of ``full`` under ``model`` at ``temperature`` (the
    distribution they were sampled from), and the mask of answer positions."""
    with _autocast(model):
        logits = model(full).logits[:, :-1].float() / temperature
    logits[..., _placeholders(model)] = float("-inf")  # never sampled (see ``rollout``)
    target = full.labels[:, 1:].to(logits.device)
    mask = target != IGNORE
    picked = logits.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1), mask


def _placeholders(model: AffectGPT) -> list[int]:
    """Token ids an answer must not contain: a modality placeholder would ask for a feature row it has not got."""
    return sorted(set(model.processor.placeholder_ids.values()))


@contextlib.contextmanager
def _seeded_sampling(seed: int, device: torch.device):
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _answer_ids(row: torch.Tensor, eos: int) -> list[int]:
    ids = row.tolist()
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def rollout(model: AffectGPT, batch: dict, cfg: TrainConfig, seed: int, wheels: EmotionWheels | None) -> Rollout:
    """``group_size`` sampled answers per row of ``batch``, their rewards and group advantages."""
    g, tok = cfg.grpo.group_size, model.tokenizer
    repeated = {k: np.repeat(np.asarray(v), g, axis=0) for k, v in batch.items()}
    prompt = model.processor.from_rows(repeated, "ov_labels", random.Random(0), tuple(cfg.data.drop_modalities),
                                       with_targets=False)
    was_training = model.training
    model.eval()
    with _seeded_sampling(seed, model.device), _autocast(model):
        out = model.generate_ids(prompt, cfg.grpo.max_new_tokens, do_sample=True, temperature=cfg.grpo.temperature,
                                 top_k=cfg.grpo.top_k, top_p=1.0, repetition_penalty=1.0,
                                 suppress_tokens=_placeholders(model))
    model.train(was_training)
    answers = [_answer_ids(row, tok.eos_token_id) for row in out.cpu()]
    texts = [tok.decode(a, skip_special_tokens=True).strip() for a in answers]
    gold = [label_list(x) for x in repeated["labels"]]
    rewards = [answer_rewards(t, len(a), gl, cfg.grpo, wheels) for t, a, gl in zip(texts, answers, gold, strict=True)]
    adv, zero = group_advantages(torch.tensor([r["reward"] for r in rewards]), g, cfg.grpo.adv_eps)
    return Rollout(completion_batch(prompt, answers, tok.pad_token_id), rewards, adv, zero,
                   [len(a) for a in answers], texts)


@torch.no_grad()
def _root_forward(model: AffectGPT, batch: dict, cfg: TrainConfig) -> None:
    """One forward of ``batch``'s prompts (each answered by end-of-answer) through the model's root module."""
    prompt = model.processor.from_rows(batch, "ov_labels", random.Random(0), tuple(cfg.data.drop_modalities),
                                       with_targets=False)
    eos = model.tokenizer.eos_token_id
    token_logprobs(model, completion_batch(prompt, [[eos]] * len(prompt), model.tokenizer.pad_token_id), 1.0)


# ---------------------------------------------------------------- the loop
def train_grpo(model: AffectGPT, epoch_batches: Callable[[int], Iterable[dict]], cfg: TrainConfig, total_steps: int,
               val_rows: list[dict] | None = None, tracker: Tracker | None = None, state: TrainState | None = None,
               optimizer=None, on_step: Callable[[TrainState], None] | None = None, *, reference: AffectGPT,
               reference_digest: str, wheels: EmotionWheels | None = None) -> TrainState:
    """``loop.train`` for stage 3 (same arguments, the same epoch/step bookkeeping and ``on_step`` seam), plus
    the frozen ``reference`` and its ``reference_digest`` (a resumed ``state`` must name the same one)."""
    tracker = tracker or NullTracker()
    state = state or TrainState()
    if state.reference and state.reference != reference_digest:
        raise ConfigError(f"the run resumes with another reference model: its checkpoint was made with --init "
                          f"{state.reference[:12]}, {cfg.init} is now {reference_digest[:12]} (the stage-2 "
                          f"checkpoint changed; start a new run)")
    state.reference = reference_digest
    opt, sched = optimizer or make_optimizer(model, cfg.optim, total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    rank = torch.distributed.get_rank() if collective_world()[0] > 1 else 0
    model.train()
    reference.eval()
    g, by_steps = cfg.grpo, cfg.max_steps > 0
    feed = EpochFeed(epoch_batches, cfg.data.batch_size)
    fsdp_fresh = hasattr(model, "unshard")  # FSDP2 wants a forward through the root before the first generate

    def finished() -> bool:
        return state.step >= total_steps if by_steps else state.epoch >= cfg.epochs

    while not finished():
        for batch in feed.epoch(state):
            if batch is None and feed.idle is None:
                raise TrainDataError(f"epoch {state.epoch}: this rank got no rows while others did (fewer rows "
                                     f"than workers?); {state.step} of {total_steps} steps done")
            weight = 1.0 if batch is not None else 0.0  # an idle rank keeps the collectives in step
            if fsdp_fresh:
                _root_forward(model, batch if batch is not None else feed.idle, cfg)
                fsdp_fresh = False
            roll = rollout(model, batch if batch is not None else feed.idle, cfg,
                           sub_seed(cfg.seed, f"grpo:{state.step}:{rank}"), wheels)
            with torch.no_grad():
                ref_logp, _ = token_logprobs(reference, roll.full, g.temperature)
                old_logp = token_logprobs(model, roll.full, g.temperature)[0] if g.updates_per_batch > 1 else None
            for update in range(g.updates_per_batch):
                logp, mask = token_logprobs(model, roll.full, g.temperature)
                loss, stats = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, ref_logp,
                                        roll.advantages.to(logp.device), mask, g.clip_eps, g.kl_beta)
                (loss * weight).backward()
                optimizer_step(opt, sched, params, cfg.optim.grad_clip)
                state.step += 1
                parts = {k: float(np.mean([r[k] for r in roll.rewards])) for k in roll.rewards[0]}
                state.losses.append(float(loss.item()))
                state.rewards.append(parts["reward"])
                state.kls.append(stats["kl"])
                if batch is not None and update == g.updates_per_batch - 1:  # the rows are in the weights now
                    state.samples += len(batch["clip_id"])
                    state.epoch_seen.extend(str(c) for c in batch["clip_id"])
                tracker.log_metrics({"loss": state.losses[-1], "lr": sched.get_last_lr()[0],
                                     "reward": parts["reward"], "reward_fscore": parts["fscore"],
                                     "reward_format": parts["format"], "reward_length": parts["length"],
                                     "kl": stats["kl"], "clip_share": stats["clip_share"],
                                     "answer_tokens": float(np.mean(roll.tokens)),
                                     "zero_advantage_groups": roll.zero_share}, step=state.step)
                if cfg.val_every and val_rows and state.step % cfg.val_every == 0:
                    tracker.log_metrics(validate(model, val_rows, cfg), step=state.step)
                if on_step is not None:
                    on_step(state)
                if by_steps and state.step >= total_steps:
                    break
            if by_steps and state.step >= total_steps:
                break
        else:
            if not feed.raw:
                raise TrainDataError(f"epoch {state.epoch} yielded no batch; {state.step} of {total_steps} steps done")
            state.last_epoch = {"epoch": state.epoch, "restored": state.epoch_restored, "seen": state.epoch_seen}
            state.epoch += 1
            state.epoch_seen, state.epoch_restored = [], []
    return state


def grpo_trainer(cfg: TrainConfig, prepare: Callable[[AffectGPT], AffectGPT] = lambda m: m) -> Callable:
    """``train_grpo`` with this stage's frozen reference (the ``--init`` checkpoint, every component frozen, put
    where the policy is by ``prepare``: a device, FSDP2), its digest and the wheel tables bound: a drop-in for
    ``loop.train``."""
    check_grpo(cfg)
    digest = reference_id(cfg.init)
    ref = load_checkpoint(cfg.init, trainable=TrainableConfig(head="frozen", llm="frozen"), seed=cfg.seed)
    wheels = EmotionWheels.load(cfg.grpo.wheel_dir) if cfg.grpo.wheel_dir else None
    return functools.partial(train_grpo, reference=prepare(ref), reference_digest=digest, wheels=wheels)


def window_mean(values: list[float], share: float = 0.2, last: bool = False) -> float | None:
    """Mean of the first (or last) ``share`` of ``values`` (at least one)."""
    if not values:
        return None
    n = max(1, round(len(values) * share))
    part = values[-n:] if last else values[:n]
    return float(sum(part) / len(part))
