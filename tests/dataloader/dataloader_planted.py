"""Small generated datasets, each with one planted bottleneck (shared by the dataloader tests).

Everything is written with Pillow/NumPy into a temp dir; nothing is downloaded.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deploylab.dataloader import StagedDataset, image_folder, read_bytes

# Planted costs, chosen so each bottleneck dominates by a wide margin even on 2 busy cores.
SLOW_READ_S = 0.02  # per sample, spent waiting (no CPU), like a slow network disk
BLUR_ITERATIONS = 80  # about 20 ms of CPU per sample
BIG_IMAGE_SIDE = 512  # a 512x512 noise PNG takes about 3.5 ms to decode (reading it: 0.1)
SLOW_STEP_S = 0.08  # per training step


def write_pngs(root: Path, count: int, side: int, seed: int = 0) -> list[Path]:
    """`count` random-noise RGB PNG files of `side` x `side` pixels."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = root / f"img_{i:03d}.png"
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, compress_level=1)
        paths.append(path)
    return paths


def write_big_pngs(root: Path, count: int) -> list[Path]:
    """`count` copies of one large noise PNG (encoded once: encoding is slow)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (BIG_IMAGE_SIDE, BIG_IMAGE_SIDE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    paths = []
    for i in range(count):
        path = root / f"big_{i:03d}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def write_arrays(root: Path, count: int, shape: tuple[int, ...]) -> list[Path]:
    """`count` float32 `.npy` files of `shape`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    paths = []
    for i in range(count):
        path = root / f"arr_{i:03d}.npy"
        np.save(path, rng.random(shape, dtype=np.float32))
        paths.append(path)
    return paths


def to_tensor(image: Any) -> torch.Tensor:
    """PIL image or HWC array -> CHW float tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class SlowDiskImages(Dataset[Any]):
    """Image files read with PIL, each read throttled like a slow network disk (a): the
    worker waits without using CPU. Written the torchvision way, with a `transform`."""

    def __init__(self, root: Path, transform: Any = to_tensor) -> None:
        self.paths = sorted(root.glob("*.png"))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[index], "rb") as f:
            time.sleep(SLOW_READ_S)
            data = f.read()
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return self.transform(image), index % 10


def decode_npy(raw: bytes) -> np.ndarray:
    """`.npy` bytes -> array."""
    return np.load(io.BytesIO(raw))


def heavy_blur(array: np.ndarray) -> torch.Tensor:
    """A CPU-heavy augmentation (b): many passes of a 5-point blur."""
    out = array
    for _ in range(BLUR_ITERATIONS):
        p = np.pad(out, ((0, 0), (1, 1), (1, 1)), mode="edge")
        out = (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] + out) / 5
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def heavy_augment_dataset(root: Path) -> StagedDataset:
    """(b): cheap reads and decoding of small arrays, then a CPU-heavy augmentation."""
    paths = sorted(str(p) for p in root.glob("*.npy"))
    return StagedDataset(paths, read_bytes, decode_npy, heavy_blur, labels=list(range(len(paths))))


def center_crop_64(image: Image.Image) -> torch.Tensor:
    """A cheap transform: the central 64x64 pixels as a tensor."""
    w, h = image.size
    left, top = (w - 64) // 2, (h - 64) // 2
    return to_tensor(image.crop((left, top, left + 64, top + 64)))


def big_png_dataset(root: Path) -> StagedDataset:
    """(c): large PNGs (costly to decode) in a folder, read with PIL, cheaply cropped."""
    return image_folder(root, augment=center_crop_64)


class SmallArrays(Dataset[Any]):
    """(d): small `.npy` arrays, loaded whole; no `transform` attribute (an opaque dataset)."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.glob("*.npy"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.files[index]))


def slow_step(batch: Any) -> None:
    """(d): a training step much slower than the pipeline feeding it."""
    time.sleep(SLOW_STEP_S)
