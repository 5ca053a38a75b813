"""The project's small image classifier, whose penultimate layer is the feature space of the Fréchet distance.

No Inception network (it needs torchvision and downloads, neither available here, and it is
meaningless on 8x8 digits): for each image data set the project trains a small CNN on the data
set's own ``train`` split and ships its weights as a safetensors file under
``diffusionlens/assets/classifier-<dataset>.safetensors``, with its architecture and its accuracy on
the ``test`` split in the file's metadata. ``scripts/train_classifier.py`` reproduces the files.

    clf = load_classifier("digits")        # eval mode, no gradients
    f = clf.features(x)                    # x: (batch, 1, 8, 8) in [-1, 1] -> (batch, feature_dim)
    clf.test_accuracy                      # measured on the test split when the weights were made
"""

from .classifier import (
    FEATURE_DIM,
    Classifier,
    asset_path,
    extract_features,
    load_classifier,
    save_classifier,
    train_classifier,
)

__all__ = [
    "FEATURE_DIM",
    "Classifier",
    "asset_path",
    "extract_features",
    "load_classifier",
    "save_classifier",
    "train_classifier",
]
