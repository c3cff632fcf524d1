"""The DataLoader doctor (`deploylab dataloader`): finds what slows a training input
pipeline by ablation of its read, decode and augment stages."""
