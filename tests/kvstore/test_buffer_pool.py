"""BufferPool: reuse by size, the byte limit, room made by dropping free buffers of other sizes."""
from kvstore.buffer_pool import BufferPool


def test_buffers_are_reused_and_bounded_in_bytes():
    pool = BufferPool(300)
    first, second = pool.take(100), pool.take(100)
    assert pool.take(101) is None and pool.num_bytes == 200
    pool.give(first)
    assert pool.take(100) is first and pool.num_bytes == 200
    assert second is not first


def test_a_full_pool_drops_free_buffers_of_another_size_to_make_room():
    pool = BufferPool(200)
    small = [pool.take(100), pool.take(100)]
    assert pool.take(200) is None          # both taken
    for buffer in small:
        pool.give(buffer)
    large = pool.take(200)
    assert large is not None and len(large) == 200 and pool.num_bytes == 200
    assert pool.take(100) is None
