"""Batch jobs on a real single-node Slurm cluster started by the fixture (test-double stages).

Skipped, with the reason, where Slurm is not installed (.ci/install-slurm.sh installs it).
"""
from __future__ import annotations

import os
import pickle
import time

import pytest
from submitit.core.utils import JobPaths

from pipeline.batch.record import load_record
from pipeline.batch.submit import BatchOptions, submit_batch
from pipeline.cli import main as cli
from pipeline.cli.status import status_text
from pipeline.errors import ConfigError
from tests.doubles import double_stages, small_config
from tests.pipeline.batch_helpers import (
    STAGE_FOLDERS,
    manifest,
    no_priors,
    photos,
    reference,
    result_bytes,
    stage_step,
    wait_until,
)
from tests.pipeline.conftest import write_person
from tests.slurm.cluster import SlurmCluster, unavailable_reason

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

OPTIONS = dict(executor="slurm", time="01:00:00", mem="1G", cpus_per_job=1, max_parallel=2)
STAGE_FOLDER = dict(zip(("geometry_init", "geometry_sculpt", "texture_coarse", "texture_refine"), STAGE_FOLDERS))
FAST_AFTER_REQUEUE = '[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && export GENEMAN_TEST_STEP_SLEEP=0 || true'
"""A job setup line: slow steps (GENEMAN_TEST_STEP_SLEEP, for signals to land mid-stage) in the first run only."""


@pytest.fixture(scope="module")
def cluster():
    """munged, slurmctld and slurmd on loopback for this module; SLURM_CONF exported meanwhile."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = SlurmCluster()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def queue(cluster) -> str:
    return cluster.run("squeue", "-h", "-r", "-o", "%i %T %r").stdout.strip()


def wait_batch_over(cluster, out, timeout=150):
    """Wait until Slurm holds no job and every image's run.json says done or failed."""
    def over():
        names = load_record(out)["images"]
        return not queue(cluster) and all(manifest(out / n).get("status") in ("done", "failed") for n in names)

    wait_until(over, timeout, "the batch to finish", poll=0.5,
               on_timeout=lambda: f"queue: {queue(cluster)}\n{status_text([out])}\n{job_logs(out)}")


def job_logs(out) -> str:
    """Every job log of the batch, concatenated."""
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted((out / "logs").rglob("*_log.*")))


def job_result(out, job_id):
    """What the job's callable returned (from submitit's result pickle)."""
    with open(JobPaths(out / "logs" / "%j", job_id=job_id).result_pickle, "rb") as f:
        return pickle.load(f)


def release_requeued(cluster, job, timeout=60):
    """Start a requeued job now instead of after Slurm's fixed 120 s requeue delay (``BeginTime``).

    Released at once, slurmd may still refuse the job's new credential (issued in the second its
    old one was revoked), so the release waits a few seconds; it is repeated while the job still
    waits on BeginTime, as an update that lands while the requeue is completing is overwritten.
    """
    time.sleep(5)

    def started():
        line = cluster.run("squeue", "-h", "-j", job, "-o", "%T %r", check=False).stdout.strip()
        if line.endswith("BeginTime"):
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
            return False
        return not line.startswith("PENDING")

    wait_until(started, timeout, f"requeued job {job} to start", poll=1.0)


def test_batch_of_three_completes_and_resubmit_skips_it(cluster, tmp_path):
    inputs = photos(tmp_path / "in")
    expected = {p.stem: reference(p, tmp_path / "ref" / p.stem) for p in inputs}
    out = tmp_path / "out"
    sub = submit_batch([tmp_path / "in"], out, small_config(), BatchOptions(images_per_job=2, **OPTIONS),
                       stages=double_stages(), priors_factory=no_priors)
    assert len(sub["jobs"]) == 2 and sub["todo"] == ["p0", "p1", "p2"]
    wait_batch_over(cluster, out)
    record = load_record(out)
    for name, want in expected.items():
        m = manifest(out / name)
        assert m["status"] == "done", status_text([out])
        assert m["extra"]["slurm_job_id"] == record["images"][name]["job_id"]
        assert result_bytes(out / name) == want, f"{name} differs from an uninterrupted run"
    assert record["images"]["p0"]["job_id"] == record["images"]["p1"]["job_id"] != record["images"]["p2"]["job_id"]
    text = status_text([out])
    assert "3 images: 3 done, 0 running, 0 queued, 0 failed" in text
    assert record["images"]["p2"]["job_id"] in text
    again = submit_batch([tmp_path / "in"], out, small_config(), BatchOptions(**OPTIONS), stages=double_stages(),
                         priors_factory=no_priors)
    assert again["jobs"] == [] and again["skipped"] == {"p0": "done", "p1": "done", "p2": "done"}


def test_preempted_job_requeues_and_matches_an_uninterrupted_run(cluster, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    photo = write_person(tmp_path / "in" / "person.png")
    expected = reference(photo, tmp_path / "ref")
    out = tmp_path / "out"
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "1")  # sbatch exports it; 4 s from step 2 to the stage's end
    sub = submit_batch([photo], out, small_config(), BatchOptions(**OPTIONS, setup=(FAST_AFTER_REQUEUE,)),
                       stages=double_stages(), priors_factory=no_priors)
    (job,) = sub["jobs"]
    run = out / "person"
    wait_until(lambda: stage_step(run, "geometry_sculpt") >= 2, 120, "geometry_sculpt step 2",
               on_timeout=lambda: job_logs(out))
    row = status_text([out]).splitlines()[2].split()
    assert row[:2] == ["person", "geometry_sculpt"] and row[3:5] == ["running", job]
    # What Slurm does at --signal=USR2@N before the time limit: SIGUSR2 to the job's steps.
    cluster.run("scancel", "--signal=USR2", job)
    wait_until(lambda: "BeginTime" in queue(cluster), 60, "the job to requeue itself",
               on_timeout=lambda: f"{queue(cluster)}\n{job_logs(out)}")
    m = manifest(run)
    assert m["status"] == "interrupted" and m["stages"]["geometry_sculpt"]["state"] == "interrupted"
    assert 2 <= m["stages"]["geometry_sculpt"]["step"] < m["stages"]["geometry_sculpt"]["total"]
    assert "queued" in status_text([out]).splitlines()[2]
    release_requeued(cluster, job)
    wait_batch_over(cluster, out)
    m = manifest(run)
    assert m["status"] == "done" and m["extra"]["slurm_restart_count"] == 1
    logs = job_logs(out)
    assert "Requeued job" in logs and "02_geometry_sculpt/ckpt/step_" in logs  # resumed from its checkpoint
    assert result_bytes(run) == expected, "the requeued run differs from an uninterrupted run"


@pytest.mark.parametrize("partition", ["debug", "nograce"])
def test_job_preempted_by_a_higher_tier_partition_requeues_and_matches(cluster, tmp_path, monkeypatch, partition):
    """Preemption as Slurm does it (PreemptMode=REQUEUE; tests/slurm/slurm.conf.in): SIGTERM, then
    SIGKILL. In ``debug`` (GraceTime=30) the job checkpoints and ends within the grace time; Slurm
    records a job that ends by itself as completed and does not requeue it, so the job requeues
    itself. In ``nograce`` Slurm has requeued the job already and the job leaves it at that."""
    (tmp_path / "in").mkdir()
    photo = write_person(tmp_path / "in" / "person.png")
    expected = reference(photo, tmp_path / "ref")
    out = tmp_path / "out"
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "1")
    options = BatchOptions(**{**OPTIONS, "partition": partition}, setup=(FAST_AFTER_REQUEUE,))
    sub = submit_batch([photo], out, small_config(), options, stages=double_stages(), priors_factory=no_priors)
    (job,) = sub["jobs"]
    run = out / "person"
    wait_until(lambda: stage_step(run, "geometry_init") >= 2, 120, "geometry_init step 2",
               on_timeout=lambda: job_logs(out))
    # A job of the higher tier that needs the whole node: Slurm preempts ours to start it.
    cluster.run("sbatch", "-p", "urgent", "-c", str(os.cpu_count() or 1), "--mem=1G", "--wrap", "sleep 1",
                "-o", str(tmp_path / "urgent.out"))
    wait_until(lambda: "BeginTime" in queue(cluster), 60, "the preempted job to requeue itself",
               on_timeout=lambda: f"{queue(cluster)}\n{job_logs(out)}")
    m = manifest(run)
    assert m["status"] == "interrupted" and 2 <= m["stages"]["geometry_init"]["step"] < 12
    logs = job_logs(out)
    if partition == "debug":
        assert "the SIGTERM came from a preemption" in logs and "Requeued job" in logs  # by the job
    else:
        assert "Slurm has set job" in logs and "Requeued job" not in logs  # by Slurm
    release_requeued(cluster, job)
    wait_batch_over(cluster, out)
    m = manifest(run)
    assert m["status"] == "done" and m["extra"]["slurm_restart_count"] == 1
    assert "resumed from" in job_logs(out)
    assert result_bytes(run) == expected, "the requeued run differs from an uninterrupted run"


def test_scancel_stops_the_job_for_good(cluster, tmp_path, monkeypatch):
    """SIGTERM that is not a preemption (scancel): the stage checkpoints, the job ends, nothing is requeued."""
    (tmp_path / "in").mkdir()
    photo = write_person(tmp_path / "in" / "person.png")
    out = tmp_path / "out"
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "1")
    sub = submit_batch([photo], out, small_config(), BatchOptions(**OPTIONS), stages=double_stages(),
                       priors_factory=no_priors)
    (job,) = sub["jobs"]
    run = out / "person"
    wait_until(lambda: stage_step(run, "geometry_init") >= 2, 120, "geometry_init step 2",
               on_timeout=lambda: job_logs(out))
    cluster.run("scancel", job)
    wait_until(lambda: not queue(cluster), 60, "the job to end",
               on_timeout=lambda: f"{queue(cluster)}\n{job_logs(out)}")
    m = manifest(run)
    assert m["status"] == "interrupted" and m["extra"]["slurm_restart_count"] == 0
    assert "Requeued job" not in job_logs(out) and "preemption" not in job_logs(out)
    assert "interrupted" in status_text([out]).splitlines()[2]


def test_bad_image_fails_alone_and_the_job_finishes_the_others(cluster, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_bad.png").write_bytes(b"this is not a png")
    good = write_person(folder / "b_good.png")
    expected = reference(good, tmp_path / "ref")
    out = tmp_path / "out"
    sub = submit_batch([folder], out, small_config(), BatchOptions(images_per_job=2, **OPTIONS),
                       stages=double_stages(), priors_factory=no_priors)
    (job,) = sub["jobs"]
    wait_batch_over(cluster, out)
    bad = manifest(out / "a_bad")
    assert bad["status"] == "failed" and "a_bad.png" in bad["error"] and bad["extra"]["slurm_job_id"] == job
    assert manifest(out / "b_good")["status"] == "done"
    assert result_bytes(out / "b_good") == expected
    assert job_result(out, job) == ("success", {"a_bad": "failed", "b_good": "done"})
    text = status_text([out])
    assert "2 images: 1 done, 0 running, 0 queued, 1 failed" in text and "not an image" in text


def test_sbatch_refusal_is_one_clear_error(cluster, tmp_path):
    photo = write_person(tmp_path / "person.png")
    with pytest.raises(ConfigError, match="sbatch refused the jobs: .*[Pp]artition"):
        submit_batch([photo], tmp_path / "out", small_config(), BatchOptions(**{**OPTIONS, "partition": "nosuch"}),
                     stages=double_stages(), priors_factory=no_priors)
    assert not (tmp_path / "out" / "batch.json").exists()  # nothing recorded for a submission that did not happen


def test_time_limit_warning_from_slurm_requeues_and_matches(cluster, tmp_path, monkeypatch):
    """No signal sent by hand: Slurm's own ``--signal=USR2@90`` warning before a 3-minute limit.

    Slurm sends the warning up to about 30 s before it is due (measured here: 17 to 27 s into a
    2-minute job with USR2@90), so with 3 minutes it comes 60 to 90 s into the job, when the image
    has been running for a while and is not finished (30 steps of 4 s). Where it lands is up to
    Slurm: usually within a step (the stage checkpoints there), sometimes in a stage's last step or
    in preprocess (the run stops between stages); either way nothing done is done again.
    """
    (tmp_path / "in").mkdir()
    photo = write_person(tmp_path / "in" / "person.png")
    expected = reference(photo, tmp_path / "ref")
    out = tmp_path / "out"
    monkeypatch.setenv("GENEMAN_TEST_STEP_SLEEP", "4")  # 30 steps: 120 s, longer than the warning takes to come
    options = BatchOptions(**{**OPTIONS, "time": "00:03:00"}, signal_delay_s=90, setup=(FAST_AFTER_REQUEUE,))
    sub = submit_batch([photo], out, small_config(), options, stages=double_stages(), priors_factory=no_priors)
    (job,) = sub["jobs"]
    wait_until(lambda: "BeginTime" in queue(cluster), 170, "Slurm's time-limit warning to requeue the job",
               on_timeout=lambda: f"{queue(cluster)}\n{job_logs(out)}")
    stopped = manifest(out / "person")
    assert stopped["status"] == "interrupted" and "this job is timed-out" in job_logs(out)
    release_requeued(cluster, job)
    wait_batch_over(cluster, out)
    assert manifest(out / "person")["status"] == "done"
    assert_continued(out / "person", stopped, job_logs(out))
    assert result_bytes(out / "person") == expected


def assert_continued(run, stopped: dict, logs: str) -> None:
    """The requeued job continued the run (``stopped``: its manifest when the first job ended):
    the interrupted stage from its checkpoint, and no stage that had begun started from 0 again."""
    for name, rec in stopped["stages"].items():
        if name not in STAGE_FOLDER or rec["state"] in ("pending", "not-built"):
            continue
        starts = [int(x) for x in (run / STAGE_FOLDER[name] / "starts.txt").read_text().split()]
        assert starts[0] == 0 and all(s > 0 for s in starts[1:]), f"{name} restarted: starts {starts}"
        if rec["state"] == "done":
            assert starts == [0], f"{name} was done and ran again: starts {starts}"
        if rec["state"] == "interrupted" and rec["step"] > 0:
            assert starts == [0, rec["step"]], f"{name} stopped at {rec['step']}, starts {starts}"
            assert f"{STAGE_FOLDER[name]}/ckpt/step_{rec['step']:08d}.pt" in logs and "resumed from" in logs


def test_warning_while_the_job_starts_requeues_it(cluster, tmp_path):
    """SIGUSR2 a second after the job's step starts, while its python is still importing: noted by
    pipeline.batch.boot (no handler of submitit's yet), then the job requeues itself without
    starting the image, and the requeued job does the image."""
    (tmp_path / "in").mkdir()
    photo = write_person(tmp_path / "in" / "person.png")
    expected = reference(photo, tmp_path / "ref")
    out = tmp_path / "out"
    sub = submit_batch([photo], out, small_config(), BatchOptions(**OPTIONS), stages=double_stages(),
                       priors_factory=no_priors)
    (job,) = sub["jobs"]
    wait_until(lambda: cluster.run("squeue", "-h", "-s", "-j", job, "-o", "%i", check=False).stdout.strip(), 60,
               "the job's step to start")
    time.sleep(1.0)  # past python's own start-up (tens of ms), within the imports (seconds)
    cluster.run("scancel", "--signal=USR2", job)
    wait_until(lambda: "BeginTime" in queue(cluster), 60, "the job to requeue itself",
               on_timeout=lambda: f"{queue(cluster)}\n{job_logs(out)}")
    logs = job_logs(out)
    assert "User defined signal 2" not in logs and "Requeued job" in logs
    release_requeued(cluster, job)
    wait_batch_over(cluster, out)
    assert manifest(out / "person")["status"] == "done"
    assert result_bytes(out / "person") == expected


def test_cli_flags_reach_sbatch_and_status_sums_up(cluster, tmp_path, capsys, tiny_weights):
    """The product command (its own stages and priors, tiny weights so the job's weight check passes): the
    photos are unreadable, so each fails fast, on its own."""
    weights, prior_3d = tiny_weights
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.png").write_bytes(b"not a photo")
    out = tmp_path / "out"
    code = cli.main(["batch", str(folder), "-o", str(out), "--partition", "debug", "--time", "00:05:00", "--mem", "1G",
                     "--cpus-per-job", "1", "--max-parallel", "2", "--images-per-job", "2", "--preset", "cpu",
                     "--weights", str(weights), "--set", f"priors.prior_3d_diffusers={prior_3d}",
                     "--set", "preprocess.depth_normal=false"])
    assert code == 0 and "submitted 3 image(s) in job(s)" in capsys.readouterr().out
    (script,) = (out / "logs").rglob("*_submission.sh")
    text = script.read_text()
    for flag in ("--partition=debug", "--time=5", "--mem=1G", "--cpus-per-task=1", "--array=0-1%2",
                 "--signal=USR2@120", "--requeue"):
        assert f"#SBATCH {flag}" in text, flag
    wait_batch_over(cluster, out)
    assert cli.main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 images: 0 done, 0 running, 0 queued, 3 failed" in printed
    assert all(f"{n}.png is not an image" in manifest(out / n)["error"] for n in "abc")
    job_ids = {manifest(out / n)["extra"]["slurm_job_id"] for n in "abc"}
    assert job_ids == set(load_record(out)["submissions"][0]["job_ids"]) and len(job_ids) == 2
