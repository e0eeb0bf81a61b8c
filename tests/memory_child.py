"""Run in a child process by tests/test_limits.py and tests/test_study.py, under an address-space limit; prints one
JSON line with the process's peak resident memory (VmHWM) in MB.

    python -m tests.memory_child one WEIGHTS MODELS PHOTO            # one Compare request on one file
    python -m tests.memory_child sequence WEIGHTS MODELS PHOTO...    # Compare requests one after another
    python -m tests.memory_child study WEIGHTS MODELS PHOTOS_DIR N   # N study participants at once

``one``: the refusal message or the result's size; a child of its own per file, so each peak is that request's.
``sequence``: each request through the Compare button's own handler (its fair queue slot, and the memory it hands
back afterwards), in one process as a long-running server would take them: the peak over all of them, and each
request's peak and the resident memory left after it. ``study``: N threads, each a participant going through the
whole study (start, answer every pair); the peak over all of them. MODELS is comma-separated.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time


def memory_mb(field: str = "VmHWM") -> float:
    """``VmHWM``: the peak resident memory so far; ``VmRSS``: the resident memory now."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start VmHWM again from the resident memory now (Linux: writing 5 to clear_refs), so the next reading is one
    request's peak; a no-op where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def one(args, available) -> dict:
    import gradio as gr

    import app
    result: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        try:
            comparison, files = app.run_comparison(args.photo, list(available), available, app.Settings(), cache)
            result["size"] = list(comparison.grey.size)
            result["results"] = len(files.results)
        except gr.Error as err:
            result["refused"] = err.message
        except MemoryError:
            result["memory_error"] = True
    return result


def sequence(args, available) -> dict:
    import gradio as gr

    import app
    demo = app.build_demo(available, {}, app.Settings(weights=args.weights))
    (compare,) = [f.fn for f in demo.fns.values() if f.name == "compare"]
    request = gr.Request(client={"host": "10.0.0.1"}, headers={})
    overall, requests = 0.0, []
    for photo in args.photos:
        reset_peak()
        start = time.monotonic()
        outputs = compare({"path": photo}, list(available), None, None, request)
        files = outputs[-4]  # the ComparisonFiles state
        peak = memory_mb()
        overall = max(overall, peak)
        requests.append({"photo": os.path.basename(photo), "results": len(files.results),
                         "scored": files.scores is not None, "peak_mb": round(peak),
                         "after_mb": round(memory_mb("VmRSS")), "seconds": round(time.monotonic() - start, 1)})
        del outputs, files
    return {"requests": requests, "overall_peak_mb": round(overall)}


def study(args, available) -> dict:
    with tempfile.TemporaryDirectory(prefix="study-data-", ignore_cleanup_errors=True) as data:
        return _study(args, available, data)


def _study(args, available, data: str) -> dict:
    """``participants`` threads take the study at once, each answering every trial, its SQLite store in ``data``."""
    from study.protocol import Study, StudySettings
    settings = StudySettings(photos_dir=args.photos_dir, data_dir=data, practice_pairs=1, batches=1,
                             pairs_per_batch=2, seed=1, starts_per_hour=1000)
    run = Study(settings, available)
    start, errors, finished = threading.Barrier(args.participants), [], []

    def participant(number: int) -> None:
        try:
            start.wait()
            screen = run.start(None, client=f"10.0.0.{number}")
            while screen.kind != "done":
                if screen.kind == "feedback":
                    screen = run.resume(screen.participant_id)
                    continue
                assert screen.kind == "trial", screen
                screen = run.answer(screen.participant_id, screen.trial_id, "left", True)
            finished.append(number)
        except Exception as err:  # noqa: BLE001 - reported to the test
            errors.append(repr(err))

    threads = [threading.Thread(target=participant, args=(n,)) for n in range(args.participants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"finished": len(finished), "errors": errors[:3]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit-gb", type=float, default=8.0)
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("one", "sequence", "study"):
        mode = modes.add_parser(name)
        mode.add_argument("weights")
        mode.add_argument("models")
        if name == "one":
            mode.add_argument("photo")
        elif name == "sequence":
            mode.add_argument("photos", nargs="+")
        else:
            mode.add_argument("photos_dir")
            mode.add_argument("participants", type=int)
    args = parser.parse_args()
    limit = int(args.limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a runaway request fails here instead of the machine

    import torch

    import colorizers

    torch.set_num_threads(2)
    available, unavailable = colorizers.load_colorizers(args.models.split(","), source=args.weights)
    assert not unavailable, unavailable
    result: dict = {"baseline_mb": round(memory_mb())}
    result.update({"one": one, "sequence": sequence, "study": study}[args.mode](args, available))
    result["peak_mb"] = max(round(memory_mb()), result.get("overall_peak_mb", 0))
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
