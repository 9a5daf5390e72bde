"""CUDA_VISIBLE_DEVICES read as CUDA reads it: indices, UUID prefixes, a bad entry ends the list, duplicates: none."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.hardware.visible_devices import parse_cuda_visible_devices, visible_devices

UUIDS = [
    "GPU-aaaa1111-0000-0000-0000-000000000000",
    "GPU-aaaa2222-0000-0000-0000-000000000000",
    "GPU-bbbb3333-0000-0000-0000-000000000000",
    "MIG-cccc4444-0000-0000-0000-000000000000",
]

# "(driver 580)": the CUDA driver itself gave this answer (cuDeviceGetCount on the H200 device machine).
CASES = [
    # (CUDA_VISIBLE_DEVICES, visible positions, what CUDA does)
    (None, [0, 1, 2, 3], "unset: every device (driver 580)"),
    ("", [], "empty: no device (driver 580)"),
    ("   ", [], "blanks only: no device (driver 580)"),
    ("0", [0], "one index (driver 580)"),
    ("2,0", [2, 0], "order of the list is CUDA's order"),
    (" 1 , 3 ", [1, 3], "blanks around indices do not matter (driver 580)"),
    ("1,7,2", [1], "an index past the last device ends the list (driver 580)"),
    ("1,-1,2", [1], "-1 ends the list (driver 580)"),
    ("-1", [], "-1 alone hides everything (driver 580)"),
    ("0,abc,1", [0], "garbage ends the list (driver 580)"),
    ("0,,1", [0], "an empty entry ends the list (driver 580: '0,,0')"),
    ("0,", [0], "a trailing comma keeps what came before (driver 580)"),
    (",0", [], "a leading comma hides everything (driver 580)"),
    ("1gpu,2", [1, 2], "an index is read like strtoul: leading digits count (driver 580: '0abc')"),
    ("00", [0], "leading zeros are the same index (driver 580)"),
    ("+1", [1], "strtoul accepts a plus sign (driver 580)"),
    ("0,0", [], "a duplicate index hides every device (driver 580)"),
    ("0,1,0", [], "a later duplicate still hides every device"),
    ("3,0,bad,3", [3, 0], "a duplicate after the end of the list is never read"),
    ("GPU-bbbb", [2], "a unique UUID prefix names the device (driver 580)"),
    (UUIDS[1], [1], "a full UUID names the device (driver 580)"),
    ("GPU-BBBB3333", [2], "UUID hex matches in any case (driver 580)"),
    ("GPU-bbbb33330000", [2], "dashes in the UUID do not matter (driver 580)"),
    ("GPU-b", [2], "one hex digit is enough when it is unique (driver 580)"),
    ("GPU-bbbb ", [], "a blank after a UUID makes it name nothing (driver 580)"),
    ("GPU-bbbb, GPU-aaaa1", [2], "a blank before a later UUID ends the list there (driver 580)"),
    ("0 ,0", [], "blanks do not hide a duplicate index (driver 580)"),
    ("\t0", [0], "tabs are blanks for an index (driver 580)"),
    ("MIG-bbbb", [2], "the GPU-/MIG- prefix is not checked against the device kind (driver 580)"),
    ("MIG-cccc", [3], "MIG UUIDs name MIG slices"),
    ("GPU-", [], "a prefix without hex names nothing (driver 580)"),
    (" GPU-bbbb", [], "a blank before a UUID makes it garbage (driver 580)"),
    ("GPU-aaaa", [], "an ambiguous UUID prefix ends the list (here at once)"),
    ("GPU-bbbb,GPU-aaaa,0", [2], "an ambiguous prefix later keeps the entries before it"),
    ("GPU-ffff", [], "an unknown UUID ends the list (driver 580)"),
    ("GPU-bbbb,MIG-bbbb3", [], "the same device by two UUID spellings is a duplicate (driver 580)"),
    ("GPU-bbbb,0", [2], "after a UUID, an index ends the list (driver 580)"),
    ("1,GPU-aaaa2", [1], "after an index, a UUID ends the list (driver 580)"),
    ("gpu-bbbb", [], "lower-case 'gpu-' is not a UUID prefix: garbage (driver 580)"),
]


@pytest.mark.parametrize("value, expected, why", CASES, ids=[c[2] for c in CASES])
def test_cuda_visible_devices_table(value, expected, why):
    assert parse_cuda_visible_devices(value, UUIDS) == expected


def test_note_explains_where_the_list_ended():
    result = visible_devices("1,7,2", UUIDS)
    assert result.indices == (1,)
    assert "'7'" in result.note and "stops there" in result.note and "visible: 1" in result.note


def test_note_explains_duplicates_hide_everything():
    assert "twice" in visible_devices("0,0", UUIDS).note


def test_no_note_when_every_entry_is_valid():
    assert visible_devices("2,0", UUIDS).note == ""
    assert visible_devices(None, UUIDS).note == ""


def test_a_device_may_answer_to_several_uuids():
    devices = [("GPU-1111", "MIG-9999"), ("GPU-2222",)]
    assert parse_cuda_visible_devices("MIG-9999,GPU-2222", devices) == [0, 1]


def test_no_devices_means_every_index_is_invalid():
    result = visible_devices("0", [])
    assert result.indices == () and "there is none" in result.note


@given(st.lists(st.integers(0, 15), unique=True, max_size=16))
def test_any_list_of_distinct_valid_indices_is_kept_in_order(indices):
    devices = [f"GPU-{i:04d}" for i in range(16)]
    assert parse_cuda_visible_devices(",".join(map(str, indices)), devices) == indices
