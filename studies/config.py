"""A launch's options and a study's settings: one definition of each, with its default.

* :class:`RunOptions` - everything ``studies.run()`` / ``search.py run``
  accepts. Each field carries its default and help text; the command line is
  generated from these fields (``search.py``), so nothing else holds a default.
* :class:`StudySettings` - what is fixed when a study is created, derived
  from the options and stored in the study's user attributes, so every worker
  on every machine evaluates trials the same way; a resumed study keeps them
  and an explicit option that disagrees is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import uuid
from dataclasses import dataclass, field

import optuna

import trainers
from search_space import DEFAULT_TOLERANCE, format_count, parse_budget

__all__ = ["MEMORY_OBJECTIVES", "RESUME", "RunOptions", "StudySettings", "check_resume", "json_object", "option"]

MEMORY_OBJECTIVES = ("inference", "training")
SETTINGS_FORMAT = 2          # version of the stored settings' layout; 2: the search space asks its sizes last,
                             # within what the budget leaves room for (a format-1 study's questions differ)
# Bounds of what a user can type, so that a typo cannot eat the machine or the database.
MAX_TRIALS = 100_000         # trial lineages per study: ~500 GPU-hours at 18 s a trial
MAX_WORKERS = 256            # worker processes of one launch
MAX_SYNTHETIC_IMAGES = 200_000   # synthetic training images, held in memory as uint8
MAX_IMAGE_SIZE = 256         # pixels: the synthetic set and the networks' inputs stay CIFAR-sized
MIN_PROXY_IMAGES = 16        # --proxy-images: fewer is not a data set to rank networks on
MAX_PROXY_IMAGES = 10_000_000
CPU_PROXY_BATCH = 32         # images per step of a proxy on the CPU (see small_data_hparams)
CPU_EVAL_BATCH = 64          # images per evaluation pass of a proxy on the CPU (as fast per image, less memory)


def option(default, help: str, **cli):
    """A field with its default and its command-line help; ``cli`` holds argparse
    keywords (``type``, ``choices``, ``metavar``, ``nargs``, ``action``, ``flag``),
    ``cli=False`` keeps a field off the command line (Python only), ``internal=True``
    off both (set by the program itself)."""
    meta = {"help": help, **cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def json_object(text: str) -> dict:
    """The argparse type of a JSON-object flag (``run --proxy-hparams``, ``retrain --hparams``):
    a bad value is argparse's one-line error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}); e.g. '{{\"lr\": 0.2}}'") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("nested too deeply to be a set of hyperparameters") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"lr\": 0.2}'")
    return value


@dataclass
class RunOptions:
    """Options of one launch of ``run``. ``study`` and ``trials`` are required."""

    study: str = option(None, "study name (names its database file under the data home)", required=True)
    trials: int = option(None, "finished trials the study should hold in total (not new ones); pruned trials "
                               "count toward it (a network no widths bring to the budget is pruned before "
                               "training, rarely). A rerun with a larger number resumes the study",
                         type=int, required=True)
    storage: str | None = option(None, "Optuna storage URL (default: NAME.db in the data home, "
                                       "./studies-data or $STACKNAS_HOME); for many machines "
                                       "postgresql://USER:PASSWORD@HOST/DB, journal:///ABS/PATH/NAME.log on a "
                                       "shared filesystem, or grpc://HOST:PORT?claims=DB_URL through `search.py "
                                       "proxy` (README: On many machines)")
    budget: str = option("1.0M", "parameter budget, e.g. 1.0M, 250k or 2000000")
    tolerance: float = option(DEFAULT_TOLERANCE, "relative distance to the budget allowed (0.02 = 2%%)",
                              type=float)
    paper_forms: bool = option(False, "also sample midpoint and RK4 in the papers' printed form (000/001 eqs. "
                                      "6-9; not an ODE step, so left out by default)", action="store_true")
    memory: str = option("inference", "memory objective: peak live-tensor bytes per image of one inference "
                                      "or of one training step", choices=MEMORY_OBJECTIVES)
    proxy_epochs: int | None = option(None, "epochs of the shortest proxy, the first rung (default: 1 on "
                                            "synthetic data, 8 on CUDA, 2 on the CPU)", type=int)
    rungs: int | None = option(None, "fidelity rungs of successive halving (default: 2 on synthetic data, "
                                     "else 3)", type=int)
    eta: int = option(3, "successive halving: the best 1/ETA of a rung is promoted to ETA x its epochs",
                      type=int)
    dataset: str = option("cifar10", "data set: cifar10, cifar100, svhn (its train split; extra is not used) "
                                     "or a folder with one sub-folder of images per class (its train/ and test/ "
                                     "sub-folders are the splits if it has them, else 20%% of each class is held "
                                     "out as test; a name wins over a folder of that name: write ./svhn)",
                          metavar="NAME_OR_DIR")
    data: str | None = option(None, "folder holding the named data sets in torchvision's layout (default ./data; "
                                    "downloaded there with torchvision when missing); for a folder study resumed "
                                    "elsewhere, where that folder is on this machine", metavar="DIR")
    image_size: int = option(32, "with a folder of images: side in pixels every image is resized to, once, at "
                                 "load", type=int, metavar="PIXELS")
    proxy_images: int | None = option(None, "train every proxy on a fixed seeded subset of N training images "
                                            "(validation split unchanged): a data-subset fidelity for a first "
                                            "result on a CPU", type=int, metavar="N")
    synthetic: bool = option(False, "small synthetic 10-class data instead of a data set (CPU demo, tests)",
                             action="store_true")
    synthetic_images: int = option(512, "with --synthetic: training images (validation and test: N/4, at "
                                        "least 64)", type=int, metavar="N")
    synthetic_image_size: int = option(16, "with --synthetic: image side (small, so the CPU demo trains fast and "
                                           "in little memory)", type=int, metavar="PIXELS")
    proxy_hparams: dict = option({}, "overrides of the proxy's hyperparameters (trainers.HPARAMS), fixed per "
                                     "study, e.g. '{\"lr\": 0.2}'", type=json_object, metavar="JSON")
    device: str | None = option(None, "cuda or cpu (default: cuda if available)")
    workers: int = option(1, "worker processes on this machine (one per GPU where there are several)",
                          type=int)
    enqueue_presets: list | None = option(None, "papers' presets to evaluate as trials (no names: those "
                                                "within 10%% of the budget)", nargs="*", metavar="PRESET")
    seed: int = option(0, "sampler seed (give each machine sharing a study its own)", type=int)
    heartbeat: int = option(60, "seconds between a running trial's heartbeats; silent for 3 beats = failed "
                                "and retried (on a journal or through the proxy, which have no Optuna "
                                "heartbeats, they are kept in the study's claims with each machine's clock: "
                                "clocks must agree within one beat)", type=int, metavar="SECONDS")
    max_retry: int = option(3, "retries of a trial whose worker died", type=int)
    progress: bool = option(True, "no progress bars", flag="--no-progress", action="store_false")
    prepare_ahead: bool | None = option(None, "prepare the next trial (sample, solve, build, measure) in a thread "
                                              "while the device trains the current one; None: on CUDA only",
                                        cli=False)
    poll: float = option(1.0, "seconds an idle worker waits before looking for work again", cli=False)
    explicit: tuple = option((), "names of the options the user gave (a resume checks them)", cli=False,
                             internal=True)
    worker_index: int = option(0, "index of this worker among those of one launch", cli=False, internal=True)

    @classmethod
    def from_user(cls, **given) -> "RunOptions":
        """Options from what a user typed (a call or the command line): unknown names are
        refused, and the names given are remembered for the resume check."""
        names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        unknown = sorted(set(given) - names)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
        return cls(**given, explicit=tuple(sorted(given)))

    def check(self) -> "RunOptions":
        """Refuse a bad value in one line before anything heavy runs."""
        _int_in("--trials", self.trials, 1, MAX_TRIALS)
        _int_in("--workers", self.workers, 1, MAX_WORKERS)
        parse_budget(self.budget)
        if not isinstance(self.tolerance, (int, float)) or not 0 < self.tolerance < 1:
            raise ValueError(f"--tolerance: must lie in (0, 1), got {self.tolerance}")
        if self.memory not in MEMORY_OBJECTIVES:
            raise ValueError(f"--memory: {self.memory!r} is not allowed; allowed: {', '.join(MEMORY_OBJECTIVES)}")
        for name, v, lo, hi in (("--proxy-epochs", self.proxy_epochs, 1, 1000), ("--rungs", self.rungs, 1, 8),
                                ("--image-size", self.image_size, 8, MAX_IMAGE_SIZE),
                                ("--proxy-images", self.proxy_images, MIN_PROXY_IMAGES, MAX_PROXY_IMAGES),
                                ("--eta", self.eta, 2, 10), ("--heartbeat", self.heartbeat, 1, 3600),
                                ("--max-retry", self.max_retry, 0, 100),
                                ("--synthetic-images", self.synthetic_images, 16, MAX_SYNTHETIC_IMAGES),
                                ("--synthetic-image-size", self.synthetic_image_size, 8, MAX_IMAGE_SIZE),
                                ("--seed", self.seed, 0, 2**32 - 1)):
            if v is not None:
                _int_in(name, v, lo, hi)
        if self.synthetic and "dataset" in self.explicit:
            raise ValueError(f"--synthetic and --dataset {self.dataset} exclude each other; give one")
        if not self.synthetic:
            trainers.parse_dataset(self.dataset)     # an unknown name, a missing folder: one line
        if not isinstance(self.proxy_hparams, dict):
            raise ValueError(f"--proxy-hparams: expected a JSON object, got {self.proxy_hparams!r}")
        try:
            trainers.protocol_hparams("proxy", hparams=self.proxy_hparams)
        except ValueError as e:
            raise ValueError(f"--proxy-hparams: {e}") from None
        return self


def small_data_hparams(n_train: int, batch_size: int | None = None) -> dict:
    """Batch and learning rate for a small training set: an eighth of the images per batch,
    16 to 128 (or ``batch_size``), and the learning rate scaled with the batch (0.1 per 128
    images).

    On a CPU a study's proxy takes :data:`CPU_PROXY_BATCH` images per step and evaluates
    :data:`CPU_EVAL_BATCH` at a time, not the GPU's 512 and 1,024: backpropagation keeps the
    activations of the whole batch (the tracked training bytes per image times the batch, and
    about as much again in the CPU kernels' buffers and the allocator's slack), while a CPU,
    with no parallel units for a large batch to fill, trains nearly as fast per image at 32 as
    at 512; with a few thousand images the smaller batch also takes more steps, and learns
    more, in one epoch. ``benchmarks/bench_cpu_real.py`` measures both (README, "Real data on
    a CPU")."""
    b = int(batch_size or min(128, max(16, n_train // 8)))
    return {"batch_size": b, "lr": 0.1 * b / 128}


def _int_in(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}: must be an integer in [{lo:,}, {hi:,}], got {value!r}")


@dataclass
class StudySettings:
    """Settings fixed when a study is created, stored as flat study user attributes."""

    budget: int                  # parameters
    tolerance: float             # relative distance to the budget allowed
    memory: str                  # memory objective: "inference" | "training" bytes per image
    proxy_epochs: int            # epochs of rung 0
    rungs: int                   # fidelities: proxy_epochs * eta**k, k < rungs
    eta: int                     # promotion keeps the best 1/eta of a rung
    data: dict                   # {"kind": "cifar10" | "cifar100" | "svhn" | "folder", "root": DIR,
                                 #  "image_size": PIXELS, "classes": [...]} or {"kind": "synthetic", n_train, ...}
    proxy_hparams: dict          # overrides of trainers.HPARAMS for every proxy run
    heartbeat_interval: int      # seconds; grace period = 3 beats
    max_retry: int               # retries of a trial whose worker died
    uid: str                     # names this study's claims
    paper_forms: bool = False    # the sampler also offers midpoint/RK4 in 000/001's printed form
    format: int = SETTINGS_FORMAT
    proxy_images: int | None = None  # proxies train on a seeded subset of this many training images; None: all

    @property
    def num_classes(self) -> int:
        """Classes of the study's data (a study from before they were stored: CIFAR-10's 10)."""
        return len(self.data.get("classes") or ()) or 10

    @property
    def image_size(self) -> int:
        return int(self.data.get("image_size", 32))

    def epochs(self, rung: int) -> int:
        return int(self.proxy_epochs * self.eta ** rung)

    @property
    def fidelities(self) -> list[int]:
        return [self.epochs(k) for k in range(self.rungs)]

    @property
    def memory_key(self) -> str:
        return f"{self.memory}_bytes_per_image"

    def retrain_hparams(self) -> dict:
        """Overrides every retrain protocol takes for this study's data: what the data set
        changes (SVHN: no flips, :data:`trainers.DATA_HPARAMS`); on the small synthetic set,
        the proxy's batch with its scaled learning rate (a CIFAR-sized batch of 512 would hold
        gigabytes of activations on a CPU for nothing)."""
        hp = dict(trainers.DATA_HPARAMS.get(self.data.get("kind"), {}))
        if self.data.get("kind") == "synthetic":
            hp.update(small_data_hparams(self.data["n_train"], self.proxy_hparams.get("batch_size")))
        return hp

    @classmethod
    def from_options(cls, opts: RunOptions, device: str, dataset: trainers.Dataset | None = None) -> "StudySettings":
        """A new study's settings; defaults that depend on the data or device are chosen here.
        ``dataset``: the data loaded for the check before creation (classes, sizes; not synthetic)."""
        if opts.synthetic:
            n = int(opts.synthetic_images)
            data = dict(kind="synthetic", n_train=n, n_val=max(64, n // 4), n_test=max(64, n // 4),
                        image_size=int(opts.synthetic_image_size), seed=0)
            n_train = n
        else:
            data = data_source(opts)
            data.update(image_size=dataset.image_size, classes=list(dataset.classes))
            n_train = len(dataset.train)
        hp = dict(opts.proxy_hparams or {})
        cpu = not device.startswith("cuda")
        if opts.synthetic or opts.proxy_images or cpu:
            # a small training set, or a CPU: a batch that costs no speed (see small_data_hparams)
            batch = hp.get("batch_size") or (CPU_PROXY_BATCH if cpu and not opts.synthetic else None)
            hp = {**small_data_hparams(opts.proxy_images or n_train, batch), **hp}
        if cpu:
            hp.setdefault("eval_batch_size", CPU_EVAL_BATCH)     # inference activations of 1024 images: gigabytes
        hp = {**trainers.DATA_HPARAMS.get(data["kind"], {}), **hp}
        proxy_epochs = opts.proxy_epochs or (1 if opts.synthetic else 8 if device.startswith("cuda") else 2)
        return cls(budget=parse_budget(opts.budget), tolerance=float(opts.tolerance), memory=opts.memory,
                   proxy_epochs=int(proxy_epochs), rungs=int(opts.rungs or (2 if opts.synthetic else 3)),
                   eta=int(opts.eta), data=data, proxy_hparams=hp, heartbeat_interval=int(opts.heartbeat),
                   max_retry=int(opts.max_retry), uid=uuid.uuid4().hex[:12], paper_forms=bool(opts.paper_forms),
                   proxy_images=int(opts.proxy_images) if opts.proxy_images else None)

    def save(self, study: optuna.Study) -> None:
        for f in dataclasses.fields(self):
            study.set_user_attr(f.name, getattr(self, f.name))

    @classmethod
    def load(cls, study: optuna.Study) -> "StudySettings | None":
        """The stored settings, or None for a study not made by ``run``."""
        return cls.from_attrs(study.user_attrs)

    @classmethod
    def from_attrs(cls, a: dict) -> "StudySettings | None":
        """The settings among a study's user attributes ``a``, or None for a study not made by ``run``."""
        if "uid" not in a or "budget" not in a:
            return None
        return cls(**{f.name: a[f.name] for f in dataclasses.fields(cls) if f.name in a})


def data_source(opts: RunOptions) -> dict:
    """Where the study's data comes from, as stored: ``{"kind": NAME, "root": the folder
    holding it}``, or for a folder of images ``{"kind": "folder", "root": it}``."""
    kind, folder = trainers.parse_dataset(opts.dataset)
    if kind == "folder":
        return dict(kind="folder", root=folder)
    return dict(kind=kind, root=os.path.abspath(opts.data or "data"))


def data_title(data: dict) -> str:
    """The study's data in words: ``CIFAR-100``, ``synthetic data``, ``the folder /x/y``."""
    kind = data.get("kind", "cifar10")
    return {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN", "synthetic": "synthetic data"}.get(
        kind, f"the folder {data.get('root')}")


@dataclass(frozen=True)
class Resume:
    """What a resume does with one option of ``run`` that the study stores: ``rule`` is
    ``fixed`` (another value is refused), ``rises`` (a larger value is taken, a smaller one
    refused), ``changes`` (the new value is stored for the whole study) or ``here`` (not stored:
    where this machine finds something, checked apart); ``why`` says why, for
    ``--help``; ``stored`` / ``given`` read the study's value and the option's, in the option's terms."""

    rule: str
    why: str
    stored: object = None        # callable(StudySettings, RunOptions) -> value; None: checked apart (the data)
    given: object = None         # callable(RunOptions) -> value
    key: str = ""                # the StudySettings field a "rises" / "changes" option writes

    def help(self) -> str:
        return {"fixed": f" [stored; a resume refuses another value: {self.why}]",
                "rises": f" [stored; a resume may raise it, never lower it: {self.why}]",
                "changes": f" [stored; a resume may change it, for the whole study: {self.why}]",
                "here": f" [not stored; a resume may give another: {self.why}]"}[self.rule]


def _effective_hparams(settings: "StudySettings", keys) -> dict:
    """The proxy's values of ``keys`` in a study: its stored overrides over the proxy protocol's."""
    hp = trainers.protocol_hparams("proxy", hparams=settings.proxy_hparams)
    return {k: hp.get(k) for k in sorted(keys)}


# Every option of `run` whose value a study stores, and what a resume does with another value.
# One table for the check (check_resume) and for `--help` (search.py appends Resume.help()).
RESUME: dict[str, Resume] = {
    "budget": Resume("fixed", "every trial's widths were solved for it",
                     lambda s, _: s.budget, lambda o: parse_budget(o.budget)),
    "tolerance": Resume("fixed", "which networks were pruned follows from it",
                        lambda s, _: s.tolerance, lambda o: float(o.tolerance)),
    "memory": Resume("fixed", "it is the second objective of every trial", lambda s, _: s.memory, lambda o: o.memory),
    "paper_forms": Resume("fixed", "it changes the questions the sampler asks",
                          lambda s, _: bool(s.paper_forms), lambda o: bool(o.paper_forms)),
    "proxy_epochs": Resume("fixed", "every rung's scores were trained that long",
                           lambda s, _: s.proxy_epochs, lambda o: o.proxy_epochs),
    "eta": Resume("fixed", "the rungs' epochs and promotions follow from it", lambda s, _: s.eta, lambda o: o.eta),
    "rungs": Resume("rises", "a new rung trains the best further; fewer would drop rungs already scored",
                    lambda s, _: s.rungs, lambda o: o.rungs, key="rungs"),
    "synthetic": Resume("fixed", "the study's data"),
    "dataset": Resume("fixed", "the study's data"),
    "data": Resume("here", "it says where the study's data set is on this machine (refused for synthetic data)"),
    "image_size": Resume("fixed", "the networks' input size", lambda s, _: s.image_size, lambda o: o.image_size),
    "proxy_images": Resume("fixed", "every proxy trained on that subset",
                           lambda s, _: s.proxy_images or "all", lambda o: o.proxy_images or "all"),
    "synthetic_images": Resume("fixed", "the study's data", lambda s, _: s.data.get("n_train", "none (not synthetic)"),
                               lambda o: o.synthetic_images),
    "synthetic_image_size": Resume("fixed", "the study's data",
                                   lambda s, _: s.data.get("image_size") if s.data.get("kind") == "synthetic"
                                   else "none (not synthetic)", lambda o: o.synthetic_image_size),
    "proxy_hparams": Resume("fixed", "every proxy trained with them (keys not given are not compared)",
                            lambda s, o: _effective_hparams(s, o.proxy_hparams), lambda o: dict(o.proxy_hparams)),
    "heartbeat": Resume("changes", "later launches beat, and find lost trials, at the new interval",
                        lambda s, _: s.heartbeat_interval, lambda o: o.heartbeat, key="heartbeat_interval"),
    "max_retry": Resume("changes", "later launches retry a lost trial that often",
                        lambda s, _: s.max_retry, lambda o: o.max_retry, key="max_retry"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _same(old, new) -> bool:
    if isinstance(old, float) and isinstance(new, (int, float)):
        return math.isclose(old, new)
    return old == new


def _shown(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return format_count(value).replace(",", "")
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def check_resume(settings: StudySettings, opts: RunOptions) -> list[tuple[str, object]]:
    """Refuse an explicit option that contradicts a resumed study's settings (:data:`RESUME`);
    return the ``(setting, value)`` pairs a resume changes (rungs up, heartbeat, retries)."""
    given = set(opts.explicit)
    if settings.format < SETTINGS_FORMAT:
        raise ValueError(f"study {opts.study!r} was created by an earlier version whose search space asks other "
                         f"questions (settings format {settings.format}, now {SETTINGS_FORMAT}); it cannot be "
                         f"resumed: use another --study name (its results can still be shown and exported)")
    _check_data(settings, opts, given)
    changes = []
    for name, r in RESUME.items():
        if name not in given or r.stored is None:
            continue
        new = r.given(opts)
        old = r.stored(settings, opts)
        if new is None or _same(old, new):
            continue
        if r.rule == "fixed" or (r.rule == "rises" and new < old):
            allowed = "can only rise" if r.rule == "rises" else "cannot change"
            raise ValueError(f"study {opts.study!r} was created with {_flag(name)} {_shown(old)}; it {allowed} on "
                             f"resume (got {_shown(new)}): use another --study name")
        changes.append((r.key, int(new)))
    return changes


def _check_data(settings: StudySettings, opts: RunOptions, given: set) -> None:
    """The study's data (``--synthetic``, ``--dataset``, ``--data``) against the options given."""
    kind = settings.data.get("kind", "cifar10")
    searched = data_title(settings.data)
    if "synthetic" in given and kind != "synthetic":
        raise ValueError(f"study {opts.study!r} was created on {searched}; --synthetic cannot change that")
    if "data" in given and kind == "synthetic":
        raise ValueError(f"study {opts.study!r} trains on synthetic data; --data cannot change that")
    if "dataset" in given:
        new = data_source(opts)
        if kind == "synthetic" or new["kind"] != kind or (kind == "folder" and new["root"] != settings.data["root"]):
            raise ValueError(f"study {opts.study!r} was created on {searched}; --dataset {opts.dataset} cannot change "
                             f"that: use another --study name" + (" (--data DIR says where its folder is on this "
                                                                  "machine)" if kind == "folder" else ""))
