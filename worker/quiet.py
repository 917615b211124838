"""Keep the worker's log about the worker: silence library messages that are not the user's
problem. Called once at worker start, before the model is loaded.

- transformers warns that each `<Model>ImageProcessor` "requires torchvision" and falls back to
  its Pillow version. The Stable Diffusion pipelines' feature extractors work with Pillow and
  torchvision is not a dependency, so the warnings are dropped (only those: other warnings of
  the same logger still show).
- Progress bars (loading components, weights, downloads) are kept on a terminal, and turned
  off when stderr is a log (a file, a pipe, `docker logs`), where their carriage returns only
  garble the lines.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

# The logger transformers' lazy import machinery warns on.
TRANSFORMERS_IMPORT_LOGGER = "transformers.utils.import_utils"


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


TORCHVISION_FALLBACK = _DropMessages("requires torchvision (not installed); falling back to")


def quiet_libraries(stream: TextIO | None = None) -> None:
    """Install the filters (idempotent) and, unless `stream` (stderr) is a terminal, turn off
    the progress bars of diffusers, transformers and huggingface_hub."""
    logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    if TORCHVISION_FALLBACK not in logger.filters:
        logger.addFilter(TORCHVISION_FALLBACK)
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()  # huggingface_hub's bars too
