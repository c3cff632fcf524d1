"""Planted bottlenecks in datasets written the common ways, unmodified for the doctor.

Shapes: a torchvision-style dataset (paths + `transform`, more work after it), an
ImageFolder/DatasetFolder look-alike (`loader`, `samples`, `transform`, `target_transform`),
a Hugging Face `datasets.Dataset` with `with_transform`, a webdataset shard pipeline, a plain
`IterableDataset` over files, and a map-style dataset whose augmentation runs in `collate_fn`.
Cases: slow storage (waits with jitter), heavy augmentation, slow decoding (large PNGs), a slow
training step, and slow storage plus augmentation at once (storage the larger).

Slow storage is simulated below the dataset's code, where real storage sits: a path whose
opening waits (`SlowPath`, like a network file system), an fsspec file system (`slowfile://`,
like an object store, for Hugging Face) and a webdataset URL scheme (`slowfile:`).
Used by tests/dataloader/test_dataloader_accuracy.py and benchmarks/dataloader_accuracy.py.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

SHAPES = ("torchvision", "imagefolder", "huggingface", "webdataset", "iterable", "collate")
CASES = ("storage", "augmentation", "decoding", "step", "storage+augmentation")
EXPECTED: dict[str, list[str]] = {
    "storage": ["data_access"],
    "augmentation": ["augmentation"],
    "decoding": ["decoding"],
    "step": ["not_dataloader"],
    "storage+augmentation": ["data_access", "augmentation"],
}


@dataclass
class Costs:
    """The planted costs (seconds / iterations); scale them for slower or faster runs."""

    storage_s: float = 0.012  # mean wait per sample, jitter +-50%
    blur_iterations: int = 150  # about 4.5 ms of CPU per sample
    big_side: int = 512  # a noise PNG this big takes a few ms to decode
    small_side: int = 48
    step_s: float = 0.08  # per batch
    both_storage_s: float = 0.018
    both_blur_iterations: int = 300  # about 9 ms of CPU: a third of the time


# --- slow storage ------------------------------------------------------------------------


def storage_wait(mean_s: float) -> None:
    """A storage access: a wait of `mean_s` +-50% (uniform jitter), using no CPU."""
    time.sleep(mean_s * random.uniform(0.5, 1.5))


class SlowPath(os.PathLike[str]):
    """A file on slow storage: opening it waits (like a network file system's latency)."""

    def __init__(self, path: str | Path, wait_s: float) -> None:
        self.path, self.wait_s = str(path), wait_s

    def __fspath__(self) -> str:
        storage_wait(self.wait_s)
        return self.path

    def __repr__(self) -> str:
        return f"SlowPath({self.path!r})"


WDS_PER_SHARD = 2  # samples per webdataset shard
_FS_WAIT = {"s": 0.0}  # set by the cases; forked DataLoader workers inherit it


def _register_slow_filesystems() -> None:
    import fsspec
    from fsspec.spec import AbstractFileSystem

    class SlowFileSystem(AbstractFileSystem):  # type: ignore[misc]
        protocol = "slowfile"

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            storage_wait(_FS_WAIT["s"])
            with open("/" + self._strip_protocol(path).lstrip("/"), "rb") as f:
                return io.BytesIO(f.read())

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            local = "/" + self._strip_protocol(path).lstrip("/")
            return {"name": path, "size": os.path.getsize(local), "type": "file"}

    fsspec.register_implementation("slowfile", SlowFileSystem, clobber=True)
    import importlib

    gopen = importlib.import_module("webdataset.gopen")

    def slow_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
        storage_wait(_FS_WAIT["s"] * WDS_PER_SHARD)  # one wait per sample in the shard
        return open(url[len("slowfile:") :], mode)

    gopen.gopen_schemes["slowfile"] = slow_gopen


# --- data ----------------------------------------------------------------------------------


def write_pngs(root: Path, count: int, side: int, seed: int = 0) -> list[Path]:
    """`count` noise RGB PNGs of `side` x `side` (one image encoded, then copied)."""
    root.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    paths = []
    for i in range(count):
        path = root / f"img_{i:03d}.png"
        if not path.exists():
            path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def to_tensor(image: Any) -> torch.Tensor:
    """PIL image or HWC array -> CHW float tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def center_crop(image: Image.Image, side: int = 48) -> torch.Tensor:
    """A cheap transform: the central `side` x `side` pixels as a tensor."""
    w, h = image.size
    left, top = (w - side) // 2, (h - side) // 2
    return to_tensor(image.crop((left, top, left + side, top + side)))


class Blur:
    """A CPU-heavy augmentation: a central crop, then many passes of a 5-point blur."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, image: Any) -> torch.Tensor:
        out = center_crop(image).numpy() if not isinstance(image, np.ndarray) else image
        for _ in range(self.iterations):
            p = np.pad(out, ((0, 0), (1, 1), (1, 1)), mode="edge")
            out = (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] + out) / 5
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def slow_step_for(seconds: float) -> Callable[[Any], None]:
    """A training step much slower than the loader."""

    def train_step(batch: Any) -> None:
        time.sleep(seconds)

    return train_step


# --- the dataset shapes ------------------------------------------------------------------


class PhotoFiles(Dataset[Any]):
    """torchvision style: paths + `transform`; after the transform it normalises the tensor."""

    def __init__(self, paths: list[Any], transform: Any) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.open(self.paths[index]).convert("RGB")
        x = self.transform(image)
        return (x - 0.5) / 0.25, index % 10  # more work after `transform`


def pil_loader(path: Any) -> Image.Image:
    """torchvision's default image loader: open, then convert to RGB."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


class FolderLike(Dataset[Any]):
    """An ImageFolder/DatasetFolder look-alike: `loader`, `samples`, `transform`, ..."""

    def __init__(self, samples: list[tuple[Any, int]], transform: Any) -> None:
        self.loader = pil_loader
        self.samples = samples
        self.imgs = self.samples
        self.targets = [s[1] for s in samples]
        self.classes = sorted({str(s[1]) for s in samples})
        self.transform = transform
        self.target_transform = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        sample = self.loader(path)
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target


class FileStream(IterableDataset[Any]):
    """A plain IterableDataset: its workers split `files`, open, decode and transform each."""

    def __init__(self, files: list[Any], transform: Any) -> None:
        self.files = files
        self.transform = transform

    def __iter__(self) -> Any:
        info = get_worker_info()
        mine = self.files if info is None else self.files[info.id :: info.num_workers]
        for i, path in enumerate(mine):
            yield self.transform(Image.open(path).convert("RGB")), i % 10


class DecodedFiles(Dataset[Any]):
    """A dataset returning decoded HWC arrays; its batches are built by `collate_fn`."""

    def __init__(self, files: list[Any]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return np.array(Image.open(self.files[index]).convert("RGB")), index % 10


class CollateWith:
    """A collate_fn doing the augmentation on the batch's samples, then stacking them."""

    def __init__(self, augment: Any) -> None:
        self.augment = augment

    def __call__(self, items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [self.augment(Image.fromarray(a)) for a, _ in items]
        return torch.stack(images), torch.tensor([label for _, label in items])


class HFTransform:
    """A `with_transform` function: a batch of PIL images -> a batch of tensors."""

    def __init__(self, augment: Any) -> None:
        self.augment = augment

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pixels = [self.augment(image.convert("RGB")) for image in batch["image"]]
        return {"pixel_values": pixels, "label": batch["label"]}


@dataclass
class Case:
    """One planted case: the unmodified dataset, its loader settings and training step."""

    shape: str
    case: str
    dataset: Any
    loader_kwargs: dict[str, Any]
    step: Callable[[Any], Any] | None
    expected: list[str] = field(default_factory=list)


def build_case(shape: str, case: str, root: Path, costs: Costs, samples: int = 32) -> Case:
    """The dataset of `shape` with the bottleneck `case` planted, on files under `root`."""
    _register_slow_filesystems()
    big = case == "decoding"
    side = costs.big_side if big else costs.small_side
    files = write_pngs(root / f"png_{side}", samples, side)
    wait = {"storage": costs.storage_s, "storage+augmentation": costs.both_storage_s}.get(case, 0)
    _FS_WAIT["s"] = wait
    blur = {
        "augmentation": costs.blur_iterations,
        "storage+augmentation": costs.both_blur_iterations,
    }.get(case, 0)
    augment: Any = Blur(blur) if blur else center_crop
    paths: list[Any] = [SlowPath(p, wait) if wait else str(p) for p in files]
    kwargs: dict[str, Any] = {"batch_size": 4, "num_workers": 2}
    step = slow_step_for(costs.step_s) if case == "step" else None
    dataset: Any
    if shape == "torchvision":
        dataset = PhotoFiles(paths, augment)
    elif shape == "imagefolder":
        dataset = FolderLike([(p, i % 3) for i, p in enumerate(paths)], augment)
    elif shape == "iterable":
        dataset = FileStream(paths, augment)
    elif shape == "collate":
        dataset = DecodedFiles(paths)
        kwargs["collate_fn"] = CollateWith(augment)
    elif shape == "huggingface":
        dataset = _hf_dataset(files, bool(wait), augment)
    elif shape == "webdataset":
        dataset, kwargs = (
            _wds_dataset(root, files, side, bool(wait), augment),
            {"batch_size": 4, "num_workers": 2},
        )
    else:
        raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
    return Case(shape, case, dataset, kwargs, step, EXPECTED[case])


def _hf_dataset(files: list[Path], slow: bool, augment: Any) -> Any:
    import datasets

    urls = [f"slowfile://{p}" if slow else str(p) for p in files]
    ds = datasets.Dataset.from_dict({"image": urls, "label": [i % 10 for i in range(len(files))]})
    ds = ds.cast_column("image", datasets.Image())
    return ds.with_transform(HFTransform(augment))


def _wds_dataset(root: Path, files: list[Path], side: int, slow: bool, augment: Any) -> Any:
    import webdataset as wds

    shard_dir = root / f"shards_{side}"
    shard_dir.mkdir(exist_ok=True)
    per_shard = WDS_PER_SHARD
    urls = []
    for s in range(0, len(files), per_shard):
        path = shard_dir / f"shard_{s // per_shard:04d}.tar"
        if not path.exists():
            with wds.TarWriter(str(path)) as sink:
                for i, f in enumerate(files[s : s + per_shard]):
                    sink.write({"__key__": f"{s + i:06d}", "png": f.read_bytes(), "cls": s + i})
        urls.append(f"slowfile:{path}" if slow else str(path))
    return (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode("pil")
        .to_tuple("png", "cls")
        .map_tuple(augment, _identity)
    )


def _identity(x: Any) -> Any:
    return x
