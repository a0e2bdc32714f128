"""Few-shot episodes drawn from a :class:`ClassDataset` (SPEC §2.3).

An episode picks ``N = num_labels`` classes of the split at random; class ``i`` of the episode
gets label ``i`` in both the support set (read by the transformer) and the query set (classified
by the generated CNN).

Balanced batches (``balanced=True``): a batch of size ``B`` gives episode class ``i``
``B // N + (i < B % N)`` images, drawn without replacement within the batch, concatenated and
then permuted.  Support and query are two such batches drawn independently, so a query image
may equal a support image, as in the original (the default); ``disjoint=True`` draws both from
one permutation of each class so that they never share an image.

Unbalanced batches (``balanced=False``, the original's default flag): one balanced batch of
``S + Q`` images is drawn, permuted and split into the first ``S`` (support) and the last ``Q``
(query); the support therefore holds a random number of images per class and never shares an
image with that query.  Unlabelled samples need balanced batches (the original raises too), and
``disjoint`` is rejected there.  :meth:`EpisodeSampler.sample` documents the evaluation mode
(several query batches per task) of both kinds.

Semi-supervised support (``unlabeled_per_class = u > 0``): ``S = N·(K + u)``; within each class
chunk of the support, before the permutation, the first ``u`` images get label ``N``
("unlabelled").  Random removal (training): ``p ~ U(0, max_prob_remove_unlabeled)`` once per
episode, each unlabelled support sample removed with probability ``p``; the same for labelled
samples with ``max_prob_remove_labeled``.  Removed samples stay in the batch with
``support_mask = False``.

Augmentation (SPEC §2.4): one state per episode, applied to the support and query images on
0..255 pixels with the episode class (``0..N-1``, also for unlabelled samples) as the label,
then in training the drawing augmentations (stroke width, warp; per image) when configured,
then resize and ``x/128 - 1``, then the natural-image augmentations when configured.

Images are resized to ``image_size`` (default: the dataset's height) after augmentation.

Task groups (``task_groups="alphabet"``; the config's ``test_task_groups``, which
:meth:`EpisodeSampler.from_config` applies to evaluation samplers, ``train=False``: the
trainer's held-out episodes and the evaluator's tasks, never to training episodes): a class's
group is the part of its class name before the first ``/`` (Omniglot's alphabet, as in Lake et
al.'s within-alphabet tasks).  An episode draws its group uniformly among the groups of the
split, then its ``N`` distinct classes uniformly within that group, both from the sampler's
generator; everything after the choice of classes (batches, labels, augmentation) is
unchanged.  The sampler refuses to be built when a class name has no ``/`` or a group holds
fewer than ``N`` classes (such groups are not skipped: leave them out of the split).  The
Continual HT's sequences take groups in the ``minibatch`` scenario (one task per sequence)
and in sequences of one task; longer ``task`` and ``class`` sequences refuse them.

Speed: every class is packed once into one uint8 tensor with per-class offsets (a copy of the
split's images, made at construction; a memory-mapped dataset, :mod:`.memmap`, is gathered
from in place, without a copy), and all indices
are computed with vectorised tensor maths over ``[T, N]``; one ``torch.Generator`` drives every
random choice, so a seed (and :meth:`EpisodeSampler.state_dict`) reproduces the stream exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from hypertransformer.config import Config
from hypertransformer.data.augment import (
    AugmentationConfig,
    AugmentationState,
    Augmenter,
    augment_drawings,
    augment_natural_images,
)
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.memmap import pack_classes


@dataclass
class EpisodeBatch:
    """``T`` episodes.  Labels are ``0..N-1``; ``N`` marks an unlabelled support sample."""

    support_x: Tensor  # float32 [T, S, C, H, W], x/128 - 1
    support_y: Tensor  # int64 [T, S]
    support_mask: Tensor  # bool [T, S]; False = removed (masked as attention key)
    query_x: Tensor  # float32 [T, Q * query_batches, C, H, W]
    query_y: Tensor  # int64 [T, Q * query_batches]
    classes: Tensor  # int64 [T, N]: the split's class index of each episode label

    def to(self, device: torch.device | str) -> EpisodeBatch:
        return EpisodeBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _per_label(batch_size: int, num_labels: int) -> list[int]:
    """Images of each episode class in a balanced batch: ``B // N + (i < B % N)``."""
    return [batch_size // num_labels + (i < batch_size % num_labels) for i in range(num_labels)]


def _items(counts: list[int]) -> tuple[Tensor, Tensor]:
    """(label, position within the label's chunk) of every image of a batch, chunk by chunk."""
    label = [i for i, c in enumerate(counts) for _ in range(c)]
    position = [j for c in counts for j in range(c)]
    return torch.tensor(label, dtype=torch.long), torch.tensor(position, dtype=torch.long)


TASK_GROUPS = ("", "alphabet")


def check_task_groups(task_groups: str) -> None:
    if task_groups not in TASK_GROUPS:
        raise DatasetError(f"test_task_groups must be '' (tasks of any classes) or 'alphabet' "
                           f"(each task's classes from one alphabet); got {task_groups!r}")


def _group_table(dataset: ClassDataset, task_groups: str,
                 num_labels: int) -> tuple[Tensor, Tensor] | None:
    """None without task groups; else (class indices of each group, padded with 0 [G, M],
    group sizes [G]), the groups in order of first appearance (module docstring)."""
    check_task_groups(task_groups)
    if not task_groups:
        return None
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(dataset.class_names):
        group, slash, _ = name.partition("/")
        if not slash:
            raise DatasetError(
                f"test_task_groups={task_groups!r} takes each task's classes from one "
                f"alphabet, the part of a class name before '/', but class {index} ({name!r}) "
                f"of {dataset.name!r} has no '/'; set test_task_groups='' for this dataset")
        groups.setdefault(group, []).append(index)
    small = [f"alphabet {group} has {len(members)} characters"
             for group, members in groups.items() if len(members) < num_labels]
    if small:
        raise DatasetError(
            f"{'; '.join(small)}; {num_labels}-way tasks need {num_labels} (test_task_groups="
            f"{task_groups!r} takes each task's classes from one alphabet of {dataset.name!r}): "
            f"leave such alphabets out of the split, lower num_labels or set "
            f"test_task_groups=''")
    table = torch.zeros(len(groups), max(len(m) for m in groups.values()), dtype=torch.long)
    for row, members in enumerate(groups.values()):
        table[row, :len(members)] = torch.tensor(members)
    return table, torch.tensor([len(m) for m in groups.values()], dtype=torch.long)


class EpisodeSampler:
    """Draws batches of episodes; see the module docstring for the semantics."""

    def __init__(self, dataset: ClassDataset, *, num_labels: int, support_size: int,
                 query_size: int, unlabeled_per_class: int = 0, balanced: bool = True,
                 disjoint: bool = False, max_prob_remove_labeled: float = 0.0,
                 max_prob_remove_unlabeled: float = 0.0,
                 augmentation: AugmentationConfig | None = None, image_size: int | None = None,
                 task_groups: str = "", seed: int = 0) -> None:
        n, s, q, u = num_labels, support_size, query_size, unlabeled_per_class
        # u before s: a support size derived from u (evaluate --unlabeled) is wrong because u is
        for name, value, least in [("num_labels", n, 1),
                                   ("unlabeled_per_class (unlabeled_samples_per_class)", u, 0),
                                   ("support_size (samples_transformer)", s, 1),
                                   ("query_size (samples_cnn)", q, 1)]:
            if value < least:
                raise DatasetError(f"{name} must be at least {least}; got {value}")
        for name, p in [("max_prob_remove_labeled", max_prob_remove_labeled),
                        ("max_prob_remove_unlabeled", max_prob_remove_unlabeled)]:
            if not 0.0 <= p <= 1.0:
                raise DatasetError(f"{name} must be in [0, 1]; got {p}")
        if image_size is not None and image_size < 1:
            raise DatasetError(f"image_size must be positive; got {image_size}")
        if n > dataset.num_classes:
            raise DatasetError(
                f"num_labels={n} but the split {dataset.name!r} has only {dataset.num_classes} "
                f"classes; lower num_labels or use a split with more classes")
        if balanced and u > 0 and (s % n or s // n <= u):
            raise DatasetError(
                f"support_size (samples_transformer) must be num_labels·(shots + "
                f"unlabeled_per_class) with shots >= 1; got {s} for num_labels={n}, "
                f"unlabeled_per_class={u} (e.g. use {n * (u + 1)})")
        if not balanced and u > 0:
            raise DatasetError("unlabelled support samples need balanced batches: set "
                               "balanced_batches=True or unlabeled_samples_per_class=0")
        if not balanced and disjoint:
            raise DatasetError(
                "disjoint_support_query needs balanced_batches=True (unbalanced batches split "
                "one draw of support + query, which never share an image anyway)")

        self.dataset = dataset
        self.num_labels, self.support_size, self.query_size = n, s, q
        self.unlabeled_per_class = u
        self.balanced, self.disjoint = balanced, disjoint
        self.max_prob_remove_labeled = max_prob_remove_labeled
        self.max_prob_remove_unlabeled = max_prob_remove_unlabeled
        self.image_size = image_size or dataset.image_shape[0]
        self.task_groups = task_groups
        self._groups = _group_table(dataset, task_groups, n)

        if balanced:
            support, query = _per_label(s, n), _per_label(q, n)
            if disjoint:
                self._check_class_sizes(
                    support[0] + query[0],
                    f"disjoint support and query need {support[0]} + {query[0]} images per class")
            else:
                self._check_class_sizes(support[0], f"the support needs up to {support[0]} "
                                                    f"images per class ({s} over {n} labels)")
                self._check_class_sizes(query[0], f"the query needs up to {query[0]} images "
                                                  f"per class ({q} over {n} labels)")
            self._support_items, self._query_items = _items(support), _items(query)
        else:
            both = _per_label(s + q, n)
            self._check_class_sizes(both[0], f"support + query ({s} + {q}, drawn together as "
                                             f"balanced=False) need up to {both[0]} images per "
                                             f"class of {n} labels")
            self._joint_items = _items(both)

        counts = dataset.samples_per_class
        self._counts = torch.tensor(counts, dtype=torch.long)
        self._max_count = max(counts)
        self._ragged = min(counts) != self._max_count
        # [total, H, W, C] uint8 (batches are moved to [C, H, W] after the gather): one packed
        # copy of the classes, or for a memory-mapped dataset (data.memmap) the memmap itself,
        # gathered from without a copy.
        self._offsets, self._images = pack_classes(dataset.classes)

        self.augmentation = augmentation or AugmentationConfig()
        self._augmenter = Augmenter(self.augmentation)
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, dataset: ClassDataset, cfg: Config, *, train: bool,
                    seed: int) -> EpisodeSampler:
        """The sampler of the original flags; random removal applies to training only, task
        groups (``test_task_groups``) to evaluation only.

        ``query_size`` is ``cfg.samples_cnn``; the original evaluator sets
        ``samples_cnn = eval_batch_size`` before building its data.
        """
        check_task_groups(cfg.test_task_groups)  # a bad value is refused by training too
        return cls(dataset, num_labels=cfg.num_labels, support_size=cfg.samples_transformer,
                   query_size=cfg.samples_cnn,
                   unlabeled_per_class=cfg.unlabeled_samples_per_class,
                   balanced=cfg.balanced_batches, disjoint=cfg.disjoint_support_query,
                   max_prob_remove_labeled=cfg.max_prob_remove_labeled if train else 0.0,
                   max_prob_remove_unlabeled=cfg.max_prob_remove_unlabeled if train else 0.0,
                   augmentation=AugmentationConfig.from_config(cfg, train),
                   image_size=cfg.image_size,
                   task_groups="" if train else cfg.test_task_groups, seed=seed)

    def _check_class_sizes(self, need: int, what: str) -> None:
        counts = self.dataset.samples_per_class
        smallest = int(np.argmin(counts))
        if counts[smallest] < need:
            raise DatasetError(
                f"{what}, but class {smallest} ({self.dataset.class_names[smallest]!r}) of "
                f"{self.dataset.name!r} holds only {counts[smallest]} images; use fewer samples "
                f"per class (support_size/samples_transformer, query_size/samples_cnn, or more "
                f"num_labels) or leave the small classes out of the split")

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._generator.set_state(state["generator"])

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self._generator)

    def random_classes(self, num_episodes: int, count: int) -> Tensor:
        """``count`` distinct classes of the split per episode, in random order; with task
        groups, all of one group drawn uniformly per episode (module docstring)."""
        if self._groups is None:
            keys = self._rand(num_episodes, self.dataset.num_classes)
            return keys.topk(count, dim=1, largest=False).indices
        table, sizes = self._groups
        if count > int(sizes.min()):
            raise DatasetError(f"{count} classes from one group: the smallest group "
                               f"({self.task_groups}) of {self.dataset.name!r} has "
                               f"{int(sizes.min())}")
        group = torch.randint(len(sizes), (num_episodes,), generator=self._generator)
        keys = self._rand(num_episodes, table.shape[1])
        keys.masked_fill_(torch.arange(table.shape[1]) >= sizes[group, None], 2.0)
        picks = keys.topk(count, dim=1, largest=False).indices
        return table[group].gather(1, picks)

    def draw_augmentation(self, num_episodes: int) -> AugmentationState | None:
        """One augmentation state per episode (None when no augmentation is configured)."""
        if not self.augmentation.active:
            return None
        return self._augmenter.draw(num_episodes, self.num_labels, self._generator)

    def _batch(self, counts: Tensor, items: tuple[Tensor, Tensor],
               exclude: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One permuted batch per episode: (label, position, sample slot in its class), [T, B].

        Each episode class takes the first images of a fresh random permutation of its samples
        (``exclude`` [T, N, max_count] marks samples that may not be taken).
        """
        label, position = items
        t, n = counts.shape
        keys = self._rand(t, n, self._max_count)
        if self._ragged:
            keys.masked_fill_(torch.arange(self._max_count) >= counts[..., None], 2.0)
        if exclude is not None:
            keys.masked_fill_(exclude, 2.0)
        order = keys.topk(int(position.max()) + 1, dim=2, largest=False).indices  # [T, N, k]
        slot = order[:, label, position]
        perm = self._rand(t, len(label)).argsort(dim=1)
        return label[perm], position[perm], slot.gather(1, perm)

    def sample(self, num_episodes: int, query_batches: int = 1, *,
               classes: Tensor | None = None,
               augmentation: AugmentationState | None = None) -> EpisodeBatch:
        """``num_episodes`` episodes, each with ``query_batches`` query batches.

        ``classes`` [T, N] fixes the split classes of each episode (default: N at random) and
        ``augmentation`` the augmentation state (default: drawn per episode); the Continual
        HT's :class:`SequenceSampler` uses both.

        ``query_batches > 1`` is the evaluation mode of SPEC §5: one support set and one
        augmentation state per task, and independent query batches of ``query_size`` each,
        concatenated along dim 1 (chunk ``b`` is ``query_x[:, b*Q:(b+1)*Q]``).  With
        ``balanced=False`` chunk 0 comes from the support's own draw and every further chunk is
        the last ``Q`` of a fresh ``S + Q`` draw (as the original evaluator re-draws its data
        for every batch).
        """
        if num_episodes < 1 or query_batches < 1:
            raise DatasetError(f"num_episodes and query_batches must be at least 1; got "
                               f"{num_episodes} and {query_batches}")
        t, n, s, u = num_episodes, self.num_labels, self.support_size, self.unlabeled_per_class
        if classes is None:
            classes = self.random_classes(t, n)
        elif classes.shape != (t, n):
            raise DatasetError(f"classes must be [{t}, {n}]; got {list(classes.shape)}")
        counts = self._counts[classes]

        if self.balanced:
            sup_label, sup_pos, sup_slot = self._batch(counts, self._support_items)
            exclude = None
            if self.disjoint:
                exclude = torch.zeros(t, n * self._max_count, dtype=torch.bool)
                exclude.scatter_(1, sup_label * self._max_count + sup_slot, True)
                exclude = exclude.view(t, n, self._max_count)
            queries = []
            for _ in range(query_batches):
                label, _, slot = self._batch(counts, self._query_items, exclude)
                queries.append((label, slot))
        else:
            label, pos, slot = self._batch(counts, self._joint_items)
            sup_label, sup_pos, sup_slot = label[:, :s], pos[:, :s], slot[:, :s]
            queries = [(label[:, s:], slot[:, s:])]
            for _ in range(query_batches - 1):
                label, _, slot = self._batch(counts, self._joint_items)
                queries.append((label[:, s:], slot[:, s:]))

        unlabeled = sup_pos < u
        mask = torch.ones(t, s, dtype=torch.bool)
        for kind, max_prob in [(unlabeled, self.max_prob_remove_unlabeled),
                               (~unlabeled, self.max_prob_remove_labeled)]:
            if max_prob > 0:
                p = self._rand(t, 1) * max_prob
                mask &= ~(kind & (self._rand(t, s) < p))

        state = augmentation or self.draw_augmentation(t)
        query_label = torch.cat([label for label, _ in queries], dim=1)
        query_slot = torch.cat([slot for _, slot in queries], dim=1)
        return EpisodeBatch(
            support_x=self._images_of(classes, sup_label, sup_slot, state),
            support_y=torch.where(unlabeled, n, sup_label),
            support_mask=mask,
            query_x=self._images_of(classes, query_label, query_slot, state),
            query_y=query_label,
            classes=classes)

    def _images_of(self, classes: Tensor, label: Tensor, slot: Tensor,
                   state: AugmentationState | None) -> Tensor:
        """Float ``[T, M, C, H, W]`` images, augmented and normalised, of the samples ``slot``
        of the episode classes ``label`` (``[T, M]`` each)."""
        index = self._offsets[classes].gather(1, label) + slot
        images = self._images[index]  # [T, M, H, W, C] uint8
        t, m, h, w, c = images.shape
        # one pass converts and transposes (2x faster than .contiguous().float())
        x = torch.empty(t, m, c, h, w).copy_(images.permute(0, 1, 4, 2, 3))
        if state is not None:
            x = self._augmenter(x, label, state)
        if self.augmentation.drawings:
            x = augment_drawings(x, self.augmentation, self._generator)
        x = Augmenter.normalize(x, self.image_size)
        if self.augmentation.image_augmentations:
            x = augment_natural_images(x, self.augmentation, self._generator)
        return x


SCENARIOS = ("task", "class", "minibatch")


def check_scenario(scenario: str) -> None:
    if scenario not in SCENARIOS:
        raise DatasetError(f"cht_scenario must be one of {', '.join(SCENARIOS)}; got "
                           f"{scenario!r}")


@dataclass
class SequenceBatch:
    """``T`` sequences of ``L`` tasks for the Continual HT: every :class:`EpisodeBatch` field
    with a task axis after the first, e.g. ``support_x`` [T, L, S, C, H, W] and ``classes``
    [T, L, N] (split class ids: all different across a sequence's tasks in the task- and
    class-incremental scenarios, the same N classes for every chunk in ``minibatch``)."""

    support_x: Tensor
    support_y: Tensor
    support_mask: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor

    @property
    def num_tasks(self) -> int:
        return int(self.support_y.shape[1])

    def task(self, index: int) -> EpisodeBatch:
        """Task ``index`` of every sequence as an :class:`EpisodeBatch` of T episodes."""
        return EpisodeBatch(**{f.name: getattr(self, f.name)[:, index] for f in fields(self)})

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class SequenceSampler:
    """Sequences of ``num_tasks`` few-shot tasks (SPEC §7) drawn by an :class:`EpisodeSampler`
    (its generator, so its :meth:`state_dict` covers both).

    ``task`` and ``class`` scenarios: each task brings ``N`` new classes (a sequence holds
    ``L·N`` distinct classes of the split) with its own augmentation state.  ``minibatch``: one
    task of ``N`` classes whose support arrives in ``L`` chunks, each drawn like a support set
    of its own (an image may repeat across chunks), with one augmentation state for the whole
    sequence (so a per-label rotation keeps naming the same class in every chunk).
    """

    def __init__(self, episodes: EpisodeSampler, num_tasks: int, scenario: str) -> None:
        check_scenario(scenario)
        if num_tasks < 1:
            raise DatasetError(f"a sequence needs at least 1 task; got {num_tasks}")
        n, have = episodes.num_labels, episodes.dataset.num_classes
        if scenario != "minibatch" and num_tasks * n > have:
            raise DatasetError(
                f"a sequence of {num_tasks} tasks of {n} new classes needs {num_tasks * n} "
                f"classes, but the split {episodes.dataset.name!r} has {have}; use fewer tasks "
                f"(cht_tasks / cht_eval_tasks / --tasks-per-sequence) or fewer num_labels")
        if episodes.task_groups and scenario != "minibatch" and num_tasks > 1:
            raise DatasetError(
                f"test_task_groups={episodes.task_groups!r} groups the classes of one task; "
                f"the {scenario}-incremental sequences of the Continual HT draw {num_tasks} "
                f"tasks of new classes each: set test_task_groups='' or cht_scenario=minibatch")
        self.episodes, self.num_tasks, self.scenario = episodes, num_tasks, scenario

    @classmethod
    def from_config(cls, dataset: ClassDataset, cfg: Config, *, train: bool, seed: int,
                    num_tasks: int | None = None) -> SequenceSampler:
        """Training sequences have ``cht_tasks`` tasks; ``num_tasks`` overrides it."""
        episodes = EpisodeSampler.from_config(dataset, cfg, train=train, seed=seed)
        return cls(episodes, num_tasks or cfg.cht_tasks, cfg.cht_scenario)

    def state_dict(self) -> dict:
        return self.episodes.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.episodes.load_state_dict(state)

    def sample(self, num_sequences: int, query_batches: int = 1) -> SequenceBatch:
        if num_sequences < 1:
            raise DatasetError(f"num_sequences must be at least 1; got {num_sequences}")
        e, t, length, n = self.episodes, num_sequences, self.num_tasks, self.episodes.num_labels
        state = None
        if self.scenario == "minibatch":  # the same classes and augmentation in every chunk
            classes = e.random_classes(t, n).repeat_interleave(length, dim=0)
            drawn = e.draw_augmentation(t)
            if drawn is not None:
                state = AugmentationState(**{f.name: getattr(drawn, f.name).repeat_interleave(
                    length, dim=0) for f in fields(drawn)})
        else:
            classes = e.random_classes(t, length * n).view(t * length, n)
        batch = e.sample(t * length, query_batches, classes=classes, augmentation=state)
        return SequenceBatch(**{f.name: getattr(batch, f.name).unflatten(0, (t, length))
                                for f in fields(batch)})


Sampler = EpisodeSampler | SequenceSampler


def make_sampler(dataset: ClassDataset, cfg: Config, *, train: bool, seed: int) -> Sampler:
    """The training/held-out sampler of ``cfg.model_type``: sequences of tasks for the
    Continual HT and the MergedHT, single episodes for the HT and the ProtoNet."""
    if cfg.model_type in ("cht", "merged_ht"):
        return SequenceSampler.from_config(dataset, cfg, train=train, seed=seed)
    return EpisodeSampler.from_config(dataset, cfg, train=train, seed=seed)
