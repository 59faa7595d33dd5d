"""PageAllocator: one owner per page, only free pages change sides."""

import pytest

from helmrec.pool.pages import PageAllocator, Side


def test_initial_split_and_allocation():
    alloc = PageAllocator(10, 3)
    assert (alloc.pages(Side.EMB), alloc.pages(Side.KV)) == (3, 7)
    pages = [alloc.allocate(Side.EMB) for _ in range(4)]
    assert pages[3] is None and sorted(pages[:3]) == [0, 1, 2]
    assert alloc.used_count(Side.EMB) == 3 and alloc.used_pages() == 3
    alloc.check()


def test_transfer_moves_only_free_pages():
    alloc = PageAllocator(6, 3)
    held = alloc.allocate(Side.EMB)
    assert alloc.transfer_free(Side.EMB, 5) == 2  # the held page stays with EMB
    assert alloc.owner(held) == Side.EMB
    assert (alloc.pages(Side.EMB), alloc.pages(Side.KV)) == (1, 5)
    alloc.check()


def test_release_checks_owner_and_double_release():
    alloc = PageAllocator(4, 2)
    page = alloc.allocate(Side.KV)
    with pytest.raises(ValueError, match="owned by KV, not EMB"):
        alloc.release(Side.EMB, page)
    alloc.release(Side.KV, page)
    with pytest.raises(ValueError, match="released twice"):
        alloc.release(Side.KV, page)
