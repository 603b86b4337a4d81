"""Where haloconv writes, it loses nothing: it replaces only its own outputs, checks before
it writes, refuses another computation's result, and turns every OS error into one line
(files/guard.py, engines/stream_job.prepare_output, cli/outputs.py).  Through the command,
on real files and folders; a full disk is a real small file system where the test can
mount one, and a wrapped writer everywhere."""

import errno
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from PIL import Image

import haloconv
from haloconv.cli.main import main
from haloconv.files import arrays, guard, journal

BOX3 = np.full((3, 3), 1 / 9, np.float32)


def _box3_same(x):
    """box:3 with zero padding on the whole image (float32, as OpenCV's filter2D sums it)."""
    import cv2

    return cv2.filter2D(x, -1, BOX3, borderType=cv2.BORDER_CONSTANT)


@pytest.fixture
def cam(tmp_path):
    x = np.random.default_rng(0).random((96, 80), dtype=np.float32)
    np.save(tmp_path / "cam.npy", x)
    return tmp_path / "cam.npy", x


def _tree(folder):
    """Every path under ``folder`` with its bytes (folders as None): what 'untouched' compares."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            p = os.path.join(root, d)
            found[p] = ("link", os.readlink(p)) if os.path.islink(p) else None
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                found[p] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                found[p] = open(p, "rb").read()
            else:  # a FIFO: its kind and inode
                found[p] = ("special", os.lstat(p).st_mode, os.lstat(p).st_ino)
    return found


def _run(*args, capsys=None):
    rc = main(["run", *map(str, args)])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


# -- --overwrite replaces only what haloconv wrote ------------------------------------------------
def test_overwrite_refuses_a_folder_a_symlink_to_one_a_fifo_and_a_device(cam, tmp_path, capsys):
    src, _ = cam
    (tmp_path / "res.npy" / "sub").mkdir(parents=True)
    (tmp_path / "res.npy" / "sub" / "notes.txt").write_text("notes")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("keep")
    (tmp_path / "link.npy").symlink_to(tmp_path / "elsewhere")
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "null.npy").symlink_to("/dev/null")
    before = _tree(tmp_path)
    for name, words in (("res.npy", "is a directory"), ("link.npy", "a symlink to a directory"),
                        ("fifo.npy", "is a FIFO"), ("null.npy", "a symlink to a character device")):
        for streamed in ([], ["--stream", "--memory-budget", "2GB"]):
            rc, out = _run(src, "--kernel", "box:3", "-o", tmp_path / name, "--overwrite", *streamed, capsys=capsys)
            assert rc == 2, (name, streamed, out)
            lines = out.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("haloconv: error:") and words in lines[0], out.err
    assert _tree(tmp_path) == before  # nothing touched, nothing left beside them


def test_overwrite_replaces_a_file_and_a_zarr_store_haloconv_wrote_but_no_other_store(cam, tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    src, x = cam
    ref = _box3_same(x)
    np.save(tmp_path / "old.npy", np.zeros(3))
    target = tmp_path / "old.npy"
    (tmp_path / "alias.npy").symlink_to(target)  # a symlink to a file: the link is replaced, not its target
    assert _run(src, "--kernel", "box:3", "-o", tmp_path / "alias.npy", "--overwrite", "-q")[0] == 0
    assert not (tmp_path / "alias.npy").is_symlink() and np.array_equal(np.load(target), np.zeros(3))
    assert np.array_equal(np.load(tmp_path / "alias.npy")[0, 0], ref)
    # a store of the user's: refused; a store haloconv wrote (in memory or streamed): replaced
    zarr.create_array(store=str(tmp_path / "theirs.zarr"), shape=(4,), dtype="f4")
    before = _tree(tmp_path / "theirs.zarr")
    rc, out = _run(src, "--kernel", "box:3", "-o", tmp_path / "theirs.zarr", "--overwrite", capsys=capsys)
    assert rc == 2 and "did not write" in out.err and _tree(tmp_path / "theirs.zarr") == before
    for streamed in ([], ["--stream", "--memory-budget", "2GB"], []):
        rc, _ = _run(src, "--kernel", "box:3", "-o", tmp_path / "ours.zarr", "--overwrite", "-q", *streamed)
        assert rc == 0 and guard.is_own_zarr(tmp_path / "ours.zarr")
        assert np.array_equal(zarr.open_array(str(tmp_path / "ours.zarr"))[0, 0], ref)


# -- a complete streamed output keeps a receipt ----------------------------------------------------
def test_resume_on_a_complete_output_checks_its_receipt(cam, tmp_path, capsys):
    src, x = cam
    out = tmp_path / "r.npy"
    stream = ["--stream", "--memory-budget", "2GB"]
    assert _run(src, "--kernel", "box:3", "-o", out, *stream, "-q")[0] == 0
    written = out.read_bytes()
    receipt = journal.read_receipt(out)
    assert receipt["kernel"] == "box:3" and receipt["complete"] and receipt["input"] == str(src)
    rc, res = _run(src, "--kernel", "gaussian:2", "-o", out, *stream, "--resume", capsys=capsys)
    assert rc == 2 and "r.npy was computed with box:3; this run asks gaussian:2: use --overwrite" in res.err
    assert out.read_bytes() == written
    rc, res = _run(src, "--kernel", "box:3", "-o", out, *stream, "--resume", capsys=capsys)
    assert rc == 0 and "is complete" in res.out and "nothing to do" in res.out and out.read_bytes() == written
    # the API says the same
    w = BOX3[None, None]
    with pytest.raises(ValueError, match="other filters"):
        haloconv.conv_file(src, w * 2, out, memory_budget="2GB", padding=1, backend="opencv", resume=True)
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        haloconv.conv_file(src, w, out, memory_budget="2GB", padding=1, backend="opencv")
    assert haloconv.conv_file(src, w, out, memory_budget="2GB", padding=1, backend="opencv", resume=True).complete
    # the input changed since (same size, new time stamp): not this computation's result
    np.save(src, x[::-1].copy())
    rc, res = _run(src, "--kernel", "box:3", "-o", out, *stream, "--resume", capsys=capsys)
    assert rc == 2 and "another input mtime ns" in res.err and out.read_bytes() == written
    # an output without a receipt (an in-memory run's) is not taken for done either
    assert _run(src, "--kernel", "box:3", "-o", tmp_path / "m.npy", "-q")[0] == 0
    rc, res = _run(src, "--kernel", "box:3", "-o", tmp_path / "m.npy", *stream, "--resume", capsys=capsys)
    assert rc == 2 and "without a receipt" in res.err


# -- an interrupted stream says how to go on, and is not thrown away --------------------------------
def test_an_interrupted_stream_says_how_far_it_got_and_is_not_discarded(cam, tmp_path, capsys, monkeypatch):
    src, x = cam
    out = tmp_path / "s.npy"
    args = [src, "--kernel", "box:3", "-o", out, "--stream", "--memory-budget", "2GB"]
    real = journal.Journal.record

    def stop_after_three(self, index):  # Ctrl-C, by progress: once the third tile is journaled
        real(self, index)
        if len(self.done) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(journal.Journal, "record", stop_after_three)
    rc, res = _run(*args, capsys=capsys)
    monkeypatch.undo()
    done, total = journal.progress_of(journal.journal_path(out))
    assert rc == 130 and done >= 3 and total == 8
    said = [line for line in res.err.splitlines() if "interrupted" in line]
    assert said == [f"haloconv: interrupted after {done}/{total} tiles; run the same command with --resume to "
                    "finish, or --overwrite to start over"], res.err
    # the same command again, without --resume or --overwrite: refused, nothing touched
    before = _tree(tmp_path)
    rc, res = _run(*args, capsys=capsys)
    assert rc == 2 and f"({done}/{total} tiles done)" in res.err and "--resume" in res.err
    assert _tree(tmp_path) == before
    # --resume finishes it: the tiles done are not computed again
    rc, res = _run(*args, "--resume", capsys=capsys)
    assert rc == 0 and f"({done} done before)" in res.out
    assert np.array_equal(np.load(out)[0, 0], _box3_same(x))
    assert not journal.journal_path(out).exists() and not arrays.partial_path(out).exists()


# -- checks before anything is created -------------------------------------------------------------
def test_a_missing_library_a_read_only_folder_and_no_room_are_refused_before_anything_is_written(
        cam, tmp_path, capsys, monkeypatch):
    src, _ = cam
    folder = tmp_path / "outs"
    folder.mkdir()
    monkeypatch.setitem(sys.modules, "zarr", None)  # zarr not installed
    for streamed in ([], ["--stream", "--memory-budget", "2GB"]):
        rc, res = _run(src, "--kernel", "box:3", "-o", folder / "z.zarr", *streamed, capsys=capsys)
        assert rc == 2 and "pip install 'haloconv[zarr]'" in res.err
    monkeypatch.delitem(sys.modules, "zarr")
    monkeypatch.setattr(guard, "free_bytes", lambda folder: 100_000)  # a file system with 100 kB free
    for streamed in ([], ["--stream", "--memory-budget", "2GB"]):
        rc, res = _run(src, "--kernel", "box:3", "-o", folder / "y.npy", *streamed, capsys=capsys)
        assert rc == 2 and "not enough room" in res.err and "0.1 MiB free" in res.err
    monkeypatch.undo()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(folder) else
                        real_access(p, mode, **kw))  # as a user without write permission sees it (root has it)
    rc, res = _run(src, "--kernel", "box:3", "-o", folder / "y.npy", capsys=capsys)
    assert rc == 2 and "is not writable" in res.err
    assert list(folder.iterdir()) == []


def test_an_os_error_during_the_run_is_one_line_and_a_stream_resumes_after_it(cam, tmp_path, capsys, monkeypatch):
    src, x = cam
    # in memory: the writer fails half way (a disk that fills up under it): one line, nothing left behind
    from haloconv.files import images

    real_write = images._write

    def full(y, tmp, fmt, preview):
        tmp.write_bytes(b"\x93NUMPY half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(images, "_write", full)
    rc, res = _run(src, "--kernel", "box:3", "-o", tmp_path / "m.npy", capsys=capsys)
    monkeypatch.setattr(images, "_write", real_write)
    assert rc == 1 and res.err.strip().count("\n") == 0, res.err
    assert res.err.startswith("haloconv: error:") and "m.npy" in res.err and "(ENOSPC)" in res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.npy"]
    # streamed: a read-only file system under the fourth tile; the journal keeps the three before
    out = tmp_path / "s.npy"
    real_pwrite, calls = os.pwrite, []

    def erofs(fd, data, pos):
        calls.append(pos)
        if len(calls) > 3:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", erofs)
    args = [src, "--kernel", "box:3", "-o", out, "--stream", "--memory-budget", "2GB"]
    rc, res = _run(*args, capsys=capsys)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert rc == 1 and res.err.strip().count("\n") == 0, res.err
    assert "(EROFS)" in res.err and "run the same command with --resume to finish once the cause is fixed" in res.err
    assert journal.journal_path(out).exists()
    rc, res = _run(*args, "--resume", capsys=capsys)
    assert rc == 0 and np.array_equal(np.load(out)[0, 0], _box3_same(x))


def _mount_small(folder, size: str) -> bool:
    """A real tmpfs of ``size`` at ``folder``, where this test may mount one (root)."""
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"hc{uuid.uuid4().hex[:6]}", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def test_a_real_small_file_system_full_and_read_only(tmp_path, capsys, monkeypatch):
    small = tmp_path / "small"
    if not _mount_small(small, "256k"):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount in this container)")
    try:
        x = np.random.default_rng(1).random((200, 200), dtype=np.float32)  # 160 kB in, 160 kB out
        np.save(tmp_path / "in.npy", x)
        # the check before the run: no room for the output and its margin
        rc, res = _run(tmp_path / "in.npy", "--kernel", "box:3", "-o", small / "y.npy", capsys=capsys)
        assert rc == 2 and "not enough room" in res.err and list(small.iterdir()) == []
        # past the check (as if the disk filled up after it): the real ENOSPC, one line, nothing left
        (small / "filler").write_bytes(b"\0" * 150_000)
        monkeypatch.setattr(guard, "check_space", lambda *a: None)
        rc, res = _run(tmp_path / "in.npy", "--kernel", "box:3", "-o", small / "y.npy", capsys=capsys)
        assert rc == 1 and "(ENOSPC)" in res.err and res.err.strip().count("\n") == 0, res.err
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
        monkeypatch.undo()
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        rc, res = _run(tmp_path / "in.npy", "--kernel", "box:3", "-o", small / "y.npy", capsys=capsys)
        assert rc == 2 and "read-only file system" in res.err
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_library_warnings_are_one_line_on_the_warning_channel(cam, tmp_path):
    src, _ = cam
    script = ("import sys, warnings\nimport haloconv.cli.run as r\nload = r.load\n"
              "def loud(args):\n    warnings.warn('a library says careful')\n    return load(args)\n"
              "r.load = loud\nfrom haloconv.cli.main import main\n"
              f"sys.exit(main(['run', {str(src)!r}, '--kernel', 'box:3', '-o', {str(tmp_path / 'w.npy')!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "haloconv: warning: a library says careful (UserWarning)" in done.stderr
    assert "warnings.warn" not in done.stderr and ".py:" not in done.stderr


# -- outputs are what was asked ----------------------------------------------------------------------
def test_an_output_suffix_writes_exactly_that_format_or_is_refused(tmp_path, capsys):
    rgb = (np.random.default_rng(2).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    for name in ("x.jpg", "y.jpeg"):
        assert _run(tmp_path / "p.png", "--kernel", "box:3", "-o", tmp_path / name, "-q")[0] == 0
        with Image.open(tmp_path / name) as im:
            assert im.format == "JPEG" and im.size == (50, 40)
    rc, res = _run(tmp_path / "p.png", "--kernel", "box:3", "-o", tmp_path / "z.bmp", capsys=capsys)
    assert rc == 2 and ".jpg" in res.err and ".png" in res.err and ".npy" in res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "x.jpg", "y.jpeg"]


def test_a_picture_keeps_its_range_and_clips_and_alpha_is_kept_or_refused(tmp_path, capsys):
    grey = np.zeros((30, 40), np.uint8)
    grey[:, 20:] = 200  # an edge a sharpening kernel overshoots on both sides
    Image.fromarray(grey).save(tmp_path / "g.png")
    sharpen = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    np.save(tmp_path / "sharpen.npy", sharpen)
    rc, res = _run(tmp_path / "g.png", "--kernel", tmp_path / "sharpen.npy", "--padding-mode", "replicate",
                   "-o", tmp_path / "s.png", capsys=capsys)
    assert rc == 0 and "values clipped to [0, 1]" in res.out
    import cv2

    expected = cv2.filter2D(grey, -1, sharpen, borderType=cv2.BORDER_REPLICATE)  # OpenCV saturates
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), expected)
    rc, res = _run(tmp_path / "g.png", "--kernel", tmp_path / "sharpen.npy", "--padding-mode", "replicate",
                   "-o", tmp_path / "m.png", "--png-scale", "minmax", capsys=capsys)
    got = np.asarray(Image.open(tmp_path / "m.png"))
    assert rc == 0 and "min/max scaled" in res.out and got.min() == 0 and got.max() == 255
    assert not np.array_equal(got, expected)
    # RGBA: the colours filtered, the alpha kept as it was
    rgba = (np.random.default_rng(3).random((30, 40, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rc, res = _run(tmp_path / "a.png", "--kernel", "box:3", "-o", tmp_path / "a-out.png", capsys=capsys)
    assert rc == 0 and "alpha kept unfiltered" in res.out
    with Image.open(tmp_path / "a-out.png") as im:
        assert im.mode == "RGBA" and np.array_equal(np.asarray(im)[..., 3], rgba[..., 3])
    for extra, words in ((["-o", tmp_path / "a.jpg"], "a JPEG has none"),
                         (["-o", tmp_path / "v.png", "--padding", "0"], "does not fit")):
        rc, res = _run(tmp_path / "a.png", "--kernel", "box:3", *extra, capsys=capsys)
        assert rc == 2 and words in res.err


# -- --memory-budget holds in memory too --------------------------------------------------------------
def test_memory_budget_streams_or_refuses_an_in_memory_run_that_would_exceed_it(tmp_path):
    """A fresh command, as a user runs it (this process holds pytest and torch)."""
    x = np.random.default_rng(4).random((2048, 2048), dtype=np.float32)  # 16 MiB in, 16 MiB out
    np.save(tmp_path / "m.npy", x)
    Image.fromarray((x * 255).astype(np.uint8)).save(tmp_path / "m.png")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "haloconv", "run", *map(str, args)], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    res = cli("m.npy", "--kernel", "box:3", "-o", "y.npy", "--memory-budget", "120MiB")
    assert res.returncode == 0 and "streamed: in memory it would need about" in res.stdout, res.stderr
    peak = int(res.stdout.split("peak RSS ")[1].split(" MiB")[0])
    assert peak <= 120
    assert np.array_equal(np.load(tmp_path / "y.npy")[0, 0], _box3_same(x))
    res = cli("m.png", "--kernel", "box:3", "-o", "p", "--memory-budget", "120MiB")
    assert res.returncode == 2 and "in memory it would need about" in res.stderr and "stream" in res.stderr
    res = cli("m.npy", "--kernel", "box:3", "-o", "z.npy", "--memory-budget", "2GB")
    assert res.returncode == 0 and "streamed" not in res.stdout


def test_a_report_or_plot_path_that_is_a_fifo_or_a_folder_is_refused_not_written_into(cam, tmp_path):
    """A report, plot or profile the user names replaces a file there, never writes into a
    FIFO (which would block with no reader) or a folder; refused before any compute."""
    src, _ = cam
    os.mkfifo(tmp_path / "r.json")
    (tmp_path / "p.png").mkdir()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "haloconv", *map(str, args)], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    res = cli("run", src, "--kernel", "box:3", "-o", "y.npy", "--report", "r.json")
    assert res.returncode == 2 and "is a FIFO" in res.stderr and not (tmp_path / "y.npy").exists(), res.stderr
    res = cli("plan", "--random", "64x64", "--weight-shape", "1x1x3x3", "--workers", "2", "--png", "p.png")
    assert res.returncode == 2 and "is a directory" in res.stderr, res.stderr
    res = cli("calibrate", "--quick", "--profile", "r.json")
    assert res.returncode == 2 and "is a FIFO" in res.stderr, res.stderr
