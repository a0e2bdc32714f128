"""``hypertransformer data info|show|download|prepare``: inspect a dataset split, look at sampled
episodes, fetch Omniglot, decode miniImageNet/tieredImageNet into their cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from hypertransformer.errors import require_directory, require_positive

if TYPE_CHECKING:
    from hypertransformer.data.base import ClassDataset
    from hypertransformer.data.sampler import EpisodeBatch


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect datasets and sampled episodes",
                                 description="Inspect datasets and sampled episodes.")
    sub = data.add_subparsers(dest="data_command", required=True)

    def add_dataset_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("dataset", metavar="DATASET[:RANGES]",
                       help="e.g. omniglot, omniglot:1200-1622, glyphs:train, or the name of a "
                            "NumPy cache in --data-numpy-dir")
        p.add_argument("--data-dir", default=None, help="folder holding the raw dataset")
        p.add_argument("--data-numpy-dir", default="",
                       help="folder of NumPy caches (<name>.npy or <name>/)")
        p.add_argument("--image-size", type=int, default=None,
                       help="images are resized to this side at load (default 84 for "
                            "miniimagenet/tieredimagenet, else 28)")
        p.add_argument("--channels", type=int, default=None, choices=(1, 3),
                       help="1 = gray, 3 = RGB (default 3 for miniimagenet/tieredimagenet, "
                            "else 1)")
        p.add_argument("--shuffle-labels-seed", type=int, default=0,
                       help="> 0 permutes class identities before RANGES apply (SPEC §2.2)")

    info = sub.add_parser("info", help="classes, samples per class and image shape")
    add_dataset_args(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_info)

    show = sub.add_parser("show", help="render a few sampled episodes to a PNG")
    add_dataset_args(show)
    show.add_argument("--ways", type=int, default=5, help="classes per episode (default 5)")
    show.add_argument("--shots", type=int, default=1,
                      help="support images per class (default 1)")
    show.add_argument("--queries", type=int, default=5,
                      help="query images per class (default 5)")
    show.add_argument("--episodes", type=int, default=2, help="episodes to draw (default 2)")
    show.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    show.add_argument("--out", default="episodes.png", help="output PNG (default episodes.png)")
    show.set_defaults(func=_show)

    download = sub.add_parser("download", help="fetch the official Omniglot zips, checked")
    download.add_argument("dataset", choices=("omniglot",))
    download.add_argument("--dest", required=True, help="folder to write the zips into")
    download.add_argument("--url", default=None,
                          help="base URL of the two zips (default: the official repository)")
    download.set_defaults(func=_download)

    prepare = sub.add_parser(
        "prepare", help="decode miniImageNet/tieredImageNet once into the memory-mapped cache",
        description="Decode the dataset's files once into the uint8 cache that every later "
                    "run memory-maps (docs/data.md).")
    prepare.add_argument("dataset", choices=("miniimagenet", "tieredimagenet"))
    prepare.add_argument("--from", dest="source", required=True, metavar="PATH",
                         help="the folder with the dataset's files (what later runs get as "
                              "--data-dir / --data_dir)")
    prepare.add_argument("--dest", default=None,
                         help="cache folder (default $HT_CACHE_DIR, else "
                              "~/.cache/hypertransformer); later runs need HT_CACHE_DIR=DEST")
    prepare.add_argument("--image-size", type=int, default=84,
                         help="side of the cached images (default 84, the presets' size)")
    prepare.add_argument("--channels", type=int, default=3, choices=(1, 3),
                         help="1 = gray, 3 = RGB (default 3)")
    prepare.set_defaults(func=_prepare)


def _download(args: argparse.Namespace) -> int:
    from hypertransformer.data.download import OFFICIAL_URL, download_omniglot

    require_directory(args.dest, "--dest")
    path = download_omniglot(args.dest, base_url=args.url or OFFICIAL_URL)
    print(f"Omniglot zips checked and ready in {path}; use --data-dir {path}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from hypertransformer.data.imagenet import prepare

    if args.dest is not None:
        require_directory(args.dest, "--dest")
        Path(args.dest).mkdir(parents=True, exist_ok=True)
    ds, npy = prepare(args.dataset, args.source, image_size=args.image_size,
                      channels=args.channels, cache_root=Path(args.dest) if args.dest else None)
    counts = ds.samples_per_class
    print(f"{args.dataset}: {ds.num_classes} classes, {sum(counts)} images of "
          f"{'x'.join(map(str, ds.image_shape))} in {npy} ({npy.stat().st_size / 1e9:.2f} GB)")
    hint = f"HT_CACHE_DIR={args.dest} " if args.dest else ""
    print(f"later runs memory-map it: {hint}... --data-dir {args.source}")
    return 0


def _load(args: argparse.Namespace) -> ClassDataset:
    from hypertransformer.data.registry import default_image_args, load_dataset

    size, channels = default_image_args(args.dataset)
    return load_dataset(args.dataset, data_dir=args.data_dir, data_numpy_dir=args.data_numpy_dir,
                        image_size=size if args.image_size is None else args.image_size,
                        channels=channels if args.channels is None else args.channels,
                        shuffle_labels_seed=args.shuffle_labels_seed)


def _info(args: argparse.Namespace) -> int:
    from hypertransformer.data.registry import dataset_info

    info = dataset_info(_load(args))
    if args.json:
        print(json.dumps(info))
    else:
        counts = info["samples_per_class"]
        per_class = (str(counts["min"]) if counts["min"] == counts["max"]
                     else f"{counts['min']}..{counts['max']}")
        print(f"{info['name']}: {info['num_classes']} classes, {per_class} images per class "
              f"({counts['total']} in all), image {'x'.join(map(str, info['image_shape']))} "
              f"(H x W x C)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from hypertransformer.data.sampler import EpisodeSampler

    require_positive(ways=args.ways, shots=args.shots, queries=args.queries,
                     episodes=args.episodes)
    ds = _load(args)
    sampler = EpisodeSampler(ds, num_labels=args.ways, support_size=args.ways * args.shots,
                             query_size=args.ways * args.queries, seed=args.seed)
    out = render_episodes(sampler.sample(args.episodes), Path(args.out),
                          title=f"{ds.name}: {args.ways}-way {args.shots}-shot")
    print(out)
    return 0


def render_episodes(batch: EpisodeBatch, out: Path, title: str) -> Path:
    """A PNG grid: per episode, one column per label, its support rows above its query rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, n = batch.classes.shape
    shots, queries = batch.support_y.shape[1] // n, batch.query_y.shape[1] // n
    rows = shots + queries
    fig, axes = plt.subplots(t * rows, n, figsize=(1.1 * n + 0.6, 1.15 * t * rows + 0.5),
                             squeeze=False)
    for e in range(t):
        for part, x, y, k, offset in [("S", batch.support_x, batch.support_y, shots, 0),
                                      ("Q", batch.query_x, batch.query_y, queries, shots)]:
            order = y[e].argsort(stable=True)  # label-major: column = label, row = image
            for j, index in enumerate(order.tolist()):
                label, r = j // k, j % k
                ax = axes[e * rows + offset + r, label]
                img = ((x[e, index] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                name = f" c{int(batch.classes[e, label])}" if part == "S" else ""
                ax.set_title(f"{part} {int(y[e, index])}{name}", fontsize=7, pad=2,
                             color="tab:blue" if part == "S" else "black")
                if label == 0:
                    ax.set_ylabel(f"ep {e} {'support' if part == 'S' else 'query'}",
                                  fontsize=7)
    fig.suptitle(f"{title} (S = support, Q = query; label, split class c#)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
