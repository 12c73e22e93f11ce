"""Training for the study (SPEC §4-§5): data, proxy trainer, full retrain.

Public surface::

    from trainers import load_cifar10, synthetic, train_proxy, retrain, evaluate

``trainers`` imports neither optuna nor ``models``: callers pass a model
factory (``make_model: Callable[[], nn.Module]``).
"""
from ._common import Evaluation, evaluate
from .data import (CIFAR10_CLASSES, DataNotFoundError, Dataset, Split, load_cifar10, synthetic,
                   train_val_indices)
from .proxy import DEFAULT_HPARAMS, ProxyResult, train_proxy
from .retrain import PROTOCOLS, RetrainResult, protocol_hparams, retrain

__all__ = [
    "CIFAR10_CLASSES", "DEFAULT_HPARAMS", "DataNotFoundError", "Dataset", "Evaluation",
    "PROTOCOLS", "ProxyResult", "RetrainResult", "Split", "evaluate", "load_cifar10",
    "protocol_hparams", "retrain", "synthetic", "train_proxy", "train_val_indices",
]
