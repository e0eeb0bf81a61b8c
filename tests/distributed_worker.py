"""One rank of a ``torchrun`` launch for ``tests/test_distributed.py``: the ``python -m train`` and ``python -m
train.evaluate`` command lines of a JSON plan, one after the other, each through the CLI's ``main``.

Each rank works in its own directory, ``ROOT/rank<RANK>`` (``ROOT`` the plan file's folder), so a relative
``--out`` shows which ranks wrote files. The worker starts the process group once and the commands join it, as
``train`` and ``train.evaluate`` do when their caller has started one (on its own, each starts and ends it). A command may name a rank that sends itself SIGTERM after its N-th step of
that run (``"sigterm": [RANK, N]``), as ``kill`` would, to check that the other ranks stop after the same step.

    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py PLAN.json
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # (torchrun runs this file as a script)

from train import engine, evaluate  # noqa: E402
from train.__main__ import main as train_main  # noqa: E402


def sigterm_after(steps: int) -> None:
    """This process sends itself SIGTERM right after its ``steps``-th optimisation step of the next run."""
    step, count = engine.Trainer.step, {"n": 0}

    def counted(self, *args):
        result = step(self, *args)
        count["n"] += 1
        if count["n"] == steps:
            signal.raise_signal(signal.SIGTERM)
        return result

    engine.Trainer.step = counted


def run(plan_path: str) -> None:
    rank = int(os.environ["RANK"])
    plan = json.loads(Path(plan_path).read_text())
    work = Path(plan_path).parent / f"rank{rank}"
    work.mkdir(exist_ok=True)
    os.chdir(work)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    original_step = engine.Trainer.step
    for command in plan:
        engine.Trainer.step = original_step
        if command.get("sigterm") and command["sigterm"][0] == rank:
            sigterm_after(command["sigterm"][1])
        if command["module"] == "train":
            train_main(command["argv"])
        else:
            evaluate.main(command["argv"])
        print(f"rank {rank}: done: {command['module']} {' '.join(command['argv'])}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1])
