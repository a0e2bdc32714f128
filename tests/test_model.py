"""The HyperTransformer model (SPEC §3) and the traps of SPEC §8 that concern it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hypertransformer import HyperTransformer, presets
from hypertransformer.model.cli import layer_table, parameter_table
from hypertransformer.model.cnn import ConvLayer, ConvSpec, LogitsLayer, LogitsSpec
from hypertransformer.model.feature_extractors import LayerFeatureExtractor, SharedFeatureExtractor
from hypertransformer.model.hypertransformer import warmup_weights

torch.set_num_threads(2)


def small(**overrides):
    """A small Omniglot-like preset: 5-way 1-shot, 28 px, fast enough for many tests."""
    base = dict(num_labels=5, samples_transformer=5, samples_cnn=10, embedding_dim=16,
                num_layers=2, default_num_channels=4, num_layerwise_features=4,
                shared_features_dim=8)
    base.update(overrides)
    return presets.load("omniglot_1shot", **base)


def episode(cfg, tasks=2, seed=0, support=None, queries=None):
    g = torch.Generator().manual_seed(seed)
    s = support or cfg.samples_transformer
    q = queries or cfg.samples_cnn
    c, h = cfg.image_channels, cfg.image_size
    sx = torch.randn(tasks, s, c, h, h, generator=g)
    k = s // cfg.num_labels
    sy = torch.arange(cfg.num_labels).repeat_interleave(k).repeat(tasks, 1)
    qx = torch.randn(tasks, q, c, h, h, generator=g)
    qy = torch.randint(0, cfg.num_labels, (tasks, q), generator=g)
    return sx, sy, qx, qy


def flat(weights):
    return torch.cat([t.flatten(1) for w in weights.layers if w is not None
                      for t in w.tensors().values()], dim=1)


# ---- shapes of the reference configuration (SPEC §3.7) --------------------------------------

def test_omniglot_1shot_token_geometry():
    model = HyperTransformer(presets.load("omniglot_1shot"))
    rows = layer_table(model)
    assert [r["token_width"] for r in rows] == [80, 104, 104, 104, 72]
    assert [r["block_size"] for r in rows] == [9, 72, 72, 72, 9]
    assert [r["weight_tokens"] + r["sample_tokens"] for r in rows] == [28, 28, 28, 28, 40]
    sx, sy, qx, _ = episode(model.config, tasks=1)
    assert model(sx, sy, qx).shape == (1, 60, 20)


def test_parameter_table_counts_every_parameter():
    model = HyperTransformer(presets.load("omniglot_1shot"))
    rows = dict(parameter_table(model))
    assert sum(rows.values()) == sum(p.numel() for p in model.parameters())
    assert set(rows) >= {"shared_feature_extractor", "generators.conv1", "generators.logits"}


def test_model_summary_cli(capsys):
    from hypertransformer.cli import main

    assert main(["model-summary", "omniglot_1shot"]) == 0
    out = capsys.readouterr().out
    assert "logits" in out and "72" in out and "20+20" in out and "total" in out


# ---- invariances -----------------------------------------------------------------------------

def test_support_order_does_not_matter():
    cfg = small()
    # float64: in float32 the reordered sums of BatchNorm over near-constant channels differ
    # in the last bits, which the small variances amplify past any fixed tolerance.
    model = HyperTransformer(cfg).eval().double()
    sx, sy, qx, _ = episode(cfg, tasks=1)
    sx, qx = sx.double(), qx.double()
    perm = torch.randperm(sx.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w1, w2 = model.generate(sx, sy), model.generate(sx[:, perm], sy[:, perm])
        torch.testing.assert_close(flat(w1), flat(w2), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(model.classify(qx, w1), model.classify(qx, w2),
                                   atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("overrides", [
    {},
    {"shared_feature_extractor": "2-layer-bn", "lw_generate_bias": True, "lw_generate_bn": True},
    {"cnn_model_name": "4-layer", "stride": 1, "layerwise_generator": "separate"},
])
def test_batched_tasks_equal_separate_calls(overrides):
    """T tasks in one call = T calls of one task: to 1e-5 in float64 (the computation is the
    same), and to float32 rounding in float32 (BatchNorm divides by small variances, which
    amplifies the last-bit differences of differently blocked convolution kernels)."""
    cfg = small(**overrides)
    model = HyperTransformer(cfg).eval()
    sx, sy, qx, _ = episode(cfg, tasks=5)
    mask = torch.ones_like(sy, dtype=torch.bool)
    mask[1, 2] = False
    for dtype, tol in [(torch.float64, 1e-5), (torch.float32, 2e-4)]:
        m, s, q = model.to(dtype), sx.to(dtype), qx.to(dtype)
        with torch.no_grad():
            together = m(s, sy, q, mask)
            apart = torch.cat([m(s[i:i + 1], sy[i:i + 1], q[i:i + 1], mask[i:i + 1])
                               for i in range(5)])
        torch.testing.assert_close(together, apart, atol=tol, rtol=tol)


def test_eval_and_train_mode_agree():
    """Trap 4: BatchNorm uses batch statistics in eval mode too."""
    cfg = small(shared_feature_extractor="3-layer-bn")
    model = HyperTransformer(cfg)
    sx, sy, qx, _ = episode(cfg)
    with torch.no_grad():
        train_logits = model.train()(sx, sy, qx)
        eval_logits = model.eval()(sx, sy, qx)
    torch.testing.assert_close(train_logits, eval_logits)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_query_batch_statistics_are_per_batch():
    """The query pass normalises with the query batch's own statistics: a query's logits
    depend on the other queries of its batch, and shifting every query by a constant
    changes nothing after the first BatchNorm."""
    cfg = small()
    model = HyperTransformer(cfg).eval()
    sx, sy, qx, _ = episode(cfg, tasks=1)
    with torch.no_grad():
        w = model.generate(sx, sy)
        full = model.classify(qx, w)
        half = model.classify(qx[:, :5], w)
    assert not torch.allclose(full[:, :5], half, atol=1e-4)


# ---- token -> filter mapping (trap 1) --------------------------------------------------------

@pytest.mark.parametrize("bias,bn", [(False, False), (True, True)])
def test_output_allocation_one_token_one_filter(bias, bn):
    spec = ConvSpec(in_channels=3, out_channels=5, kernel=3, stride=1, padding="same",
                    maxpool=2, in_size=8)
    layer = ConvLayer(spec, generated=True, allocation="output", generate_bias=bias,
                      generate_bn=bn, add_trainable=False, activation="relu")
    assert layer.num_tokens == 5 and layer.block_size == 27 + bias + 2 * bn
    blocks = torch.randn(2, 5, layer.block_size)
    base = layer.decode(blocks)
    # The documented layout: token o = filter o in (kh, kw, C_in) order, then bias, γ, β.
    o, i, h, w = 3, 2, 1, 0
    assert base.weight[1, o, i, h, w] == blocks[1, o, (h * 3 + w) * 3 + i]
    for j in range(5):
        bumped = blocks.clone()
        bumped[1, j] += 1.0
        new = layer.decode(bumped)
        for name, before in base.tensors().items():
            after = new.tensors()[name]
            changed = (after != before).flatten(2).any(-1) if after.dim() > 3 else after != before
            expect = torch.zeros_like(changed)
            expect[1, j] = True
            assert torch.equal(changed, expect), name


def test_spatial_allocation_one_token_one_kernel_position():
    spec = ConvSpec(in_channels=2, out_channels=3, kernel=3, stride=1, padding="same",
                    maxpool=0, in_size=8)
    layer = ConvLayer(spec, generated=True, allocation="spatial", generate_bias=False,
                      generate_bn=False, add_trainable=False, activation="relu")
    assert layer.num_tokens == 9 and layer.block_size == 6
    blocks = torch.randn(1, 9, 6)
    base = layer.decode(blocks).weight
    for tok in range(9):
        bumped = blocks.clone()
        bumped[0, tok] += 1.0
        changed = (layer.decode(bumped).weight != base)[0]  # [C_out, C_in, kh, kw]
        expect = torch.zeros_like(changed)
        expect[:, :, tok // 3, tok % 3] = True
        assert torch.equal(changed, expect)


def test_logits_layer_one_token_one_class():
    layer = LogitsLayer(LogitsSpec(in_channels=4, in_size=2, num_labels=5, flatten=True),
                        add_trainable=False, dropout=0.0)
    assert layer.block_size == 17
    blocks = torch.randn(2, 5, 17)
    base = layer.decode(blocks)
    bumped = blocks.clone()
    bumped[0, 3] += 1.0
    new = layer.decode(bumped)
    assert torch.equal((new.weight != base.weight).any(1), torch.tensor(
        [[False, False, False, True, False], [False] * 5]))
    assert torch.equal(new.bias != base.bias, torch.tensor(
        [[False, False, False, True, False], [False] * 5]))


def test_grouped_convolution_equals_per_task_convolution():
    spec = ConvSpec(in_channels=3, out_channels=4, kernel=3, stride=2, padding="same",
                    maxpool=2, in_size=9)
    layer = ConvLayer(spec, generated=True, allocation="output", generate_bias=True,
                      generate_bn=True, add_trainable=False, activation="relu")
    blocks = torch.randn(3, 4, layer.block_size)
    w = layer.decode(blocks)
    x = torch.randn(3, 6, 3, 9, 9)  # [T, M, C, H, W]
    from hypertransformer.model.ops import from_grouped, to_grouped

    out = from_grouped(layer(to_grouped(x), w, 3), 3)
    for t in range(3):
        y = nn.functional.pad(x[t], (1, 1, 1, 1))  # TF same, stride 2, 9 px: 1 before, 1 after
        y = nn.functional.conv2d(y, w.weight[t], w.bias[t], stride=2).relu()
        y = nn.functional.max_pool2d(y, 2)
        mean = y.mean(dim=(0, 2, 3), keepdim=True)
        var = y.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
        y = (y - mean) / (var + 1e-3).sqrt() * w.gamma[t][:, None, None] + w.beta[t][:, None, None]
        torch.testing.assert_close(out[t], y, atol=1e-5, rtol=1e-5)


# ---- feature extractors (traps 2 and 3) ------------------------------------------------------

def test_shared_feature_extractor_has_relus():
    fe = SharedFeatureExtractor("2-layer", 1, 4, "same")
    with torch.no_grad():
        for conv in fe.convs:
            conv.bias.fill_(-10.0)  # every pre-activation negative -> ReLU gives exact zeros
        out = fe(torch.rand(1, 3, 1, 8, 8))
    assert torch.equal(out, torch.zeros(1, 3, 4))


@pytest.mark.parametrize("size,expected_convs,kernel", [
    (28, 2, 3), (14, 2, 3), (7, 2, 3), (3, 1, 3), (2, 1, 2), (1, 2, 1)])
def test_local_feature_extractor_kernels_and_stops(size, expected_convs, kernel):
    fe = LayerFeatureExtractor(in_channels=2, in_size=size, dim=4, layers=2, kernel=3)
    assert len(fe.convs) == expected_convs
    assert all(c.kernel_size == (kernel, kernel) for c in fe.convs)
    assert fe(torch.randn(5, 2, size, size)).shape == (5, 4 * expected_convs)


def test_local_features_are_pre_activation_means():
    fe = LayerFeatureExtractor(in_channels=1, in_size=7, dim=2, layers=2, kernel=3)
    x = torch.randn(3, 1, 7, 7)
    pre1 = fe.convs[0](x)
    pre2 = fe.convs[1](pre1.relu())
    expect = torch.cat([pre1.mean(dim=(2, 3)), pre2.mean(dim=(2, 3))], dim=1)
    torch.testing.assert_close(fe(x), expect)
    fe.nonlinear = True
    expect = torch.cat([pre1.relu().mean(dim=(2, 3)), pre2.relu().mean(dim=(2, 3))], dim=1)
    torch.testing.assert_close(fe(x), expect)


# ---- registration and construction (traps 5 and 9) -------------------------------------------

def test_everything_built_in_init_and_registered():
    cfg = small(warmup_steps=10, add_trainable_weights=True)
    model = HyperTransformer(cfg)
    before = {n: p.shape for n, p in model.named_parameters()}
    sx, sy, qx, qy = episode(cfg)
    model.loss(sx, sy, qx, qy, step=3).loss.backward()
    assert {n: p.shape for n, p in model.named_parameters()} == before
    # every generator, feature extractor and head is a registered submodule
    assert set(model.generators) == {"conv1", "conv2", "conv3", "conv4", "logits"}
    assert len(model.warmup_heads) == 3
    assert all(any(n.startswith(f"generators.{k}.") for n in before) for k in model.generators)
    # moving the model moves every parameter (no plain-Python lists of layers)
    double = copy.deepcopy(model).double()
    assert all(p.dtype == torch.float64 for p in double.parameters())
    out = double(sx.double(), sy, qx.double())
    assert out.dtype == torch.float64


def reachable_parameters(obj: object, seen: set[int] | None = None) -> dict[int, nn.Parameter]:
    """Every parameter reachable from ``obj`` through module attributes, including plain
    Python lists, tuples and dicts of modules or parameters (which ``nn.Module`` would not
    register), by id."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return {}
    seen.add(id(obj))
    if isinstance(obj, nn.Parameter):
        return {id(obj): obj}
    if isinstance(obj, nn.Module):
        children: list[object] = list(vars(obj).values())
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple | set):
        children = list(obj)
    else:
        return {}
    found: dict[int, nn.Parameter] = {}
    for child in children:
        found.update(reachable_parameters(child, seen))
    return found


@pytest.mark.parametrize("overrides", [
    {},
    {"warmup_steps": 30},
    {"use_decoder": True},
    {"layerwise_generator": "separate"},
    {"shared_head_weight": 0.5, "shared_head_classes": 30, "add_trainable_weights": True,
     "lw_generate_bias": True, "lw_generate_bn": True, "number_of_trained_cnn_layers": 1},
], ids=["default", "warmup_heads", "use_decoder", "separate", "trained_layers_and_heads"])
def test_every_parameter_is_registered_saved_and_moved(overrides):
    """Trap 5: no parameter hides in a plain Python container: every one reachable from the
    model is in ``parameters()`` and the state_dict and follows ``.to()``."""
    model = HyperTransformer(small(**overrides))
    reachable = reachable_parameters(model)
    registered = {id(p) for p in model.parameters()}
    assert len(reachable) > 0 and set(reachable) == registered
    saved = {id(t) for t in model.state_dict(keep_vars=True).values()}
    assert registered <= saved
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in reachable_parameters(model).values())


def test_warmup_heads_are_registered_saved_moved_and_trained():
    cfg = small(warmup_steps=30)
    model = HyperTransformer(cfg)
    assert isinstance(model.warmup_heads, nn.ModuleList) and len(model.warmup_heads) == 3
    keys = model.state_dict().keys()
    registered = {id(p) for p in model.parameters()}
    for i, head in enumerate(model.warmup_heads):
        assert {f"warmup_heads.{i}.weight", f"warmup_heads.{i}.bias"} <= keys
        assert all(id(p) in registered for p in head.parameters())
    sx, sy, qx, qy = episode(cfg, tasks=1)
    for i, head in enumerate(model.warmup_heads):  # head i has weight 1 at step 10 i
        model.zero_grad()
        model.loss(sx, sy, qx, qy, step=10 * i).loss.backward()
        assert head.weight.grad is not None and head.weight.grad.any()
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for h in model.warmup_heads for p in h.parameters())


@pytest.mark.parametrize("overrides", [{"use_decoder": True},
                                       {"layerwise_generator": "separate"}],
                         ids=["use_decoder", "separate"])
def test_decoders_are_registered_saved_moved_and_trained(overrides):
    cfg = small(**overrides)
    model = HyperTransformer(cfg)
    plain = sum(p.numel() for p in HyperTransformer(small()).parameters())
    assert sum(p.numel() for p in model.parameters()) > plain  # the decoders add parameters
    keys = model.state_dict().keys()
    for name, generator in model.generators.items():
        decoder = generator.decoder
        assert decoder is not None
        decoder_params = dict(decoder.named_parameters())
        assert decoder_params
        assert {f"generators.{name}.decoder.{k}" for k in decoder_params} <= keys
    sx, sy, qx, qy = episode(cfg, tasks=1)
    model.loss(sx, sy, qx, qy).loss.backward()
    missing = [f"{name}.{k}" for name, generator in model.generators.items()
               for k, p in generator.decoder.named_parameters()
               if p.grad is None or not p.grad.any()]
    assert missing == []
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for g in model.generators.values()
               for p in g.decoder.parameters())


@pytest.mark.parametrize("preset", ["omniglot_1shot", "omniglot_5shot", "miniimagenet_1shot",
                                    "tieredimagenet_5shot"])
def test_gradients_reach_every_parameter(preset):
    cfg = presets.load(preset)
    model = HyperTransformer(cfg)
    sx, sy, qx, qy = episode(cfg, tasks=1)
    model.loss(sx, sy, qx, qy).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_sgd_fits_one_episode():
    cfg = small()
    torch.manual_seed(0)
    model = HyperTransformer(cfg)
    sx, sy, qx, qy = episode(cfg, tasks=1)
    qx, qy = sx, sy  # classify the support images themselves
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        opt.zero_grad()
        out = model.loss(sx, sy, qx, qy)
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    assert first > 1.0
    assert out.loss.item() < 0.05
    assert out.accuracy.item() == 1.0


# ---- unlabelled samples and masks ------------------------------------------------------------

def semi_episode(cfg, u=1):
    n = cfg.num_labels
    sx, sy, qx, _ = episode(cfg, tasks=2, support=n * (1 + u))
    sy = torch.arange(n).repeat_interleave(1 + u).repeat(2, 1)
    sy[:, ::1 + u] = n  # the first sample of every class chunk is unlabelled
    return sx, sy, qx


def test_unlabelled_samples_and_masks_change_the_result():
    cfg = small(samples_transformer=10, unlabeled_samples_per_class=1)
    model = HyperTransformer(cfg).eval()
    sx, sy, qx = semi_episode(cfg)
    with torch.no_grad():
        base = model(sx, sy, qx)
        relabelled = sy.clone()
        relabelled[sy == cfg.num_labels] = 0
        assert not torch.allclose(base, model(sx, relabelled, qx), atol=1e-4)
        mask = torch.ones_like(sy, dtype=torch.bool)
        mask[:, 0] = False
        assert not torch.allclose(base, model(sx, sy, qx, mask), atol=1e-4)


@pytest.mark.parametrize("shared", ["4-layer", "2-layer-bn"])
def test_fully_masked_unlabelled_equals_support_without_them(shared):
    cfg = small(samples_transformer=10, unlabeled_samples_per_class=1,
                shared_feature_extractor=shared)
    model = HyperTransformer(cfg).eval()
    sx, sy, qx = semi_episode(cfg)
    labelled = sy[0] != cfg.num_labels
    with torch.no_grad():
        masked = model(sx, sy, qx, support_mask=sy != cfg.num_labels)
        without = model(sx[:, labelled], sy[:, labelled], qx)
    torch.testing.assert_close(masked, without, atol=1e-4, rtol=1e-4)


# ---- configuration variants ------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {"layerwise_generator": "separate"},
    {"use_decoder": True, "transformer_skip_last_nonlinearity": True},
    {"lw_weight_allocation": "spatial"},
    {"lw_generate_bias": True, "lw_generate_bn": True, "add_trainable_weights": True,
     "weight_variation_regularization": 0.1, "l2_reg_weight": 1e-3},
    {"cnn_model_name": "3-layer", "stride": 2},
    {"cnn_model_name": "4-layer", "stride": 1, "cnn_activation": "lrelu"},
    {"number_of_trained_cnn_layers": 2},
    {"number_of_trained_cnn_layers": -1},
    {"transformer_activation": "sigmoid", "transformer_nonlinearity": "gelu"},
    {"transformer_nonlinearity": "lrelu", "lw_use_nonlinear_feature": True},
    {"shared_feature_extractor": "none"},
    {"num_layerwise_features": 0},
    {"warmup_steps": 100},
    {"shared_head_weight": 0.5, "shared_head_classes": 30},
    {"label_smoothing": 0.1, "dropout_rate": 0.1, "cnn_dropout_rate": 0.1, "fe_dropout": 0.1,
     "shared_fe_dropout": 0.1},
    {"lw_key_query_dim": 0.5, "lw_value_dim": 4, "lw_inner_dim": 2.0, "heads": 4},
    {"image_channels": 3, "image_size": 20},
])
def test_variants_train(overrides):
    cfg = small(**overrides)
    model = HyperTransformer(cfg)
    sx, sy, qx, qy = episode(cfg)
    classes = torch.randint(0, 30, (2, cfg.num_labels))
    out = model.loss(sx, sy, qx, qy, classes=classes, step=40)
    assert out.logits.shape == (2, cfg.samples_cnn, cfg.num_labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_trained_layers_are_not_generated():
    model = HyperTransformer(small(number_of_trained_cnn_layers=-2))
    assert set(model.generators) == {"conv1", "conv2", "logits"}
    assert [layer.generated for layer in model.conv_layers] == [True, True, False, False]


def test_warmup_schedule():
    heads, main = warmup_weights(0, 300, 3)
    assert heads == [1.0, 0.0, 0.0] and main == 0.0
    heads, main = warmup_weights(150, 300, 3)
    assert heads == [0.0, 0.5, 0.5] and main == 0.0
    heads, main = warmup_weights(250, 300, 3)
    assert heads == pytest.approx([0.0, 0.0, 0.5]) and main == pytest.approx(0.5)
    assert warmup_weights(300, 300, 3) == ([0.0, 0.0, 0.0], 1.0)
    assert warmup_weights(5, 0, 0) == ([], 1.0)


@pytest.mark.parametrize("overrides,message", [
    ({"cnn_model_name": "5-layer"}, "cnn_model_name"),
    ({"lw_weight_allocation": "spatial", "lw_generate_bn": True}, "allocation=output"),
    ({"number_of_trained_cnn_layers": 5}, "number_of_trained_cnn_layers"),
    ({"shared_feature_extractor": "9-layer"}, "shared_feature_extractor"),
    ({"shared_feature_extractor": "none", "num_layerwise_features": 0}, "features"),
    ({"shared_head_weight": 1.0}, "shared_head_classes"),
])
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        HyperTransformer(small(**overrides))


def test_bad_input_shapes_are_refused():
    cfg = small()
    model = HyperTransformer(cfg)
    sx, sy, qx, _ = episode(cfg)
    with pytest.raises(ValueError, match="support_x"):
        model(sx[..., :20, :20], sy, qx)
    with pytest.raises(ValueError, match="disagree"):
        model(sx, sy[:, :3], qx)
