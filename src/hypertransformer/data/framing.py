"""Ink framing (ours, issue 25): every drawing scaled and centred on its ink, as Omniglot's
characters sit in their frame.

A drawing's ink box (the rows and columns holding a pixel brighter than ``INK_THRESHOLD`` of
its brightest) is centred in the image and scaled so that its longer side fills
``FRAME_FILL`` of the image side: 18 of 28 pixels, the median of Omniglot's training
characters at 28 pixels (10th-90th percentile 13-23).  The image is resampled bilinearly at
``UPSAMPLE`` times its resolution and averaged back down, so shrinking is antialiased.  Blank
images are returned as they are.  Input and output: uint8 ``[N, H, W, C]``, light ink on a
dark background (the loaders' and :class:`inference.images.Preprocessing`'s polarity).

A model trained with ``frame_ink`` (config) sees framed training and evaluation classes
(:func:`data.registry.load_split`), and its :class:`Preprocessing` frames a user's images
the same way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FRAME_FILL = 18 / 28
INK_THRESHOLD = 0.25
UPSAMPLE = 4


def frame_ink(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` drawings, each scaled and centred on its ink box."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"frame_ink takes uint8 [N, H, W, C] images; got {images.dtype} "
                         f"{list(images.shape)}")
    n, h, w, c = images.shape
    if n == 0:
        return images.copy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    gray = x.mean(1)  # [N, H, W]
    peak = gray.flatten(1).amax(1)
    ink = gray > INK_THRESHOLD * peak[:, None, None]
    blank = peak == 0

    def extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First and one-past-last index where ``mask`` [N, L] holds."""
        idx = torch.arange(mask.shape[1]).expand_as(mask)
        first = torch.where(mask, idx, mask.shape[1]).amin(1)
        last = torch.where(mask, idx, -1).amax(1) + 1
        return first.float(), last.float()

    top, bottom = extent(ink.any(2))
    left, right = extent(ink.any(1))
    side = torch.maximum(bottom - top, right - left).clamp(min=1) / FRAME_FILL
    # output [-1, 1] -> input coordinates (align_corners=False: the image spans [-1, 1])
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side / w
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = (left + right) / w - 1
    theta[:, 1, 2] = (top + bottom) / h - 1
    big = F.interpolate(x, scale_factor=UPSAMPLE, mode="bilinear", align_corners=False)
    grid = F.affine_grid(theta, [n, c, h * UPSAMPLE, w * UPSAMPLE], align_corners=False)
    out = F.avg_pool2d(F.grid_sample(big, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False), UPSAMPLE)
    out = torch.where(blank[:, None, None, None], x, out)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
