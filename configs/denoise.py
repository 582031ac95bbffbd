"""Plain SD noise-prediction fine-tuning (the engine's reference method).

    python -m jcompose.train --config=configs/denoise.py:tiny --workdir=/tmp/run
    python -m jcompose.train --config=configs/denoise.py --config.model.base=/models/sd-v1-5 --workdir=...

Variants (`arg`): "tiny" (a tiny random SD 1.5 written into the workdir, 64 px procedural shapes,
CPU-sized: minutes on 2 cores) and "" (SD 1.5 fine-tuning defaults at 512 px: set model.base).
"""

from configs.common import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.method = "denoise"
    if arg == "tiny":
        c.model.base = "tiny:sd15"
        c.data.update(num_records=256, image_size=64)
        c.train.update(batch_size=8, steps=60, log_every=5, ckpt_every=20, sample_every=0, sample_count=4)
        c.optim.update(lr=1e-4, weight_decay=0.0)
        c.sample.update(steps=10)
    elif arg == "":
        c.data.update(image_size=512)
        c.train.update(batch_size=32, steps=10_000, ckpt_every=1000, sample_every=1000)
        c.compute_dtype = "bfloat16"
    else:
        raise ValueError(f"configs/denoise.py: unknown variant {arg!r}; use 'tiny' or nothing")
    return c
