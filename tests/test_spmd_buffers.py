"""Zero-copy windows: a shard in a buffer with room around it becomes its window in place."""

import torch

import haloconv
from haloconv.engines.spmd import steps as spmd


def _plan():
    return haloconv.plan((1, 4, 64, 32), (4, 4, 3, 3), padding=1, partition="rows", workers=2, ownership="even")


def test_shard_in_a_roomy_buffer_is_its_own_window():
    p = _plan()
    tile = p.tiles[1]
    room = spmd._room(tile, p.spec.input_shape)
    buffer = torch.zeros(room.shape)
    spmd._mark_room(buffer)
    x_local = buffer[tile.owned.within(room)]
    window, writable = spmd._in_place_window(tile, x_local, p.spec.input_shape)
    assert writable and window.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    assert tuple(window.shape) == tile.window.shape


def test_the_full_input_gives_a_read_only_view_and_plain_shards_a_copy():
    p = _plan()
    x = torch.randn(p.spec.input_shape)
    window, writable = spmd._in_place_window(p.tiles[0], x[p.tiles[0].owned.slices()], p.spec.input_shape)
    assert not writable and torch.equal(window, x[p.tiles[0].window.slices()])
    plain = torch.randn(p.tiles[1].owned.shape)
    assert spmd._in_place_window(p.tiles[1], plain, p.spec.input_shape) is None
    unmarked = torch.zeros(spmd._room(p.tiles[1], p.spec.input_shape).shape)  # not haloconv's: never written
    view = unmarked[p.tiles[1].owned.within(spmd._room(p.tiles[1], p.spec.input_shape))]
    assert spmd._in_place_window(p.tiles[1], view, p.spec.input_shape) is None
