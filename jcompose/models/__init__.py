"""Model zoo: diffusers/transformers Flax modules loaded from local folders, tiny test models."""
