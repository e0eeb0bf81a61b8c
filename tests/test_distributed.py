"""Data-parallel training and evaluation under ``torchrun`` on the CPU (gloo).

One ``torchrun --nproc-per-node 2`` launch (``tests/distributed_worker.py``; a launch costs seconds of start-up,
so every distributed run of this file shares it) runs, through the CLI's ``main``, for the CNN and for one GAN
recipe: an uninterrupted run, a run that rank 1 alone stops with SIGTERM, that run resumed, and at the end
``train.evaluate`` sharded over the two ranks. The tests then compare, in this process:

- one data-parallel step with one step of one process on the same images at the global batch, 2 x 2 = 4 (for the
  GAN an adversarial step: both players, both optimizers): BatchNorm is synchronised over the ranks
  (``train/distributed.py``), so the two are the same computation and agree to float precision: the gradients
  (Adam's first moment after one step is 0.1 x the gradient), the BatchNorm statistics, the loss, and the weights
  wherever the gradient is not itself float noise (Adam's first step moves a weight by lr x g / (|g| + 1e-8): by
  lr x sign(g) for any real gradient, by a noise-driven amount where g is ~1e-8, as for a convolution's bias
  before a BatchNorm, whose exact gradient is 0). With per-rank BatchNorm they would not agree: each rank would
  normalise its 2 images by their own statistics. Over the 4-step runs the logged losses agree closely;
- the stopped and resumed run with the uninterrupted one, bit for bit;
- the files: rank 0 writes everything, rank 1 nothing (each rank runs in its own directory, ``--out`` relative);
- the sharded evaluation's table with one process's.

Float32 throughout (``--precision fp32``) for determinism.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from PIL import Image
from skimage import data as skdata

from tests.helpers import write_random_weights
from train import evaluate
from train.__main__ import parse_args
from train.distributed import launched_by_torchrun
from train.engine import CHECKPOINT, HISTORY, LOSSES_CSV, TRAINING_CONFIG, InMemoryBatches, read_loss_log, train

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
RANKS, BATCH, STEPS = 2, 2, 4  # per-rank batch 2, global batch 4, over 8 images: 2 epochs, reshuffled
LR = 1e-3
ONE_STEP_LR = 1e-5  # the one-step comparison's (see assert_one_step_agrees)
GAN_STOP, CNN_STOP, FROZEN = 3, 1, 2  # rank 1's SIGTERM after these steps; the CNN's encoder frozen for 2 steps
EVAL_IMAGES, EXAMPLES = 4, 3  # 2 images per rank; the example grid spans both shards

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available() and TORCHRUN.exists()),
                                 reason="needs torch.distributed with gloo and torchrun")]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight 32 x 32 photos: two crops of each of four scikit-image photos."""
    folder = tmp_path_factory.mktemp("images")
    for i, photo in enumerate([skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket]):
        image = Image.fromarray(photo()).convert("RGB")
        for j, box in enumerate([(0, 0, 300, 300), (100, 50, 400, 350)]):
            image.crop(box).resize((32, 32), Image.BICUBIC).save(folder / f"{2 * i + j}.png")
    return folder


def cnn_args(images: Path, out: str, batch: int = BATCH, steps: int = STEPS, frozen: int = FROZEN,
             lr: float = LR) -> list[str]:
    return ["cnn", "--data", str(images), "--out", out, "--steps", str(steps), "--batch-size", str(batch),
            "--size", "32", "--config", "width=16", "--freeze-encoder-steps", str(frozen), "--lr", str(lr),
            "--precision", "fp32", "--device", "cpu", "--threads", "1", "--no-cache", "--log-every", "1"]


def gan_args(images: Path, out: str, batch: int = BATCH, steps: int = STEPS, pretrain: float = 0.5,
             lr: float = LR) -> list[str]:
    return ["attention_ugan", "--data", str(images), "--out", out, "--steps", str(steps), "--batch-size", str(batch),
            "--size", "32", "--config", "base_width=8", "--d-config", "ndf=8", "--pretrain-share", str(pretrain),
            "--lr", str(lr), "--d-lr", str(lr), "--precision", "fp32", "--device", "cpu", "--threads", "1",
            "--no-cache", "--log-every", "1"]


def one_step(args, images: Path, out: str, batch: int = BATCH) -> list[str]:
    """One step at ``ONE_STEP_LR``: the CNN's encoder trained (not frozen), the GAN's adversarial phase (both
    players)."""
    return (cnn_args(images, out, batch, steps=1, frozen=0, lr=ONE_STEP_LR) if args is cnn_args
            else gan_args(images, out, batch, steps=1, pretrain=0.0, lr=ONE_STEP_LR))


def eval_args(images: Path, weights: str, out: str) -> list[str]:
    return ["--data", str(images), "--weights", weights, "--out", out, "--size", "32", "--models", "cnn",
            "--max-images", str(EVAL_IMAGES), "--examples", str(EXAMPLES), "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def launch(images, tmp_path_factory) -> Path:
    """The one torchrun launch; returns its folder (``rank0/``, ``rank1/``: each rank's working directory)."""
    root = tmp_path_factory.mktemp("torchrun")
    weights = write_random_weights(root / "weights", networks=("cnn",))
    plan = [
        {"module": "train", "argv": one_step(cnn_args, images, "runs/one_step")},
        {"module": "train", "argv": one_step(gan_args, images, "runs/one_step")},
        {"module": "train", "argv": cnn_args(images, "runs/straight")},
        {"module": "train", "argv": cnn_args(images, "runs/stopped"), "sigterm": [1, CNN_STOP]},
        {"module": "train", "argv": cnn_args(images, "runs/stopped") + ["--resume"]},
        {"module": "train", "argv": gan_args(images, "runs/straight")},
        {"module": "train", "argv": gan_args(images, "runs/stopped"), "sigterm": [1, GAN_STOP]},
        {"module": "train", "argv": gan_args(images, "runs/stopped") + ["--resume"]},
        {"module": "evaluate", "argv": eval_args(images, weights, "eval")},
    ]
    (root / "plan.json").write_text(json.dumps(plan))
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", str(RANKS), str(WORKER),
                             str(root / "plan.json")], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    (root / "output.txt").write_text(result.stdout + result.stderr)
    return root


@pytest.fixture(scope="module")
def one_process(images, tmp_path_factory) -> Path:
    """The same runs in this process at the global batch (2 ranks x 2 = 4)."""
    root = tmp_path_factory.mktemp("one_process")
    assert not launched_by_torchrun()
    for args in (cnn_args, gan_args):
        train(parse_args(args(images, str(root / "runs"), batch=RANKS * BATCH)))
        train(parse_args(one_step(args, images, str(root / "one_step"), batch=RANKS * BATCH)))
    return root


def checkpoint(run: Path) -> dict:
    return torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)


def named(key: str):
    """``assert_close``'s message: the parameter's name before torch's own report (which entries, by how much)."""
    return lambda report: f"{key}: {report}"


def assert_states_close(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=named(key), **tolerance)


def assert_optimizers_close(a: dict, b: dict, **tolerance) -> None:
    """Adam's moments and step counts, parameter by parameter."""
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(a["state"][index][name], b["state"][index][name], msg=f"{index} {name}",
                                       **tolerance)


EXACT = {"rtol": 0, "atol": 0}
FLOAT = 1e-3  # of a tensor's largest entry: the global batch's sums in another order, through deep BatchNorm nets


def assert_one_step_agrees(ranks: dict, alone: dict, network: str, optimizer: str) -> None:
    """One Adam step of ``network`` (generator or discriminator) on 2 ranks and in one process: the gradients (the
    first moments, 0.1 g) and the BatchNorm statistics to float precision, the weights moved by lr x sign(g)
    alike wherever |g| is far above the float noise and Adam's epsilon, and by at most 2 lr anywhere.

    The learning rate is small (``ONE_STEP_LR``) because in an adversarial step the generator's gradient is taken
    through the discriminator *after* its step, and that step moves the weights whose gradient is float noise by
    a noise-driven amount of up to lr: at lr = 1e-3 that alone puts differences of ~1e-3 of the largest entry into
    the generator's gradients (measured: up to 1.7e-3, against 1e-5 for the discriminator's and the CNN's)."""
    moments = {index: (ranks[optimizer]["state"][index], alone[optimizer]["state"][index])
               for index in alone[optimizer]["state"]}
    parameters = [k for k in alone[network] if not any(k.endswith(b) for b in ("running_mean", "running_var",
                                                                                   "num_batches_tracked"))]
    assert len(parameters) == len(moments)  # (every parameter has a moment: all of them were trained)
    for (index, (got, want)), key in zip(sorted(moments.items()), parameters):
        assert got["step"] == want["step"] == 1
        scale = float(want["exp_avg"].abs().max())
        torch.testing.assert_close(got["exp_avg"], want["exp_avg"], rtol=0, atol=FLOAT * scale, msg=named(key))
        gradient = want["exp_avg"].abs() / 0.1
        real = (gradient > 1e-2 * gradient.max()) & (gradient > 1e-6)  # far above the float noise and Adam's 1e-8
        torch.testing.assert_close(ranks[network][key][real], alone[network][key][real], rtol=1e-6, atol=1e-8,
                                   msg=named(key))
        torch.testing.assert_close(ranks[network][key], alone[network][key], rtol=0, atol=2 * ONE_STEP_LR,
                                   msg=named(key))
    for key in alone[network]:
        if key.endswith(("running_mean", "running_var")):
            scale = float(alone[network][key].abs().max())
            torch.testing.assert_close(ranks[network][key], alone[network][key], rtol=0, atol=FLOAT * scale,
                                       msg=named(key))


@pytest.mark.parametrize("network", ["cnn", "attention_ugan"])
def test_a_step_on_two_ranks_is_a_step_of_one_process_at_the_global_batch(launch, one_process, network):
    ranks = checkpoint(launch / "rank0" / "runs" / "one_step" / network)
    alone = checkpoint(one_process / "one_step" / network)
    assert ranks["step"] == alone["step"] == 1
    assert_one_step_agrees(ranks, alone, "generator", "generator_optimizer")
    if network == "attention_ugan":  # an adversarial step: both players, both optimizers in step
        assert ranks["phase"] == alone["phase"] == "adversarial"
        assert_one_step_agrees(ranks, alone, "discriminator", "discriminator_optimizer")
    for run in (launch / "rank0" / "runs" / "one_step", one_process / "one_step"):
        assert [int(r["step"]) for r in read_loss_log(run / network / LOSSES_CSV)] == [1]
    logged = read_loss_log(launch / "rank0" / "runs" / "one_step" / network / LOSSES_CSV)[0]
    expected = read_loss_log(one_process / "one_step" / network / LOSSES_CSV)[0]
    for column, value in expected.items():  # the log holds the global batch's losses (the mean over the ranks)
        if column not in ("step", "phase") and value:
            assert float(logged[column]) == pytest.approx(float(value), rel=1e-5), column


@pytest.mark.parametrize("network", ["cnn", "attention_ugan"])
def test_longer_runs_on_two_ranks_follow_one_process(launch, one_process, network):
    """Four steps (the CNN's encoder frozen for two, so the DDP wrapper is rebuilt; the GAN through both phases,
    two epochs of the 8 images): the sampler in the same state, the losses the same to a few parts in a thousand
    (each Adam step turns the float noise of near-zero gradients into differences of up to lr)."""
    ranks = checkpoint(launch / "rank0" / "runs" / "straight" / network)
    alone = checkpoint(one_process / "runs" / network)
    assert ranks["step"] == alone["step"] == STEPS and ranks["phase"] == alone["phase"]
    # the sampler's state is the global one: rank 0's checkpoint resumes every rank
    assert ranks["batches"]["position"] == alone["batches"]["position"]
    assert torch.equal(ranks["batches"]["order"], alone["batches"]["order"])
    logged = read_loss_log(launch / "rank0" / "runs" / "straight" / network / LOSSES_CSV)
    expected = read_loss_log(one_process / "runs" / network / LOSSES_CSV)
    assert [r["step"] for r in logged] == [r["step"] for r in expected] == [str(s) for s in range(1, STEPS + 1)]
    for row, reference in zip(logged, expected):
        for column, value in reference.items():
            if column not in ("step", "phase") and value:
                assert float(row[column]) == pytest.approx(float(value), rel=3e-2), column
    saved = json.loads((launch / "rank0" / "runs" / "straight" / network / TRAINING_CONFIG).read_text())
    assert saved["world_size"] == RANKS and saved["global_batch_size"] == RANKS * BATCH
    history = json.loads((launch / "rank0" / "runs" / "straight" / network / HISTORY).read_text())
    assert history["images"] == STEPS * RANKS * BATCH and history["batch_size"] == BATCH


@pytest.mark.parametrize("network, stop", [("cnn", CNN_STOP), ("attention_ugan", GAN_STOP)])
def test_a_stop_on_one_rank_stops_all_and_resume_continues_bit_for_bit(launch, network, stop):
    run = launch / "rank0" / "runs" / "stopped" / network
    first, resumed = [json.loads(line) for line in (run / HISTORY).read_text().splitlines()]
    # rank 1 alone was sent SIGTERM: rank 0 stopped after the same step, on request (not by a budget)
    assert first["to_step"] == stop and first["stopped_on_request"] and not first["stopped_by_budget"]
    assert resumed["from_step"] == stop and resumed["to_step"] == STEPS and resumed["resume"]
    assert [int(r["step"]) for r in read_loss_log(run / LOSSES_CSV)] == list(range(1, STEPS + 1))
    straight, stopped = checkpoint(launch / "rank0" / "runs" / "straight" / network), checkpoint(run)
    assert stopped["step"] == STEPS
    assert_states_close(straight["generator"], stopped["generator"], **EXACT)
    assert_optimizers_close(straight["generator_optimizer"], stopped["generator_optimizer"], **EXACT)
    if network == "attention_ugan":
        assert_states_close(straight["discriminator"], stopped["discriminator"], **EXACT)
        assert_optimizers_close(straight["discriminator_optimizer"], stopped["discriminator_optimizer"], **EXACT)
    output = (launch / "output.txt").read_text()
    assert f"{network}: stopped on request (--resume continues) at step {stop}/{STEPS}" in output
    assert f"{network}: data-parallel on 2 processes (cpu), batch 2 per process, global batch 4" in output


def test_only_rank_0_writes(launch):
    written = {p.relative_to(launch / "rank0").as_posix() for p in (launch / "rank0").rglob("*") if p.is_file()}
    for run in ("straight", "stopped"):
        for network in ("cnn", "attention_ugan"):
            for name in (CHECKPOINT, "model.safetensors", "config.json", LOSSES_CSV, "curves.png", HISTORY,
                         TRAINING_CONFIG):
                assert f"runs/{run}/{network}/{name}" in written
    assert {"eval/metrics.csv", "eval/metrics.md", "eval/examples.png"} <= written
    assert [p for p in (launch / "rank1").rglob("*")] == []  # rank 1 read the checkpoint it resumed from rank 0


def test_sharded_evaluation_gathers_the_table_of_one_process(launch, images, tmp_path):
    weights = str(launch / "weights")
    evaluate.main(eval_args(images, weights, str(tmp_path)))
    with open(launch / "rank0" / "eval" / "metrics.csv", newline="") as f:
        sharded = {row["method"]: row for row in csv.DictReader(f)}
    with open(tmp_path / "metrics.csv", newline="") as f:
        alone = {row["method"]: row for row in csv.DictReader(f)}
    assert sharded.keys() == alone.keys() == {"grayscale", "cnn", "ground_truth"}
    for method, row in alone.items():
        assert sharded[method]["images"] == row["images"] == str(EVAL_IMAGES)
        for column in ("delta_colourfulness", "fid", "lpips", "psnr", "ssim", "colourfulness"):
            if row[column] in ("", "n/a"):
                assert sharded[method][column] == row[column]
            else:
                assert float(sharded[method][column]) == pytest.approx(float(row[column]), rel=1e-4, abs=1e-4), \
                    f"{method} {column}"
    assert "sharded over 2 processes" in (launch / "rank0" / "eval" / "metrics.md").read_text()


# ---------------------------------------------------------------------------------------------------------
# The sampler, in this process

def test_the_ranks_slices_make_the_batch_of_one_process_at_the_global_batch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 1, 2).contiguous()
    images[:, :, :, 1] += 100  # a flip is visible: pixel 0 then holds the larger value
    labels = torch.arange(10)
    cpu = torch.device("cpu")
    alone = InMemoryBatches(images, labels, 4, cpu, seed=3)
    ranks = [InMemoryBatches(images, labels, 2, cpu, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = []
    for _ in range(5):  # 2 batches per epoch (the last 2 images dropped), reshuffled: 2.5 epochs
        rgb, index = alone.next()
        parts = [batches.next() for batches in ranks]
        torch.testing.assert_close(torch.cat([p[0] for p in parts]), rgb, rtol=0, atol=0)
        assert torch.equal(torch.cat([p[1] for p in parts]), index)
        seen.append(index)
    assert len(set(torch.cat(seen[:2]).tolist())) == 8  # an epoch: each image at most once across the ranks
    assert torch.cat(seen[:2]).tolist() != torch.cat(seen[2:4]).tolist()  # the next epoch in another order
    for batches in ranks:
        assert batches.state_dict()["position"] == alone.state_dict()["position"]
        assert torch.equal(batches.state_dict()["order"], alone.state_dict()["order"])
    with pytest.raises(ValueError, match="global batch of 6 x 2 ranks = 12 images"):
        InMemoryBatches(images, labels, 6, cpu, seed=0, rank=0, world_size=2)
