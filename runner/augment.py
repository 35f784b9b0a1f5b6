"""Per-image augmentation policies applied to whole batches on the training device: RandAugment,
TrivialAugment and random erasing, with torchvision v2's semantics (its op list, magnitude tables, matrices,
rounding and dtype rules; `tests/test_augment.py` checks every op against `torchvision.transforms.v2`).

Sources and definitions (the tables are torchvision 0.2x's `_AUGMENTATION_SPACE`):
- RandAugment (Cubuk et al. 2020, arXiv 1909.13719; torchvision `v2.RandAugment`): each image applies
  `num_ops` ops in turn, each drawn uniformly from the 14 below, at the fixed bin `magnitude` of
  `num_magnitude_bins` (default 2 ops, bin 9 of 31); a signed op flips its sign with p = 1/2.
- TrivialAugment Wide (Mueller & Hutter 2021, arXiv 2103.10158; `v2.TrivialAugmentWide`): one op per image,
  its magnitude bin drawn uniformly from the 31, with the wider ranges below.
- Random erasing (Zhong et al. 2020, arXiv 1708.04896; `v2.RandomErasing`): with probability p, up to 10
  attempts draw an area fraction s ~ U(scale), a log-uniform aspect r in ratio, h = round(sqrt(s A r)),
  w = round(sqrt(s A / r)); the first box with h < H and w < W at a uniform corner is set to `value`
  (0 on normalised images: the dataset mean); no box fits: the image is unchanged.

Ops (m is the signed magnitude; geometric ops sample with the inverse affine matrix of
torchvision's `_get_inverse_affine_matrix`, nearest neighbour, zero fill, then round):
    Identity; ShearX/ShearY (shear atan(m) degrees about the corner (0, 0)); TranslateX/TranslateY
    (int(m) pixels); Rotate (m degrees about the centre); Brightness x * (1 + m); Color (saturation):
    blend with the floored grey image; Contrast: blend with the grey image's mean; Sharpness: blend with the
    3x3 (1, 5 centre)/13 blur inside a 1-pixel border; Posterize to int(m) bits; Solarize: invert where
    x >= m * max; AutoContrast (per channel min-max stretch); Equalize (PIL's histogram LUT).
blend(a, b, f) = clamp(a f + b (1 - f)), truncated to uint8 for uint8 images (torchvision's `_blend`).

Replay: `plan(n, generator)` draws every image's ops, signs and bins on the host from the epoch's generator
(the same distribution as torchvision's per-image draws); `apply(images, plan, positions)` groups the batch by
op on the host (a sort of the host-side plan: no device sync) and runs each op once on its group, with one
batched `grid_sample` for the geometric ops. Differences from torchvision: per-image factors are tensors, so a
blend may round differently from torchvision's scalar kernel in rare pixels (by one level, tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from runner.errors import require
from runner.mixing import Mixing, mixing_problems

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
GEOMETRIC = range(1, 6)  # ShearX .. Rotate: contiguous ids, so their union is one slice of a batch sorted by op
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def magnitude_table(policy: str, bins: int, height: int, width: int) -> np.ndarray:
    """(len(OPS), bins) magnitudes of torchvision's augmentation space (float32 linspace, as torchvision)."""
    wide = policy == "trivialaugment"
    span = lambda top: torch.linspace(0.0, top, bins)
    shear, angle, color = (0.99, 135.0, 0.99) if wide else (0.3, 30.0, 0.9)
    translate_x, translate_y = (32.0, 32.0) if wide else (150.0 / 331.0 * width, 150.0 / 331.0 * height)
    posterize = (8 - (torch.arange(bins) / ((bins - 1) / (6 if wide else 4)))).round().int().float()
    zeros = torch.zeros(bins)
    rows = {"Identity": zeros, "ShearX": span(shear), "ShearY": span(shear), "TranslateX": span(translate_x),
            "TranslateY": span(translate_y), "Rotate": span(angle), "Brightness": span(color),
            "Color": span(color), "Contrast": span(color), "Sharpness": span(color), "Posterize": posterize,
            "Solarize": torch.linspace(1.0, 0.0, bins), "AutoContrast": zeros, "Equalize": zeros}
    return torch.stack([rows[name] for name in OPS]).double().numpy()


@dataclass
class PolicyPlan:
    """An epoch's draws, indexed by sample: op ids (n, k) and signed magnitudes (n, k), both on the host, the
    magnitudes and the geometric ops' inverse matrices (n, k, 2, 3) also on the device."""
    ops: np.ndarray
    magnitudes: torch.Tensor
    thetas: torch.Tensor


def policy_problems(name: str, num_ops: int, magnitude: int, bins: int = 31) -> list[str]:
    if name not in ("randaugment", "trivialaugment"):
        return [f"dataset.augment={name}: choose none, randaugment or trivialaugment"]
    problems = [] if 0 <= magnitude < bins else [
        f"dataset.augment_magnitude={magnitude}: a bin in [0, {bins}); RandAugment's default is 9 of 31"]
    return problems + ([] if num_ops >= 1 else [
        f"dataset.augment_ops={num_ops}: apply at least 1 op per image (RandAugment: 2)"])


def train_augment_problems(augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
                           random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0, **_) -> list[str]:
    """The dataset's augmentation keys (every dataset factory's check includes these)."""
    problems = [] if augment == "none" else policy_problems(augment, augment_ops, augment_magnitude)
    if not 0 <= random_erasing <= 1:
        problems.append(f"dataset.random_erasing={random_erasing}: the probability of erasing an image, in [0, 1]")
    return problems + mixing_problems(mixup, cutmix)


class Policy:
    """RandAugment or TrivialAugment Wide over uint8 (or float in [0, 1]) batches (N, C, H, W)."""

    def __init__(self, name: str, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31):
        require(policy_problems(name, num_ops, magnitude, num_magnitude_bins))
        self.name, self.magnitude, self.bins = name, magnitude, num_magnitude_bins
        self.num_ops = num_ops if name == "randaugment" else 1

    def plan(self, n: int, gen: torch.Generator, height: int, width: int, device: torch.device) -> PolicyPlan:
        shape = (n, self.num_ops)
        ops = torch.randint(0, len(OPS), shape, generator=gen)
        negative = torch.rand(shape, generator=gen) <= 0.5
        bins = (torch.full(shape, self.magnitude) if self.name == "randaugment"
                else torch.randint(0, self.bins, shape, generator=gen))
        table = magnitude_table(self.name, self.bins, height, width)
        ops, negative, bins = ops.numpy(), negative.numpy(), bins.numpy()
        signed = np.isin(ops, [OPS.index(name) for name in SIGNED])
        magnitudes = table[ops, bins] * np.where(signed & negative, -1.0, 1.0)
        thetas = inverse_affine(ops, magnitudes, height, width)
        return PolicyPlan(ops.astype(np.int8), torch.from_numpy(magnitudes).to(device),
                          torch.from_numpy(thetas).float().to(device))

    def apply(self, images: torch.Tensor, plan: PolicyPlan, samples: np.ndarray, samples_device: torch.Tensor):
        """Augment the batch whose rows of the plan are `samples` (host) / `samples_device` (the loader passes its
        slots of the epoch order); returns a new batch.

        Each slot sorts the batch by op (one gather; the order comes from the host-side plan), so every op
        transforms a contiguous slice in place; one scatter restores the batch's order at the end."""
        positions = np.arange(len(samples))  # the original batch position of each row of `images`
        for slot in range(self.num_ops):
            ops = plan.ops[samples[positions], slot]
            order = np.argsort(ops, kind="stable")
            bounds = np.searchsorted(ops[order], np.arange(len(OPS) + 1))
            positions = positions[order]
            images = images[torch.from_numpy(order).to(images.device, non_blocking=True)]
            ids = samples_device[torch.from_numpy(positions).to(images.device, non_blocking=True)]
            first, last = bounds[GEOMETRIC.start], bounds[GEOMETRIC.stop]
            if last > first:
                images[first:last] = warp(images[first:last], plan.thetas[ids[first:last], slot])
            for op in range(GEOMETRIC.stop, len(OPS)):
                first, last = bounds[op], bounds[op + 1]
                if last > first:
                    images[first:last] = COLOR_OPS[OPS[op]](images[first:last], plan.magnitudes[ids[first:last], slot])
        restored = torch.empty_like(images)
        restored[torch.from_numpy(positions).to(images.device, non_blocking=True)] = images
        return restored


# ---- geometric ops: one inverse affine matrix per image, one grid_sample for all ------------------------------
def inverse_affine(ops: np.ndarray, magnitudes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, k, 2, 3) inverse matrices in torchvision's centred pixel frame (identity for non-geometric ops):
    the arguments torchvision's RandAugment passes to F.affine / F.rotate, through its matrix formula."""
    zero = np.zeros_like(magnitudes)
    is_op = lambda name: ops == OPS.index(name)
    rotate = is_op("Rotate")
    shear_x = np.where(is_op("ShearX"), np.radians(np.degrees(np.arctan(magnitudes))), zero)
    shear_y = np.where(is_op("ShearY"), np.radians(np.degrees(np.arctan(magnitudes))), zero)
    translate_x = np.where(is_op("TranslateX"), np.trunc(magnitudes), zero)
    translate_y = np.where(is_op("TranslateY"), np.trunc(magnitudes), zero)
    angle = np.where(rotate, np.mod(magnitudes, 360.0), zero)  # F.rotate: angle % 360, then -angle
    rotation = np.radians(-angle)
    # torchvision turns multiples of 90 degrees into rot90 (of a square image, or by 180): exact trigonometry
    exact = rotate & ((angle == 180.0) | ((height == width) & ((angle == 90.0) | (angle == 270.0))))
    snap = lambda values: np.where(exact, np.round(values), values)
    cos, sin = snap(np.cos(rotation)), snap(np.sin(rotation))
    cos_rms = np.where(rotate, cos, np.cos(rotation - shear_y))  # rotation - shear_y: one of them is 0
    sin_rms = np.where(rotate, sin, np.sin(rotation - shear_y))
    sheared = is_op("ShearX") | is_op("ShearY")  # torchvision shears about the corner: center=[0, 0]
    center_x = np.where(sheared, -0.5 * width, 0.0)
    center_y = np.where(sheared, -0.5 * height, 0.0)
    # rotate-shear block R(a) SHy(sy) SHx(sx) (scale 1) and its inverse, as torchvision's _get_inverse_affine_matrix
    cos_sy, tan_sx = np.cos(shear_y), np.tan(shear_x)
    a = cos_rms / cos_sy
    b = -(a * tan_sx + sin)
    c = sin_rms / cos_sy
    d = cos - c * tan_sx
    m00, m01, m10, m11 = d, -b, -c, a  # determinant 1
    shift_x, shift_y = center_x + translate_x, center_y + translate_y
    m02 = center_x - m00 * shift_x - m01 * shift_y
    m12 = center_y - m10 * shift_x - m11 * shift_y
    return np.stack([np.stack([m00, m01, m02], -1), np.stack([m10, m11, m12], -1)], -2)


def warp(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """torchvision's `_affine_grid` + `_apply_grid_transform` (nearest, zero fill) with a matrix per image."""
    n, _, height, width = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    base = torch.empty(1, height, width, 3, dtype=dtype, device=images.device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=images.device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height,
                                      device=images.device).unsqueeze(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=dtype, device=images.device)
    rescaled = thetas.to(dtype).transpose(1, 2) / scale
    grid = base.view(1, height * width, 3).expand(n, -1, -1).bmm(rescaled).view(n, height, width, 2)
    out = F.grid_sample(images.to(dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out if images.is_floating_point() else out.round_().to(images.dtype)


# ---- colour ops with a factor per image -------------------------------------------------------------------
def _bound(images: torch.Tensor) -> float:
    return 1.0 if images.is_floating_point() else 255.0


def _per_image(values: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return values.to(dtype).view(-1, 1, 1, 1)


def _finish(output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    output = output.clamp_(0, _bound(like))
    return output if like.is_floating_point() else output.to(like.dtype)


def fused_add(base: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """base + alpha * other rounded once, as torch's CPU kernel for `add_(other, alpha=scalar)` does (a fused
    multiply-add): exact in float64 for float32 operands of image range, then rounded to float32."""
    return (base.double() + other.double() * alpha.to(torch.float32).double()).to(base.dtype)


def blend(first: torch.Tensor, second: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's `_blend` with a ratio per image: first * r + second * (1 - r), clamped, cast back."""
    kept = _per_image(1.0 - ratio.double(), torch.float64)  # 1 - ratio in double, then float32, as torchvision
    return _finish(fused_add(first.mul(_per_image(ratio)), second, kept), first)


def grey(images: torch.Tensor) -> torch.Tensor:
    """torchvision's `_rgb_to_grayscale_image` (ITU-R 601-2 weights) as float, floored for integer images."""
    red, green, blue = images.unbind(dim=-3)
    luma = red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114).unsqueeze(-3)
    return luma if images.is_floating_point() else luma.floor_()


def brightness(images, magnitude):
    return _finish(images.mul(_per_image(1.0 + magnitude)), images)


def color(images, magnitude):
    return images if images.shape[-3] == 1 else blend(images, grey(images), 1.0 + magnitude)


def contrast(images, magnitude):
    luma = grey(images) if images.shape[-3] == 3 else images.float()
    return blend(images, luma.mean(dim=(-3, -2, -1), keepdim=True), 1.0 + magnitude)


def sharpness(images, magnitude):
    channels, height, width = images.shape[-3:]
    if height <= 2 or width <= 2:
        return images
    dtype = images.dtype if images.is_floating_point() else torch.float32
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=dtype, device=images.device)
    output = images.to(dtype=dtype, copy=True)
    # every channel as its own image: one plain convolution, faster on the CPU than a grouped one, same sums
    blurred = F.conv2d(output.view(-1, 1, height, width), kernel.view(1, 1, 3, 3)).view(*output.shape[:-2],
                                                                                       height - 2, width - 2)
    if not images.is_floating_point():
        blurred = blurred.round_()
    inner = output[..., 1:-1, 1:-1]
    inner.copy_(fused_add(inner, blurred.sub_(inner), _per_image(1.0 - (1.0 + magnitude).double(), torch.float64)))
    return _finish(output, images)


def posterize(images, magnitude):
    bits = magnitude.long().view(-1, 1, 1, 1)
    if images.is_floating_point():
        levels = torch.bitwise_left_shift(torch.ones_like(bits), bits).to(images.dtype)
        return images.mul(levels).floor_().clamp_(min=0).minimum(levels - 1).div_(levels)
    ones = torch.ones_like(bits)
    mask = torch.bitwise_left_shift(torch.bitwise_left_shift(ones, bits) - 1, 8 - bits)
    return images & mask.to(images.dtype)


def solarize(images, magnitude):
    threshold = _per_image(_bound(images) * magnitude.double())
    return torch.where(images >= threshold, _bound(images) - images if images.is_floating_point()
                       else 255 - images, images)


def autocontrast(images, magnitude):
    from torchvision.transforms.v2 import functional as TF  # batch-capable as it is

    return TF.autocontrast(images)


def equalize(images, magnitude):
    from torchvision.transforms.v2 import functional as TF

    return TF.equalize(images)


COLOR_OPS = {"Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness,
             "Posterize": posterize, "Solarize": solarize, "AutoContrast": autocontrast, "Equalize": equalize}


# ---- random erasing ----------------------------------------------------------------------------------------
class Erasing:
    """torchvision v2's RandomErasing (p, scale, ratio, value) with boxes drawn per image on the host."""
    ATTEMPTS = 10

    def __init__(self, p: float, scale: tuple = (0.02, 0.33), ratio: tuple = (0.3, 3.3), value: float = 0.0):
        self.p, self.scale, self.ratio, self.value = p, scale, ratio, value

    def plan(self, n: int, gen: torch.Generator, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(n, 4) boxes (top, left, bottom, right); an empty box (0, 0, 0, 0) leaves its image as it is."""
        erase = torch.rand(n, generator=gen) < self.p
        shape = (n, self.ATTEMPTS)
        area = height * width * torch.empty(shape, dtype=torch.float64).uniform_(*self.scale, generator=gen)
        log_ratio = torch.log(torch.tensor(self.ratio))
        aspect = torch.exp(torch.empty(shape).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=gen))
        aspect = aspect.double()
        h, w = torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()
        fits = (h < height) & (w < width)
        first = torch.where(fits.any(1), fits.long().argmax(1), 0)
        h, w = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
        top = (torch.rand(n, generator=gen, dtype=torch.float64) * (height - h + 1)).long()
        left = (torch.rand(n, generator=gen, dtype=torch.float64) * (width - w + 1)).long()
        keep = erase & fits.any(1)
        boxes = torch.stack([top, left, top + h, left + w], 1) * keep[:, None]
        return boxes.to(device)

    def apply(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Set each image's box to `value` in place (one broadcast mask for the batch)."""
        height, width = images.shape[-2:]
        rows = torch.arange(height, device=images.device).view(1, height, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, width)
        top, left, bottom, right = (boxes[:, i].view(-1, 1, 1) for i in range(4))
        inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
        return images.masked_fill_(inside.unsqueeze(1), self.value)


# ---- the dataset's training augmentations beyond crop and flip ----------------------------------------------
@dataclass
class TrainAugment:
    """`dataset.augment` (a policy), `dataset.random_erasing` and `dataset.mixup` / `dataset.cutmix`."""
    policy: Policy | None = None
    erasing: Erasing | None = None
    mixing: Mixing | None = None

    def torchvision(self) -> tuple[list, list]:
        """The same policy and erasing as torchvision v2 transforms, for datasets read through a DataLoader:
        (before the float conversion, after normalisation)."""
        from torchvision.transforms import v2

        before = []
        if self.policy and self.policy.name == "randaugment":
            before.append(v2.RandAugment(self.policy.num_ops, self.policy.magnitude, self.policy.bins))
        elif self.policy:
            before.append(v2.TrivialAugmentWide(self.policy.bins))
        after = [v2.RandomErasing(self.erasing.p, self.erasing.scale, self.erasing.ratio, self.erasing.value)] \
            if self.erasing else []
        return before, after


def train_augment(augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
                  random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> TrainAugment:
    """The dataset keys as the loaders' augmentations (each None when off)."""
    require(train_augment_problems(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix))
    mixing = Mixing(mixup, cutmix)
    return TrainAugment(None if augment == "none" else Policy(augment, augment_ops, augment_magnitude),
                        Erasing(random_erasing) if random_erasing else None, mixing if mixing.enabled else None)
