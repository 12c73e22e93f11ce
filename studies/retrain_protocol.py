"""Which protocol a retrain runs, the label it is stored under, and how it is described.

* :func:`paper_protocol` - the rule of ``retrain --protocol paper``: each network
  trains as the paper of its family trained it.
* :func:`check_overrides` - a retrain's hyperparameter overrides (``--hparams``),
  checked as ``run --proxy-hparams`` is.
* :func:`retrain_label` - the label that names a retrain's folder and study
  attribute: protocol, epochs and overrides, so that different runs never share
  a checkpoint or a record.
* :func:`describe_retrain` - a stored retrain as ``show`` and the model card
  print it: the protocol and its epochs, a short run called short.

Describing a stored retrain imports no torch (``show`` starts without it): ``trainers``
and ``models`` are imported where a protocol is looked up or a network's family read.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models import ArchSpec

__all__ = ["PAPER", "PAPER_RULE", "REACH", "check_overrides", "describe_retrain", "epochs_text", "paper_protocol",
           "protocol_epochs", "retrain_label", "retrain_protocols"]

PAPER = "paper"                # the protocol name that chooses per network
PAPER_RULE = ("each network its family's paper protocol: an RKCNN period or transition -> rkcnn (004), on "
              "SVHN rkcnn-svhn (004 §4.1.2); "
              "else any stage with stochastic depth -> lm-resnet-sd (002 §3); else stages that downsample "
              "(the CIFAR ResNet macro network) -> lm-resnet (002 §4); else one resolution (the HO-ResNet "
              "macro network) -> ho-resnet (000/001). A searched network that mixes schemes takes the "
              "protocol of its macro network, as its initialisation does: each paper trained all its "
              "schemes under one protocol")
# keys a retrain override may not set: the retrain decides them
_NOT_OVERRIDABLE = {"epochs": "use --epochs (it also scales a multistep protocol's milestones)",
                    "score_on": "a retrain scores on the test split"}
_LABEL_SAFE = re.compile(r"^[A-Za-z0-9_.,=+-]+$")
_LABEL_MAX = 80                # characters of the overrides part before it is hashed
REACH = (0.80, 0.85)           # accuracies of 001 Table 4's "epochs to reach" rows (show --retrains)


def _protocols() -> dict:
    """``trainers.PROTOCOLS``; imported here, not at the top: ``trainers`` brings torch, which
    describing a stored retrain (``show``) does not need."""
    import trainers  # noqa: PLC0415
    return trainers.PROTOCOLS


def paper_protocol(spec: ArchSpec, dataset: str = "cifar10") -> str:
    """The protocol the paper of ``spec``'s family trained it with on ``dataset`` (the
    study's data kind; see :data:`PAPER_RULE`). 004 trains RKCNNs on SVHN under its own
    protocol (no augmentation, dropout, 40 epochs); the other families' papers have none.

    The macro network decides, through :func:`models.family`, the same function that
    chooses the initialisation: 000/001 trained Euler, midpoint, RK4 and Verner stacks
    under one protocol, and 002 ResNets and LM-ResNets under one, so within a family the
    stacking scheme must not change the protocol, or a comparison of schemes would
    compare protocols too. Stochastic depth is the exception the papers make: 002 §3
    trains LM-ResNets that drop blocks 500 epochs instead of 160, so any network that
    drops blocks takes that protocol (RKCNN periods cannot drop).
    """
    from models.networks import family  # noqa: PLC0415 - torch (see _protocols)
    fam = family(spec)
    if fam == "rkcnn":
        return "rkcnn-svhn" if dataset == "svhn" else "rkcnn"
    if any(s.stochastic_depth for s in spec.stages):
        return "lm-resnet-sd"
    return "lm-resnet" if fam == "cifar-resnet" else "ho-resnet"


def retrain_protocols() -> list[str]:
    """The protocols ``retrain`` accepts: every trainer protocol but the proxy, and ``paper``."""
    return [k for k in _protocols() if k != "proxy"] + [PAPER]


def protocol_epochs(protocol: str) -> int | None:
    """The full length of ``protocol`` in epochs (None for ``paper`` or an unknown name)."""
    p = _protocols().get(protocol)
    return int(p["epochs"]) if p else None


def check_overrides(hparams: dict | None, protocol: str = "fast") -> dict:
    """``hparams`` checked as ``run --proxy-hparams`` is (known keys, values in range,
    ``trainers.protocols.merge_hparams``), refusing the keys a retrain decides; returns a
    copy. A bad one is a one-line ValueError starting ``--hparams:``."""
    if hparams is None:
        return {}
    if not isinstance(hparams, dict):
        raise ValueError(f"--hparams: expected a JSON object, e.g. '{{\"lr\": 0.2}}', got {hparams!r}")
    for key, why in _NOT_OVERRIDABLE.items():
        if key in hparams:
            raise ValueError(f"--hparams: {key} cannot be overridden here; {why}")
    import trainers  # noqa: PLC0415 - torch (see _protocols)
    try:
        trainers.protocol_hparams("fast" if protocol == PAPER else protocol, hparams=hparams)
    except ValueError as e:
        raise ValueError(f"--hparams: {e}") from None
    return dict(hparams)


def retrain_label(protocol: str, epochs: int | None = None, overrides: dict | None = None) -> str:
    """``protocol``, ``protocol-Nep`` with ``epochs``, then ``+key=value`` per override that
    changes the protocol (sorted): ``ho-resnet+lr=0.2``, ``fast-2ep+lr=0.4+nesterov=false``.
    An override equal to the protocol's value is left out (the same run, the same label);
    overrides whose text would not be a safe folder name, or is long, become
    ``+h<10 hex digits>`` of their JSON. Without overrides the label is what it always was,
    so older retrains are found."""
    label = protocol if epochs is None else f"{protocol}-{int(epochs)}ep"
    base = _protocols().get(protocol, {})
    changed = {k: v for k, v in sorted((overrides or {}).items()) if k not in base or base[k] != v}
    if not changed:
        return label
    text = "+".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in changed.items())
    if len(text) > _LABEL_MAX or not _LABEL_SAFE.match(text):
        text = "h" + hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:10]
    return f"{label}+{text}"


def epochs_text(record: dict) -> str:
    """A stored retrain's epochs in words, measured against its protocol's length:
    ``260 epochs, the protocol's full length``, ``2 of the protocol's 40 epochs: a short
    run``, ``120 of 260 planned epochs: unfinished``; then ``; overrides lr=0.2`` where
    the run overrode hyperparameters. Records written before the planned and protocol
    epochs were stored take them from the label and the protocol."""
    done = record.get("epochs")
    full = record.get("protocol_epochs") or protocol_epochs(record.get("protocol") or "")
    planned = record.get("epochs_planned")
    if planned is None:       # an older record: a finished run ran its plan; else the label's or the protocol's
        m = re.match(r"^.*?-(\d+)ep(\+|$)", record.get("label") or "")
        planned = done if record.get("status") == "ok" else int(m.group(1)) if m else full
    n = "epochs unknown" if done is None else f"{done} epoch{'' if int(done) == 1 else 's'}"
    if done is None:
        text = n
    elif planned and int(done) < planned:
        text = f"{done} of {planned} planned epochs: unfinished"
    elif not full:
        text = n
    elif int(done) == full:
        text = f"{n}, the protocol's full length"
    elif int(done) < full:
        text = f"{done} of the protocol's {full} epochs: a short run"
    else:
        text = f"{done} epochs, longer than the protocol's {full}"
    overrides = record.get("hparams") or {}
    if overrides:
        text += "; overrides " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(overrides.items()))
    return text


def describe_retrain(record: dict, short: bool = False) -> str:
    """A stored retrain's protocol and epochs: ``fast, 2 of the protocol's 40 epochs: a
    short run`` (:func:`epochs_text`); ``short``, for a table cell: the epochs done, over
    the protocol's when fewer, then the overrides: ``ho-resnet 260ep``, ``fast 2/40ep``,
    ``ho-resnet 260ep lr=0.2``."""
    protocol = record.get("protocol") or "?"
    if not short:
        return f"{protocol}, {epochs_text(record)}"
    done = record.get("epochs")
    full = record.get("protocol_epochs") or protocol_epochs(protocol)
    text = protocol if done is None else (
        f"{protocol} {done}ep" if not full or int(done) == full else f"{protocol} {done}/{full}ep")
    extra = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted((record.get("hparams") or {}).items()))
    return f"{text} {extra}" if extra else text
