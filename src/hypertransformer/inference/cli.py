"""``hypertransformer generate`` (a CNN from a folder of labelled images) and
``hypertransformer predict`` (classify images with it); docs/use.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hypertransformer.inference.classifier import TUNE_STEPS, load_classifier
from hypertransformer.inference.images import INK_MODES
from hypertransformer.inference.pretrained import FEW_SHOT_PRETRAINED, load_few_shot
from hypertransformer.precision import add_dtype_argument

SAVE_SUFFIXES = (".pt", ".onnx")


def existing_folder(root: str | Path, name: str, hint: str) -> Path:
    """``root`` as a folder, or an error naming it (``name``) with what to give (``hint``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise NotADirectoryError(f"{name} {root} {what}; give {hint}")
    return root


def support_folder(root: str | Path) -> tuple[list[Path], list[str]]:
    """(image files, their labels) of ``root/<class>/<images>``: the class folders in sorted
    order (hidden ones skipped), each with at least one file; every file must be an image."""
    root = existing_folder(root, "support folder",
                           "a folder with one sub-folder of images per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"support folder {root} has no class sub-folders; put each class's "
                         f"images in a sub-folder named after the class")
    files, labels = [], []
    for folder in folders:
        found = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        if not found:
            raise ValueError(f"class folder {folder} is empty; add images of the class or "
                             f"remove the folder")
        files += found
        labels += [folder.name] * len(found)
    return files, labels


def image_files(root: str | Path) -> list[Path]:
    """The files of the folder ``root`` (hidden ones skipped), at least one."""
    root = existing_folder(root, "unlabelled folder", "a folder of images")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"unlabelled folder {root} has no images")
    return files


def _generate(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if out.suffix not in SAVE_SUFFIXES:
        raise ValueError(f"--out {out}: use a .pt (TorchScript) or .onnx file name")
    files, labels = support_folder(args.support)
    unlabeled = None if args.unlabeled is None else image_files(args.unlabeled)
    clf = load_few_shot(args.model, dtype=args.dtype or "auto").fit(
        files, labels, unlabeled=unlabeled, ink=args.ink, frame=args.frame or None,
        tune_steps=args.tune_steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    clf.save(out)
    names = ", ".join(map(str, clf.class_names))
    extra = "" if unlabeled is None else f" and {len(unlabeled)} unlabelled"
    print(f"wrote {out}: {len(clf.class_names)} classes ({names}) from {len(files)} "
          f"images{extra}")
    if out.suffix == ".pt":
        print(f"classify images with: hypertransformer predict --model {out} IMAGES...")
    return 0


def _predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1; got {args.top_k}")
    if Path(args.model).suffix == ".onnx":
        raise ValueError(f"--model {args.model}: predict reads the TorchScript .pt of "
                         f"`hypertransformer generate`; run an .onnx file with onnxruntime")
    clf = load_classifier(args.model)
    proba = clf.predict_proba(args.images, args.ink)
    k = min(args.top_k, proba.shape[1])
    values, indices = proba.topk(k, dim=1)
    results = []
    for path, p, i in zip(args.images, values.tolist(), indices.tolist(), strict=True):
        top = [{"label": clf.class_names[j], "probability": q} for j, q in zip(i, p,
                                                                                 strict=True)]
        results.append({"path": path, "label": top[0]["label"],
                        "probability": top[0]["probability"], "top_k": top})
        if not args.json:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in top)
            print(f"{path}: {top[0]['label']} ({top[0]['probability']:.3f}); top {k}: {others}")
    if args.json:
        print(json.dumps(results))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ink_help = ("ink polarity of Omniglot/glyphs-style images: light (on dark), dark (on "
                "light, inverted) or auto (per image, from its border)")
    p = sub.add_parser("generate", help="a CNN classifier from a folder of labelled images",
                       description="Writes the CNN a trained HyperTransformer generates from "
                                   "the images of DIR (one sub-folder per class, named after "
                                   "the class).")
    p.add_argument("--model", required=True,
                   help=f"a pretrained name ({', '.join(FEW_SHOT_PRETRAINED)}), a log dir of "
                        f"`hypertransformer train` or a checkpoint file")
    p.add_argument("--support", required=True, metavar="DIR",
                   help="DIR/<class>/<images>: the labelled images")
    p.add_argument("--unlabeled", metavar="DIR2", default=None,
                   help="a folder of unlabelled images of the same classes, for a "
                        "semi-supervised model (omniglot_1shot_semi)")
    p.add_argument("--out", required=True,
                   help="the classifier: .pt (TorchScript, for predict) or .onnx")
    p.add_argument("--ink", choices=INK_MODES, default="auto", help=ink_help)
    p.add_argument("--frame", action="store_true",
                   help="scale and centre each drawing on its ink, support and later queries "
                        "(drawings small or off-centre in their picture; docs/use.md)")
    p.add_argument("--tune-steps", type=int, default=None,
                   help=f"steps of fine-tuning the generated CNN on the support images "
                        f"(default: {TUNE_STEPS} when a class has two or more images, else 0; "
                        f"0: the generated weights as they are)")
    add_dtype_argument(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("predict", help="classify images with a generated CNN",
                       description="Classifies images with the .pt file of `hypertransformer "
                                   "generate`.")
    p.add_argument("--model", required=True, help="the .pt file of `hypertransformer generate`")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image (3)")
    p.add_argument("--json", action="store_true",
                   help="the last line is a JSON list: path, label, probability, top_k per image")
    p.add_argument("--ink", choices=INK_MODES, default=None,
                   help=ink_help + " (default: as given to generate)")
    p.set_defaults(func=_predict)
