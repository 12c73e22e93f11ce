#!/usr/bin/env python
"""Benchmark the proxy trainer against a naive PyTorch CIFAR-10 loop.

For one model factory (default: the ``ho-euler-x14`` preset, HO-ResNet
Euler x14, 1.03M parameters) it measures, in the same process:

* **proxy**: one whole proxy trial through ``trainers.train`` (protocol ``proxy``) - setup
  (data to the device, model, optimiser), optional torch.compile, training
  (``--epochs``, default the proxy's own), evaluation on the validation split -
  with training images/s over all epochs and over the last epoch;
* **baseline**: one epoch of the textbook loop - torchvision ``CIFAR10``
  dataset (md5 check skipped, the workplace copy is JPEG-derived) +
  ``DataLoader`` with per-image CPU transforms ``RandomCrop(32, 4)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``; fp32, batch 128,
  SGD; timed from the first batch request (worker start-up included) to the
  last optimiser step (device synchronised);
* the ratio of the two throughputs, and the achieved TFLOP/s of each, with
  training FLOPs per image = 3 x forward FLOPs from
  ``torch.utils.flop_counter.FlopCounterMode`` (backward ~ 2 x forward);
* with ``--compile``, a second proxy trial under torch.compile.

Writes ``benchmarks/results/bench_proxy-<device>-<UTC time>.json`` with
provenance (versions, device, git commit, arguments).

GPU run::

    python benchmarks/bench_proxy.py --data data --device cuda --compile

CPU smoke check (seconds)::

    python benchmarks/bench_proxy.py --synthetic --device cpu --preset tiny \\
        --n-train 1024 --n-val 256 --epochs 1 --num-workers 0
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trainers  # noqa: E402
from trainers import _runtime  # noqa: E402


# ----------------------------------------------------------------------------- models
def _tiny() -> nn.Module:
    """A small CNN for smoke checks without the models package."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _factory(preset: str):
    if preset == "tiny":
        return _tiny
    import models                        # lazily: trainers/ never imports models
    spec = models.presets.get(preset)
    return lambda: models.build(spec)


def _forward_flops_per_image(make_model, image_size: int, device: torch.device) -> float:
    """Forward FLOPs per image (FlopCounterMode counts a multiply-add as 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    model = make_model().to(device).eval()
    x = torch.randn(2, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


# ----------------------------------------------------------------------------- baseline
class _ArrayCIFAR(torch.utils.data.Dataset):
    """Per-image access like ``torchvision.datasets.CIFAR10.__getitem__`` (HWC uint8 -> PIL)."""

    def __init__(self, images_nchw: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images_nchw.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def _baseline_dataset(args, data: trainers.Dataset, transform):
    if args.synthetic:
        return _ArrayCIFAR(data.train.images, data.train.labels, transform), "synthetic arrays"
    import torchvision

    class CIFAR10NoMD5(torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:       # the offline copy is JPEG-derived
            return True

        def _load_meta(self) -> None:             # torchvision md5-checks batches.meta too
            self.classes = list(trainers.CIFAR10_CLASSES)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    root = Path(args.data)
    if not (root / "cifar-10-batches-py").is_dir() and root.name == "cifar-10-batches-py":
        root = root.parent
    full = CIFAR10NoMD5(str(root), train=True, transform=transform, download=False)
    train_idx, _ = trainers.train_val_indices(len(full), args.val_size, 0)
    return torch.utils.data.Subset(full, train_idx.tolist()), "torchvision.datasets.CIFAR10"


def _run_baseline(args, make_model, data: trainers.Dataset, device: torch.device) -> dict:
    import torchvision.transforms as T
    size = data.image_size
    transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    dataset, source = _baseline_dataset(args, data, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.baseline_batch_size, shuffle=True, drop_last=False,
        num_workers=args.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=False)
    torch.manual_seed(0)
    model = make_model().to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    images, batches = 0, 0
    total = len(loader) if args.baseline_max_batches is None else min(len(loader),
                                                                    args.baseline_max_batches)
    from tqdm.auto import tqdm
    _sync(device)
    t0 = time.perf_counter()
    with tqdm(total=total, desc="baseline", unit="batch", disable=args.no_progress,
              leave=False) as bar:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += y.shape[0]
            batches += 1
            bar.update(1)
            if batches >= total:
                break
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"source": source, "batch_size": args.baseline_batch_size,
            "num_workers": args.num_workers, "batches": batches, "images": images,
            "seconds": seconds, "images_per_second": images / seconds,
            "final_loss": float(loss.item())}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- proxy
def proxy_hparams(batch_size: int | None) -> dict | None:
    """Proxy overrides for another batch size: the learning rate scaled with it, as
    ``HPARAMS["lr"]`` is (0.1 per 128 images); None keeps the proxy's own."""
    if not batch_size:
        return None
    return {"batch_size": batch_size, "lr": trainers.HPARAMS["lr"] * batch_size / trainers.HPARAMS["batch_size"]}


def _run_proxy(args, make_model, data, device, compile: bool) -> dict:
    r = trainers.train(make_model, data, protocol="proxy", epochs=args.epochs, device=device, seed=0,
                       hparams=proxy_hparams(args.batch_size), compile=compile,
                       progress=not args.no_progress)
    d = r.to_dict()
    last = r.history[-1] if r.history else None
    d["last_epoch_images_per_second"] = (last["images"] / last["seconds"]
                                         if last and last.get("seconds") else None)
    return d


# ----------------------------------------------------------------------------- main
def _provenance(device: torch.device) -> dict:
    import torchvision
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:], "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "device": _runtime.device_name(device), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "git_commit": _runtime.git_commit(),
    }


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", default="data", help="CIFAR-10 root (torchvision layout)")
    src.add_argument("--synthetic", action="store_true", help="use trainers.synthetic(...)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 if absent")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--preset", default="ho-euler-x14", help="models preset name, or 'tiny'")
    p.add_argument("--epochs", type=int, default=None,
                   help="proxy epochs (default: the proxy's own, "
                        f"{trainers.PROTOCOLS['proxy']['epochs']})")
    p.add_argument("--compile", action="store_true", help="also run a torch.compile'd proxy trial (a model with stochastic "
                   "depth breaks the graph at each drop decision and recompiles per block)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="proxy batch size override (the learning rate scaled linearly with it)")
    p.add_argument("--baseline-batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="baseline DataLoader workers")
    p.add_argument("--baseline-max-batches", type=int, default=None,
                   help="stop the baseline epoch early (smoke checks)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--val-size", type=int, default=5000, help="CIFAR-10 validation images")
    p.add_argument("--n-train", type=int, default=45000, help="synthetic training images")
    p.add_argument("--n-val", type=int, default=5000, help="synthetic validation images")
    p.add_argument("--image-size", type=int, default=32, help="synthetic image side, pixels")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_data(args) -> trainers.Dataset:
    """The training data ``args`` name: synthetic or CIFAR-10 with its validation split."""
    if args.synthetic:
        return trainers.synthetic(args.n_train, args.n_val, 16, image_size=args.image_size)
    return trainers.load_cifar10(args.data, download=args.download, val_size=args.val_size)


def bench(args, data: trainers.Dataset, device: torch.device, after=None) -> dict:
    """The measurement without provenance: the proxy (eager, and compiled with ``--compile``)
    and the baseline on ``data``; ``after(name)`` is called when each run has finished."""
    after = after or (lambda name: None)
    make_model = _factory(args.preset)
    n_params = sum(p.numel() for p in make_model().parameters())
    fwd = _forward_flops_per_image(make_model, data.image_size, device)
    train_flops = 3 * fwd                              # FLOPs per training image (fwd + bwd)

    def tflops(ips):
        return None if not ips else train_flops * ips / 1e12

    report = {"preset": args.preset, "params": n_params, "data": data.name, "train_images": len(data.train),
              "image_size": data.image_size, "forward_flops_per_image": fwd, "train_flops_per_image": train_flops}
    proxies = {"eager": _run_proxy(args, make_model, data, device, compile=False)}
    after("proxy-eager")
    if args.compile:
        try:
            proxies["compiled"] = _run_proxy(args, make_model, data, device, compile=True)
        except Exception as e:  # noqa: BLE001 - a compiler failure must not lose the eager and baseline runs
            proxies["compiled"] = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:500],
                                   "images_per_second": None, "last_epoch_images_per_second": None}
        after("proxy-compiled")
    for d in proxies.values():
        d["tflops"] = tflops(d["images_per_second"])
        d["last_epoch_tflops"] = tflops(d["last_epoch_images_per_second"])
    report["proxy"] = proxies
    if not args.no_baseline:
        base = _run_baseline(args, make_model, data, device)
        after("baseline")
        base["tflops"] = tflops(base["images_per_second"])
        report["baseline"] = base
        ips = proxies["eager"]["images_per_second"]
        report["speedup_eager_vs_baseline"] = ips / base["images_per_second"] if ips else None
        if "compiled" in proxies and proxies["compiled"]["images_per_second"]:
            report["speedup_compiled_vs_baseline"] = (proxies["compiled"]["images_per_second"]
                                                      / base["images_per_second"])
    return report


def main(argv=None) -> dict:
    args = _parse(argv)
    device = _runtime.resolve_device(args.device)
    data = load_data(args)
    report = {"provenance": _provenance(device), **bench(args, data, device)}
    _print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"bench_proxy-{device.type}-{stamp}.json"
    path.write_text(json.dumps(_runtime.jsonable(report), indent=2) + "\n")
    print(f"wrote {path}")
    return report


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def _print(r: dict) -> None:
    prov = r["provenance"]
    print(f"{r['preset']}: {r['params'] / 1e6:.3f}M params, {r['train_flops_per_image'] / 1e9:.3f} "
          f"GFLOP per training image, {prov['device']}, torch {prov['torch']}")
    print(f"{'run':<10} {'images/s':>10} {'last ep.':>10} {'TFLOP/s':>8} {'setup s':>8} "
          f"{'compile s':>9} {'train s':>8} {'eval s':>7} {'total s':>8}  val acc / status")
    for name, d in r["proxy"].items():
        if "seconds" not in d:                       # the run raised: only its status and reason
            print(f"{'proxy-' + name:<10} {d['status']}: {d['reason']}")
            continue
        s = d["seconds"]
        print(f"{'proxy-' + name:<10} {_fmt(d['images_per_second']):>10} "
              f"{_fmt(d['last_epoch_images_per_second']):>10} {_fmt(d['tflops'], '.2f'):>8} "
              f"{s['setup']:>8.2f} {s['compile']:>9.2f} {s['train']:>8.2f} {s['eval']:>7.2f} "
              f"{s['total']:>8.2f}  {_fmt(d['val_accuracy'], '.4f')} {d['status']} {d['reason']}")
    if "baseline" in r:
        b = r["baseline"]
        print(f"{'baseline':<10} {b['images_per_second']:>10.1f} {'':>10} "
              f"{_fmt(b['tflops'], '.2f'):>8} {'':>8} {'':>9} {b['seconds']:>8.2f}   "
              f"({b['images']} images, {b['num_workers']} workers, batch {b['batch_size']})")
        print(f"proxy/baseline images/s: eager {_fmt(r['speedup_eager_vs_baseline'], '.2f')}x"
              + (f", compiled {r['speedup_compiled_vs_baseline']:.2f}x"
                 if "speedup_compiled_vs_baseline" in r else ""))


if __name__ == "__main__":
    main()
