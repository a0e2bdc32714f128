"""The Continual HyperTransformer (SPEC §7; Vladymyrov, Zhmoginov, Sandler, TMLR 2024).

A stream of few-shot tasks t = 0, 1, ... is learned one task at a time with no memory but the
generated weights: ``θ_t = HT(S_t, θ_{t-1})``.  The HT's generators are reused as they are;
weight token j of layer ℓ carries the block that the same generator wrote for the previous
task (``[w_emb_j | o_j(θ_{t-1}) | zeros]``, zeros at t = 0).  The generated CNN ends in a
``prototype_dim`` (D) embedding instead of N logits, and classification is prototypical:
``p(y = k | x) ∝ exp(−‖f_θ(x) − c_k‖²)``.

Prototypes.  When task τ is learned, its class prototypes ``c_τk`` (the mean embedding, with
θ_τ and the support BatchNorm statistics, of the present labelled support samples of class k;
unlabelled samples shape the weights, not the prototypes) are computed and stored; later
weights are judged against the stored prototypes, which are never recomputed (no replay: the
support images are not kept).  ``cht_recompute_prototypes`` is the named upper bound: the
stream keeps the support sets and recomputes every prototype with the current weights.

Scenarios (``cht_scenario``), with the candidates that task τ's queries are classified among:

* ``task`` (task-incremental): the task id is known at test, softmax over τ's N prototypes;
* ``class`` (class-incremental): softmax over every prototype seen so far; task τ's class k
  has the global label ``τ·N + k``, so labels never collide across tasks;
* ``minibatch``: one task of N classes whose support arrives in chunks; the prototype of a
  class is the mean of its chunk prototypes weighted by how many labelled samples of the class
  each chunk held (the running mean of all its support embeddings, each embedded with the
  weights of its own chunk); softmax over the N combined prototypes.

Training (:func:`sequence_loss`): for each t, the queries of every τ ≤ t are classified with
θ_t; ``loss = mean_t Σ_{τ≤t} CE_τ,t`` with gradients through the whole chain of weights.
BatchNorm uses the statistics of the batch being embedded: each task's queries are their own
batch, as at evaluation.

Batched: T independent sequences advance together (every tensor has a leading T axis); the
weights of a step are repeated over the tasks whose queries they classify, so that one CNN call
embeds the queries of all those tasks with per-task BatchNorm statistics.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypertransformer.config import Config
from hypertransformer.data.sampler import EpisodeBatch, SequenceBatch, check_scenario
from hypertransformer.model.cnn import LayerWeights
from hypertransformer.model.hypertransformer import GeneratedWeights, HyperTransformer, LossOutput
from hypertransformer.precision import fp32


class PrototypeModel(Protocol):
    """What :class:`TaskStream` needs: the CHT, or the ProtoNet baseline (nothing generated)."""

    config: Config

    def generate(self, support_x: Tensor, support_y: Tensor, support_mask: Tensor | None = None,
                 previous: GeneratedWeights | None = None) -> GeneratedWeights | None: ...

    def embed(self, x: Tensor, weights: GeneratedWeights | None,
              mask: Tensor | None = None) -> Tensor: ...


FEEDBACK = ("raw", "normalized", "none")


def check_continual_config(cfg: Config) -> None:
    check_scenario(cfg.cht_scenario)
    for name in ("cht_tasks", "prototype_dim"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1; got {getattr(cfg, name)}")
    if cfg.cht_eval_tasks < 0:
        raise ValueError(f"cht_eval_tasks must be >= 0 (0: 2·cht_tasks); got "
                         f"{cfg.cht_eval_tasks}")
    if cfg.cht_feedback not in FEEDBACK:
        raise ValueError(f"unknown cht_feedback {cfg.cht_feedback!r}; use one of "
                         f"{', '.join(FEEDBACK)}")
    if cfg.model_type != "cht" and (cfg.cht_feedback != "raw" or cfg.cht_residual):
        raise ValueError(f"model_type={cfg.model_type} feeds no weights back: cht_feedback and "
                         f"cht_residual are for model_type=cht")
    if cfg.model_type == "protonet" and cfg.cht_embedding_scale:
        raise ValueError("cht_embedding_scale scales a generated embedding; the ProtoNet's is "
                         "trained")
    if cfg.label_aligned_init:
        raise ValueError(f"label_aligned_init aligns the HT's logits tokens with its class "
                         f"labels; model_type={cfg.model_type} has no logits tokens: set "
                         f"label_aligned_init=false")
    if cfg.warmup_steps > 0 or cfg.shared_head_weight > 0:
        raise ValueError(f"model_type={cfg.model_type} has no warm-up heads or shared head: set "
                         f"warmup_steps=0 and shared_head_weight=0")


def repeat_weights(weights: GeneratedWeights, times: int) -> GeneratedWeights:
    """Each task's weights repeated ``times`` times (task-major), for T·times tasks."""
    def rep(w: LayerWeights | None) -> LayerWeights | None:
        if w is None:
            return None
        return LayerWeights(**{k: v.repeat_interleave(times, dim=0)
                               for k, v in w.tensors().items()})

    return GeneratedWeights([rep(w) for w in weights.layers], None, {})


@fp32
def squared_distances(embeddings: Tensor, prototypes: Tensor) -> Tensor:
    """``‖e − c‖²`` of embeddings [..., M, D] to prototypes [..., P, D]: [..., M, P]."""
    return (embeddings.unsqueeze(-2) - prototypes.unsqueeze(-3)).square().sum(-1)


class TaskStream:
    """T sequences being learned task after task: the last weights and the stored prototypes.

    ``learn`` takes the next task's support set; ``logits``/``targets`` classify the queries of
    learned tasks with the current weights, among the candidates of the scenario.
    """

    def __init__(self, model: PrototypeModel, recompute: bool | None = None,
                 scenario: str | None = None) -> None:
        """``recompute`` and ``scenario`` default to the model's config (an evaluation may
        ask for another scenario than the model was trained in)."""
        cfg = model.config
        self.model, self.num_labels = model, cfg.num_labels
        self.scenario = scenario or cfg.cht_scenario
        check_scenario(self.scenario)
        self.merged = isinstance(model, MergedHyperTransformer)
        self.recompute = self.merged or (
            cfg.cht_recompute_prototypes if recompute is None else recompute)
        self.weights: GeneratedWeights | None = None
        self.num_tasks = 0  # tasks learned
        self.means: list[Tensor] = []  # per learned task: [T, N, D] (stored prototypes)
        self.counts: list[Tensor] = []  # per learned task: [T, N] labelled samples per class
        self.supports: list[tuple[Tensor, Tensor, Tensor]] = []  # kept only to recompute

    def learn(self, support_x: Tensor, support_y: Tensor,
              support_mask: Tensor | None = None) -> None:
        if support_mask is None:
            support_mask = torch.ones_like(support_y, dtype=torch.bool)
        if self.recompute:
            self.supports.append((support_x, support_y, support_mask))
        if self.merged:
            assert isinstance(self.model, MergedHyperTransformer)
            self.weights = self.model.generate(*self.model.merge(self.supports))
        else:
            self.weights = self.model.generate(support_x, support_y, support_mask,
                                               self.weights)
        if not self.recompute:
            mean, count = self._prototypes(support_x, support_y, support_mask, self.weights)
            self.means.append(mean)
            self.counts.append(count)
        self.num_tasks += 1

    def _prototypes(self, x: Tensor, y: Tensor, mask: Tensor,
                    weights: GeneratedWeights | None) -> tuple[Tensor, Tensor]:
        """Class means of the present labelled support embeddings: ([T, N, D], [T, N])."""
        emb = self.model.embed(x, weights, mask)
        member = F.one_hot(y, self.num_labels + 1)[..., :self.num_labels].to(emb.dtype)
        member = member * mask.unsqueeze(-1).to(emb.dtype)  # [T, S, N]
        count = member.sum(1)
        return member.transpose(1, 2) @ emb / count.clamp(min=1).unsqueeze(-1), count

    def _stored(self) -> tuple[Tensor, Tensor]:
        """Prototypes [T, k, N, D] and counts [T, k, N] of the k learned tasks: as stored, or
        recomputed with the current weights (``recompute``)."""
        if not self.recompute:
            return torch.stack(self.means, 1), torch.stack(self.counts, 1)
        k = self.num_tasks
        x, y, mask = (torch.stack(parts, 1).flatten(0, 1) for parts in zip(*self.supports,
                                                                           strict=True))
        weights = None if self.weights is None else repeat_weights(self.weights, k)
        mean, count = self._prototypes(x, y, mask, weights)
        return mean.unflatten(0, (-1, k)), count.unflatten(0, (-1, k))

    def candidates(self, tasks: int) -> Tensor:
        """The prototypes that queries of tasks 0..tasks-1 are classified among:
        [T, tasks, P, D] (P = N, or k·N for ``class``)."""
        means, counts = self._stored()
        t, k, n, d = means.shape
        if self.scenario == "task":
            return means[:, :tasks]
        if self.scenario == "class":
            return means.reshape(t, 1, k * n, d).expand(t, tasks, k * n, d)
        w = counts.unsqueeze(-1)  # minibatch: count-weighted mean over the chunks
        combined = (means * w).sum(1) / w.sum(1).clamp(min=1)
        return combined.unsqueeze(1).expand(t, tasks, n, d)

    def logits(self, query_x: Tensor) -> Tensor:
        """Queries [T, k, Q, C, H, W] of tasks 0..k-1 (k ≤ tasks learned), each task's queries
        one batch, classified with the current weights: ``−‖f(x) − c‖²`` [T, k, Q, P]."""
        t, k = query_x.shape[:2]
        if not 1 <= k <= self.num_tasks:
            raise ValueError(f"queries of {k} tasks, but {self.num_tasks} task(s) learned")
        weights = None if self.weights is None else repeat_weights(self.weights, k)
        emb = self.model.embed(query_x.flatten(0, 1), weights).unflatten(0, (t, k))
        return -squared_distances(emb, self.candidates(k))

    def targets(self, query_y: Tensor) -> Tensor:
        """Labels [T, k, Q] of tasks 0..k-1 in the candidates' numbering."""
        if self.scenario != "class":
            return query_y
        offset = torch.arange(query_y.shape[1], device=query_y.device) * self.num_labels
        return query_y + offset.view(1, -1, 1)


class EpisodeClassifier(nn.Module):
    """A prototype model (CHT, MergedHT, ProtoNet) as an episode classifier with the HT's
    interface: ``generate`` learns a support set as the first task of a stream,
    ``classify(query_x, stream)`` returns its logits ``−‖f(x) − c‖²`` [T, Q, N].  A sequence
    of one task is an episode, so the HT's protocol (SPEC §5) evaluates it this way."""

    def __init__(self, model: PrototypeModel) -> None:
        super().__init__()
        assert isinstance(model, nn.Module)
        self.model = model

    def generate(self, support_x: Tensor, support_y: Tensor,
                 support_mask: Tensor | None = None) -> TaskStream:
        stream = TaskStream(self.model, scenario="task")
        stream.learn(support_x, support_y, support_mask)
        return stream

    def classify(self, query_x: Tensor, stream: TaskStream) -> Tensor:
        return stream.logits(query_x.unsqueeze(1)).squeeze(1)


def sequence_loss(model: PrototypeModel, batch: SequenceBatch) -> LossOutput:
    """``mean_t Σ_{τ≤t} CE(queries of τ with θ_t)`` over T sequences (module docstring); the
    accuracy is the mean over every (t, τ ≤ t) pair; ``logits`` are the last step's."""
    stream = TaskStream(model)
    smoothing = model.config.label_smoothing
    total = torch.zeros((), device=batch.query_x.device)
    correct, pairs = torch.zeros((), device=total.device), 0
    logits = total
    for t in range(batch.num_tasks):
        task = batch.task(t)
        stream.learn(task.support_x, task.support_y, task.support_mask)
        logits = stream.logits(batch.query_x[:, :t + 1])
        target = stream.targets(batch.query_y[:, :t + 1])
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none",
                             label_smoothing=smoothing).view_as(target)
        total = total + ce.mean(dim=(0, 2)).sum()
        correct = correct + (logits.argmax(-1) == target).float().mean(dim=(0, 2)).sum()
        pairs += t + 1
    loss = total / batch.num_tasks
    return LossOutput(loss, logits, correct / pairs, {"ce": loss.item()})


class ContinualHyperTransformer(nn.Module):
    """The CHT: the HT's modules, an embedding as the generated last layer, a prototype head.

    ``model.generate(support_x, support_y, mask, previous)`` is one step of the stream;
    :class:`TaskStream` runs whole sequences (``TaskStream(model).learn(...)``).
    """

    def __init__(self, config: Config, label_tasks: int = 1) -> None:
        super().__init__()
        check_continual_config(config)
        self.config = config
        # label tokens for the classes of ``label_tasks`` tasks (MergedHT: the whole union)
        labels = config.replace(num_labels=config.num_labels * label_tasks)
        self.ht = HyperTransformer(labels, num_outputs=config.prototype_dim)
        self.embedding_scale = (self.ht.logits_layer.spec.in_features ** -0.5
                                if config.cht_embedding_scale else 1.0)
        # cht_residual: θ_{−1} (one block per generator, scaled like a fan-in init) and α_ℓ
        self.initial = nn.ParameterDict()
        self.step_scale = nn.ParameterDict()
        if config.cht_residual:
            for name, g in self.ht.generators.items():
                self.initial[name] = nn.Parameter(
                    torch.randn(g.num_tokens, g.block_size) / g.block_size ** 0.5)
                self.step_scale[name] = nn.Parameter(torch.tensor(config.cht_residual_scale))

    @torch.no_grad()
    def start_from(self, protonet: nn.Module) -> None:
        """θ_{−1} := a trained ProtoNet's CNN (``init_checkpoint``): its conv kernels as the
        generators' blocks (the decoding's layout), its BatchNorm γ, β, and its linear
        embedding as the embedding block; the CHT then embeds as the ProtoNet, but for the
        updates α·G (exactly as it with α = 0), and learns to update the weights."""
        from hypertransformer.model.protonet import ProtoNet

        if not self.config.cht_residual:
            raise ValueError("init_checkpoint starts θ_{−1} of a residual CHT: set "
                             "cht_residual=true")
        if not isinstance(protonet, ProtoNet):
            raise ValueError(f"init_checkpoint must hold a ProtoNet (model_type protonet); got "
                             f"{type(protonet).__name__}")
        ht = self.ht
        convs = list(zip(ht.conv_layers, protonet.conv_layers, strict=True))
        blocks = {}
        for i, (mine, theirs) in enumerate(convs):
            if not mine.generated or mine.allocation != "output" or mine.block_size != (
                    mine.kernel_size) or theirs.weight.shape != (
                    mine.spec.out_channels, mine.spec.in_channels, mine.spec.kernel,
                    mine.spec.kernel):
                raise ValueError(f"init_checkpoint: conv layer {i + 1} of the ProtoNet does not "
                                 f"fit this CHT's generated layer (same CNN, generated with the "
                                 f"output allocation and no generated bias/BN)")
            # [C_out, C_in, kh, kw] -> one token per output filter, (kh, kw, C_in) order
            blocks[f"conv{i + 1}"] = theirs.weight.permute(0, 2, 3, 1).flatten(1)
            mine.gamma.copy_(theirs.gamma)
            mine.beta.copy_(theirs.beta)
        linear = protonet.embedding
        if linear.weight.shape != (self.config.prototype_dim,
                                   ht.logits_layer.spec.in_features):
            raise ValueError("init_checkpoint: the ProtoNet's embedding does not fit this "
                             "CHT's (prototype_dim and the CNN must be the same)")
        blocks["logits"] = torch.cat([linear.weight, linear.bias[:, None]], 1) / (
            self.embedding_scale)
        for name, block in blocks.items():
            self.initial[name].copy_(block)

    def generate(self, support_x: Tensor, support_y: Tensor, support_mask: Tensor | None = None,
                 previous: GeneratedWeights | None = None) -> GeneratedWeights:
        """θ_t from the task's support set and θ_{t−1} (``previous``; None at t = 0)."""
        blocks = None if previous is None else previous.blocks
        if blocks is None and self.config.cht_residual:
            t = support_y.shape[0]
            blocks = {name: p.expand(t, *p.shape) for name, p in self.initial.items()}
        return self.ht.generate(support_x, support_y, support_mask,
                                _StepFeedback(self, blocks))

    def embed(self, x: Tensor, weights: GeneratedWeights | None,
              mask: Tensor | None = None) -> Tensor:
        """Embeddings [T, M, D] of images [T, M, C, H, W] with the generated CNNs."""
        assert weights is not None
        return self.ht.run_cnn(x, weights, mask)[0] * self.embedding_scale

    def batch_loss(self, batch: SequenceBatch, step: int = 0) -> LossOutput:
        return sequence_loss(self, batch)


class _StepFeedback:
    """The :class:`~.hypertransformer.Feedback` of one CHT step: θ_{t−1}'s blocks (None at
    t = 0 without ``cht_residual``) into the weight tokens, as ``cht_feedback`` says, and
    with ``cht_residual`` the new block ``θ_{t−1} + α·out``."""

    def __init__(self, model: ContinualHyperTransformer,
                 previous: dict[str, Tensor] | None) -> None:
        self.model, self.previous = model, previous
        self.mode = model.config.cht_feedback

    def content(self, name: str) -> Tensor | None:
        if self.previous is None or self.mode == "none":
            return None
        block = self.previous[name]
        return F.layer_norm(block, block.shape[-1:]) if self.mode == "normalized" else block

    def block(self, name: str, out: Tensor) -> Tensor:
        if not self.model.config.cht_residual:
            return out
        assert self.previous is not None
        return self.previous[name] + self.model.step_scale[name] * out


class MergedHyperTransformer(ContinualHyperTransformer):
    """MergedHT, the upper bound of the CHT (SPEC §7): after task t the HT is given the union
    of the support sets of tasks 0..t at once (no weight feedback), with one label token per
    class of the union (task τ's class k is ``τ·N + k``), and every prototype is computed with
    those weights.  Its label table has ``cht_tasks·N`` classes, so it merges at most
    ``cht_tasks`` tasks: train it on sequences as long as the evaluation's."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, label_tasks=config.cht_tasks)

    def merge(self, supports: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[
            Tensor, Tensor, Tensor]:
        """The union of the support sets ``[(x, y, mask)]`` of tasks 0..t with global labels
        (unlabelled samples: the last label token)."""
        tasks, n = self.config.cht_tasks, self.config.num_labels
        if len(supports) > tasks:
            raise ValueError(f"this MergedHT has label tokens for {tasks} tasks of {n} classes "
                             f"(cht_tasks={tasks}) and cannot merge {len(supports)}; evaluate "
                             f"with --sequence-length {tasks} or train it with a larger "
                             f"cht_tasks")
        labels = [torch.where(y < n, y + tau * n, tasks * n)
                  for tau, (_, y, _) in enumerate(supports)]
        return (torch.cat([x for x, _, _ in supports], 1), torch.cat(labels, 1),
                torch.cat([m for _, _, m in supports], 1))

    def generate(self, support_x: Tensor, support_y: Tensor, support_mask: Tensor | None = None,
                 previous: GeneratedWeights | None = None) -> GeneratedWeights:
        """Weights from a (merged) support set; nothing is fed back."""
        return self.ht.generate(support_x, support_y, support_mask)


def single_task(batch: EpisodeBatch) -> SequenceBatch:
    """An episode batch as T sequences of one task."""
    return SequenceBatch(batch.support_x.unsqueeze(1), batch.support_y.unsqueeze(1),
                         batch.support_mask.unsqueeze(1), batch.query_x.unsqueeze(1),
                         batch.query_y.unsqueeze(1), batch.classes.unsqueeze(1))
