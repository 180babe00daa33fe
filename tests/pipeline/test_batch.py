"""Batch without Slurm: inputs and names, time limits, the job callable, preemption, local executor, status."""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading

import pytest

from pipeline.batch.boot import EARLY_SIGNAL
from pipeline.batch.job import BatchJob, JobSignals, job_ids, run_image
from pipeline.batch.record import load_record
from pipeline.batch.submit import (
    BatchOptions,
    make_executor,
    package_root,
    parse_time,
    plan,
    resolve_inputs,
    run_names,
    submit_batch,
)
from pipeline.cli import main as cli
from pipeline.cli.status import status_text
from pipeline.errors import ConfigError, InputError
from pipeline.run.models import MissingWeights
from tests.doubles import double_stages, small_config
from tests.pipeline.batch_helpers import manifest, no_priors, photos, reference, result_bytes, stage_step, wait_until
from tests.pipeline.conftest import write_person


def test_inputs_from_folder_list_file_and_glob(tmp_path):
    a, b, c = photos(tmp_path / "in")
    (tmp_path / "in" / "notes.md").write_text("not a photo")
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "some.txt").write_text(f"# a comment\n\n../in/p1.png\n{c}\n")
    assert resolve_inputs([tmp_path / "in"]) == [a, b, c]
    assert resolve_inputs([sub / "some.txt"]) == [b, c]
    assert resolve_inputs([str(tmp_path / "in" / "p[02].png"), a]) == [a, c]  # glob, then a repeat dropped


@pytest.mark.parametrize("bad, message", [("missing.png", "input not found"), ("nothing*.png", "matches no file")])
def test_inputs_that_match_nothing_are_refused(tmp_path, bad, message):
    with pytest.raises(InputError, match=message):
        resolve_inputs([str(tmp_path / bad)])


def test_colliding_names_are_refused_naming_both_files(tmp_path):
    one = write_person(_mk(tmp_path / "x") / "Person.png")
    two = write_person(_mk(tmp_path / "y") / "person.webp")
    with pytest.raises(InputError) as e:
        run_names([one, two], tmp_path / "out")
    assert str(one) in str(e.value) and str(two) in str(e.value)


@pytest.mark.parametrize("filename", [".hidden.png", "..png", "logs.png", "batch.json.png", "bad\nname.png"])
def test_names_that_escape_or_clash_with_the_batch_folder_are_refused(tmp_path, filename):
    photo = tmp_path / filename
    photo.write_bytes(b"x")
    with pytest.raises(InputError, match="rename the photo"):
        run_names([photo], tmp_path / "out")


def test_parse_time():
    assert [parse_time(t) for t in ("01:30:00", "90", "1-00:00:30", "10:30", "00:00:01")] == [90, 90, 1441, 11, 1]
    for bad in ("1h", "", "00:00:00"):
        with pytest.raises(ConfigError):
            parse_time(bad)


def test_job_ids_outside_and_inside_a_slurm_array(monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert job_ids() == {}
    monkeypatch.setenv("SLURM_JOB_ID", "57")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "50")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    ids = job_ids()
    assert (ids["slurm_job_id"], ids["slurm_array_task_id"], ids["slurm_restart_count"]) == ("50_7", "7", 0)


def test_preemption_signal_checkpoints_and_the_next_job_resumes_bitwise(tmp_path, monkeypatch):
    """SIGUSR2 mid-stage (outside submitit): the stage checkpoints, the job stops; running the job's
    checkpoint() submission again finishes with the same bytes as an uninterrupted run."""
    photo = write_person(_mk(tmp_path / "in") / "person.png")
    expected = reference(photo, tmp_path / "ref")
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "0.2")  # 1.6 s between the trigger and the end of the stage
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    out = tmp_path / "out"
    job = BatchJob(out, [("person", str(photo)), ("later", str(photo))], small_config(), double_stages(), no_priors,
                   quiet=True)
    run = out / "person"
    fire = threading.Thread(target=lambda: wait_until(lambda: stage_step(run, "geometry_init") >= 4, 60, "step 4")
                            and os.kill(os.getpid(), signal.SIGUSR2))
    fire.start()
    assert job() == {"person": "interrupted"}  # and "later" was not started
    fire.join()
    m = manifest(run)
    assert m["status"] == "interrupted" and 4 <= m["stages"]["geometry_init"]["step"] < 12
    assert not (out / "later").exists()
    again = job.checkpoint().function
    assert isinstance(again, BatchJob) and again.images == job.images
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "0")
    assert again() == {"person": "done", "later": "done"}
    assert result_bytes(run) == expected


def missing_weights():
    raise MissingWeights("weight sd15 not found in /nowhere")


def test_a_job_whose_models_cannot_load_records_every_image_as_failed(tmp_path):
    photo = write_person(_mk(tmp_path / "in") / "person.png")
    out = tmp_path / "out"
    job = BatchJob(out, [("a", str(photo)), ("b", str(photo))], small_config(), double_stages(), missing_weights)
    assert job() == {"a": "failed", "b": "failed"}
    assert all("sd15 not found" in manifest(out / n)["error"] for n in ("a", "b"))


def test_sigterm_mid_stage_stops_the_job_without_taking_the_next_image(tmp_path, monkeypatch):
    photo = write_person(_mk(tmp_path / "in") / "person.png")
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "0.2")  # 1.6 s between the trigger and the end of the stage
    out = tmp_path / "out"
    job = BatchJob(out, [("person", str(photo)), ("later", str(photo))], small_config(), double_stages(), no_priors,
                   quiet=True)
    fire = threading.Thread(target=lambda: wait_until(lambda: stage_step(out / "person", "geometry_init") >= 2, 60,
                                                      "step 2") and os.kill(os.getpid(), signal.SIGTERM))
    fire.start()
    assert job() == {"person": "interrupted"}
    fire.join()
    assert manifest(out / "person")["status"] == "interrupted" and not (out / "later").exists()


def test_resubmit_skips_done_runs_unless_the_config_changed(tmp_path):
    photo = write_person(_mk(tmp_path / "in") / "person.png")
    out = tmp_path / "out"
    reference(photo, out / "person")
    named = [("person", photo)]
    assert plan(out, named, {"images": {}}, small_config()) == ([], {"person": "done"})
    changed = small_config(["texture_refine.steps=7"])
    assert plan(out, named, {"images": {}}, changed) == (named, {})
    with pytest.raises(InputError, match="already belongs to"):
        plan(out, named, {"images": {"person": {"photo": "/elsewhere/person.png"}}}, small_config())


JOB_ARGV = ["/v/lib/submitit/core/_submit.py", "{out}/logs/%j"]


@pytest.mark.parametrize("argv, host, state", [(JOB_ARGV, "another-node", "done"),
                                               (["/v/bin/geneman", "resume", "{out}/person"], "another-node", "busy"),
                                               (JOB_ARGV, "this-host-live-pid", "busy")])
def test_a_dead_batch_jobs_lock_is_taken_over_and_any_other_lock_is_respected(tmp_path, argv, host, state):
    photo = write_person(_mk(tmp_path / "in") / "person.png")
    out = tmp_path / "out"
    reference(photo, out / "person")
    lock = out / "person" / ".lock"
    live = subprocess.Popen(["sleep", "60"])  # on this host a live holder is never dislodged
    here = host == "this-host-live-pid"
    holder = {"host": socket.gethostname(), "pid": live.pid} if here else {"host": host, "pid": 1}
    lock.write_text(json.dumps({**holder, "since": "then", "argv": [a.format(out=out) for a in argv]}))
    cfg = small_config(["texture_refine.steps=7"])  # not done with this config: the job must run it
    try:
        with JobSignals() as sig:
            assert run_image(out, "person", photo, cfg, double_stages(), (None, None), sig, quiet=True) == state
    finally:
        live.kill()
        live.wait()
    assert lock.exists() == (state == "busy")


def test_local_executor_two_at_a_time_with_a_bad_image_then_resubmit(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    expected = {p.stem: reference(p, tmp_path / "ref" / p.stem) for p in photos(folder, (100, 160))}
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "0.1")  # each image runs >3 s, so overlap is not luck of timing
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    options = BatchOptions(executor="local", max_parallel=2, images_per_job=2)
    first = submit_batch([folder], out, small_config(), options, stages=double_stages(), priors_factory=no_priors)
    assert len(first["jobs"]) == 2  # [broken, p0] and [p1], side by side
    for name, want in expected.items():
        assert manifest(out / name)["status"] == "done" and result_bytes(out / name) == want
    ran_together = manifest(out / "p1")["stages"]["preprocess"]["started"] <= \
        manifest(out / "p0")["stages"]["texture_refine"]["finished"]
    assert ran_together, "the two jobs did not run side by side"
    broken = manifest(out / "broken")
    assert broken["status"] == "failed" and "broken.png" in broken["error"]
    assert load_record(out)["images"]["broken"]["executor"] == "local"
    assert "3 images: 2 done, 0 running, 0 queued, 1 failed" in status_text([out])
    again = submit_batch([folder], out, small_config(), BatchOptions(executor="local"), stages=double_stages(),
                         priors_factory=no_priors)
    assert again["todo"] == ["broken"] and set(again["skipped"]) == {"p0", "p1"}
    assert manifest(out / "broken")["status"] == "failed"


def test_status_of_a_batch_with_an_image_not_started(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "batch.json").write_text('{"images": {"p0": {"photo": "/x/p0.png", "job_id": "", "executor": "local"}}, '
                                    '"submissions": []}')
    text = status_text([out])
    assert "p0" in text and "1 images: 0 done, 0 running, 1 queued, 0 failed" in text


def test_cli_batch_refuses_colliding_names_with_one_line(tmp_path, capsys):
    one = write_person(_mk(tmp_path / "x") / "person.png")
    two = write_person(_mk(tmp_path / "y") / "person.png")
    code = cli.main(["batch", str(one), str(two), "-o", str(tmp_path / "out"), "--executor", "local"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "would share the run folder" in err
    assert not (tmp_path / "out").exists()


def _mk(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_signal_while_python_starts_is_noted_not_fatal(tmp_path):
    """A job starts as ``python -u -m pipeline.batch.boot -u -m MODULE ARGS``: a SIGUSR2 that comes
    before the job's own handlers exist (default action: kill) is noted and MODULE runs as ``-m`` would."""
    ready = tmp_path / "ready"
    cmd = [sys.executable, "-u", "-m", "pipeline.batch.boot", "-u", "-m", "tests.pipeline.boot_target", str(ready)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=package_root())
    wait_until(ready.exists, 30, "the target module to start")
    os.kill(proc.pid, signal.SIGUSR2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    seen = json.loads(out)
    assert seen["argv0"].endswith("tests/pipeline/boot_target.py") and seen["args"] == [str(ready)]
    assert seen["signal"] == signal.SIGUSR2 and seen["left"] is None  # taken once
    bad = subprocess.run([sys.executable, "-m", "pipeline.batch.boot", "oops"], capture_output=True, text=True,
                         cwd=package_root())
    assert bad.returncode != 0 and "expected '-m MODULE ARGS...'" in bad.stderr


@pytest.mark.parametrize("early", [signal.SIGUSR2, signal.SIGTERM])
def test_a_job_noted_a_signal_while_starting_runs_no_image(tmp_path, monkeypatch, early):
    """The signal noted by batch_boot stops the job before its priors or any image (SIGUSR2: then requeue)."""
    photo = write_person(_mk(tmp_path / "in") / "person.png")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.setenv(EARLY_SIGNAL, str(int(early)))
    out = tmp_path / "out"
    job = BatchJob(out, [("person", str(photo))], small_config(), double_stages(), missing_weights)
    assert job() == {} and not (out / "person").exists()  # missing_weights was never called
    assert EARLY_SIGNAL not in os.environ
    assert job() == {"person": "failed"}  # the next job (no signal) does build the priors


def test_jobs_start_through_batch_boot(tmp_path):
    ex = make_executor(tmp_path, BatchOptions(executor="local"))
    assert ex.python == f"{shlex.quote(sys.executable)} -u -m pipeline.batch.boot"


def test_slurm_job_parameters_reach_the_sbatch_script(tmp_path, monkeypatch):
    """Every BatchOptions field lands in the script submitit writes (rendered, not submitted)."""
    monkeypatch.setattr("pipeline.batch.submit.shutil.which", lambda name: f"/usr/bin/{name}")  # no sbatch needed
    options = BatchOptions(executor="slurm", partition="gpu", gpus_per_job=2, time="1-02:00:00", mem="32G",
                           cpus_per_job=8, max_parallel=3)
    ex = make_executor(tmp_path, options)
    ex.parameters["map_count"] = 5  # what submitit sets for an array of 5 jobs
    text = ex._make_submission_file_text("true", "uid")
    for flag in ("--partition=gpu", "--gpus-per-node=2", "--time=1560", "--mem=32G", "--cpus-per-task=8",
                 "--array=0-4%3", "--signal=USR2@120", "--requeue"):
        assert f"#SBATCH {flag}\n" in text, flag
    assert "--gpus-per-node" not in make_executor(tmp_path, BatchOptions(executor="slurm"))._make_submission_file_text(
        "true", "uid")
