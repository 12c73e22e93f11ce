"""Augmentation and normalisation of uint8 image batches, on the batch's device.

The data stay uint8 on the device for the whole run (CIFAR-10 is ~180 MB);
each batch is cropped and flipped with one gather, optionally passed through
torchvision's AutoAugment, then turned into normalised floats. There is no
per-image CPU DataLoader: that is what makes a short proxy fast on a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Normalizer", "autoaugment", "crop_flip"]


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random crop with ``pad`` zero pixels each side, then a random horizontal flip.

    Equivalent to torchvision's ``RandomCrop(H, padding=pad)`` +
    ``RandomHorizontalFlip()`` per image, done for a whole uint8 batch with one
    gather; randomness comes from ``gen`` (on the batch's device).
    """
    n, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))                       # zero fill, like torchvision
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # (n,1,h,1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # (n,1,1,w)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


_AUTOAUGMENT: list = []     # the transform, made on first use


def autoaugment(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """torchvision's v2 AutoAugment (CIFAR-10 policy) on a uint8 batch, on its device.

    v2 transforms accept batches but draw ONE sub-policy per call, so the
    batch is cut into sub-batches of ``chunk`` images that each share one
    sampled sub-policy (and magnitude sign): the usual trade-off of GPU
    augmentation pipelines. With 64-image chunks a 128-image batch mixes two
    policies, and over an epoch every policy is drawn hundreds of times.
    Randomness comes from torch's global CPU RNG (as in torchvision), which
    the trainer reseeds per epoch.
    """
    if not _AUTOAUGMENT:
        # late: importing torchvision costs ~170 MB resident, and only AutoAugment (the paper
        # protocols) and the CIFAR-10 download need it
        from torchvision.transforms import v2
        _AUTOAUGMENT.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    return torch.cat([_AUTOAUGMENT[0](part) for part in x.split(chunk)])


class Normalizer:
    """uint8 images to normalised floats, ``(x / 255 - mean) / std`` per channel, as one
    fused multiply-add (``mean``/``std`` in units of the [0, 1] pixel range)."""

    def __init__(self, mean, std, device: torch.device):
        mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __call__(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        x = torch.addcmul(self.shift, x.float(), self.scale)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
