"""The threads engine: views where possible, thread budget restored, per-worker stats."""

import numpy as np
import torch

import haloconv
from conftest import torch_plan
from haloconv.engines import assemble_window


def test_interior_row_tiles_are_views_of_the_input():
    x = torch.randn(1, 2, 64, 32)
    p = torch_plan(x.shape, (3, 2, 3, 3), padding=1, partition="rows", workers=4)
    views = [t for t in p.tiles if t.window_is_view]
    assert views  # zero padding handed to the backend: no tile needs a padded copy
    for t in views:
        win = assemble_window(x, t)
        assert win.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_padded_modes_assemble_a_buffer_with_mirrored_halo():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    p = torch_plan(x.shape, (1, 1, 3, 3), padding=1, padding_mode="reflect", partition="rows", workers=2)
    win = assemble_window(x, p.tiles[0])
    # rows -1..2 of the reflect-padded input: row -1 mirrors row 1
    expected = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")[0, 0, 0:4]
    assert torch.equal(win[0, 0, :4], expected)


def test_thread_budget_is_restored_and_stats_reported():
    before = torch.get_num_threads()
    x = torch.randn(2, 3, 40, 40)
    w = torch.randn(4, 3, 3, 3)
    p = torch_plan(x.shape, w.shape, padding=1, partition="grid", workers=4)
    ex = haloconv.execute(p, x, w)
    assert torch.get_num_threads() == before
    assert [s.rank for s in ex.workers] == [0, 1, 2, 3]
    assert all(s.seconds["compute"] > 0 for s in ex.workers)
    # counted by hand: with aligned ownership tile (i, j) owns input rows/cols [0, 19) or [19, 40) and
    # needs [0, 21) or [19, 40) of each: halo = needed 21x21 minus owned, times N*C = 6
    assert [s.halo_elements for s in ex.workers] == [(441 - 19 * 19) * 6, (441 - 19 * 21) * 6,
                                                     (441 - 21 * 19) * 6, 0]
    table = ex.table()
    assert "compute s" in table and "engine=threads" in table and "backend=" in table


def test_an_error_in_one_worker_reaches_the_caller(monkeypatch):
    from haloconv.compute import kernels

    real = kernels.conv_tile
    calls = []

    def failing(window, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker exploded")
        return real(window, *args, **kw)

    monkeypatch.setattr(kernels, "conv_tile", failing)
    before = torch.get_num_threads()
    x = torch.randn(1, 1, 10, 10)
    p = torch_plan(x.shape, (1, 1, 3, 3), padding=1, partition="rows", workers=3)
    try:
        haloconv.execute(p, x, torch.randn(1, 1, 3, 3))
    except RuntimeError as e:
        assert "worker exploded" in str(e)
    else:
        raise AssertionError("the worker's error was swallowed")
    assert torch.get_num_threads() == before


def test_a_small_pool_computes_many_tiles_exactly_and_threads_is_checked():
    import threading

    import pytest

    x = torch.randn(1, 2, 90, 50)
    w = torch.randn(3, 2, 5, 5)
    p = torch_plan(x.shape, w.shape, padding=2, padding_mode="reflect", partition="rows", workers=12)
    seen = set()
    real = haloconv.engines.inprocess.tensors.assemble_window

    def spy(xx, tile):
        seen.add(threading.current_thread().name)
        return real(xx, tile)

    haloconv.engines.inprocess.tensors.assemble_window = spy
    try:
        y = haloconv.execute(p, x, w, engine="threads", threads=2).output
    finally:
        haloconv.engines.inprocess.tensors.assemble_window = real
    assert torch.equal(y, torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), w))
    assert 1 <= len(seen) <= 2  # twelve tiles, at most two threads
    with pytest.raises(ValueError, match="threads"):
        haloconv.execute(p, x, w, engine="threads", threads=0)
    with pytest.raises(ValueError, match="threads applies"):
        haloconv.execute(p, x, w, engine="processes", threads=2)


def test_conv_plans_once_when_the_array_engine_does_not_take_the_arrays(monkeypatch):
    """numpy inputs of a layer (torch computes it): the plan made to ask the array engine is
    the one that runs (issue 28: it was made twice)."""
    import numpy as np

    from haloconv.api import in_memory

    calls = []
    real = in_memory.plan_for
    monkeypatch.setattr(in_memory, "plan_for", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = np.random.default_rng(0).random((1, 3, 20, 20), dtype=np.float32)
    w = np.random.default_rng(1).random((4, 3, 3, 3), dtype=np.float32)
    y = haloconv.conv(x, w, padding=1, partition="rows", workers=2)
    assert len(calls) == 1
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    assert isinstance(y, np.ndarray) and np.allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_results_go_on_huge_pages_while_the_kernel_has_free_huge_blocks(monkeypatch):
    """host.page_kind(n): huge pages while /proc/buddyinfo's free blocks of a huge page or
    more hold 2n bytes (no compaction to fault them in), else ordinary pages;
    HALOCONV_PAGES names one; a large result is allocated on that kind."""
    from haloconv.engines import host

    free_now = host.free_huge_bytes
    # order 9 (2 MiB of 4 KiB pages) and up: 2 blocks of 2^9 pages and 3 of 2^10 = 16 MiB
    table = ["Node 0, zone   Normal      5      4      3      2      1      0      0      0      0      2      3"]
    assert host.free_in_blocks(table, 9, 4096) == (2 * 512 + 3 * 1024) * 4096 == 16 << 20
    monkeypatch.delenv("HALOCONV_PAGES", raising=False)
    monkeypatch.setattr(host, "free_huge_bytes", lambda: 16 << 20)
    assert host.page_kind(8 << 20) == "huge" and host.page_kind(9 << 20) == "ordinary"
    monkeypatch.setattr(host, "free_huge_bytes", lambda: None)  # THP off, or not Linux
    assert host.page_kind(8 << 20) == "ordinary"
    def anon_huge() -> int:  # this process's memory on transparent huge pages
        text = open("/proc/self/smaps_rollup").read()
        return int(text.split("AnonHugePages:")[1].split()[0]) << 10

    for forced in ("huge", "ordinary"):
        monkeypatch.setenv("HALOCONV_PAGES", forced)
        assert host.page_kind(1 << 40) == forced
        before, rss = anon_huge(), host.proc_mb("self")
        a = host.empty((1, 1, 4096, 4096), np.float32)  # 64 MiB
        assert a.shape == (1, 1, 4096, 4096) and a.dtype == np.float32 and a.flags.writeable
        a.fill(2)
        assert float(a[0, 0, ::97, ::89].sum()) == 2 * a[0, 0, ::97, ::89].size
        grew = anon_huge() - before
        if forced == "ordinary":
            assert grew < 8 << 20, grew
        elif (free_now() or 0) > 1 << 30:  # huge pages there to fault in
            assert grew >= 32 << 20, grew
        del a  # a mapping of its own: given back, not kept by the C heap
        assert host.proc_mb("self") < rss + 16, (rss, host.proc_mb("self"))
