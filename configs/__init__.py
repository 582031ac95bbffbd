"""Experiment configs: `configs/<method>.py` exports `get_config(arg)` (ml_collections), big_vision style.

Empty until the training engine lands.
"""
