"""Silences the Flax deprecation notices of diffusers and transformers, in one place.

Why the pins exist: diffusers removed its Flax classes in 0.40 and transformers removes its Flax
models in v5. jcompose builds on those classes (UNet, ControlNet, VAE, CLIP text, DINOv2), so
`pyproject.toml` pins ``diffusers>=0.35,<0.40`` and ``transformers>=4.45,<5``. Within those pins
both libraries log a deprecation warning every time a Flax module is set up (diffusers: once per
``setup``, i.e. hundreds of times per UNet trace). The warning tells a jcompose user nothing they
can act on, so it is dropped here; every other message of both libraries still goes through.
"""

import logging

_DEPRECATION_MARKERS = (
    "Flax classes are deprecated",
    "JAX classes are deprecated",
)


class _DropFlaxDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(marker in message for marker in _DEPRECATION_MARKERS)


_FILTER = _DropFlaxDeprecation()


def silence_flax_deprecations() -> None:
    """Installs the filter on the library loggers of diffusers and transformers (idempotent).

    Both libraries log through one handler on their root logger ("diffusers", "transformers");
    records of child loggers propagate to it, so a filter on that handler (and on the logger, for
    records logged there directly) catches every Flax notice.
    """
    # Each library creates its handler when its logging module is first used; make sure that has
    # happened, or a handler added later would not carry the filter.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.get_logger("diffusers")
    transformers_logging.get_logger("transformers")
    for name in ("diffusers", "transformers"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
