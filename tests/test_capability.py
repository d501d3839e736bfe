import pytest

from kernelfit.hardware.capability import SM80_AMPERE, Capability, build_covers
from kernelfit.catalog.torch_builds import known_arch_list


@pytest.mark.parametrize("text,expected", [("8.6", (8, 6)), ("sm_86", (8, 6)), ("sm_90a", (9, 0)),
                                           ("compute_120", (12, 0)), ("sm_100", (10, 0)), ("61", (6, 1))])
def test_parse(text, expected):
    assert Capability.parse(text) == expected


def test_parse_rejects_garbage():
    with pytest.raises(ValueError):
        Capability.parse("ampere")


def test_ordering_and_names():
    assert Capability(7, 5) < SM80_AMPERE <= Capability(8, 9)
    assert Capability(8, 6).sm == "sm_86" and str(Capability(12, 0)) == "12.0" and Capability(9, 0).to_int() == 90


def test_binary_compatibility_within_a_major():
    # cu126 wheels have sm_60 SASS only; a GTX 1060 (6.1) runs it
    assert build_covers(["sm_50", "sm_60", "sm_70"], Capability(6, 1))
    # sm_60 code does not run on sm_70, nor sm_61 code on sm_60
    assert not build_covers(["sm_60"], Capability(7, 0))
    assert not build_covers(["sm_61"], Capability(6, 0))


def test_cu128_wheels_cannot_run_pascal_but_ptx_reaches_newer_chips():
    archs, _ = known_arch_list("2.11.0+cu128", "12.8")
    assert not build_covers(archs, Capability(6, 1))
    assert not build_covers(archs, Capability(7, 0))  # Volta dropped from cu128 in 2.10+
    assert build_covers(archs, Capability(12, 1))  # via compute_120 PTX
    archs29, _ = known_arch_list("2.9.1+cu128", "12.8")
    assert build_covers(archs29, Capability(7, 0))


def test_unknown_wheel_has_no_table_row():
    assert known_arch_list("2.11.0", None) is None
    assert known_arch_list("1.13.0+cu117", "11.7") is None
