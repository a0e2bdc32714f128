"""Cross-domain benchmark (issue 25): the shipped models on drawings Omniglot training never saw.

Domains (each with a validation part, for choices, and a test part, for claims):

* ``glyphs``: the built-in rendered glyphs of other scripts (val: ``glyphs:val``, test:
  ``glyphs:test``; varied weight, size and position);
* ``omniglot-thick`` / ``-thin`` / ``-shifted`` / ``-scaled``: Omniglot's validation (val:
  classes 1150-1199) or test classes (test: 1200-1622) of the presets' split, redrawn: strokes
  dilated (3×3) or thinned (eroded at twice the resolution), moved by up to ±4 pixels, or shrunk
  to 60-80 % around the centre;
* ``digits``: scikit-learn's handwritten digits (UCI, 8×8, shipped inside the package),
  enlarged to 28×28; val: the first half of each class's samples, test: the second half.

``--domains omniglot`` adds Omniglot's validation or test classes as drawn (in-domain: the
reference the others are read against; not among the defaults).

Every task: ``--ways`` classes, ``shots`` labelled images and ``--queries`` queries per class,
the same tasks for every method.  Methods: each ``--models`` HT through the public API
(``hypertransformer.load(name).fit(images, labels).predict(queries)``; with ``--untuned`` also
``fit(..., tune_steps=0)``, with ``--framed`` also ``fit(..., frame=True)``); raw-pixel 1-NN and
nearest centroid on the same preprocessed pixels, and nearest centroid on pixels framed on their
ink (``data.framing``, what a ``frame_ink`` model sees); the ProtoNet of the same 8-channel CNN
(``constpn_omniglot``'s embedding, nearest centroid).  Accuracy ± 95 % interval over tasks.

    python benchmarks/cross_domain.py --data-dir ../shared/data/omniglot --part val|test \\
        [--tasks 200] [--ways 10] [--queries 10] [--shots 1 5 10] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import hypertransformer
from hypertransformer.data.registry import load_dataset
from hypertransformer.inference.images import Preprocessing

Images = list[np.ndarray]  # uint8 [28, 28] drawings, light ink on dark
Method = Callable[[Images, list[int], Images], np.ndarray]  # -> predicted labels of queries
OMNIGLOT = {"val": "omniglot:1150-1199", "test": "omniglot:1200-1622"}
PIXELS = Preprocessing(28, 1, True)


def _as_float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float()[:, None]  # [n, 1, H, W]


def thick(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return F.max_pool2d(_as_float(x), 3, 1, 1)[:, 0].numpy().astype(np.uint8)


def thin(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    big = F.interpolate(_as_float(x), scale_factor=2, mode="bilinear", align_corners=False)
    small = F.avg_pool2d(-F.max_pool2d(-big, 3, 1, 1), 2)[:, 0]
    peak = small.flatten(1).max(1).values.clamp(min=1)[:, None, None]  # full contrast again
    return (small * 255 / peak).round().clamp(0, 255).numpy().astype(np.uint8)


def shifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(x)
    for i, image in enumerate(x):
        dy, dx = rng.integers(-4, 5, size=2)
        padded = np.pad(image, 4)
        out[i] = padded[4 - dy:4 - dy + 28, 4 - dx:4 - dx + 28]
    return out


def scaled(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(x)
    for i, image in enumerate(x):
        size = int(round(28 * rng.uniform(0.6, 0.8)))
        small = F.interpolate(_as_float(image[None]), size=(size, size), mode="area")
        top = (28 - size) // 2
        out[i, top:top + size, top:top + size] = small[0, 0].round().numpy().astype(np.uint8)
    return out


REDRAW = {"thick": thick, "thin": thin, "shifted": shifted, "scaled": scaled}


def digits(part: str) -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images * (255 / 16)).float()[:, None]
    big = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    big = F.pad(big, (4, 4, 4, 4))[:, 0].round().clamp(0, 255).numpy().astype(np.uint8)
    classes = []
    for k in range(10):
        members = big[data.target == k]
        half = len(members) // 2
        classes.append(members[:half] if part == "val" else members[half:])
    return classes


def domain(name: str, part: str, data_dir: str) -> list[np.ndarray]:
    """The classes of a domain's part: uint8 [n, 28, 28] each, light ink on dark."""
    if name == "glyphs":
        return [c[..., 0] for c in load_dataset(f"glyphs:{part}").classes]
    if name == "digits":
        return digits(part)
    rng = np.random.default_rng(0)
    classes = load_dataset(OMNIGLOT[part], data_dir=data_dir, shuffle_labels_seed=2022).classes
    if name == "omniglot":
        return [c[..., 0] for c in classes]
    return [REDRAW[name.removeprefix("omniglot-")](c[..., 0], rng) for c in classes]


DOMAINS = ["glyphs", *(f"omniglot-{v}" for v in REDRAW), "digits"]
# Omniglot's val or test classes as drawn: in-domain, the reference the others are read against
CHOICES = ["omniglot", *DOMAINS]


def tasks(classes: list[np.ndarray], count: int, ways: int, shots: int, queries: int,
          seed: int) -> list[tuple[Images, list[int], Images, list[int]]]:
    """``count`` tasks: (support, labels, queries, labels), classes and samples drawn without
    replacement within a task."""
    rng = np.random.default_rng(seed)
    usable = [c for c in classes if len(c) >= shots + queries]
    if len(usable) < ways:
        raise ValueError(f"{len(usable)} classes hold {shots + queries} samples; {ways} needed")
    out = []
    for _ in range(count):
        s_x, s_y, q_x, q_y = [], [], [], []
        for label, c in enumerate(rng.choice(len(usable), ways, replace=False)):
            pick = rng.choice(len(usable[c]), shots + queries, replace=False)
            s_x += list(usable[c][pick[:shots]])
            q_x += list(usable[c][pick[shots:]])
            s_y += [label] * shots
            q_y += [label] * queries
        out.append((s_x, s_y, q_x, q_y))
    return out


def nearest(support: torch.Tensor, labels: list[int], queries: torch.Tensor,
            centroid: bool) -> np.ndarray:
    """Labels of the nearest support vector (1-NN) or class mean (nearest centroid)."""
    y = torch.tensor(labels)
    if centroid:
        ways = int(y.max()) + 1
        support = torch.stack([support[y == k].mean(0) for k in range(ways)])
        y = torch.arange(ways)
    return y[torch.cdist(queries, support).argmin(1)].numpy()


def pixels(centroid: bool, framed: bool = False) -> Method:
    """Raw pixels, or pixels framed on their ink (data.framing) as a ``frame_ink`` model
    sees them."""
    prep = Preprocessing(28, 1, True, frame_ink=framed)

    def method(s: Images, y: list[int], q: Images) -> np.ndarray:
        return nearest(prep(s, "light").flatten(1), y, prep(q, "light").flatten(1), centroid)
    return method


def protonet(name: str = "constpn_omniglot") -> Method:
    net = hypertransformer.load(name, dtype="fp32").model

    @torch.no_grad()
    def method(s: Images, y: list[int], q: Images) -> np.ndarray:
        emb_s = net.embed(PIXELS(s, "light")[None])[0]
        emb_q = net.embed(PIXELS(q, "light")[None])[0]
        return nearest(emb_s, y, emb_q, centroid=True)
    return method


def hypertransformer_fit(name: str, frame: bool | None = None,
                         tune_steps: int | None = None) -> Method:
    ht = hypertransformer.load(name, dtype="fp32")

    def method(s: Images, y: list[int], q: Images) -> np.ndarray:
        clf = ht.fit(s, y, ink="light", frame=frame, tune_steps=tune_steps)
        return np.asarray(clf.predict(q, "light"))
    return method


def methods(models: list[str], baselines: bool = True, framed: bool = False,
            untuned: bool = False) -> dict[str, Method]:
    """The HTs ``models`` (names or checkpoints), with ``untuned`` each also through
    ``fit(..., tune_steps=0)``, with ``framed`` through ``fit(..., frame=True)``, and with
    ``baselines`` the ProtoNet and the pixel classifiers."""
    ms = {}
    for m in models:
        ms[f"HT `{m}`"] = hypertransformer_fit(m)
        if untuned:
            ms[f"HT `{m}`, `fit(tune_steps=0)`"] = hypertransformer_fit(m, tune_steps=0)
        if framed:
            ms[f"HT `{m}`, `fit(frame=True)`"] = hypertransformer_fit(m, frame=True)
    if baselines:
        ms |= {"ProtoNet `constpn_omniglot`": protonet(), "pixels, 1-NN": pixels(False),
               "pixels, nearest centroid": pixels(True),
               "framed pixels, nearest centroid": pixels(True, framed=True)}
    return ms


def run(part: str, data_dir: str, count: int, ways: int, queries: int, shots: list[int],
        models: list[str], domains: list[str], baselines: bool = True,
        framed: bool = False, untuned: bool = False) -> str:
    """The markdown table: a row per domain and method, a column per shot count."""
    ms = methods(models, baselines, framed, untuned)
    head = "| domain | method | " + " | ".join(f"{k} shot{'s' * (k > 1)}" for k in shots) + " |"
    lines = [head, "|" + "---|" * (len(shots) + 2)]
    for name in domains:
        classes = domain(name, part, data_dir)
        cells: dict[str, list[str]] = {m: [] for m in ms}
        for k in shots:
            drawn = tasks(classes, count, ways, k, queries, seed=k)
            for m, method in ms.items():
                acc = np.array([(method(s, sy, q) == np.asarray(qy)).mean()
                                for s, sy, q, qy in drawn])
                half = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc)) if len(acc) > 1 else 0.0
                cells[m].append(f"{100 * acc.mean():.1f} ± {100 * half:.1f}")
        lines += [f"| {name} | {m} | " + " | ".join(c) + " |" for m, c in cells.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/omniglot")
    p.add_argument("--part", choices=("val", "test"), required=True)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--ways", type=int, default=10)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--models", nargs="+", default=["omniglot_1shot", "omniglot_5shot"])
    p.add_argument("--domains", nargs="+", choices=CHOICES, default=DOMAINS)
    p.add_argument("--framed", action="store_true",
                   help="each model also through fit(..., frame=True)")
    p.add_argument("--untuned", action="store_true",
                   help="each model also through fit(..., tune_steps=0): the generated CNN "
                        "without fine-tuning on the support set")
    p.add_argument("--out", default=None, help="also write the table to this file")
    a = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    table = run(a.part, a.data_dir, a.tasks, a.ways, a.queries, a.shots, a.models, a.domains,
                framed=a.framed, untuned=a.untuned)
    text = (f"Cross-domain benchmark, {a.part} part: {a.tasks} tasks of {a.ways}-way, "
            f"{a.queries} queries per class, accuracy % ± 95 % CI over tasks "
            f"(`python benchmarks/cross_domain.py --part {a.part} --tasks {a.tasks} --ways "
            f"{a.ways} --queries {a.queries} --models {' '.join(a.models)}"
            f"{' --framed' if a.framed else ''}{' --untuned' if a.untuned else ''}`; "
            f"{time.perf_counter() - start:.0f} s)"
            f"\n\n{table}")
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
