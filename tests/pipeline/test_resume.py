"""Resume: bitwise identical after SIGKILL or SIGTERM, config-hash invalidation, --from-stage, failures."""
import json
import random
import signal
import time

import pytest

from pipeline.errors import InputError, StageFailed
from pipeline.run import session
from pipeline.run.store import RunStore
from tests.doubles import double_stages, small_config
from tests.pipeline.conftest import drive, write_person

STAGES = ("01_geometry_init", "02_geometry_sculpt", "03_texture_coarse", "04_texture_refine")


def result_bytes(out):
    return {s: (out / s / "result" / "weights.safetensors").read_bytes() for s in STAGES}


def manifest(out):
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted run: the reference every interrupted run must match bit for bit."""
    tmp = tmp_path_factory.mktemp("straight")
    photo = write_person(tmp / "person.png")
    r = drive("run", photo, tmp / "out")
    assert r.returncode == 0, r.stderr
    return photo, result_bytes(tmp / "out")


def wait_for_step(out, min_step, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            m = manifest(out)
            rec = m["stages"].get("geometry_init", {})
            if rec.get("step", 0) >= min_step or rec.get("state") == "done":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError("the run never reached the step")


@pytest.mark.parametrize("seed", [3, 11])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, straight, seed):
    photo, expected = straight
    out = tmp_path / "out"
    proc = drive("run", photo, out, env={"GENEMAN_TEST_STEP_SLEEP": "0.1"}, wait=False)  # 30 steps: 3 s
    wait_for_step(out, 1)
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = manifest(out)
    assert m["status"] == "running", "killed before the end"
    running = [rec for rec in m["stages"].values() if rec["state"] == "running"]
    assert running and running[0]["elapsed_s"] >= 0.1 * running[0]["step"] > 0, f"time so far not recorded: {running}"
    r = drive("resume", out)
    assert r.returncode == 0, r.stderr
    assert result_bytes(out) == expected
    assert manifest(out)["status"] == "done"
    starts = [int(x) for s in STAGES if (out / s / "starts.txt").exists()
              for x in (out / s / "starts.txt").read_text().split()]
    assert max(starts) > 0, "the resumed stage started over instead of continuing from its checkpoint"


def test_sigterm_checkpoints_exits_75_and_resumes_identically(tmp_path, straight):
    photo, expected = straight
    out = tmp_path / "out"
    proc = drive("run", photo, out, env={"GENEMAN_TEST_STEP_SLEEP": "0.25"}, wait=False)
    wait_for_step(out, 3)  # then 2 s until geometry_init ends
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "SIGTERM" in err and "geneman resume" in err and "Traceback" not in err
    m = manifest(out)
    rec = m["stages"]["geometry_init"]
    assert (m["status"], rec["state"]) == ("interrupted", "interrupted")
    assert (out / "01_geometry_init" / "ckpt" / f"step_{rec['step']:08d}.pt").is_file()
    r = drive("resume", out)
    assert r.returncode == 0, r.stderr
    assert result_bytes(out) == expected


def run_doubles(photo, out, sets=(), **kw):
    return session.start(photo, out, small_config(list(sets)), stages=double_stages(), priors=None, depth_normal=None,
                         quiet=True, **kw)


def finished(out):
    return {k: v["finished"] for k, v in manifest(out)["stages"].items()}


def test_changed_stage_config_invalidates_that_stage_and_later_only(tmp_path, photo):
    out = tmp_path / "out"
    run_doubles(photo, out)
    before, first = finished(out), result_bytes(out)
    time.sleep(1.1)  # timestamps have one-second resolution
    run_doubles(photo, out, ["texture_coarse.steps=4"])
    after, second = finished(out), result_bytes(out)
    for kept in ("preprocess", "geometry_init", "geometry_sculpt"):
        assert after[kept] == before[kept]
    for redone in ("texture_coarse", "texture_refine"):
        assert after[redone] != before[redone]
    assert second["02_geometry_sculpt"] == first["02_geometry_sculpt"]
    assert second["03_texture_coarse"] != first["03_texture_coarse"]
    assert manifest(out)["stages"]["texture_coarse"]["total"] == 4


def test_unchanged_config_skips_everything(tmp_path, photo):
    out = tmp_path / "out"
    run_doubles(photo, out)
    before = finished(out)
    time.sleep(1.1)
    run_doubles(photo, out)
    assert finished(out) == before


def test_from_stage_redoes_from_there(tmp_path, photo):
    out = tmp_path / "out"
    run_doubles(photo, out)
    before, first = finished(out), result_bytes(out)
    time.sleep(1.1)
    run_doubles(photo, out, from_stage="geometry_sculpt")
    after = finished(out)
    assert after["geometry_init"] == before["geometry_init"]
    assert all(after[s] != before[s] for s in ("geometry_sculpt", "texture_coarse", "texture_refine"))
    assert result_bytes(out) == first  # same config and seed: same numbers


def test_failure_is_recorded_and_resume_continues(tmp_path, photo, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("GENEMAN_TEST_FAIL", "geometry_sculpt:3")
    with pytest.raises(StageFailed, match="geometry_sculpt failed at step 3/6: RuntimeError: injected failure"):
        run_doubles(photo, out)
    m = manifest(out)
    assert m["status"] == "failed" and m["stages"]["geometry_sculpt"]["state"] == "failed"
    assert "injected failure" in (out / "02_geometry_sculpt" / "error.log").read_text()
    monkeypatch.delenv("GENEMAN_TEST_FAIL")
    session.resume(out, stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    m = manifest(out)
    assert m["status"] == "done" and m["stages"]["geometry_sculpt"]["error"] == ""


def test_other_photo_into_same_folder_is_refused_untouched(tmp_path, photo):
    out = tmp_path / "out"
    run_doubles(photo, out)
    snapshot = (out / "run.json").read_bytes()
    other = write_person(tmp_path / "other.png", shade=90)
    with pytest.raises(InputError, match="holds a run of"):
        run_doubles(other, out)
    assert (out / "run.json").read_bytes() == snapshot


def test_resume_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(InputError, match="not a geneman run folder"):
        session.resume(tmp_path, stages=double_stages())


def test_manifest_records_inputs_versions_and_timings(tmp_path, photo):
    out = tmp_path / "out"
    run_doubles(photo, out)
    m = RunStore(out).load()
    assert len(m.input["sha256"]) == 64 and m.input["path"].endswith("person.png")
    assert {"python", "torch", "numpy"} <= set(m.versions)
    assert all(len(r.hash) == 16 and r.finished and r.state == "done" for r in m.stages.values())
    assert m.stages["geometry_init"].step == m.stages["geometry_init"].total == 12
    assert (out / "config.yaml").read_text().count("geometry_init:") == 1


def test_export_failure_is_not_done_and_resume_exports_again(tmp_path, photo, monkeypatch):
    from tests.doubles import DoubleResult
    out = tmp_path / "out"
    real_export = DoubleResult.export

    def broken(self, folder, formats, cfg=None):
        raise OSError("disk full")

    monkeypatch.setattr(DoubleResult, "export", broken)
    with pytest.raises(StageFailed, match="export: OSError: disk full"):
        run_doubles(photo, out)
    m = manifest(out)
    assert m["status"] == "failed" and "disk full" in m["error"] and not (out / "final").exists()
    monkeypatch.setattr(DoubleResult, "export", real_export)
    session.resume(out, stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    assert manifest(out)["status"] == "done" and (out / "final" / "weights.txt").is_file()


def test_preprocess_failure_is_recorded(tmp_path, photo):
    out = tmp_path / "out"
    run_doubles(photo, out)
    (out / "00_preprocess" / "photo.png").write_bytes(b"damaged")
    with pytest.raises(InputError, match="does not match the sha256"):
        session.resume(out, stages=double_stages(), priors=None, depth_normal=None, quiet=True,
                       cfg=small_config(["preprocess.fill=0.8"]))
    m = manifest(out)
    assert m["status"] == "failed" and "does not match the sha256" in m["error"]
    assert m["stages"]["preprocess"]["state"] == "failed"


def test_unreadable_result_of_a_done_stage_is_redone(tmp_path, photo):
    out = tmp_path / "out"
    run_doubles(photo, out)
    first = result_bytes(out)
    (out / "02_geometry_sculpt" / "result" / "weights.safetensors").write_bytes(b"")
    run_doubles(photo, out)
    assert result_bytes(out) == first
