"""Learning rate x EMA ablation of the denoise method.

    python -m jcompose.sweep run --sweep=configs/sweeps/denoise_lr.py:tiny --root=/tmp/sweep-lr
    python -m jcompose.sweep tpu --sweep=configs/sweeps/denoise_lr.py --root=gs://bucket/sweep-lr

`arg` picks the base config variant: "tiny" (CPU minutes per run) or "" (the full-size defaults).
"""

from jcompose.sweep import grid


def get_sweep(arg: str = ""):
    config = "configs/denoise.py:tiny" if arg == "tiny" else "configs/denoise.py"
    return {"config": config, "runs": grid(**{"optim.lr": [1e-4, 3e-5], "train.ema_decay": [0.0, 0.999]})}
