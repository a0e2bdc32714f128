"""ProtoNet with the HT's CNN as a fixed embedding: the ConstPN baseline of the Continual HT.

The CNN is the one the HT generates (``cnn_model_name``, ``default_num_channels``, per-task
batch-statistics BatchNorm), but every weight is an ordinary trained parameter, and the last
layer is a trained linear map to the ``prototype_dim`` embedding.  Nothing is generated, so
learning a task only stores its prototypes: no weight changes across tasks and no forgetting
by construction.  Trained episodically on single tasks with the prototypical loss; evaluated
by the same continual protocol as the CHT (:class:`~.continual.TaskStream`).
"""

from __future__ import annotations

from torch import Tensor, nn

from hypertransformer.config import Config
from hypertransformer.data.sampler import EpisodeBatch
from hypertransformer.model.cnn import ConvLayer, ConvSpec, LogitsSpec, cnn_specs, last_features
from hypertransformer.model.continual import check_continual_config, sequence_loss, single_task
from hypertransformer.model.hypertransformer import GeneratedWeights, LossOutput
from hypertransformer.model.ops import batch_mask, to_grouped
from hypertransformer.precision import fp32


class ProtoNet(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        check_continual_config(config)
        cfg = self.config = config
        specs = cnn_specs(cfg.cnn_model_name, image_size=cfg.image_size,
                          in_channels=cfg.image_channels, channels=cfg.default_num_channels,
                          kernel=cfg.kernel_size, stride=cfg.stride,
                          num_labels=cfg.prototype_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(spec, generated=False, allocation=cfg.lw_weight_allocation,
                      generate_bias=False, generate_bn=False, add_trainable=False,
                      activation=cfg.cnn_activation)
            for spec in specs if isinstance(spec, ConvSpec))
        last = specs[-1]
        assert isinstance(last, LogitsSpec)
        self.flatten = last.flatten
        self.embedding = nn.Linear(last.in_features, cfg.prototype_dim)

    def generate(self, support_x: Tensor, support_y: Tensor, support_mask: Tensor | None = None,
                 previous: GeneratedWeights | None = None) -> None:
        """Nothing to generate: the embedding is fixed."""
        return None

    def embed(self, x: Tensor, weights: GeneratedWeights | None = None,
              mask: Tensor | None = None) -> Tensor:
        """Embeddings [T, M, D] of images [T, M, C, H, W] (BatchNorm statistics per task)."""
        t = x.shape[0]
        h = to_grouped(x)
        bn_mask = batch_mask(mask)
        for layer in self.conv_layers:
            h = layer(h, None, t, bn_mask)
        return fp32(self.embedding)(last_features(h, t, self.flatten))

    def batch_loss(self, batch: EpisodeBatch, step: int = 0) -> LossOutput:
        return sequence_loss(self, single_task(batch))
