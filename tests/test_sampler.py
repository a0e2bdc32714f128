"""Episode sampler (SPEC §2.3): counts, labels, masks, determinism, layouts and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypertransformer.config import Config
from hypertransformer.data.augment import AugmentationConfig
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.sampler import EpisodeBatch, EpisodeSampler


def id_dataset(counts: list[int], name: str = "ids") -> ClassDataset:
    """2x2 images whose pixels spell (class, sample) so that every image can be identified."""
    classes = []
    for c, n in enumerate(counts):
        images = np.zeros((n, 2, 2, 1), np.uint8)
        images[:, 0, 0, 0] = c
        images[:, 0, 1, 0] = np.arange(n)
        classes.append(images)
    return ClassDataset(name, classes, [f"class{c}" for c in range(len(counts))])


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(class, sample) of every image of a [T, M, 1, 2, 2] normalised batch."""
    pixels = ((x + 1) * 128).round().long().numpy()
    return pixels[:, :, 0, 0, 0], pixels[:, :, 0, 0, 1]


def sampler(ds: ClassDataset, **kw) -> EpisodeSampler:
    args = dict(num_labels=3, support_size=6, query_size=9, seed=0) | kw
    return EpisodeSampler(ds, **args)


def test_shapes_dtypes_and_normalisation():
    ds = id_dataset([8] * 10)
    b = sampler(ds, num_labels=5, support_size=10, query_size=15).sample(4)
    assert b.support_x.shape == (4, 10, 1, 2, 2) and b.support_x.dtype == torch.float32
    assert b.query_x.shape == (4, 15, 1, 2, 2) and b.query_x.dtype == torch.float32
    assert b.support_y.shape == (4, 10) and b.support_y.dtype == torch.int64
    assert b.query_y.shape == (4, 15) and b.query_y.dtype == torch.int64
    assert b.support_mask.shape == (4, 10) and b.support_mask.dtype == torch.bool
    assert b.classes.shape == (4, 5) and b.classes.dtype == torch.int64
    # The unused bottom row is pixel 0 -> -1; the identity pixels are exactly x/128 - 1.
    assert torch.all(b.support_x[:, :, :, 1, :] == -1.0)
    cls, sample = decode(b.support_x)
    expected = torch.from_numpy(np.stack([cls, sample], -1)).float() / 128 - 1
    assert torch.equal(b.support_x[:, :, 0, 0, :], expected)
    assert b.support_mask.all()


def test_labels_name_the_episode_classes():
    ds = id_dataset([8] * 10)
    b = sampler(ds, num_labels=5, support_size=10, query_size=15).sample(20)
    for t in range(20):
        assert len(set(b.classes[t].tolist())) == 5
        assert all(0 <= c < 10 for c in b.classes[t].tolist())
        for x, y in [(b.support_x, b.support_y), (b.query_x, b.query_y)]:
            cls, _ = decode(x)
            assert (b.classes[t][y[t]].numpy() == cls[t]).all()
    # Over many episodes every class of the split appears.
    assert set(b.classes.flatten().tolist()) == set(range(10))


def test_balanced_counts_with_remainder_and_no_repeats_within_a_batch():
    ds = id_dataset([10] * 6)
    b = sampler(ds, num_labels=3, support_size=7, query_size=8).sample(30)
    for t in range(30):
        assert torch.bincount(b.support_y[t], minlength=3).tolist() == [3, 2, 2]
        assert torch.bincount(b.query_y[t], minlength=3).tolist() == [3, 3, 2]
        for x in (b.support_x, b.query_x):
            cls, sample = decode(x)
            pairs = list(zip(cls[t].tolist(), sample[t].tolist(), strict=True))
            assert len(set(pairs)) == len(pairs)
    # The batch is permuted: the first support slot does not always hold label 0.
    assert len(set(b.support_y[:, 0].tolist())) == 3


def test_semi_supervised_labels():
    ds = id_dataset([10] * 8)
    # N = 4, K = 2, u = 1 -> S = 12.
    b = sampler(ds, num_labels=4, support_size=12, query_size=8, unlabeled_per_class=1).sample(25)
    cls, _ = decode(b.support_x)
    for t in range(25):
        y = b.support_y[t]
        assert torch.bincount(y, minlength=5).tolist() == [2, 2, 2, 2, 4]
        # One unlabelled image from each of the episode's classes.
        assert sorted(cls[t][(y == 4).numpy()].tolist()) == sorted(b.classes[t].tolist())
    assert b.query_y.max() == 3 and b.query_y.min() == 0
    assert b.support_mask.all()


@pytest.mark.parametrize("remove_unlabeled", [True, False])
def test_random_removal_only_hits_its_own_kind(remove_unlabeled: bool):
    ds = id_dataset([10] * 8)
    kw = dict(num_labels=4, support_size=16, query_size=4, unlabeled_per_class=2)
    kw["max_prob_remove_unlabeled" if remove_unlabeled else "max_prob_remove_labeled"] = 1.0
    b = sampler(ds, **kw).sample(400)
    unlabeled = b.support_y == 4
    target = unlabeled if remove_unlabeled else ~unlabeled
    assert b.support_mask[~target].all()
    removed = (~b.support_mask[target]).float().mean().item()
    # p ~ U(0, 1) per episode: half the targeted samples removed on average.
    assert 0.45 < removed < 0.55
    # p is drawn once per episode, so the removal rate varies between episodes.
    per_episode = (~b.support_mask & target).sum(1)
    assert per_episode.min() == 0 and per_episode.max() == target[0].sum()


def test_same_seed_same_stream_and_state_dict_resume():
    ds = id_dataset([7, 9, 8, 10, 7, 9])
    kw = dict(unlabeled_per_class=1, max_prob_remove_unlabeled=0.5, max_prob_remove_labeled=0.3)
    a, b = sampler(ds, seed=3, **kw), sampler(ds, seed=3, **kw)
    for _ in range(3):
        x, y = a.sample(5, query_batches=2), b.sample(5, query_batches=2)
        for f in ("support_x", "support_y", "support_mask", "query_x", "query_y", "classes"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f
    other = sampler(ds, seed=4, **kw).sample(5)
    assert not torch.equal(other.support_x, sampler(ds, seed=3, **kw).sample(5).support_x)

    state = a.state_dict()
    expected = a.sample(5)
    resumed = sampler(ds, seed=99, **kw)
    resumed.load_state_dict(state)
    got = resumed.sample(5)
    assert torch.equal(got.support_x, expected.support_x)
    assert torch.equal(got.query_y, expected.query_y)
    assert torch.equal(got.support_mask, expected.support_mask)


def test_disjoint_support_and_query_never_share_an_image():
    # Class size 5 = 2 support + 3 query: every image of each episode class is used once.
    ds = id_dataset([5] * 6)
    s = sampler(ds, num_labels=3, support_size=6, query_size=9, disjoint=True)
    b = s.sample(30)
    for t in range(30):
        sup = set(zip(*[a[t].tolist() for a in decode(b.support_x)], strict=True))
        qry = set(zip(*[a[t].tolist() for a in decode(b.query_x)], strict=True))
        assert not sup & qry
        assert len(sup | qry) == 15
    # Several query batches: each is disjoint from the support.
    ds = id_dataset([9] * 6)
    b = sampler(ds, num_labels=3, support_size=6, query_size=9, disjoint=True).sample(
        20, query_batches=3)
    for t in range(20):
        sup = set(zip(*[a[t].tolist() for a in decode(b.support_x)], strict=True))
        for q in range(3):
            chunk = b.query_x[:, q * 9:(q + 1) * 9]
            qry = set(zip(*[a[t].tolist() for a in decode(chunk)], strict=True))
            assert not sup & qry


def test_support_and_query_are_drawn_independently_by_default():
    # 3 images per class, 2 support and 3 query per class: the query uses every image, so it
    # always repeats the support images (allowed by default, impossible when disjoint).
    ds = id_dataset([3] * 4)
    b = sampler(ds, num_labels=2, support_size=4, query_size=6).sample(10)
    for t in range(10):
        sup = set(zip(*[a[t].tolist() for a in decode(b.support_x)], strict=True))
        qry = set(zip(*[a[t].tolist() for a in decode(b.query_x)], strict=True))
        assert sup <= qry
    # With room to spare, the overlap varies (independent draws).
    ds = id_dataset([6] * 4)
    b = sampler(ds, num_labels=2, support_size=4, query_size=4).sample(100)
    overlaps = set()
    for t in range(100):
        sup = set(zip(*[a[t].tolist() for a in decode(b.support_x)], strict=True))
        qry = set(zip(*[a[t].tolist() for a in decode(b.query_x)], strict=True))
        overlaps.add(len(sup & qry))
    assert overlaps == {0, 1, 2, 3, 4}


def test_query_batches_layout():
    ds = id_dataset([12] * 5)
    s = sampler(ds, num_labels=3, support_size=3, query_size=6)
    b = s.sample(8, query_batches=4)
    assert b.support_x.shape == (8, 3, 1, 2, 2)
    assert b.query_x.shape == (8, 24, 1, 2, 2) and b.query_y.shape == (8, 24)
    cls, sample = decode(b.query_x)
    for t in range(8):
        chunks = []
        for q in range(4):
            y = b.query_y[t, q * 6:(q + 1) * 6]
            assert torch.bincount(y, minlength=3).tolist() == [2, 2, 2]
            assert (b.classes[t][y].numpy() == cls[t, q * 6:(q + 1) * 6]).all()
            chunks.append(sorted(zip(cls[t, q * 6:(q + 1) * 6], sample[t, q * 6:(q + 1) * 6],
                                     strict=True)))
        assert len({tuple(c) for c in chunks}) > 1  # independent batches


def test_unbalanced_batches_split_one_draw():
    ds = id_dataset([10] * 6)
    s = sampler(ds, num_labels=3, support_size=6, query_size=9, balanced=False)
    b = s.sample(50)
    support_counts = set()
    for t in range(50):
        counts = torch.bincount(b.support_y[t], minlength=3) + torch.bincount(b.query_y[t],
                                                                               minlength=3)
        assert counts.tolist() == [5, 5, 5]
        support_counts.add(tuple(torch.bincount(b.support_y[t], minlength=3).tolist()))
        sup = set(zip(*[a[t].tolist() for a in decode(b.support_x)], strict=True))
        qry = set(zip(*[a[t].tolist() for a in decode(b.query_x)], strict=True))
        assert not sup & qry
    assert len(support_counts) > 1  # the support is not balanced
    b = s.sample(4, query_batches=3)
    assert b.query_x.shape == (4, 27, 1, 2, 2)


def test_rot90_per_label_augmentation_is_shared_by_support_and_query():
    # 4x4 images: a bright marker in the top-left corner (rot90 moves it to the corner that tells
    # k) and the class id in the rotation-invariant centre 2x2 block.
    classes = []
    for c in range(8):
        images = np.zeros((6, 4, 4, 1), np.uint8)
        images[:, 0, 0] = 255
        images[:, 1:3, 1:3] = c
        classes.append(images)
    ds = ClassDataset("corner", classes, [str(i) for i in range(8)])
    cfg = Config(per_label_augmentation=True, random_rotate_by_90=True, smooth_probability=0.0,
                 contrast_probability=0.0)
    s = sampler(ds, num_labels=4, support_size=8, query_size=8, unlabeled_per_class=1,
                augmentation=AugmentationConfig.from_config(cfg, train=True))
    b = s.sample(40)
    x = torch.cat([b.support_x, b.query_x], 1)
    pixels = ((x[:, :, 0] + 1) * 128).round().long()  # [T, M, 4, 4]
    corner = pixels.flatten(2).argmax(2)  # 0, 3, 12 or 15
    cls = pixels[:, :, 1, 1]
    seen = set()
    for t in range(40):
        for label in range(4):
            # Every image of the episode class, labelled or not, support or query.
            mine = cls[t] == b.classes[t, label]
            assert mine.sum() == 4
            corners = set(corner[t][mine].tolist())
            assert len(corners) == 1
            seen |= corners
    assert seen == {0, 3, 12, 15}


def test_from_config_maps_the_original_flags():
    ds = id_dataset([10] * 8)
    cfg = Config(num_labels=4, samples_transformer=12, samples_cnn=8,
                 unlabeled_samples_per_class=1, balanced_batches=True,
                 max_prob_remove_labeled=0.25, max_prob_remove_unlabeled=0.5, image_size=2,
                 random_rotate_by_90=True)
    train = EpisodeSampler.from_config(ds, cfg, train=True, seed=1)
    assert (train.num_labels, train.support_size, train.query_size) == (4, 12, 8)
    assert train.unlabeled_per_class == 1 and train.balanced and not train.disjoint
    assert (train.max_prob_remove_labeled, train.max_prob_remove_unlabeled) == (0.25, 0.5)
    assert train.augmentation == AugmentationConfig.from_config(cfg, train=True)
    assert train.image_size == 2
    test = EpisodeSampler.from_config(ds, cfg, train=False, seed=1)
    assert (test.max_prob_remove_labeled, test.max_prob_remove_unlabeled) == (0.0, 0.0)
    assert not test.augmentation.random_rotate_by_90  # test_random_rotate_by_90 is False
    assert test.sample(3).support_mask.all()


def test_image_size_resizes_and_batch_moves():
    ds = ClassDataset("flat", [np.full((4, 4, 4, 1), 64, np.uint8)] * 3, ["a", "b", "c"])
    b = sampler(ds, num_labels=2, support_size=2, query_size=2, image_size=8).sample(2)
    assert b.support_x.shape == (2, 2, 1, 8, 8) and b.query_x.shape == (2, 2, 1, 8, 8)
    assert torch.allclose(b.support_x, torch.full_like(b.support_x, 64 / 128 - 1))
    moved = b.to("cpu")
    assert isinstance(moved, EpisodeBatch) and torch.equal(moved.query_y, b.query_y)


@pytest.mark.parametrize("kw, message", [
    (dict(num_labels=0), "num_labels must be at least 1"),
    (dict(support_size=0), "support_size (samples_transformer) must be at least 1"),
    (dict(query_size=-1), "query_size (samples_cnn) must be at least 1"),
    (dict(unlabeled_per_class=-1), "unlabeled_per_class"),
    (dict(max_prob_remove_labeled=1.5), "max_prob_remove_labeled must be in [0, 1]"),
    (dict(num_labels=7), "num_labels=7 but the split 'ids' has only 6 classes"),
    # S = 10 is not 3·(K + u) with u = 1.
    (dict(support_size=10, unlabeled_per_class=1), "num_labels·(shots + unlabeled_per_class)"),
    # S = 6 = 3·(1 + 1) leaves K = 1 (fine) but 3·(0 + 2) leaves no labelled shot.
    (dict(support_size=6, unlabeled_per_class=2), "with shots >= 1"),
    # Class 4 holds 3 images; the support needs 4 per class.
    (dict(support_size=12), "the support needs up to 4 images per class (12 over 3 labels), "
                            "but class 4 ('class4') of 'ids' holds only 3 images"),
    (dict(query_size=10), "the query needs up to 4 images per class (10 over 3 labels), "
                          "but class 4 ('class4') of 'ids' holds only 3 images"),
    (dict(support_size=3, query_size=9, disjoint=True),
     "disjoint support and query need 1 + 3 images per class, but class 4 ('class4')"),
    (dict(support_size=3, query_size=7, balanced=False),
     "need up to 4 images per class of 3 labels, but class 4 ('class4')"),
    (dict(balanced=False, unlabeled_per_class=1), "unlabelled support samples need balanced"),
    (dict(balanced=False, disjoint=True), "disjoint_support_query needs balanced_batches=True"),
])
def test_impossible_requests_fail_at_construction(kw, message):
    ds = id_dataset([8, 8, 8, 8, 3, 8])
    with pytest.raises(DatasetError) as info:
        sampler(ds, **kw)
    assert message in str(info.value)


def test_limits_that_fit_exactly_are_accepted():
    ds = id_dataset([8, 8, 8, 8, 3, 8])
    sampler(ds, num_labels=6, support_size=9, query_size=9).sample(2)  # 2 per class, 3 fits
    sampler(ds, num_labels=3, support_size=3, query_size=6, disjoint=True).sample(2)  # 1 + 2
    sampler(ds, num_labels=3, support_size=3, query_size=6, balanced=False).sample(2)  # 3
    with pytest.raises(DatasetError, match="num_episodes and query_batches must be at least 1"):
        sampler(ds).sample(0)
