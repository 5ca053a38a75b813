"""A small CNN classifier for the image data sets; its penultimate activations are the metric's features.

Architecture (any square size, one or more channels; shapes for (batch, C, H, W) input):

    conv3x3(C -> 32) GELU -> conv3x3(32 -> 64, stride 2) GELU -> conv3x3(64 -> 64, stride 2) GELU
    -> adaptive average pool to 2x2 -> flatten (256) -> dropout -> linear(256 -> 64) GELU = features
    -> linear(64 -> classes) = logits

The 64 features (after the GELU) play the role Inception's 2048 pool features play in FID: low
enough in dimension that their covariance is estimated well from a few hundred images (the digits'
test split has 300). Training: AdamW with cosine decay, random +-1 pixel shifts, label smoothing 0.05,
seeded (``torch.Generator``) so that ``scripts/train_classifier.py`` reproduces the shipped weights
up to float summation order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = ["FEATURE_DIM", "Classifier", "TrainedInfo", "asset_path", "extract_features", "load_classifier",
           "save_classifier", "train_classifier"]

FEATURE_DIM = 64


class Classifier(nn.Module):
    """CNN classifier; ``features(x)`` (batch, 64), ``forward(x)`` logits (batch, num_classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.2):
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1:
            raise ValueError(f"need in_channels >= 1, num_classes >= 2, width >= 1; got {in_channels}, "
                             f"{num_classes}, {width}")
        self.spec = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "dropout": dropout}
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.test_accuracy: float | None = None
        self.dataset: str | None = None

    def features(self, x: Tensor) -> Tensor:
        """(batch, C, H, W) images in [-1, 1] -> (batch, 64) features."""
        if x.ndim != 4 or x.shape[1] != self.spec["in_channels"]:
            raise ValueError(f"expected images (batch, {self.spec['in_channels']}, H, W), got shape {tuple(x.shape)}")
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(h))
        h = F.gelu(self.conv3(h))
        h = F.adaptive_avg_pool2d(h, 2).flatten(1)
        return F.gelu(self.fc(self.drop(h)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class TrainedInfo:
    """What :func:`train_classifier` measured."""

    test_accuracy: float
    train_accuracy: float
    epochs: int


def asset_path(dataset: str) -> Path:
    """Path of the shipped weights for ``dataset`` (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "assets" / f"classifier-{dataset}.safetensors"


def _shift(x: Tensor, g: torch.Generator) -> Tensor:
    """Random integer shifts of -1, 0 or +1 pixel per image and axis (padding with the background -1)."""
    B = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    H, W = x.shape[-2:]
    dy = torch.randint(0, 3, (B,), generator=g)
    dx = torch.randint(0, 3, (B,), generator=g)
    rows = (dy[:, None] + torch.arange(H)[None])  # (B, H)
    cols = (dx[:, None] + torch.arange(W)[None])  # (B, W)
    b = torch.arange(B)[:, None, None]
    return pad.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _accuracy(clf: Classifier, x: Tensor, y: Tensor, batch: int = 512) -> float:
    clf.eval()
    correct = sum(int((clf(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def train_classifier(dataset: str, *, epochs: int | None = None, seed: int = 0, batch_size: int = 64,
                     lr: float = 2e-3, progress: bool = True) -> tuple[Classifier, TrainedInfo]:
    """Train the classifier on ``dataset``'s train split and measure it on the test split."""
    from ..data import load_dataset

    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    if not train.is_image or train.y is None:
        raise ValueError(f"the feature classifier needs a labelled image data set, got {dataset!r}")
    epochs = epochs if epochs is not None else (60 if dataset == "digits" else 20)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = Classifier(train.data_shape[0], train.num_classes)
        opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-2)
        n = len(train.x)
        steps = epochs * math.ceil(n / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k / steps, 1))))
        it = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"classifier[{dataset}]", unit="epoch")
        for _ in it:
            clf.train()
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(clf(_shift(train.x[idx], g)), train.y[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    clf.eval().requires_grad_(False)
    info = TrainedInfo(test_accuracy=_accuracy(clf, test.x, test.y), train_accuracy=_accuracy(clf, train.x, train.y),
                       epochs=epochs)
    clf.test_accuracy, clf.dataset = info.test_accuracy, dataset
    return clf, info


def save_classifier(clf: Classifier, path, *, dataset: str, info: TrainedInfo) -> None:
    """Write weights + metadata (architecture, data set, accuracies) to one safetensors file, atomically."""
    path = Path(path)
    meta = {"spec": json.dumps(clf.spec), "dataset": dataset, "test_accuracy": repr(info.test_accuracy),
            "train_accuracy": repr(info.train_accuracy), "epochs": str(info.epochs), "feature_dim": str(FEATURE_DIM)}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_classifier(dataset: str = "digits", path=None, device="cpu") -> Classifier:
    """The shipped classifier of ``dataset`` (or the file ``path``), in eval mode without gradients."""
    path = Path(path) if path is not None else asset_path(dataset)
    if not path.is_file():
        found = asset_path(dataset).parent.glob("classifier-*.safetensors")
        have = sorted(p.stem.removeprefix("classifier-") for p in found)
        raise ValueError(f"no feature classifier for data set {dataset!r} (looked for {path.name}); "
                         f"shipped: {', '.join(have) or 'none'} (scripts/train_classifier.py makes them)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        clf = Classifier(**json.loads(meta["spec"]))
        clf.load_state_dict(tensors)
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ValueError(f"corrupt feature-classifier file {path.name}: {e}") from None
    clf.test_accuracy = float(meta["test_accuracy"])
    clf.dataset = meta.get("dataset", dataset)
    return clf.to(device).eval().requires_grad_(False)


@torch.no_grad()
def extract_features(clf: Classifier, x: Tensor, batch_size: int = 1024) -> Tensor:
    """(N, C, H, W) images -> (N, 64) float64 features, in batches."""
    if x.shape[0] == 0:
        raise ValueError("no images to extract features from")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain a non-finite value")
    dev = next(clf.parameters()).device
    out = [clf.features(x[i:i + batch_size].to(dev, torch.float32)).double().cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)
