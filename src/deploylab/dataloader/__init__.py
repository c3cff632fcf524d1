"""The DataLoader doctor (`deploylab dataloader`): finds what slows a training input
pipeline by ablation of its read, decode and augment stages."""

from deploylab.dataloader.diagnose import diagnose
from deploylab.dataloader.report import DiagnoseReport, SweepReport, VariantName, Verdict
from deploylab.dataloader.script import Pipeline, load_pipeline
from deploylab.dataloader.stages import DecodeImage, StagedDataset, image_folder, read_bytes
from deploylab.dataloader.sweep import sweep_workers

__all__ = [
    "DecodeImage",
    "DiagnoseReport",
    "Pipeline",
    "StagedDataset",
    "SweepReport",
    "VariantName",
    "Verdict",
    "diagnose",
    "image_folder",
    "load_pipeline",
    "read_bytes",
    "sweep_workers",
]
