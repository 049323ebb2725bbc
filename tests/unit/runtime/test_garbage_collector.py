"""The service runtime settles the garbage collector once start-up is done."""

from __future__ import annotations

import gc

from cth_shared.runtime import GC_YOUNG_THRESHOLD, _settle_garbage_collector


def test_start_up_objects_are_frozen_and_young_collections_run_less_often_but_still_run() -> None:
    threshold = gc.get_threshold()
    try:
        gc.unfreeze()
        assert gc.get_freeze_count() == 0
        _settle_garbage_collector()
        assert gc.get_freeze_count() > 0  # what start-up loaded is out of the collector's walks
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, threshold[1], threshold[2])
        assert gc.isenabled()

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after start-up is still collected
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
