"""`StagedDataset`: a map-style dataset written as read -> decode -> augment.

Written this way, every variant of the ablation can be formed exactly: the doctor can turn
augmentation off, replay samples without reading, or cache the encoded bytes and decode only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset


class StagedDataset(Dataset[Any]):
    """A dataset whose item `i` is `augment(decode(read(sources[i])))`, plus `labels[i]`.

    - `sources`: one entry per sample handed to `read` (a file path, a URL, a record key).
    - `read`: fetches the encoded sample (bytes from disk or network); its result is cached
      for the synthetic-decode variant, so it should be reusable (bytes are).
    - `decode`: turns what `read` returned into a sample (PIL image, array); None if `read`
      already returns decoded samples.
    - `augment`: the transforms (augmentation and conversion to tensors); None for none.
    - `labels`: optional; when given, items are `(sample, labels[i])`.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        read: Callable[[Any], Any],
        decode: Callable[[Any], Any] | None = None,
        augment: Callable[[Any], Any] | None = None,
        labels: Sequence[Any] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(sources):
            raise ValueError(f"{len(labels)} labels for {len(sources)} sources: give one each")
        self.sources = sources
        self.read = read
        self.decode = decode
        self.augment = augment
        self.labels = labels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Any:
        sample = self.read(self.sources[index])
        if self.decode is not None:
            sample = self.decode(sample)
        if self.augment is not None:
            sample = self.augment(sample)
        if self.labels is not None:
            return sample, self.labels[index]
        return sample

    def __repr__(self) -> str:
        names = [
            f"read={_name(self.read)}",
            f"decode={_name(self.decode)}",
            f"augment={_name(self.augment)}",
        ]
        return f"StagedDataset({len(self)} samples, {', '.join(names)})"


def _name(fn: Callable[..., Any] | None) -> str:
    if fn is None:
        return "None"
    return getattr(fn, "__qualname__", None) or type(fn).__name__


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_bytes(path: Any) -> bytes:
    """Read a whole file (the `read` stage of file-based datasets)."""
    with open(path, "rb") as f:
        return f.read()


class DecodeImage:
    """Encoded image bytes -> PIL image in `mode` (the `decode` stage of image datasets)."""

    def __init__(self, mode: str = "RGB") -> None:
        self.mode = mode

    def __call__(self, raw: bytes) -> Any:
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(raw))
        return image.convert(self.mode) if image.mode != self.mode else image

    def __repr__(self) -> str:
        return f"DecodeImage({self.mode!r})"


def image_folder(
    root: str | Path, augment: Callable[[Any], Any] | None = None, mode: str = "RGB"
) -> StagedDataset:
    """A `StagedDataset` of the image files under `root`, read and decoded with PIL.

    Files directly in `root` give bare samples; files in sub-folders (one per class, as in
    torchvision's ImageFolder) give `(sample, class_index)` with classes in sorted order.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    folders = [p.parent.relative_to(root).as_posix() for p in files]
    classes = sorted(set(folders))
    if classes == ["."]:
        return StagedDataset([str(p) for p in files], read_bytes, DecodeImage(mode), augment)
    if "." in classes:
        raise ValueError(f"{root} mixes images and class sub-folders: keep one layout")
    labels = [classes.index(folder) for folder in folders]
    return StagedDataset([str(p) for p in files], read_bytes, DecodeImage(mode), augment, labels)
