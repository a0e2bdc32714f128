"""A Continual HyperTransformer (or its ProtoNet baseline) learning a user's tasks one after
another (docs/use.md, "Learning task after task")::

    stream = hypertransformer.load("cht_omniglot_class").stream()
    stream.learn(images, labels)        # task 0: at most N classes, any pictures
    stream.learn(images1, labels1)      # task 1: the weights are updated, prototypes stored
    stream.predict(queries)             # class names among every class learned so far
    stream.predict(queries, task=0)     # ... among task 0's classes only
    stream.save("stream.pt")            # hypertransformer.inference.load_stream(path)

A :class:`Stream` wraps one sequence (T = 1) of :class:`~..model.continual.TaskStream`: the
last generated weights θ_t and the prototypes stored for every task (never recomputed; the
support images are not kept).  Task τ's class k is candidate ``τ·N + k`` (the class-incremental
numbering) in the ``task`` and ``class`` scenarios; in ``minibatch`` every task is a chunk of
the support of one task of at most N classes, a class keeps its label across chunks and its
prototype is the count-weighted mean of its chunk prototypes.

BatchNorm: the generated CNN normalises with batch statistics, and in training each task's
queries are one batch.  A user's queries have no task and may be a single image, so the
stream, like the HT's classifier (:class:`~.classifier.GeneratedCNN`), normalises with stored
statistics: those of each task's support pass (the ones its prototypes were computed with).
A query is embedded with the current weights once per task, with that task's statistics, and
compared with that task's prototypes; in ``minibatch`` (chunks of the same classes) the
statistics of all chunks are pooled.  A prediction does not depend on the other images of the
call, and the ProtoNet (whose weights never change) classifies its support images exactly as
its own batch-statistics pass does, for every task learned.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hypertransformer.config import Config
from hypertransformer.data.sampler import check_scenario
from hypertransformer.inference.classifier import (
    GeneratedCNN,
    GeneratedConv,
    Labels,
    Statistics,
    TrainedModel,
    check_saved_names,
    read_support,
)
from hypertransformer.inference.images import Images
from hypertransformer.model import ContinualHyperTransformer, ProtoNet, build_model
from hypertransformer.model.cnn import LayerWeights
from hypertransformer.model.continual import TaskStream
from hypertransformer.model.hypertransformer import GeneratedWeights

STREAM_FORMAT = "hypertransformer-stream/1"
# model_type of the models that learn a stream; merged_ht, the upper bound that regenerates
# from every support set kept, is not one of them.
STREAM_MODELS = ("cht", "protonet")


class ContinualModel(TrainedModel):
    """A trained Continual HT (or ProtoNet) that learns task after task: :meth:`stream`."""

    def __init__(self, model: nn.Module, dtype: str = "auto") -> None:
        if not isinstance(model, ContinualHyperTransformer | ProtoNet) or (
                model.config.model_type not in STREAM_MODELS):
            raise ValueError(f"a stream needs a Continual HT or ProtoNet (model_type "
                             f"{' or '.join(STREAM_MODELS)}); got {type(model).__name__}")
        super().__init__(model, dtype)

    def stream(self, scenario: str | None = None) -> Stream:
        """A new stream with nothing learned; ``scenario`` (task | class | minibatch) defaults
        to the one the model was trained in (``cht_scenario``)."""
        return Stream(self, scenario)


def embedding_cnn(model: nn.Module, weights: GeneratedWeights | None) -> GeneratedCNN:
    """The embedding CNN f_θ (images -> [B, D]) of ``weights`` (the CHT's) or of the
    ProtoNet's trained layers; BatchNorm statistics: ``fit_statistics``, or given to each
    call."""
    if isinstance(model, ProtoNet):
        layers = [GeneratedConv(layer, None, 1, 0) for layer in model.conv_layers]
        embedding = model.embedding
        return GeneratedCNN(layers, embedding.weight.T.detach().clone(),
                            embedding.bias.detach().clone(), model.flatten)
    assert isinstance(model, ContinualHyperTransformer) and weights is not None
    cnn = GeneratedCNN.from_generated(model.ht, weights, model.config.prototype_dim)
    cnn.logits_weight *= model.embedding_scale  # the CHT's embed() (cht_embedding_scale)
    cnn.logits_bias *= model.embedding_scale
    return cnn


def pooled(a: Statistics, n_a: float, b: Statistics, n_b: float) -> Statistics:
    """The statistics of the union of two sets of ``n_a`` and ``n_b`` images."""
    out = []
    for (mean_a, var_a), (mean_b, var_b) in zip(a, b, strict=True):
        mean = (n_a * mean_a + n_b * mean_b) / (n_a + n_b)
        square = (n_a * (var_a + mean_a ** 2) + n_b * (var_b + mean_b ** 2)) / (n_a + n_b)
        out.append((mean, square - mean ** 2))
    return out


class Stream:
    """Tasks learned one after another (module docstring).  ``class_names``: every class
    learned, in order; ``task_classes[τ]``: the classes of task τ."""

    def __init__(self, model: ContinualModel, scenario: str | None = None) -> None:
        self.model = model
        self.scenario = scenario or model.config.cht_scenario
        check_scenario(self.scenario)
        self._chunks = self.scenario == "minibatch"  # the tasks are chunks of one task
        # Task and class scenarios store the same prototypes; "class" numbers them τ·N + k.
        self._tasks = TaskStream(model.model, recompute=False,
                                 scenario="minibatch" if self._chunks else "class")
        self._candidate: dict[Hashable, int] = {}  # class name -> its prototype's index
        self.task_classes: list[list[Hashable]] = []
        self._cnn: GeneratedCNN | None = None  # f_θ with the current weights
        # the statistics of each task's support pass (minibatch: of every chunk, pooled)
        self._statistics: list[Statistics] = []

    @property
    def num_tasks(self) -> int:
        return self._tasks.num_tasks

    @property
    def class_names(self) -> list[Hashable]:
        return list(self._candidate)

    def learn(self, images: Images, labels: Labels, *, ink: str = "auto") -> None:
        """Learns one task: ``images`` as :meth:`FewShotModel.fit` takes them, one class name
        per image, at most N = ``num_labels`` classes.  A class learned in an earlier task
        is refused, except in the minibatch scenario, where it is the point (the support of
        at most N classes arriving in chunks)."""
        n = self.model.config.num_labels
        x, y, classes = read_support(self.model.preprocessing, images, labels, ink, n,
                                     per="task")
        if self._chunks:  # one task in chunks: a class keeps its label
            known = dict(self._candidate)
            for c in classes:
                known.setdefault(c, len(known))
            if len(known) > n:
                raise ValueError(
                    f"the minibatch scenario learns one task of at most {n} classes in "
                    f"chunks; {len(self._candidate)} learned and "
                    f"{len(known) - len(self._candidate)} new classes are {len(known)}")
            index = [known[c] for c in classes]
            labels_of_task = index
        else:
            repeated = [c for c in classes if c in self._candidate]
            if repeated:
                raise ValueError(
                    f"class {repeated[0]!r} was learned in an earlier task; in the "
                    f"{self.scenario}-incremental scenario every task brings new classes "
                    f"(name it otherwise, or use the minibatch scenario, whose tasks are "
                    f"chunks of the same classes)")
            labels_of_task = list(range(len(classes)))
            index = [self.num_tasks * n + j for j in labels_of_task]
        with torch.no_grad(), self.model.precision.autocast(x.device):
            learned = float(sum(c.sum() for c in self._tasks.counts))  # support images
            self._tasks.learn(x[None], torch.tensor(labels_of_task)[y][None])
            cnn = embedding_cnn(self.model.model, self._tasks.weights)
            cnn.fit_statistics(x)
            stats = cnn.statistics()
            if self._chunks and self._statistics:
                stats = pooled(self._statistics[0], learned, stats, len(x))
        self._cnn = cnn
        self._statistics = [stats] if self._chunks else [*self._statistics, stats]
        self._candidate.update(zip(classes, index, strict=True))
        self.task_classes.append(classes)

    def _classes(self, task: int | None) -> list[Hashable]:
        if self._cnn is None:
            raise ValueError("nothing learned yet: call stream.learn(images, labels) with a "
                             "task first")
        if task is None:
            return self.class_names
        if not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be one of the learned tasks 0..{self.num_tasks - 1}; "
                             f"got {task!r}")
        return self.task_classes[task]

    def logits(self, images: Images, *, task: int | None = None,
               ink: str = "auto") -> Tensor:
        """``−‖f_θ(x) − c‖²`` ``[B, classes]`` with the current weights, over every class
        learned (``class_names``) or over task ``task``'s (``task_classes[task]``); each
        task's prototypes against the queries normalised with its statistics."""
        classes = self._classes(task)
        x = self.model.preprocessing(images, ink)
        n = self.model.config.num_labels
        assert self._cnn is not None
        with torch.no_grad(), self.model.precision.autocast(x.device):
            prototypes = self._tasks.candidates(1)[0, 0]
            embeddings: dict[int, Tensor] = {}  # per task whose statistics are used
            differences = []
            for c in (self._candidate[name] for name in classes):
                t = 0 if self._chunks else c // n
                if t not in embeddings:
                    embeddings[t] = self._cnn(x, self._statistics[t])
                differences.append(embeddings[t] - prototypes[c])
            return -torch.stack(differences, 1).square().sum(-1)

    def predict_proba(self, images: Images, *, task: int | None = None,
                      ink: str = "auto") -> Tensor:
        return self.logits(images, task=task, ink=ink).softmax(-1)

    def predict(self, images: Images, *, task: int | None = None,
                ink: str = "auto") -> list[Hashable]:
        classes = self._classes(task)
        return [classes[i] for i in self.logits(images, task=task, ink=ink).argmax(-1).tolist()]

    # ---- save and load ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything :func:`load_stream` needs: the model (config, parameters), θ_t, the
        stored prototypes and counts, the BatchNorm statistics, the classes, the scenario."""
        check_saved_names(self.class_names, "a saved stream")
        tasks, w = self._tasks, self._tasks.weights
        return {
            "format": STREAM_FORMAT, "config": self.model.config.to_dict(),
            "model": self.model.model.state_dict(), "scenario": self.scenario,
            "num_tasks": tasks.num_tasks, "means": tasks.means, "counts": tasks.counts,
            "weights": None if w is None else {
                "layers": [None if layer is None else layer.tensors() for layer in w.layers],
                "shared_features": w.shared_features, "blocks": w.blocks},
            "statistics": self._statistics,
            "class_names": self.class_names, "candidates": list(self._candidate.values()),
            "task_classes": self.task_classes,
        }

    def save(self, path: str | Path) -> None:
        """Writes the stream to ``path`` atomically (a temporary file in the same folder,
        then renamed); :func:`load_stream` reads it back."""
        # Imported here: the training package pulls in TensorBoard, which saving never needs.
        from hypertransformer.training.checkpoint import save_checkpoint

        save_checkpoint(Path(path).expanduser(), self.state_dict())

    def _restore(self, state: dict[str, Any]) -> None:
        tasks, w = self._tasks, state["weights"]
        if w is not None:
            tasks.weights = GeneratedWeights(
                [None if layer is None else LayerWeights(**layer) for layer in w["layers"]],
                w["shared_features"], w["blocks"])
        tasks.num_tasks, tasks.means, tasks.counts = (
            int(state["num_tasks"]), list(state["means"]), list(state["counts"]))
        self._candidate = dict(zip(state["class_names"], state["candidates"], strict=True))
        self.task_classes = [list(classes) for classes in state["task_classes"]]
        self._statistics = [[(mean, var) for mean, var in stats]
                            for stats in state["statistics"]]
        if self._statistics:
            self._cnn = embedding_cnn(self.model.model, tasks.weights)


def read_stream_file(path: Path) -> dict[str, Any] | None:
    """The dict saved by :meth:`Stream.save` at ``path``; None for a file of another kind."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for truncated or foreign files
        return None
    return state if isinstance(state, dict) and state.get("format") == STREAM_FORMAT else None


def load_stream(path: str | Path, *, dtype: str = "auto") -> Stream:
    """A stream saved by :meth:`Stream.save`: it predicts as before and can keep learning
    (``dtype``: :class:`~.classifier.TrainedModel`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"stream {path} does not exist (or is not a file)")
    state = read_stream_file(path)
    if state is None:
        raise ValueError(f"{path} is corrupt or not a stream saved by stream.save(path); a "
                         f"trained model loads with hypertransformer.load")
    try:
        model = build_model(Config.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        stream = ContinualModel(model, dtype).stream(state["scenario"])
        stream._restore(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"stream {path} is damaged ({type(e).__name__}: {e})") from e
    return stream
