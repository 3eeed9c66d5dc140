"""atrous model package: DeepLab-style ResNet segmentation on TF-slim.

Three wings, imports pointing down: ``model.nets`` builds the tf-slim graph;
``model.checkpoints``, ``model.weights`` and ``model.export`` move weights in and out;
``model.inference`` runs an exported model and never imports tf-slim (TensorFlow only
inside ``model.inference.runtimes``).  ``model.config`` is the one configuration object.
"""

__version__ = "0.1.0"
