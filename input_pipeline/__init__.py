"""Streaming input: dataset sources (real on-disk layouts) and per-method transforms on grain.

Empty until the input-pipeline work lands.
"""
