"""Checkpoints: complete state, verified loading, no unpickling, atomic under SIGKILL."""
import json
import logging
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from pipeline.errors import Interrupted
from pipeline.run import progress as progress_module
from pipeline.run.checkpoint import Checkpointer, list_checkpoints, load_checkpoint, save_checkpoint
from pipeline.run.progress import Progress
from pipeline.run.signals import StopSignals


def make_ckpt(folder, every=1, keep=3, total=100):
    return Checkpointer(folder, total, every, keep, Progress("t", total, quiet=True), StopSignals(()))


def draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist())


def test_round_trip_restores_objects_and_every_rng(tmp_path):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    sched.step()
    gen = torch.Generator().manual_seed(7)
    torch.rand(2, generator=gen)
    save_checkpoint(tmp_path / "step_00000005.pt", 5, {"model": model, "optim": opt, "sched": sched, "gen": gen})
    expected = draws(), torch.rand(2, generator=gen).tolist()
    w = model.weight.detach().clone()
    exp_avg = opt.state_dict()["state"][0]["exp_avg"].clone()

    model2 = torch.nn.Linear(4, 2)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.ExponentialLR(opt2, gamma=0.5)
    gen2 = torch.Generator().manual_seed(99)
    random.random(), np.random.rand(), torch.rand(5)  # move the global RNGs on
    step = make_ckpt(tmp_path).resume({"model": model2, "optim": opt2, "sched": sched2, "gen": gen2})
    assert step == 5
    assert sched2.last_epoch == 2 and opt2.param_groups[0]["lr"] == pytest.approx(0.025)
    sched.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert torch.equal(model2.weight, w)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert (draws(), torch.rand(2, generator=gen2).tolist()) == expected


def test_damaged_newest_falls_back_with_warning(tmp_path, caplog):
    model = torch.nn.Linear(2, 2)
    ck = make_ckpt(tmp_path)
    ck.save(3, {"model": model})
    with torch.no_grad():
        model.weight.add_(1.0)
    ck.save(4, {"model": model})
    newest = tmp_path / "step_00000004.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    fresh = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING, logger="geneman"):
        assert ck.resume({"model": fresh}) == 3
    assert "step_00000004.pt is damaged" in caplog.text
    assert not torch.equal(fresh.weight, model.weight)


def test_checkpoint_without_digest_is_not_used(tmp_path):
    ck = make_ckpt(tmp_path)
    ck.save(1, {"model": torch.nn.Linear(2, 2)})
    ck.save(2, {"model": torch.nn.Linear(2, 2)})
    (tmp_path / "step_00000002.pt.sha256").unlink()
    assert ck.resume({"model": torch.nn.Linear(2, 2)}) == 1


class Evil:
    def __reduce__(self):
        return (open, ("/tmp/geneman_pwned_marker", "w"))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    import hashlib
    import io
    marker = "/tmp/geneman_pwned_marker"
    subprocess.run(["rm", "-f", marker], check=True)
    buf = io.BytesIO()
    torch.save({"format": 1, "step": 1, "objects": {"x": Evil()}, "rng": {}}, buf)
    path = tmp_path / "step_00000001.pt"
    path.write_bytes(buf.getvalue())
    (tmp_path / "step_00000001.pt.sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(path)
    assert not __import__("os").path.exists(marker)


def test_keep_last_prunes_old_checkpoints(tmp_path):
    ck = make_ckpt(tmp_path, keep=2)
    for s in range(1, 6):
        ck.save(s, {"model": torch.nn.Linear(2, 2)})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000004.pt", "step_00000004.pt.sha256", "step_00000005.pt", "step_00000005.pt.sha256"]


def test_stop_signal_saves_then_raises(tmp_path):
    with StopSignals((signal.SIGUSR1,)) as stop:
        ck = Checkpointer(tmp_path, 100, 50, 3, Progress("t", 100, quiet=True), stop)
        model = torch.nn.Linear(2, 2)
        ck.step_done(1, {"a": 1.0}, {"model": model})
        assert list_checkpoints(tmp_path) == []
        signal.raise_signal(signal.SIGUSR1)
        with pytest.raises(Interrupted, match="SIGUSR1 at step 2/100"):
            ck.step_done(2, {"a": 1.0}, {"model": model})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from pipeline.run.checkpoint import save_checkpoint
    folder = Path(sys.argv[1])
    big = torch.nn.Linear(2048, 2048)
    print("ready", flush=True)
    for step in range(1, 10000):
        with torch.no_grad():
            big.weight.fill_(float(step))
        save_checkpoint(folder / f"step_{step:08d}.pt", step, {"model": big})
""")


@pytest.mark.parametrize("seed", [0, 1])
def test_atomic_under_sigkill(tmp_path, seed):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.time()
    while not (tmp_path / "step_00000001.pt.sha256").exists():  # a slow disk must not fail the test
        assert time.time() - t0 < 120, "the writer never finished a checkpoint"
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = list_checkpoints(tmp_path)
    assert found, "the writer never finished a checkpoint"
    for step, path in found:
        try:
            ckpt = load_checkpoint(path)
        except ValueError:
            assert step == found[0][0], "only the write in flight may be incomplete"
            continue
        assert float(ckpt["objects"]["model"]["weight"][0, 0]) == float(step)
    model = torch.nn.Linear(2048, 2048)
    step = make_ckpt(tmp_path).resume({"model": model})
    assert step >= found[-1][0] and float(model.weight.detach()[0, 0]) == float(step)
    assert not list(tmp_path.glob(".*.tmp")), "temp files of the killed write are cleaned up on resume"


def test_damaged_newer_checkpoints_never_outlive_the_good_one(tmp_path):
    ck = make_ckpt(tmp_path, keep=1)
    model = torch.nn.Linear(2, 2)
    ck.save(10, {"model": model})
    ck.keep = 2
    ck.save(20, {"model": model})
    (tmp_path / "step_00000020.pt.sha256").unlink()  # killed between the file and its digest
    ck.keep = 1
    assert ck.resume({"model": model}) == 10
    ck.save(11, {"model": model})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [11]
    assert ck.resume({"model": torch.nn.Linear(2, 2)}) == 11


def test_second_sigint_aborts_after_any_first_signal():
    with StopSignals((signal.SIGTERM, signal.SIGINT)) as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)  # first Ctrl-C: a stop is already pending, wait for it
        assert stop.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


class CountingTensor(torch.Tensor):
    """A tensor that records every torch function run on it: reading its value (``.item()``,
    ``float()``, ``.tolist()``, a copy to the host) is one of them, so no call means no read."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        CountingTensor.calls.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def counting(value: float) -> CountingTensor:
    return torch.tensor(value).as_subclass(CountingTensor)


READS = {"tolist", "item", "__float__", "__int__", "__bool__", "numpy", "cpu", "__format__", "__repr__"}
"""The torch functions that bring a tensor's value to the host (a device sync on a GPU)."""


def test_step_done_takes_tensor_losses_and_reads_them_only_on_the_steps_it_prints_or_checkpoints(tmp_path, caplog):
    """Between checkpoints (steps 2 and 4, which wait for the device anyway: the loss record's means become
    numbers there) and the printed last step, a loss tensor is never read."""
    ck = Checkpointer(tmp_path / "ckpt", 6, 2, 3, Progress("t", 6, every_s=1e9, tty=False), StopSignals(()))
    model = torch.nn.Linear(2, 2)
    losses = {"rgb": counting(0.25), "mask": counting(0.5)}
    read_at = []
    with caplog.at_level(logging.INFO, logger="geneman"):
        assert ck.resume({"model": model}) == 0
        for step in range(1, 6):
            CountingTensor.calls.clear()
            ck.step_done(step, losses, {"model": model})
            if READS & set(CountingTensor.calls):
                read_at.append(step)
        assert read_at == [2, 4]
        assert [s for s, _ in list_checkpoints(tmp_path / "ckpt")] == [4, 2]
        assert "loss=" not in caplog.text  # nothing printed yet
        ck.step_done(6, losses, {"model": model})  # the last step prints its line
    assert READS & set(CountingTensor.calls)
    assert "t step 6/6 (100.0%)" in caplog.text and "loss=0.75 mask=0.5 rgb=0.25" in caplog.text


def test_the_loss_record_keeps_window_means_and_a_resume_cuts_it_back_to_its_checkpoint(tmp_path):
    """``losses.json`` beside ``ckpt/``: each loss's mean over windows of every/5 steps (a loss computed on some
    steps only is averaged over those, absent windows are null), written with each checkpoint; a resume from
    step 10 drops what came after it and goes on from there."""
    def run(ck, start, stop):
        model = torch.nn.Linear(2, 2)
        assert ck.resume({"model": model}) == start
        for step in range(start + 1, stop + 1):
            losses = {"rgb": torch.tensor(float(step))}
            if step % 2 == 0:
                losses["mask"] = torch.tensor(100.0 + step)
            if step > 12:
                losses["late"] = 1.0
            ck.step_done(step, losses, {"model": model})

    ck = make_ckpt(tmp_path / "ckpt", every=10, total=20)
    run(ck, 0, 15)
    record = json.loads((tmp_path / "losses.json").read_text())
    assert record["steps"] == [2, 4, 6, 8, 10]  # written at step 10's checkpoint; 12 and 14 not yet
    assert record["losses"]["rgb"] == [1.5, 3.5, 5.5, 7.5, 9.5]
    assert record["losses"]["mask"] == [102, 104, 106, 108, 110]
    ck = make_ckpt(tmp_path / "ckpt", every=10, total=20)
    run(ck, 10, 20)
    record = json.loads((tmp_path / "losses.json").read_text())
    assert record["steps"] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert record["losses"]["rgb"][5:] == [11.5, 13.5, 15.5, 17.5, 19.5]
    assert record["losses"]["late"] == [None] * 6 + [1.0] * 4


def test_float_and_tensor_losses_print_the_same_line(caplog):
    p = Progress("t", 2, every_s=0.0, tty=False)
    with caplog.at_level(logging.INFO, logger="geneman"):
        p.start(0)
        p.update(1, {"rgb": 0.25, "mask": torch.tensor(0.5)})
        p.update(2, {"rgb": 0.25, "mask": 0.5})
    lines = [r.getMessage() for r in caplog.records if "%)" in r.getMessage()]
    assert [line.split(" eta ")[0] for line in lines] == ["t step 1/2 (50.0%)", "t step 2/2 (100.0%)"]
    assert all(line.endswith("loss=0.75 mask=0.5 rgb=0.25") for line in lines)


def test_the_bar_reads_tensor_losses_only_when_it_shows_them(monkeypatch):
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: 100.0)  # no time passes: only the end is due
    p = Progress("t", 3, tty=True)
    p.start(0)
    losses = {"rgb": counting(0.25)}
    CountingTensor.calls.clear()
    try:
        p.update(1, losses)
        p.update(2, losses)
        assert CountingTensor.calls == [] and p._bar.n == 2  # the count moves, the losses are not read
        p.update(3, losses)
        assert CountingTensor.calls and "rgb=0.25" in p._bar.postfix
    finally:
        p.close()
