"""The training pipeline behind ``python -m c2w_fast.train``: checkpoints, schedules,
progressive unfreezing, data preparation, the training loop, DDP and evaluation."""
