"""Train the feature classifiers the Fréchet distance uses and write them into the package's assets.

Usage (from the repository root):  .venv/bin/python scripts/train_classifier.py [digits] [mnist]

Prints the test accuracy of each; the shipped files under src/diffusionlens/assets/ were made by
this script with its defaults (seed 0).
"""

from __future__ import annotations

import sys

import torch

from diffusionlens.features.classifier import asset_path, save_classifier, train_classifier


def main(argv: list[str]) -> None:
    names = argv or ["digits", "mnist"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in names:
        clf, info = train_classifier(name)
        path = asset_path(name)
        save_classifier(clf, path, dataset=name, info=info)
        print(f"{name}: test accuracy {info.test_accuracy:.4f} (train {info.train_accuracy:.4f}, "
              f"{info.epochs} epochs) -> {path.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
