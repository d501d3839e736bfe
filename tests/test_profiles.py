import json

import pytest

from kernelfit.catalog.sources import SOURCES
from kernelfit.errors import UsageError
from kernelfit.hardware.machine import Machine, load_machine_file
from kernelfit.profiles import apply_overrides, load_profile, profile_names

REQUIRED = {"gtx1060-6gb", "gtx1080ti", "p40", "p100-16gb", "v100-16gb", "v100-32gb", "t4", "rtx2080ti", "a10",
            "a100-40gb", "a100-80gb", "rtx3060-12gb", "rtx3090", "rtx4090", "l4", "l40s", "h100-sxm", "h200", "b200",
            "rtx5090", "jetson-orin", "mi300x", "apple-m2", "cpu-avx2", "cpu-spr-amx", "a100-80gb+t4", "2x-rtx3090"}


def test_every_reference_machine_ships():
    assert REQUIRED <= set(profile_names())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_profile_cites_known_sources_and_round_trips(name, tmp_path):
    m = load_profile(name)
    for sid in m.sources + tuple(s for d in m.devices for s in d.sources):
        assert sid in SOURCES, f"{name} cites unknown source {sid}"
    for d in m.accelerators:
        assert d.sources, f"{name}: {d.name} has no source for its specs"
        assert d.memory_gib > 0
    assert Machine.from_dict(json.loads(m.to_json()), origin=m.origin) == m
    f = tmp_path / "p.toml"
    f.write_text(m.to_toml())
    assert load_machine_file(f).devices == m.devices


def test_facts_match_shared_hardware_table():
    # compute capability and memory from shared/hardware Table 1
    expect = {"gtx1060-6gb": ("6.1", 6), "p100-16gb": ("6.0", 16), "v100-16gb": ("7.0", 16), "t4": ("7.5", 16),
              "a100-80gb": ("8.0", 80), "rtx4090": ("8.9", 24), "h100-sxm": ("9.0", 80), "b200": ("10.0", 180),
              "rtx5090": ("12.0", 32), "jetson-orin": ("8.7", 64)}
    for name, (cc, mem) in expect.items():
        d = load_profile(name).accelerators[0]
        assert (str(d.compute_capability), d.memory_gib) == (cc, mem), name
    assert load_profile("mi300x").accelerators[0].arch == "gfx942"
    assert [str(d.compute_capability) for d in load_profile("a100-80gb+t4").accelerators] == ["8.0", "7.5"]


def test_with_and_without_override_the_software_set():
    m = load_profile("a100-80gb")
    assert m.software.has_package("flash-attn")
    assert not apply_overrides(m, None, ["flash-attn"]).software.has_package("flash-attn")
    t4 = apply_overrides(load_profile("t4"), ["flash_attn==2.8.3"], None)
    assert t4.software.package_version("flash-attn") == "2.8.3"
    with pytest.raises(UsageError, match="unknown package"):
        apply_overrides(m, ["flash-atten"], None)


def test_unknown_profile_suggests_names():
    with pytest.raises(UsageError, match="did you mean t4"):
        load_profile("t5")
