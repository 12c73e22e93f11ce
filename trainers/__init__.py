"""Training: CIFAR-10 and synthetic data, the one trainer and its protocols.

Public surface::

    from trainers import load_cifar10, synthetic, train, evaluate, PROTOCOLS, HPARAMS

``train(make_model, data, protocol="proxy")`` is the short proxy that scores a
trial on the validation split; ``protocol="fast"`` or a paper's protocol
(``"ho-resnet"``, ``"lm-resnet"``, ``"lm-resnet-sd"``, ``"rkcnn"``) with a
``checkpoint_path`` is a retrain scored on the test split.

May import: torch, torchvision, numpy, tqdm. Never optuna or ``models``:
callers pass a model factory (``make_model: Callable[[], nn.Module]``), so any
network trains without a study.
"""
from .data import (CIFAR10_CLASSES, DataNotFoundError, Dataset, Split, load_cifar10, synthetic,
                   train_val_indices)
from .protocols import HPARAMS, PROTOCOLS, protocol_hparams
from .train import Evaluation, TrainResult, evaluate, train

__all__ = [
    "CIFAR10_CLASSES", "DataNotFoundError", "Dataset", "Evaluation", "HPARAMS", "PROTOCOLS", "Split",
    "TrainResult", "evaluate", "load_cifar10", "protocol_hparams", "synthetic", "train", "train_val_indices",
]
