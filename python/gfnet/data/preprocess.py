"""Images into the model: decoding, channels, and the evaluation resize and crop.

This is the one definition of how an image becomes the model's input at evaluation time. The
data loaders' evaluation transform (``folders.eval_transform``), the predictor (``gfnet.load``,
which ``gfnet predict`` runs) and ``gfnet.data.read_image`` all go through
:func:`eval_preprocess`. For a model image size (H, W) (``model.image_size``; S means S x S):

1. the image is scaled, keeping its aspect ratio, to the smallest size that covers
   ``(int(H / crop_fraction), int(W / crop_fraction))``: for a square S that is "the shorter
   side to int(S / crop_fraction)", the ImageNet convention (224 at 0.875: shorter side 256).
   With ``keep_aspect=False`` it is stretched to exactly that size instead;
2. the centre (H, W) is cropped out of it.

Resizing is antialiased (torchvision's tensor resize, ``bilinear`` or ``bicubic``; an image that
already has the size is not touched). uint8 images stay uint8; float images (values in [0, 1])
stay float and are clamped to [0, 1] after a bicubic overshoot. :class:`EvalGeometry` keeps the
sizes and the crop offset, so boxes on the model's input map back to the original image.

Channels: a file or PIL image is decoded as grayscale (1 channel) or RGB (3), whichever it is
(palette, alpha and CMYK images become RGB); :func:`to_channels` then gives the model what it
takes (grayscale -> RGB repeats the channel, RGB -> grayscale is the ITU-R 601-2 luma PIL uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import EVAL_INTERPOLATIONS, image_hw
from ..errors import DataError

# PIL modes decoded as one channel; every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) as RGB
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's convert("L")


@dataclass(frozen=True)
class EvalGeometry:
    """Where the model's input came from: the input image (h, w) was resized to ``resized_hw``
    and the ``output_hw`` window at (``top``, ``left``) of it was kept."""

    input_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    top: int
    left: int
    output_hw: tuple[int, int]

    @property
    def identity(self) -> bool:
        return self.input_hw == self.resized_hw == self.output_hw

    def to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) boxes (x1, y1, x2, y2) in the model input's pixels -> the same regions in the
        input image's pixels, float64 (pixel edges scale linearly, as in the resize)."""
        out = boxes.to(torch.float64, copy=True)
        if self.identity:
            return out
        (h, w), (rh, rw) = self.input_hw, self.resized_hw
        out[..., 0::2] = (out[..., 0::2] + self.left) * (w / rw)
        out[..., 1::2] = (out[..., 1::2] + self.top) * (h / rh)
        return out


def eval_geometry(input_hw: Sequence[int], image_size: int | Sequence[int], crop_fraction: float = 1.0,
                  keep_aspect: bool = True) -> EvalGeometry:
    """The sizes of the evaluation resize and crop of an (h, w) image (module docstring)."""
    h, w = int(input_hw[0]), int(input_hw[1])
    H, W = image_hw(image_size)
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], not {crop_fraction!r}")
    if h < 1 or w < 1:
        raise ValueError(f"an image needs at least one pixel, got {h} x {w}")
    ht, wt = int(H / crop_fraction), int(W / crop_fraction)  # the size to cover
    if not keep_aspect:
        rh, rw = ht, wt
    elif h * wt >= w * ht:  # relatively taller than the target: the width binds
        rh, rw = max(ht, int(wt * h / w)), wt
    else:
        rh, rw = ht, max(wt, int(ht * w / h))
    top, left = int(round((rh - H) / 2.0)), int(round((rw - W) / 2.0))  # torchvision's centre crop
    return EvalGeometry((h, w), (rh, rw), top, left, (H, W))


def eval_preprocess(image: torch.Tensor, image_size: int | Sequence[int], crop_fraction: float = 1.0,
                    interpolation: str = "bicubic", keep_aspect: bool = True
                    ) -> tuple[torch.Tensor, EvalGeometry]:
    """(C, h, w) uint8 or float image -> ((C, H, W) image, its geometry): the evaluation resize
    and centre crop (module docstring). Works on any device."""
    if interpolation not in EVAL_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(EVAL_INTERPOLATIONS)}, not {interpolation!r}")
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    geo = eval_geometry(image.shape[-2:], image_size, crop_fraction, keep_aspect)
    if geo.resized_hw != geo.input_hw:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
        image = TF.resize(image, list(geo.resized_hw), interpolation=mode, antialias=True)
        if image.is_floating_point() and interpolation == "bicubic":
            image = image.clamp(0.0, 1.0)  # bicubic overshoots; uint8 is clamped by the resize
    H, W = geo.output_hw
    if geo.resized_hw != geo.output_hw:
        image = image[:, geo.top:geo.top + H, geo.left:geo.left + W]
    return image, geo


def to_channels(image: torch.Tensor, channels: int, name: str = "image") -> torch.Tensor:
    """(C, H, W) image with C = 1 (grayscale) or 3 (RGB) -> ``channels`` channels, same dtype."""
    c = image.shape[0]
    if c not in (1, 3):
        raise DataError(f"{name} has {c} channels; expected 1 (grayscale) or 3 (RGB)")
    if c == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1)
    if channels != 1:
        raise DataError(f"the model takes {channels}-channel images; only 1 (grayscale) and 3 (RGB) "
                        "are converted")
    w = torch.tensor(LUMA, dtype=torch.float32, device=image.device)
    luma = (image.float() * w[:, None, None]).sum(0, keepdim=True)
    if image.dtype == torch.uint8:
        return luma.round_().clamp_(0, 255).to(torch.uint8)
    return luma.to(image.dtype)


def pil_to_tensor(im) -> torch.Tensor:
    """A PIL image -> (1 or 3, H, W) uint8: grayscale modes as 1 channel, the rest as RGB."""
    import numpy as np

    im = im.convert("L" if im.mode in _GRAY_MODES else "RGB")
    a = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(a.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


def decode_image(path: str | Path) -> torch.Tensor:
    """An image file (any format PIL reads) -> (1 or 3, H, W) uint8; DataError naming the file
    if it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_tensor(im)
    except FileNotFoundError:
        raise DataError(f"image {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"image {str(path)!r} is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {str(path)!r} ({type(e).__name__}: {e})") from None


__all__ = ["LUMA", "EvalGeometry", "decode_image", "eval_geometry", "eval_preprocess", "pil_to_tensor",
           "to_channels"]
