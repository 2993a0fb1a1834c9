"""Why the delay trainer runs small networks on one CPU thread: training-step time, 1 thread vs N.

The chapter's networks (cpu profile: batch 64, 8 -> 64 -> 4 neurons, 32 time steps) are made of
many tiny operations, one per time step; intra-op threading costs more than it saves, and far more
when other processes share the cores.  Interleaved rounds in one process; each round's ratio
(N threads / 1 thread) and the median of the ratios are printed.

Run: python benchmarks/delays_threads.py [--threads N] [--rounds 7] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench_common import machine_line
from dcls_lib.snn.model import readout_loss
from dcls_lib.measure import timed
from dcls_lib.recipe import param_groups
from dcls_lib.snn.train import build_model, delay_profile_config, delay_task_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(machine_line())

    config = delay_profile_config("cpu")
    data = delay_task_data(config)
    x, y = next(iter(data.train))
    model = build_model(config, "learned", data.n_inputs, data.n_classes)
    optimizer = torch.optim.Adam(param_groups(model, config.lr, 0.0, config.position_lr_scale))

    def steps() -> None:
        for _ in range(args.steps):
            loss = readout_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def step_time(threads: int) -> float:
        torch.set_num_threads(threads)
        return timed(steps)[0] / args.steps

    step_time(1), step_time(args.threads)  # warm-up
    ratios = []
    for r in range(args.rounds):
        one, many = step_time(1), step_time(args.threads)
        ratios.append(many / one)
        print(f"round {r}: 1 thread {one * 1e3:.1f} ms/step, {args.threads} threads {many * 1e3:.1f} ms/step, "
              f"ratio {ratios[-1]:.2f}")
    print(f"median ratio ({args.threads} threads / 1 thread): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
