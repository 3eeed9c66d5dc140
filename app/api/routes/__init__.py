"""One router per concern: segmentation, health, model information, metrics."""
