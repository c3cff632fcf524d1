"""Variants 2-4 formed on datasets written the common ways, without touching them; where one
can't be formed, the reason and the one-line change that would enable it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from dataloader_cases import SHAPES, Costs, build_case, write_pngs

from deploylab.dataloader.adapters import plan_ablation
from deploylab.dataloader.report import VariantName
from deploylab.dataloader.spec import spec_of
from deploylab.dataloader.variants import Ablation


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def first(dataset: Any, collate: Any = None) -> Any:
    """The first item (or collated batch of 4) a variant yields."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        items = [x for _, x in zip(range(4), iter(dataset), strict=False)]
    else:
        items = [dataset[i] for i in range(4)]
    return collate(items) if collate is not None else items[0]


NOTES = {
    "torchvision": "files in `paths`",
    "imagefolder": "with its `loader`",
    "huggingface": "rows kept in memory",
    "webdataset": "cached before the decode stage",
    "iterable": "files in `files`",
    "collate": "files in `files`",
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_variant_is_built_with_the_baselines_shapes(shape: str, root: Path) -> None:
    case = build_case(shape, "augmentation", root, Costs(blur_iterations=2))
    ablation = plan_ablation(case.dataset, list(range(8)), case.loader_kwargs)
    try:
        plans = {p.name: p for p in ablation.plans}
        assert all(p.dataset is not None for p in plans.values()), ablation
        collate = case.loader_kwargs.get("collate_fn")
        baseline = spec_of(first(case.dataset, collate))
        for plan in plans.values():
            assert spec_of(first(plan.dataset, plan.collate_fn or collate)) == baseline, plan.name
        assert NOTES[shape] in (plans[VariantName.SYNTHETIC_DECODE].note or "")
        if shape == "collate":
            assert ablation.removed == "collate_fn"
            assert plans[VariantName.NO_AUGMENTATION].collate_fn is not None
            assert "only collate_fn replaced" in (plans[VariantName.NO_AUGMENTATION].note or "")
    finally:
        ablation.close()


def test_a_transform_followed_by_more_work_is_swapped_not_dropped(root: Path) -> None:
    case = build_case("torchvision", "augmentation", root, Costs(blur_iterations=2))
    ablation = plan_ablation(case.dataset, [0, 1])
    no_aug = ablation.plans[1].dataset
    # PhotoFiles normalises after `transform`: (x - 0.5) / 0.25; the stand-in's output too.
    x, label = no_aug[0]
    assert spec_of(x) == spec_of(case.dataset[0][0]) and label == 0
    assert float(x.min()) == pytest.approx(-2.0, abs=1e-6) or float(x.min()) > -2.0
    assert case.dataset.transform is not no_aug.transform
    ablation.close()


def test_webdataset_without_decode_stage_says_how_to_enable_variant_4(root: Path) -> None:
    import webdataset as wds

    files = write_pngs(root / "nodecode", 4, 16)
    shard = root / "nodecode.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i, f in enumerate(files):
            sink.write({"__key__": f"{i:04d}", "png": f.read_bytes(), "cls": i})
    pipeline = wds.WebDataset([str(shard)], shardshuffle=False).to_tuple("png", "cls")
    ablation: Ablation = plan_ablation(pipeline, [0, 1])
    plans = {p.name: p for p in ablation.plans}
    assert plans[VariantName.NO_AUGMENTATION].enable == (
        "apply the augmentation with `.map(fn)` (or `.map_tuple` / `.map_dict`)"
    )
    decode = plans[VariantName.SYNTHETIC_DECODE]
    assert decode.dataset is None and "no decode stage" in (decode.skipped_reason or "")
    assert decode.enable and ".decode(" in decode.enable
    assert plans[VariantName.SYNTHETIC_READ].dataset is not None


def test_hugging_face_dataset_without_transform_says_how_to_enable_variant_2(
    root: Path,
) -> None:
    import datasets

    files = write_pngs(root / "hf_plain", 4, 16)
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": [0, 1, 2, 3]})
    ds = ds.cast_column("image", datasets.Image()).with_format("numpy")
    ablation = plan_ablation(ds, [0, 1])
    plans = {p.name: p for p in ablation.plans}
    no_aug = plans[VariantName.NO_AUGMENTATION]
    assert no_aug.dataset is None and "set_transform" in (no_aug.enable or "")
    decode = plans[VariantName.SYNTHETIC_DECODE].dataset
    assert decode is not None and len(decode) == 4
    assert spec_of(decode[3]) == spec_of(ds[1])  # cycles over the 2 rows kept in memory
    ablation.close()


def test_hugging_face_stream_map_functions_are_swapped() -> None:
    import datasets
    import numpy as np

    calls: list[int] = []

    def augment(example: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {"x": np.asarray(example["x"], dtype=np.float32) * 2}

    rows = {"x": [np.full(4, i, dtype=np.float32) for i in range(8)]}
    stream = datasets.Dataset.from_dict(rows).to_iterable_dataset().map(augment)
    ablation = plan_ablation(stream.with_format("torch"), [0, 1])
    plans = {p.name: p for p in ablation.plans}
    assert ablation.adapter == "hugging face stream"
    no_aug = plans[VariantName.NO_AUGMENTATION].dataset
    assert no_aug is not None
    calls.clear()
    item = next(iter(no_aug))
    assert not calls  # the user's map function no longer runs
    assert spec_of(item) == spec_of(next(iter(stream.with_format("torch"))))
    decode = plans[VariantName.SYNTHETIC_DECODE]
    assert decode.dataset is None and "save_to_disk" in (decode.enable or "")
