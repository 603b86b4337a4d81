"""Streaming (out of core): files read and written box by box, tiles sized by memory,
finished tiles journaled, faults and interruptions survived — always torch.equal to the
single-node call on the whole input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import own_children
from haloconv.compute import backends, kernels
from haloconv.costmodel import cost
from haloconv.engines import WorkerError, windows
from haloconv.engines.stream import job as stream_job
from haloconv.engines.stream import threads as stream_threads
from haloconv.engines.stream import workers as stream
from haloconv.files import arrays
from haloconv.files import images as io
from haloconv.files.journal import Journal, header_of, journal_path
from haloconv.options import StreamOptions, float_dtype
from haloconv.planner.streaming import StreamTiler, stream_block, stream_plan
from haloconv.tiling.boxes import Box
from haloconv.tiling.spec import ConvSpec


def _read_back(path, fmt, shape):
    if fmt == "npy":
        y = np.load(path)
    elif fmt == "tif":
        y = tifffile.imread(path)
    else:
        y = _zarr().open_array(str(path), mode="r")[:]
    return torch.from_numpy(np.asarray(y)).reshape(shape)


def _inputs(tmp_path):
    """The same picture in every layout streaming reads."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65535, (61, 47), dtype=np.uint16)
    files = {"npy": tmp_path / "a.npy", "plain.tif": tmp_path / "plain.tif", "striped.tif": tmp_path / "striped.tif",
             "tiled.tif": tmp_path / "tiled.tif", "bigendian.tif": tmp_path / "be.tif", "zarr": tmp_path / "a.zarr"}
    np.save(files["npy"], a)
    tifffile.imwrite(files["plain.tif"], a)
    tifffile.imwrite(files["striped.tif"], a, compression="zlib", rowsperstrip=7)
    tifffile.imwrite(files["tiled.tif"], a, tile=(16, 16), compression="zlib")
    tifffile.imwrite(files["bigendian.tif"], a, byteorder=">")
    z = _zarr().create_array(store=str(files["zarr"]), shape=a.shape, chunks=(10, 12), dtype=a.dtype)
    z[:] = a
    return a, files


def test_boxes_read_from_every_layout_equal_the_whole_file_read(tmp_path):
    a, files = _inputs(tmp_path)
    rng = np.random.default_rng(1)
    kinds = {}
    for name, path in files.items():
        whole = io.read_input(path).x  # a TIFF's integers scaled to [0, 1], an array's kept: as the CLI reads them
        np.testing.assert_allclose(whole[0, 0] * (65535 if name.endswith(".tif") else 1), a, rtol=1e-6, err_msg=name)
        src = arrays.open_input(path)
        kinds[name] = src.kind
        assert src.logical_shape == whole.shape
        for _ in range(25):
            lo = [int(rng.integers(0, n)) for n in whole.shape]
            hi = [int(rng.integers(l + 1, n + 1)) for l, n in zip(lo, whole.shape)]
            box = Box(tuple(lo), tuple(hi))
            np.testing.assert_array_equal(src.read(box), whole[box.slices()], err_msg=name)
        arrays.close_all()
    assert kinds == {"npy": "raw", "plain.tif": "raw", "striped.tif": "tiff-zarr", "tiled.tif": "tiff-zarr",
                     "bigendian.tif": "raw", "zarr": "zarr"}


def test_rgba_tiff_and_nd_npy_read_like_io(tmp_path):
    rng = np.random.default_rng(2)
    tifffile.imwrite(tmp_path / "rgba.tif", rng.integers(0, 255, (30, 20, 4), dtype=np.uint8))
    np.save(tmp_path / "x5.npy", rng.standard_normal((2, 3, 5, 6, 7)))
    for p in (tmp_path / "rgba.tif", tmp_path / "x5.npy"):
        whole = io.read_input(p).x
        src = arrays.open_input(p)
        box = Box((0,) * whole.ndim, whole.shape)
        np.testing.assert_array_equal(src.read(box), whole)
        np.testing.assert_array_equal(src.read(box, np.float64), io.read_input(p, np.float64).x)
    arrays.close_all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=5), st.data())
def test_raw_box_write_then_read_round_trips(tmp_path_factory, shape, data):
    """pread/pwrite run by run: any box of any C-ordered array, written then read back."""
    shape = tuple(shape)
    path = tmp_path_factory.mktemp("raw") / "o.npy"
    logical = shape if len(shape) >= 4 else (1,) * (4 - len(shape)) + shape
    out = arrays.create_output(path, "npy", logical, np.float32, logical)
    lo = tuple(data.draw(st.integers(0, n - 1)) for n in logical)
    hi = tuple(data.draw(st.integers(l + 1, n)) for l, n in zip(lo, logical))
    box = Box(lo, hi)
    block = np.arange(box.volume, dtype=np.float32).reshape(box.shape) + 1
    out.write(box, block)
    np.testing.assert_array_equal(out.read(box), block)
    arrays.close_all()
    whole = np.load(path)
    expect = np.zeros(logical, np.float32)
    expect[box.slices()] = block
    np.testing.assert_array_equal(whole, expect)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate"])
def test_windows_read_into_a_buffer_used_again_equal_fresh_ones(tmp_path, monkeypatch, padding_mode):
    """The threads stream reads every tile's window into a buffer the previous tile of its
    shape used (NaN-filled here, as dirty as can be): every window equals the one assembled
    from the whole input in memory, zero padding included; pieces the file holds as they land
    (float32 .npy, row bands) are read straight in, the others (uint8 pixels converted,
    reversed and broadcast borders) read and copied — both reached."""
    rng = np.random.default_rng(3)
    direct = []
    read_into = arrays.DiskArray.read_into
    monkeypatch.setattr(arrays.DiskArray, "read_into",
                        lambda self, box, dest: direct.append(read_into(self, box, dest)) or direct[-1])
    for name, a in (("f.npy", rng.standard_normal((1, 1, 37, 29)).astype(np.float32)),
                    ("u.npy", rng.integers(0, 255, (1, 2, 37, 29), dtype=np.uint8))):
        np.save(tmp_path / name, a)
        src = arrays.open_input(tmp_path / name, integers="keep")
        c = a.shape[1]
        spec = ConvSpec.from_args(a.shape, (c, c, 5, 3), None, padding=(2, 1), padding_mode=padding_mode)
        job = stream_job.Job(stream_plan(spec, 60_000, "torch", 4, a.itemsize, min_tiles=4), src, None,
                             np.ones((c, c, 5, 3), np.float32), None, np.dtype(np.float32))
        x = a.astype(np.float32)
        for index, tile in enumerate(job.plan.tiles):
            raw = np.full(stream_job.window_bytes(job, index), 0xFF, np.uint8)  # float32 NaNs
            window, nread = stream_job.read_window(job, index, raw)
            assert np.shares_memory(window, raw) and window.shape == tuple(tile.window.shape)
            fresh = windows.fill_window(tile, lambda box, x=x: x[box.slices()], np.zeros(tile.window.shape, np.float32))
            np.testing.assert_array_equal(window, fresh)
            assert nread == sum(p.src.volume for p in tile.pieces) * a.itemsize
        arrays.close_all()
    # a reflected or replicated border widens every row of a window: only zero padding leaves
    # whole rows of the file as they land
    assert len(job.plan.tiles) >= 4 and False in direct and (True in direct) == (padding_mode == "zeros")


def test_bad_stream_inputs_are_refused_naming_the_file(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 5), np.float32)))
    with pytest.raises(ValueError, match="Fortran"):
        arrays.open_input(tmp_path / "f.npy")
    np.save(tmp_path / "t.npy", np.ones((40, 50), np.float32))
    with open(tmp_path / "t.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="truncated"):
        arrays.open_input(tmp_path / "t.npy")
    (tmp_path / "g.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="g.tif"):
        arrays.open_input(tmp_path / "g.tif")
    with pytest.raises(ValueError, match="does not exist"):
        arrays.open_input(tmp_path / "missing.zarr")
    np.save(tmp_path / "e.npy", np.ones((0, 5), np.float32))
    with pytest.raises(ValueError, match="empty"):
        arrays.open_input(tmp_path / "e.npy")


def test_stream_blocks_fit_the_allowance_and_cover_the_output():
    spec = ConvSpec.from_args((3, 2, 300, 200), (4, 2, 5, 5), None, padding=2)
    for allowance in (20e6, 5e6, 1e6, 2e5):
        plan = stream_plan(spec, int(allowance), "torch", min_tiles=8)
        seen = np.zeros(spec.output_shape, dtype=np.int32)
        for t in plan.tiles:
            seen[t.out.slices()] += 1
            assert cost.tile_peak_bytes(spec, t.window.shape, t.out.shape, "torch") <= allowance
        assert (seen == 1).all()
        assert len(plan.tiles) >= 8
    with pytest.raises(ValueError, match="memory_budget"):
        stream_plan(spec, 1000, "torch")


CASES = [
    # (input shape, weight shape, conv kwargs, block over (N, C_out, *spatial))
    ((1, 1, 50, 40), (1, 1, 3, 3), dict(padding=1, padding_mode="reflect"), (None, None, 7, None)),
    ((1, 1, 50, 40), (1, 1, 4, 3), dict(padding="same", padding_mode="circular"), (None, None, 6, 9)),
    ((2, 3, 33, 29), (4, 3, 3, 3), dict(padding=2, stride=2, dilation=2, padding_mode="replicate"), (1, 2, 5, 6)),
    ((1, 4, 31, 27), (4, 2, 3, 3), dict(padding=1, groups=2), (None, 2, 4, None)),
    ((1, 2, 12, 11, 10), (2, 2, 3, 3, 3), dict(padding=1, padding_mode="reflect"), (None, None, 3, 4, None)),
    ((1, 1, 45, 38), (1, 1, 3, 3), dict(padding=0, stride=3), (None, None, 2, None)),
    # the case whose plan has a tile owning no input: windows mostly padding, from row 0
    ((1, 8, 3, 3, 8), (1, 8, 2, 1, 3), dict(stride=(3, 1, 1), dilation=(3, 1, 2), padding=(3, 4, 1),
                                            padding_mode="replicate"), (None, None, 1, 5, 3)),
]


def _tiler_and_options(source, spec, kw: dict) -> tuple[StreamTiler, StreamOptions]:
    """The engines' values from a run's keywords: the tiler (backend, default torch; block)
    and the StreamOptions (the rest)."""
    tiler = StreamTiler(spec, kw.pop("backend", "torch"), float_dtype(kw.get("dtype") or np.float32).itemsize,
                        np.dtype(source.dtype).itemsize, kw.pop("block", None))
    throttle = kw.pop("throttle", None)  # a test's slowed workers: not an option a user sets
    return tiler, dataclasses.replace(StreamOptions.of(**kw), throttle=throttle)


def _processes(source, spec, w, b, out, fmt, **kw):
    """stream.run (worker processes) with keywords."""
    tiler, how = _tiler_and_options(source, spec, kw)
    return stream.run(source, tiler, w, b, out, fmt, how)


def _threads(source, spec, w, b, out, fmt, **kw):
    """stream_threads.run (this process) with keywords; ``threads``: the compute's cores."""
    kw["workers"] = kw.pop("threads", 1)
    tiler, how = _tiler_and_options(source, spec, kw)
    return stream_threads.run(source, tiler, w, b, out, fmt, how)


def _stream(engine: str, *args, **kw):
    """A streamed run on ``engine``: worker processes (stream.run) or this process's
    threads (stream_threads.run); ``workers`` is their count / the compute's cores."""
    if engine == "threads":
        kw = {k: v for k, v in kw.items() if k not in ("on_failure", "timeout", "throttle")}
        return _threads(*args, threads=kw.pop("workers"), **kw)
    return _processes(*args, **kw)


# every case on threads; on worker processes (a fresh pool per stream) the cases whose tiles
# are hardest to place: strided and dilated blocks, 3-D, a tile owning no input
STREAM_RUNS = [(c, "threads") for c in range(len(CASES))] + [(c, "processes") for c in (2, 4, 6)]


@pytest.mark.parametrize("case, engine", STREAM_RUNS)
def test_streamed_run_is_bitwise_the_single_node_result(tmp_path, case, engine):
    shape, wshape, kw, block = CASES[case]
    x = torch.randn(shape)
    np.save(tmp_path / "x.npy", x.numpy())
    w = torch.randn(wshape)
    b = torch.randn(wshape[0])
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, wshape, b.shape, **kw)
    ref = kernels.single_node(x, w, b, spec)
    fmt = ("npy", "zarr", "npy", "zarr", "npy", "tif", "npy")[case]
    res = _stream(engine, source, spec, w, b, tmp_path / f"y.{fmt}", fmt, memory_budget=2 << 30, workers=2,
                  block=block)
    assert torch.equal(_read_back(tmp_path / f"y.{fmt}", fmt, ref.shape), ref)
    assert sum(res.tiles_done.values()) == len(res.plan.tiles) > 2
    assert not arrays.partial_path(tmp_path / f"y.{fmt}").exists() and not journal_path(tmp_path / f"y.{fmt}").exists()


@pytest.mark.parametrize("backend, engine", [(b, "threads") for b in ("ndimage", "fft", "opencv", "separable")]
                         + [("fft", "processes"), ("opencv", "processes")])
def test_streamed_filter_backends_match_their_single_node_call(tmp_path, backend, engine):
    x = torch.rand(1, 1, 70, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    w = torch.randn(1, 1, 7, 7)  # 49 taps: OpenCV filters directly (bitwise)
    if backend == "separable":  # rank 1
        w = (torch.randn(7, 1) @ torch.randn(1, 7)).view(1, 1, 7, 7)
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=3, padding_mode="reflect")
    ref = backends.single_node(backend, x, w, None, spec)
    _stream(engine, source, spec, w, None, tmp_path / "y.npy", "npy", memory_budget=2 << 30, workers=2,
            backend=backend, block=(None, None, 9, None))
    y = _read_back(tmp_path / "y.npy", "npy", ref.shape)
    if backends.get(backend).exact_for(spec):
        assert torch.equal(y, ref)
    else:
        assert backend == "fft"
        assert (y - ref).abs().max() <= backends.get(backend).tolerance[torch.float32] * ref.abs().max()


def _kill_a_worker_when(journal, finished: int):
    """SIGKILL the first worker process of the run in progress once ``finished`` tiles are
    in its journal (a kill mid-run, whatever the start-up time)."""
    def kill():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                done = len(journal.read_text().split("\n")) - 2
            except FileNotFoundError:
                done = 0
            kids = own_children()
            if done >= finished and kids:
                os.kill(kids[0], signal.SIGKILL)
                return
            time.sleep(0.01)
    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


def test_a_worker_killed_mid_stream_the_others_finish_keeping_finished_tiles(tmp_path):
    x = torch.randn(1, 1, 120, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    w = torch.randn(1, 1, 3, 3)
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=1)
    killer = _kill_a_worker_when(journal_path(tmp_path / "y.npy"), 3)
    # every process 40x slower: tiles take long enough for the kill to land mid-run
    res = _processes(source, spec, w, None, tmp_path / "y.npy", "npy", memory_budget=2 << 30, workers=3,
                     block=(None, None, 4, None), throttle={0: 40, 1: 40, 2: 40}, timeout=20)
    killer.join()
    assert len(res.failures) == 1 and "exited" in res.failures[0]
    kept = res.kept[0]
    assert 0 < kept < len(res.plan.tiles)
    # after the fault only the unfinished tiles were computed, by the 2 processes left
    assert sum(res.tiles_done.values()) == len(res.plan.tiles) - kept
    assert len(res.peak_rss) == 2
    assert torch.equal(_read_back(tmp_path / "y.npy", "npy", spec.output_shape), kernels.single_node(x, w, None, spec))
    assert not own_children()


def test_interrupted_stream_resumes_from_its_journal(tmp_path):
    x = torch.randn(1, 2, 96, 50)
    np.save(tmp_path / "x.npy", x.numpy())
    w = torch.randn(3, 2, 3, 3)
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=1, padding_mode="reflect")
    out = tmp_path / "y.zarr"
    kw = dict(memory_budget=2 << 30, block=(None, None, 4, None), timeout=20)
    killer = _kill_a_worker_when(journal_path(out), 3)
    with pytest.raises(WorkerError):
        _processes(source, spec, w, None, out, "zarr", workers=2, on_failure="fail",
                   throttle={0: 30, 1: 30}, **kw)
    killer.join()
    assert not out.exists() and arrays.partial_path(out).exists()  # never a partial file under the name
    journal = journal_path(out)
    finished = len(journal.read_text().splitlines()) - 1
    assert 0 < finished < 24
    with open(journal, "a") as f:
        f.write("2")  # a torn last line (no newline): ignored
    with pytest.raises(ValueError, match="another job"):
        _processes(source, spec, w * 2, None, out, "zarr", workers=2, resume=True, **kw)
    res = _processes(source, spec, w, None, out, "zarr", workers=2, resume=True, **kw)
    assert res.skipped == finished
    assert sum(res.tiles_done.values()) == 24 - finished
    assert torch.equal(_read_back(out, "zarr", spec.output_shape), kernels.single_node(x, w, None, spec))
    assert not journal.exists() and not arrays.partial_path(out).exists()
    assert not own_children()


@pytest.mark.parametrize("sync", [False, True])
def test_sync_puts_each_tile_on_disk_and_a_journal_without_it_trusts_one_boot(tmp_path, monkeypatch, sync):
    """With sync, every tile's output is fdatasync'ed before its line and the output fsync'ed
    before its rename; without, nothing waits on the disk, and the journal names the boot it
    was written in: resumed in another boot, its tiles are not trusted (they may never have
    reached the disk) and are computed again; a synced journal is trusted across boots."""
    x = np.random.default_rng(5).standard_normal((1, 1, 64, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    w = np.ones((1, 1, 3, 3), np.float32) / 9
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=1)
    synced = {"fdatasync": 0, "fsync": 0}
    for name in synced:
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, name=name, real=real: synced.__setitem__(name, synced[name] + 1)
                            or real(fd))
    out = tmp_path / "y.npy"
    res = _threads(source, spec, w, None, out, "npy", memory_budget=2 << 30, threads=2,
                             backend="opencv", block=(None, None, 8, None), sync=sync)
    tiles = len(res.plan.tiles)
    ref = backends.single_node("opencv", torch.from_numpy(x), torch.from_numpy(w), None, spec).numpy()
    assert tiles == 8 and np.array_equal(np.load(out), ref)
    # with sync: a fdatasync per tile; the journal's header and lines, the receipt, and the output before
    # its rename
    assert synced == ({"fdatasync": tiles, "fsync": 1 + tiles + 1 + 1} if sync else {"fdatasync": 0, "fsync": 0})
    # a journal left by an interrupted run, resumed in this boot and in another one
    job = stream_job.job_for(source, StreamTiler(spec, "opencv", 4, 4, (None, None, 8, None)), w, None, np.float32,
                             2 << 30, 1)
    head = stream_job.header(job, out, "npy")
    Journal(journal_path(out), head, resume=False, sync=sync).record(3)
    assert Journal(journal_path(out), head, resume=True, sync=sync).done == {3}
    lines = journal_path(out).read_text().split("\n")
    first = json.loads(lines[0])
    assert ("boot" in first) == (not sync)
    journal_path(out).write_text("\n".join([json.dumps({**first, "boot": "another"} if not sync else first),
                                             *lines[1:]]))
    again = Journal(journal_path(out), head, resume=True, sync=sync)
    assert again.done == ({3} if sync else set()) and again.restarted == (not sync)
    again.record(5)  # the journal was written anew for this boot: what it records now is trusted
    assert Journal(journal_path(out), head, resume=True, sync=sync).done == ({3, 5} if sync else {5})


@pytest.mark.parametrize("refused", [False, True])
def test_outputs_are_written_around_the_page_cache_in_aligned_blocks(tmp_path, monkeypatch, refused):
    """A streamed .npy output goes to disk with O_DIRECT in the file's whole 4 KiB blocks of
    each tile's rows (the .npy header puts the data 128 bytes past a block: each tile's
    first and last partial blocks go through the page cache), every direct write aligned in
    file offset and length; a file system that refuses O_DIRECT gets every byte through the
    page cache.  Either way the output is the single-node call's, bit for bit.  Counted by
    wrapping os.pwrite and asking each fd whether it was opened with O_DIRECT."""
    import fcntl
    import mmap

    def file_system_takes_direct_writes() -> bool:  # tmpfs before Linux 6.6 does not
        try:
            fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
            try:
                return os.pwrite(fd, mmap.mmap(-1, 4096), 0) == 4096
            finally:
                os.close(fd)
        except OSError:
            return False

    direct_possible = file_system_takes_direct_writes() and not refused
    monkeypatch.setattr(arrays, "DIRECT_MIN", 8192)  # these tiles' runs are 40-80 KiB
    monkeypatch.setattr(arrays, "BOUNCE_BYTES", 16384)  # several bounces per run
    if refused:
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda path, flags, *a: (_ for _ in ()).throw(OSError(22, "EINVAL"))
                            if flags & os.O_DIRECT else real_open(path, flags, *a))
    written = {"direct": 0, "cached": 0}
    aligned = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, pos):
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        n = real_pwrite(fd, data, pos)
        written["direct" if direct else "cached"] += n
        if direct:
            aligned.append(pos % 4096 == 0 and n % 4096 == 0)
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)
    x = np.random.default_rng(6).standard_normal((1, 1, 200, 160)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    w = np.ones((1, 1, 5, 5), np.float32) / 25
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=2)
    out = tmp_path / "y.npy"
    res = _threads(source, spec, w, None, out, "npy", memory_budget=2 << 30, threads=2,
                             backend="opencv", block=(None, None, 32, None))
    ref = backends.single_node("opencv", torch.from_numpy(x), torch.from_numpy(w), None, spec).numpy()
    assert len(res.plan.tiles) == 7 and np.array_equal(np.load(out), ref)
    data = x.nbytes
    if direct_possible:  # all but each tile's two partial blocks
        assert all(aligned) and written["direct"] >= data - 7 * 2 * 4096
        assert written["direct"] + written["cached"] >= data
    else:
        assert written["direct"] == 0 and written["cached"] >= data


def _takes_direct_io(path) -> bool:
    """Whether the file system at ``path`` takes O_DIRECT (tmpfs before Linux 6.6 does not)."""
    import mmap

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT)
        try:
            return os.pwrite(fd, mmap.mmap(-1, 4096), 0) == 4096
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError:
        return False


def _drop_from_page_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _pages_cached(path) -> int:
    """The file's pages in the page cache, by mincore(2) on a map of it (not haloconv's way
    of asking: it reads a page with RWF_NOWAIT)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                              ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


@pytest.mark.parametrize("warm", [False, True])
def test_inputs_out_of_the_page_cache_are_read_around_it(tmp_path, monkeypatch, warm):
    """A streamed .npy input that is not in the page cache is read with O_DIRECT, each row
    band's window in one run (its first and last pages read whole into the window's
    buffer, which the window then starts inside); one the cache holds is read from it.
    Either way the output is the single-node call's, bit for bit.  Counted by wrapping
    os.preadv and asking each fd whether it was opened with O_DIRECT, and, independently,
    by mincore: direct reads leave the input out of the cache."""
    import fcntl

    if not _takes_direct_io(tmp_path / "probe"):
        pytest.skip("this file system refuses O_DIRECT")
    monkeypatch.setattr(arrays, "DIRECT_MIN", 8192)  # these windows are 40-90 KiB
    read = {"direct": 0, "cached": 0}
    real_preadv = os.preadv

    def preadv(fd, buffers, pos, *flags):
        n = real_preadv(fd, buffers, pos, *flags)
        if not flags:  # a probe of the cache (RWF_NOWAIT) reads nothing for the run
            read["direct" if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT else "cached"] += n
        return n

    monkeypatch.setattr(os, "preadv", preadv)
    x = np.random.default_rng(7).standard_normal((1, 1, 203, 161)).astype(np.float32)  # rows of 644 bytes
    np.save(tmp_path / "x.npy", x)
    _drop_from_page_cache(tmp_path / "x.npy")
    if warm:
        np.load(tmp_path / "x.npy")
    w = np.ones((1, 1, 5, 5), np.float32) / 25
    source = arrays.open_input(tmp_path / "x.npy")
    cached_before = _pages_cached(tmp_path / "x.npy")  # the header's, and what the kernel read ahead of it
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=2)
    res = _threads(source, spec, w, None, tmp_path / "y.npy", "npy", memory_budget=2 << 30, threads=2,
                   backend="opencv", block=(None, None, 29, None))
    ref = backends.single_node("opencv", torch.from_numpy(x), torch.from_numpy(w), None, spec).numpy()
    assert len(res.plan.tiles) == 7 and np.array_equal(np.load(tmp_path / "y.npy"), ref)
    windows_bytes = sum(t.window.volume for t in res.plan.tiles) * 4
    if warm:
        assert read["direct"] == 0 and read["cached"] >= windows_bytes
    else:  # every window direct, its pages whole: up to two pages more each
        assert read["cached"] == 0 and windows_bytes <= read["direct"] <= windows_bytes + 7 * 2 * 4096
        assert cached_before < x.nbytes / 4096 / 4 and _pages_cached(tmp_path / "x.npy") == cached_before


def test_direct_reads_of_any_run_equal_the_file(tmp_path, monkeypatch):
    """DiskArray.read_direct of row bands at every offset the header and row length give,
    the last ending inside the file's last page, equals the rows as numpy reads them; a box
    that is not one run of bytes, a short one, or a buffer too small reads nothing (None:
    the caller reads another way); a file shorter than its header says is refused by name."""
    if not _takes_direct_io(tmp_path / "probe"):
        pytest.skip("this file system refuses O_DIRECT")
    monkeypatch.setattr(arrays, "DIRECT_MIN", 8192)
    x = np.arange(1 * 2 * 300 * 333, dtype=np.float32).reshape(1, 2, 300, 333)
    np.save(tmp_path / "x.npy", x)
    _drop_from_page_cache(tmp_path / "x.npy")
    src = arrays.open_input(tmp_path / "x.npy")
    row = 333 * 4
    for c, lo, hi in [(0, 0, 300), (1, 0, 300), (0, 1, 250), (1, 17, 300), (1, 299, 300), (0, 100, 101)]:
        box = Box((0, c, lo, 0), (1, c + 1, hi, 333))
        raw = np.zeros(arrays.direct_bytes((hi - lo) * row), np.uint8)
        got = src.read_direct(box, raw)
        if (hi - lo) * row < arrays.DIRECT_MIN:
            assert got is None
            continue
        assert got is not None and np.shares_memory(got, raw)
        np.testing.assert_array_equal(got, x[box.slices()])
    whole = Box((0, 0, 0, 0), (1, 2, 300, 333))  # both channels: one run
    raw = np.zeros(arrays.direct_bytes(x.nbytes), np.uint8)
    np.testing.assert_array_equal(src.read_direct(whole, raw), x)
    assert src.read_direct(whole, raw[:x.nbytes]) is None  # too small for the run's whole pages
    assert src.read_direct(Box((0, 0, 0, 0), (1, 2, 300, 100)), raw) is None  # columns: runs, not one
    arrays.close_all()
    with open(tmp_path / "x.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "x.npy") - 5000)
    _drop_from_page_cache(tmp_path / "x.npy")
    with pytest.raises(ValueError, match="x.npy.*shorter than its header says"):
        src.read_direct(whole, raw)
    arrays.close_all()


def test_journal_refuses_another_job_and_skips_torn_lines(tmp_path):
    p = tmp_path / "j"
    j = Journal(p, {"a": 1}, resume=False)
    j.record(3)
    j.record(12)
    j.close()
    with open(p, "a") as f:
        f.write("4")
    assert Journal(p, {"a": 1}, resume=True).done == {3, 12}
    with pytest.raises(ValueError, match="another job"):
        Journal(p, {"a": 2}, resume=True)


def test_conv_file_refuses_bad_arguments_naming_them(tmp_path):
    import haloconv

    np.save(tmp_path / "x.npy", np.ones((20, 20), np.float32))
    w = np.ones((1, 1, 3, 3), np.float32)
    for kw, match in ((dict(memory_budget=0), "memory_budget"), (dict(memory_budget=2.5e9), "memory_budget"),
                      (dict(memory_budget=2**30, workers=0), "workers"),
                      (dict(memory_budget=2**30, dtype=torch.int32), "dtype"),
                      (dict(memory_budget=2**30, backend="cuda"), "backend"),
                      (dict(memory_budget=2**30, block=(1, 1, 0, None)), "block")):
        with pytest.raises((ValueError, TypeError), match=match):
            haloconv.conv_file(tmp_path / "x.npy", w, tmp_path / "y.npy", **kw)
    with pytest.raises(ValueError, match="output must end"):
        haloconv.conv_file(tmp_path / "x.npy", w, tmp_path / "y.png", memory_budget=2**30)
    assert not own_children() and not (tmp_path / "y.npy").exists()


def test_resume_folds_the_journals_of_spmd_ranks(tmp_path):
    """A torchrun streamed run leaves OUT.journal (rank 0) and OUT.journal.r<k>: a resumed
    run counts the tiles of all of them as done."""
    x = torch.randn(1, 1, 40, 30)
    np.save(tmp_path / "x.npy", x.numpy())
    w = torch.randn(1, 1, 3, 3)
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=1)
    out = tmp_path / "y.npy"
    block = (None, None, 4, None)  # 10 tiles
    job = stream.job_for(source, StreamTiler(spec, "torch", 4, 4, block), w, None, torch.float32, 1 << 30, 8)
    job, journal = stream.open_output(job, out, "npy", resume=False)
    backend = kernels.select_backend(spec, x, w, None)
    header = stream_job.header(job, out, "npy")
    part = Journal(journal.path.with_name(journal.path.name + ".r1"), header, resume=False)
    for index, j in ((0, journal), (2, journal), (1, part), (5, part)):  # as two ranks would
        stream.run_tile(job, index, backend)
        j.record(index)
    journal.close()
    part.close()
    arrays.close_all()
    res = _processes(source, spec, w, None, out, "npy", memory_budget=2 << 30, workers=2, resume=True, block=block)
    assert res.skipped == 4 and sum(res.tiles_done.values()) == 6
    assert torch.equal(_read_back(out, "npy", spec.output_shape), kernels.single_node(x, w, None, spec))
    assert not list(tmp_path.glob("y.npy.journal*"))


@pytest.mark.parametrize("stage", ["read", "write"])
def test_a_failure_in_a_threads_stream_stops_it_and_resume_goes_on(tmp_path, monkeypatch, stage):
    """On threads, an error in the reading or the writing stage stops the run at once (no
    thread left behind, nothing under the output's name); the journal holds exactly the
    tiles written before it, and a resumed run computes only the others."""
    x = torch.randn(1, 1, 96, 50)
    np.save(tmp_path / "x.npy", x.numpy())
    w = torch.randn(1, 1, 3, 3)
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=1, padding_mode="reflect")
    out = tmp_path / "y.npy"
    kw = dict(memory_budget=2 << 30, threads=2, block=(None, None, 4, None))  # 24 tiles
    calls = {"n": 0}
    real = stream_job.read_window if stage == "read" else Journal.record

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError(f"injected {stage} failure")
        return real(*args)

    if stage == "read":
        monkeypatch.setattr(stream_job, "read_window", failing)
    else:
        monkeypatch.setattr(Journal, "record", failing)
    before = threading.active_count()
    with pytest.raises(OSError, match=f"injected {stage} failure"):
        _threads(source, spec, w, None, out, "npy", **kw)
    assert threading.active_count() == before
    assert not out.exists() and arrays.partial_path(out).exists()
    finished = len(journal_path(out).read_text().splitlines()) - 1
    assert finished == 5  # tiles 0-4: the write in flight when a read fails is finished
    monkeypatch.undo()
    res = _threads(source, spec, w, None, out, "npy", resume=True, **kw)
    assert res.skipped == finished and res.tiles_done[0] == 24 - finished
    assert torch.equal(_read_back(out, "npy", spec.output_shape), kernels.single_node(x, w, None, spec))
    assert not journal_path(out).exists() and not arrays.partial_path(out).exists()


def _zarr():
    """zarr (the zarr extra): a test that reads or writes a store is skipped without it."""
    return pytest.importorskip("zarr")


def test_resume_keeps_the_tiles_of_the_journal_when_the_process_holds_a_little_more(tmp_path, monkeypatch):
    """The tiles are sized by what the process holds when a run starts, which moves a few MB
    between two runs of the same command; a resumed run keeps the journal's tiles (they fit
    within the budget's slack) instead of refusing the journal as another job's."""
    x = torch.randn(1, 1, 600, 4096)
    np.save(tmp_path / "x.npy", x.numpy())
    w = torch.randn(1, 1, 9, 9)
    source = arrays.open_input(tmp_path / "x.npy")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=4)
    out = tmp_path / "y.npy"
    calls = {"n": 0}
    real = Journal.record

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    budget = stream_job.resident(os.getpid()) + stream_job.MARGIN_BYTES + (24 << 20)
    monkeypatch.setattr(Journal, "record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _threads(source, spec, w, None, out, "npy", memory_budget=budget, threads=2)
    monkeypatch.undo()
    before = header_of(journal_path(out))["block"]
    # the resumed run's process holds 3 MiB more: afresh, its tiles would be thinner
    held = stream_job.resident
    monkeypatch.setattr(stream_job, "resident", lambda pid: held(pid) + (3 << 20))
    monkeypatch.setattr(stream, "resident", lambda pid: held(pid) + (3 << 20))
    afresh = stream_block(spec, stream.data_allowance(budget, held(os.getpid()) + (3 << 20))
                               // stream_threads.IN_FLIGHT_PEAKS, "opencv")
    assert afresh[2] != before[2]  # the case this is about: the tiles would differ
    res = _threads(source, spec, w, None, out, "npy", memory_budget=budget, threads=2, resume=True)
    assert res.skipped == 2 and list(res.plan.tiles[0].out.shape) == before
    assert torch.equal(_read_back(out, "npy", spec.output_shape), backends.single_node(res.plan.backend, x, w, None,
                                                                                        spec))


def test_a_zarr_input_is_decoded_a_chunk_at_a_time_once_each(tmp_path, monkeypatch):
    """A streamed Zarr input (threads) is read a chunk at a time through a cache of two rows
    of chunks: row bands whose windows reach into the chunk rows around them decode each
    chunk once (counted as reads of whole chunks from the file), and the output is the
    single-node call's bit for bit."""
    zarr = _zarr()
    x = np.random.default_rng(11).random((1, 1, 96, 80)).astype(np.float32)
    z = zarr.create_array(store=str(tmp_path / "x.zarr"), shape=x.shape, chunks=(1, 1, 32, 40), dtype="f4")
    z[:] = x
    reads = []
    real = arrays.DiskArray.read
    monkeypatch.setattr(arrays.DiskArray, "read", lambda self, box, dtype=np.float32:
                        (reads.append((box.lo, box.hi)), real(self, box, dtype))[1])
    w = np.ones((1, 1, 5, 5), np.float32) / 25
    source = arrays.open_input(tmp_path / "x.zarr")
    spec = ConvSpec.from_args(source.logical_shape, w.shape, None, padding=2, padding_mode="reflect")
    res = _threads(source, spec, w, None, tmp_path / "y.npy", "npy", memory_budget=2 << 30, threads=2,
                   backend="opencv", block=(None, None, 16, None))
    ref = backends.single_node("opencv", torch.from_numpy(x), torch.from_numpy(w), None, spec).numpy()
    assert len(res.plan.tiles) == 6 and np.array_equal(np.load(tmp_path / "y.npy"), ref)
    whole = {((0, 0, r, c), (1, 1, r + 32, c + 40)) for r in (0, 32, 64) for c in (0, 40)}
    assert sorted(reads) == sorted(whole)  # every read a whole chunk, each chunk once
