"""Training: the data sets, the one trainer and its protocols.

Public surface::

    from trainers import load_dataset, load_cifar10, synthetic, train, evaluate, PROTOCOLS, HPARAMS

``load_dataset(kind, root)`` reads CIFAR-10, CIFAR-100, SVHN or a folder of images
(:mod:`trainers.datasets`, :mod:`trainers.image_folder`).

``train(make_model, data, protocol="proxy")`` is the short proxy that scores a
trial on the validation split; ``protocol="fast"`` or a paper's protocol
(``"ho-resnet"``, ``"lm-resnet"``, ``"lm-resnet-sd"``, ``"rkcnn"``) with a
``checkpoint_path`` is a retrain scored on the test split.

May import: torch, torchvision, numpy, tqdm. Never optuna or ``models``:
callers pass a model factory (``make_model: Callable[[], nn.Module]``), so any
network trains without a study.
"""
from .data import DataError, DataNotFoundError, Dataset, Split, check_fits, synthetic, train_val_indices
from .datasets import (CIFAR10_CLASSES, DATA_HPARAMS, DATASETS, data_size, load_cifar10, load_dataset,
                       parse_dataset)
from .protocols import HPARAMS, PROTOCOLS, protocol_hparams
from .train import Evaluation, TrainResult, evaluate, train

__all__ = [
    "CIFAR10_CLASSES", "DATASETS", "DATA_HPARAMS", "DataError", "DataNotFoundError", "Dataset", "Evaluation",
    "HPARAMS", "PROTOCOLS", "Split", "TrainResult", "check_fits", "data_size", "evaluate", "load_cifar10",
    "load_dataset", "parse_dataset", "protocol_hparams", "synthetic", "train", "train_val_indices",
]
