"""The one configuration of a HyperTransformer run.

Every field carries the name and default of the original absl flag of the authors'
TensorFlow code (``hypertransformer/tf/common_flags.py`` and the train/eval flags), so that
the original ``scripts/*.sh`` command lines map one to one onto this dataclass.  Fields that
the original does not have are marked "(ours)".

The script presets of SPEC §6 live in :mod:`hypertransformer.presets`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class Config:
    # ---- data and episodes (SPEC §2) --------------------------------------------------
    train_dataset: str = "emnist"
    test_dataset: str = "emnist:8-61"
    # (ours) the held-out classes of model selection (the trainer's held-out accuracy and
    # best.pt) and of `evaluate --split val`; "" means the training dataset's preset val range
    val_dataset: str = ""
    eval_datasets: str = ""
    data_dir: str | None = None
    data_numpy_dir: str = ""
    image_size: int = 28
    image_channels: int = 1  # (ours) channels the CNN expects; 1 for Omniglot, 3 for ImageNet
    num_labels: int = 4
    samples_transformer: int = 32
    samples_cnn: int = 128
    unlabeled_samples_per_class: int = 0
    balanced_batches: bool = False
    disjoint_support_query: bool = False  # (ours) the original draws them independently
    shuffle_labels_seed: int = 0
    max_prob_remove_unlabeled: float = 0.0
    max_prob_remove_labeled: float = 0.0
    # (ours) "" or "alphabet": every evaluation task (train=False samplers: held-out episodes,
    # evaluate) takes its N classes from one group, the class name before "/" (data.sampler)
    test_task_groups: str = ""

    # ---- augmentation (SPEC §2.4) -------------------------------------------------------
    per_label_augmentation: bool = False
    random_rotate_by_90: bool = False
    rotation_probability: float = 0.0
    boundary_probability: float = 0.0
    smooth_probability: float = 0.5
    contrast_probability: float = 0.5
    resize_probability: float = 0.0
    negate_probability: float = 0.0
    roll_probability: float = 0.0
    angle_range: float = 180.0
    test_rotation_probability: float = -1.0
    test_smooth_probability: float = -1.0
    test_contrast_probability: float = -1.0
    test_resize_probability: float = -1.0
    test_negate_probability: float = -1.0
    test_roll_probability: float = -1.0
    test_angle_range: float = -1.0
    test_random_rotate_by_90: bool = False
    test_per_label_augmentation: bool = False
    apply_image_augmentations: bool = False
    augment_images_individually: bool = False
    # (ours) drawing augmentations, training only (data.augment.augment_drawings)
    stroke_probability: float = 0.0
    stroke_max_width: float = 0.0
    warp_probability: float = 0.0
    warp_scale: float = 0.0
    warp_shift: float = 0.0
    warp_elastic: float = 0.0
    # (ours) every drawing scaled and centred on its ink, in training, evaluation and a user's
    # images (data.framing)
    frame_ink: bool = False

    # ---- model (SPEC §3) ----------------------------------------------------------------
    cnn_model_name: str = "3-layer"
    default_num_channels: int = 16
    kernel_size: int = 3
    stride: int = 2
    cnn_activation: str = "relu"
    cnn_dropout_rate: float = 0.0
    number_of_trained_cnn_layers: int = 0
    add_trainable_weights: bool = False
    embedding_dim: int = 8
    num_layers: int = 4
    heads: int = 4
    dropout_rate: float = 0.0
    num_layerwise_features: int | None = None  # None: max(C_in, C_out) (C_in for logits)
    lw_key_query_dim: float = 1.0
    lw_value_dim: float = 1.0
    lw_inner_dim: float = 1.0
    lw_use_nonlinear_feature: bool = False
    lw_weight_allocation: str = "spatial"
    lw_generate_bias: bool = False
    lw_generate_bn: bool = False
    layerwise_generator: str = "joint"
    use_decoder: bool = False
    transformer_activation: str = "softmax"
    transformer_nonlinearity: str = "relu"
    transformer_skip_last_nonlinearity: bool = False
    shared_feature_extractor: str = "none"
    shared_features_dim: int = 32
    shared_feature_extractor_padding: str = "valid"
    shared_fe_dropout: float = 0.0
    fe_dropout: float = 0.0
    logits_feature_extractor: str = "default"
    # (ours) the logits generator starts with label matching in place: weight token j starts
    # as label token j and the first attention's key map as its query map, so that weight
    # token j attends to the support samples of class j from step 0 (docs/model.md)
    label_aligned_init: bool = False

    # ---- Continual HyperTransformer and ProtoNet (SPEC §7; ours, docs/continual.md) -------
    model_type: str = "ht"  # (ours) ht | cht (Continual HT) | merged_ht | protonet (baselines)
    prototype_dim: int = 32  # (ours) D, the embedding width of the cht/protonet CNN
    cht_tasks: int = 5  # (ours) L, tasks per training sequence
    cht_eval_tasks: int = 0  # (ours) tasks per evaluation sequence; 0 means 2·cht_tasks
    cht_scenario: str = "task"  # (ours) task | class | minibatch
    cht_recompute_prototypes: bool = False  # (ours) evaluation upper bound: no stored prototypes
    # (ours) what the weight tokens of task t carry of θ_{t−1}: raw (SPEC §7, the blocks as
    # generated) | normalized (each block layer-normalised) | none (nothing: no feedback)
    cht_feedback: str = "raw"
    # (ours) θ_t = θ_{t−1} + α_ℓ·G_ℓ(S_t, θ_{t−1}) with a learned θ_{−1} and per-layer α_ℓ
    # starting at cht_residual_scale (near the identity: a trained CNN that the generator
    # learns to update; at exactly 0 the generator gets no gradient)
    cht_residual: bool = False
    cht_residual_scale: float = 0.01
    # (ours) the generated embedding divided by √F (F: the width of its input): the transformer
    # writes unit-scale weights, so that squared distances start at O(D) rather than O(D·F)
    cht_embedding_scale: bool = False
    # (ours) a fresh training run starts from this checkpoint (a file, a log dir or a
    # pretrained name): an HT takes every parameter of an HT of the same architecture
    # (fine-tuning, e.g. adding unlabelled samples); a residual CHT takes θ_{−1} (and the
    # shared BatchNorm γ, β) from a ProtoNet of the same CNN
    init_checkpoint: str = ""

    # ---- losses and regularisers (SPEC §3.8) --------------------------------------------
    warmup_steps: int = 0
    l2_reg_weight: float = 0.0
    weight_variation_regularization: float = 0.0
    label_smoothing: float = 0.0
    shared_head_weight: float = 0.0
    shared_head_classes: int = 0  # (ours) classes of the training split, for the shared head

    # ---- training (SPEC §4) -------------------------------------------------------------
    learning_rate: float = 1e-3
    learning_rate_decay_steps: float = 10000.0
    learning_rate_decay_rate: float = 1.0
    train_steps: int = 10000
    steps_between_saves: int = 50000
    train_log_dir: str = "/tmp/experiment"
    optimizer: str = "sgd"  # (ours) sgd (the original) | adamw
    episodes_per_step: int = 1  # (ours) T episodes processed by one optimiser step
    seed: int = 0  # (ours)
    device: str = "cpu"  # (ours) cpu | cuda | cuda:<i>; under torchrun cuda means cuda:LOCAL_RANK
    dtype: str = "auto"  # (ours) auto | fp32 | bf16 | fp16 (CUDA): hypertransformer.precision

    # ---- evaluation (SPEC §5) -----------------------------------------------------------
    num_task_evals: int = 1024
    num_eval_batches: int = 16
    eval_batch_size: int = 100

    def replace(self, **overrides: Any) -> Config:
        """A copy with some fields changed; an unknown field name is an error."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """The config of a ``to_dict``; that of an older release too, whose
        ``mixed_precision`` (none | bf16 | fp16) ``dtype`` replaced: none becomes the default."""
        values = dict(values)
        legacy = values.pop("mixed_precision", "none")
        if legacy != "none":
            values.setdefault("dtype", legacy)
        return cls().replace(**values)

    @property
    def shots(self) -> int:
        """Labelled support samples per class, K = S / N - u."""
        return self.samples_transformer // self.num_labels - self.unlabeled_samples_per_class

    @property
    def sequence_length(self) -> int:
        """Tasks per evaluation sequence of the Continual HT: ``cht_eval_tasks`` or 2·L."""
        return self.cht_eval_tasks or 2 * self.cht_tasks


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]

