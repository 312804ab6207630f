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

Decoding (:func:`pil_to_tensor`, :func:`decode_image`) shows the image as a viewer does:
- EXIF orientation is applied (a phone photo stored sideways with orientation 6 is turned
  upright), so the pixels are the ones people see;
- 8-bit images become uint8; 16-bit grayscale (PIL modes I;16*, and I from a 16-bit PNG) becomes
  float32 value / 65535 in [0, 1], keeping its precision (a 32-bit integer image with values
  beyond 65535 is refused); a floating-point image (mode F) is taken as it is when its values
  lie in [0, 1] and refused otherwise. (PIL itself reads 16-bit RGB as 8-bit RGB.)
- an animated image (GIF, APNG, WebP, multi-page TIFF) is read as its first frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import EVAL_INTERPOLATIONS, image_hw
from ..errors import DataError

# PIL modes decoded as one channel; every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) as RGB
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# grayscale modes of more than 8 bits: decoded to float32 in [0, 1] instead of uint8
_INTEGER_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_UINT16_MAX = 65535.0
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
    """A PIL image -> (1 or 3, H, W) as a viewer shows it (module docstring): EXIF orientation
    applied, the first frame of an animation; uint8 for 8-bit images, float32 in [0, 1] for 16-bit
    grayscale (value / 65535) and floating-point ones. Grayscale modes give 1 channel, the rest
    RGB. A DataError for a deep image whose values do not fit (mode I beyond 16 bits, mode F
    outside [0, 1])."""
    import numpy as np
    from PIL import ImageOps

    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    im = ImageOps.exif_transpose(im)  # a copy turned upright, or the image itself without EXIF
    if im.mode in _INTEGER_DEEP_MODES or im.mode == "F":
        a = np.asarray(im).astype(np.float64)
        if im.mode in _INTEGER_DEEP_MODES:
            if a.size and (a.min() < 0 or a.max() > _UINT16_MAX):
                raise DataError(f"a {im.mode} image with values in [{a.min():.0f}, {a.max():.0f}]: integer images "
                                "of more than 8 bits are read as 16-bit (0 .. 65535)")
            a = a / _UINT16_MAX
        elif a.size and not (a.min() >= 0.0 and a.max() <= 1.0):  # NaN fails too
            raise DataError(f"a floating-point (F) image with values in [{a.min():.4g}, {a.max():.4g}]: "
                            "floating-point images hold values in [0, 1]")
        return torch.from_numpy(a.astype(np.float32))[None]
    im = im.convert("L" if im.mode in _GRAY_MODES else "RGB")
    a = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(a.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


def decode_image(path: str | Path) -> torch.Tensor:
    """An image file (any format PIL reads) -> (1 or 3, H, W) as :func:`pil_to_tensor` decodes it
    (uint8, or float32 in [0, 1] for 16-bit and floating-point images); DataError naming the file
    if it is missing, unreadable, or its values do not fit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_tensor(im)
    except DataError as e:
        raise DataError(f"image {str(path)!r}: {e}") from None
    except FileNotFoundError:
        raise DataError(f"image {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"image {str(path)!r} is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {str(path)!r} ({type(e).__name__}: {e})") from None


__all__ = ["LUMA", "EvalGeometry", "decode_image", "eval_geometry", "eval_preprocess", "pil_to_tensor",
           "to_channels"]
