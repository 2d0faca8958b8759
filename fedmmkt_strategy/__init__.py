"""FedMMKT on Flower: the strategies, the server's models and the tools around them."""

import logging


class _NoTorchvisionFallbackNotice(logging.Filter):
    """Drop transformers' notice that an image processor falls back to its PIL version without
    torchvision: this project uses the PIL processors on purpose (torchvision is not a
    dependency), so the notice, printed three times by every command, is nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())
