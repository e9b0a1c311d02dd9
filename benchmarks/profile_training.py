"""Where a training step's time goes, per method: ``torch.profiler`` over the first
``--steps`` steps of an epoch on the preset's data, as :func:`harness.train.fit` runs
them (the same loader, batch transform, autocast and ``training_step``).

    ./dev python benchmarks/profile_training.py --preset default --steps 30 [--methods abn,msabn]

Prints, per method, the share of wall time spent drawing batches versus in the step,
and the operators with the most self CPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import methods  # noqa: F401  (registers methods)
import metrics  # noqa: F401  (registers metrics)
from harness import config, data, distributed, train
from harness import device as dev
from harness.run import resolve_methods


def profile_method(name: str, cfg: config.RunConfig, split: data.Split, steps: int,
                   top: int) -> None:
    mcfg = train.method_config(name, cfg)
    if mcfg.train.epochs <= 0:
        print(f"{name}: trains nothing (its parent's checkpoint)")
        return
    cpu = torch.device("cpu")
    model = dev.prepare(train.build_method(name, mcfg, split), cpu)
    model.eval()
    model.on_fit_start(split, cpu)
    optimizers = model.configure_optimizers(mcfg.train)
    gen = torch.Generator().manual_seed(0)
    loader = data.loader(split, mcfg.train.batch_size, cpu, generator=gen, persistent=False,
                         batch_sampler=distributed.GlobalBatches(
                             len(split.dataset), mcfg.train.batch_size, gen))  # type: ignore[arg-type]
    model.train()
    it = iter(loader)
    t_data = t_step = 0.0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            with record_function("draw batch"):
                try:
                    batch = next(it)
                except StopIteration:
                    break
                batch = dev.to_device(batch, cpu)
                if split.batch_transform is not None:
                    batch = split.batch_transform(batch)
            t1 = time.perf_counter()
            with record_function("training_step"), dev.autocast(cpu, mcfg.precision):
                model.training_step(batch, optimizers)
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_step += t2 - t1
    per = 1000 * (t_data + t_step) / steps
    print(f"\n{name}: {per:.0f} ms per step of {mcfg.train.batch_size} images "
          f"({100 * t_data / (t_data + t_step):.0f} % drawing batches, "
          f"{len(loader)} steps per epoch -> {per * len(loader) / 1000:.1f} s per epoch)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top,
                                    max_name_column_width=40))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="default")
    p.add_argument("--methods", default="all")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    cfg = config.resolve(args.preset)
    cfg = dataclasses.replace(
        cfg, precision=dev.resolve_precision(cfg.precision, torch.device("cpu")))
    split = data.build(cfg.dataset, "train", **cfg.dataset_kwargs)
    for name in resolve_methods(args.methods):
        profile_method(name, cfg, split, args.steps, args.top)


if __name__ == "__main__":
    main()
