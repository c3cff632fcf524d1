"""Finding the stages and forming the variants: exact where possible, skipped with a reason
where not, and always with the baseline's shapes and dtypes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dataloader_planted import to_tensor
from PIL import Image
from torch.utils.data import Dataset

from deploylab.dataloader import StagedDataset, image_folder, read_bytes
from deploylab.dataloader.adapters import plan_ablation
from deploylab.dataloader.report import VariantName
from deploylab.dataloader.spec import CheapTransform, spec_of
from deploylab.dataloader.variants import Ablation


def plans(ablation: Ablation) -> dict[VariantName, Any]:
    return {plan.name: plan for plan in ablation.plans}


class Counting:
    """Wraps a stage function and counts its calls."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, x: Any) -> Any:
        self.calls += 1
        return self.fn(x)


def decode_png(raw: bytes) -> Image.Image:
    return Image.open(io.BytesIO(raw)).convert("RGB")


def test_staged_dataset_composes_stages_and_labels(small_pngs: Path) -> None:
    files = sorted(small_pngs.glob("*.png"))
    ds = StagedDataset(files, read_bytes, decode_png, to_tensor, labels=list(range(16)))
    image, label = ds[3]
    assert label == 3 and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.equal(image, to_tensor(Image.open(files[3]).convert("RGB")))
    with pytest.raises(ValueError, match="one each"):
        StagedDataset(files, read_bytes, labels=[1, 2])


def test_image_folder_flat_and_with_class_folders(tmp_path: Path, small_pngs: Path) -> None:
    flat = image_folder(small_pngs, augment=to_tensor)
    assert len(flat) == 16 and flat[0].shape == (3, 32, 32)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes((small_pngs / f"img_00{i}.png").read_bytes())
    by_class = image_folder(tmp_path, augment=to_tensor)
    assert [by_class[i][1] for i in range(4)] == [0, 0, 1, 1]
    (tmp_path / "stray.png").write_bytes((small_pngs / "img_000.png").read_bytes())
    with pytest.raises(ValueError, match="mixes images and class sub-folders"):
        image_folder(tmp_path)


def test_cheap_transform_keeps_shape_and_dtype() -> None:
    reference = torch.zeros(3, 16, 16, dtype=torch.float32)
    cheap = CheapTransform(reference)
    image = Image.fromarray(np.full((40, 30, 3), 7, dtype=np.uint8))
    out = cheap(image)
    assert spec_of(out) == spec_of(reference)
    assert float(out[0, 0, 0]) == 7.0  # the real pixels flow through
    small = cheap(np.ones((4, 4, 3), dtype=np.uint8))  # zero-padded up to the reference
    assert small.shape == (3, 16, 16) and float(small.sum()) == 48.0
    assert not cheap.fixed
    other = cheap("not an image")
    assert spec_of(other) == spec_of(reference) and cheap.fixed
    as_array = CheapTransform(np.zeros((8, 8), dtype=np.int16))(np.ones((10, 10)))
    assert as_array.dtype == np.int16 and as_array.shape == (8, 8)


def test_staged_dataset_gives_all_four_exact_variants(small_pngs: Path) -> None:
    read, decode = Counting(read_bytes), Counting(decode_png)
    augment = Counting(to_tensor)
    files = sorted(small_pngs.glob("*.png"))
    ds = StagedDataset(files, read, decode, augment, labels=list(range(16)))
    ablation = plan_ablation(ds, [0, 5, 10])
    assert ablation.adapter == "staged"
    found = plans(ablation)
    assert all(plan.dataset is not None for plan in found.values()), ablation
    baseline_spec = spec_of(ds[0])
    for plan in found.values():
        assert len(plan.dataset) == 16
        assert spec_of(plan.dataset[7]) == baseline_spec

    read.calls = decode.calls = augment.calls = 0
    no_aug = found[VariantName.NO_AUGMENTATION].dataset
    no_aug[1]
    assert (read.calls, decode.calls, augment.calls) == (1, 1, 0)
    replay = found[VariantName.SYNTHETIC_READ].dataset
    items = [replay[i] for i in range(6)]
    assert (read.calls, decode.calls, augment.calls) == (1, 1, 0)  # nothing read or decoded
    assert [label for _, label in items] == [0, 5, 10, 0, 5, 10]
    decode_only = found[VariantName.SYNTHETIC_DECODE].dataset
    decode_only[4]
    assert (read.calls, decode.calls, augment.calls) == (1, 2, 0)  # decoded, not read


def test_staged_dataset_without_decode_or_augment_skips_those(small_pngs: Path) -> None:
    files = sorted(small_pngs.glob("*.png"))
    ds = StagedDataset(files, lambda p: to_tensor(Image.open(p).convert("RGB")))
    found = plans(plan_ablation(ds, [0, 1]))
    assert found[VariantName.NO_AUGMENTATION].skipped_reason == "it has no augment stage"
    assert "no decode stage" in found[VariantName.SYNTHETIC_DECODE].skipped_reason
    assert found[VariantName.SYNTHETIC_READ].dataset is not None


class FolderWithTransform(Dataset[Any]):
    """A typical user dataset: image paths in a list, read with PIL, then `transform`."""

    def __init__(self, root: Path, transform: Any, shrink: bool = False) -> None:
        self.samples = [(p, i % 3) for i, p in enumerate(sorted(root.glob("*.png")))]
        self.transform = transform
        self.shrink = shrink

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = Image.open(path).convert("RGB")
        if self.shrink:  # not a plain decode: decoding can't be isolated
            image = image.resize((16, 16))
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def test_transform_dataset_finds_its_files_and_reads_them_from_ram(small_pngs: Path) -> None:
    ds = FolderWithTransform(small_pngs, to_tensor)
    ablation = plan_ablation(ds, [0, 4, 8])
    try:
        assert ablation.adapter == "transform"
        found = plans(ablation)
        decode_only = found[VariantName.SYNTHETIC_DECODE]
        assert decode_only.dataset is not None
        assert "`samples`" in decode_only.note and "RAM" in decode_only.note
        # Entry 1 now reads the RAM copy of the file of cached sample 4, label kept.
        path, label = decode_only.dataset.samples[1]
        assert label == ds.samples[1][1] and path != str(ds.samples[4][0])
        assert Path(path).read_bytes() == Path(ds.samples[4][0]).read_bytes()
        image, _ = decode_only.dataset[1]
        no_aug = found[VariantName.NO_AUGMENTATION].dataset
        assert torch.equal(image, no_aug[4][0])  # the same pixels, through the same stand-in
        assert spec_of(image) == spec_of(ds[4][0])
        assert no_aug.transform is not ds.transform
        assert ds.transform is to_tensor  # the user's dataset is left as it was
        assert ds.samples[1][0] == sorted(small_pngs.glob("*.png"))[1]
        copies = Path(path).parent
    finally:
        ablation.close()
    assert not copies.exists()  # the RAM copies are removed after the diagnosis


def test_work_between_decoding_and_transform_stays_in_every_variant(small_pngs: Path) -> None:
    found = plans(plan_ablation(FolderWithTransform(small_pngs, to_tensor, shrink=True), [0]))
    assert all(plan.dataset is not None for plan in found.values()), found
    assert spec_of(found[VariantName.SYNTHETIC_DECODE].dataset[0][0]) == (
        "tensor",
        (3, 16, 16),
        "torch.float32",
    )


def test_transform_none_skips_no_augmentation(small_pngs: Path) -> None:
    found = plans(plan_ablation(FolderWithTransform(small_pngs, None), [0, 1]))
    assert "`transform` is None" in found[VariantName.NO_AUGMENTATION].skipped_reason
    assert found[VariantName.SYNTHETIC_DECODE].dataset is not None


def test_work_after_the_transform_is_followed(small_pngs: Path) -> None:
    class PostProcessed(FolderWithTransform):
        def __getitem__(self, index: int) -> tuple[Any, int]:
            path, label = self.samples[index]
            return self.transform(Image.open(path).convert("RGB")).half() * 2, label

    ds = PostProcessed(small_pngs, to_tensor)
    found = plans(plan_ablation(ds, [0]))
    assert all(plan.dataset is not None for plan in found.values()), found
    image, _ = found[VariantName.NO_AUGMENTATION].dataset[0]
    assert spec_of(image) == spec_of(ds[0][0])
    pixels = np.asarray(Image.open(ds.samples[0][0]).convert("RGB"), dtype=np.float32)
    # The stand-in hands the decoded pixels on (as float32 CHW), and the .half() * 2 ran.
    assert torch.equal(image, torch.from_numpy(pixels.transpose(2, 0, 1).copy()).half() * 2)


def test_variant_with_other_shapes_is_skipped_not_faked() -> None:
    calls = []

    def growing(x: torch.Tensor) -> torch.Tensor:  # each call returns a longer tensor
        calls.append(1)
        return torch.zeros(len(calls))

    ds = StagedDataset(list(range(4)), lambda i: torch.zeros(2), augment=growing)
    found = plans(plan_ablation(ds, [0]))
    reason = found[VariantName.NO_AUGMENTATION].skipped_reason
    assert reason and "instead of" in reason and "would not be fair" in reason


def test_dataset_without_transform_or_file_list_says_what_would_enable_them(
    arrays: Path,
) -> None:
    from dataloader_planted import SmallArrays

    ablation = plan_ablation(SmallArrays(arrays), [0, 3])
    found = plans(ablation)
    assert ablation.adapter == "opaque"
    no_aug = found[VariantName.NO_AUGMENTATION]
    assert no_aug.dataset is None and "no `transform` attribute" in no_aug.skipped_reason
    assert "self.transform = transform" in no_aug.enable
    assert found[VariantName.SYNTHETIC_DECODE].dataset is not None  # its `files` are listed
    ablation.close()

    class Numbered(Dataset[Any]):
        def __init__(self, root: Path) -> None:
            self.root = root

        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.from_numpy(np.load(self.root / f"arr_{index:03d}.npy"))

    found = plans(plan_ablation(Numbered(arrays), [0, 1]))
    decode = found[VariantName.SYNTHETIC_DECODE]
    assert decode.dataset is None and "lists its files" in decode.skipped_reason
    assert "self.files = sorted(root.glob" in decode.enable
