"""atrous model package: DeepLab-style ResNet segmentation on TF-slim.

Kept import-light on purpose: ``model.config``, ``model.serving``, ``model.runner`` and
``model.preprocessing`` never import tf-slim; only building a network does.
"""

__version__ = "0.1.0"
