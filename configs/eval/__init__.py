"""Evaluation configs: `python -m jcompose.evaluate --config=configs/eval/<benchmark>.py`."""
