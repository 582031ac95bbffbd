"""`jcompose plan`: prove the fit before renting the chips.

`python -m jcompose.plan --config=configs/<method>.py[:variant] --target=v5p-8|v5e-16|v6e-8|h100x8|...`
builds the run's programs exactly as `jcompose.train` builds them (method, step, mesh, shardings, remat,
gradient accumulation, the K-model program) from the models' configs alone, compiles them ahead of time
for the target's chips on this machine (libtpu for TPU slices, the CUDA plugin for NVIDIA GPUs, no
accelerator needed) and reports per chip: memory by kind against the HBM, FLOPs per step and per image,
the roofline time and what a measured time means as MFU, the collectives with their bytes and the
attention implementation of every layer. Modules: `targets` (chips and their devices), `architectures`
(config-only model folders), `build` (the run from shapes), `programs` (compiling), `flops` and `hlo`
(counting), `report` and `output` (the figures and files), `planner` (plan, largest batch).
"""
