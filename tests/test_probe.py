import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernelfit.cli.doctor import findings
from kernelfit.hardware.machine import Machine
from kernelfit.probe import probe_machine
from kernelfit.probe.cpu import parse_cpuinfo
from kernelfit.probe.nvml import probe_nvml

from conftest import fake_nvml, run_json


def test_no_driver_is_an_answer_not_a_crash():
    r = probe_nvml(fake_nvml(None))
    assert r.devices == [] and "no NVIDIA driver" in r.error


def test_nvml_mixed_box(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    r = probe_nvml(fake_nvml([("NVIDIA A100-SXM4-80GB", (8, 0), 80, 79.2), ("Tesla T4", (7, 5), 15, 14.6)]))
    assert [str(d.compute_capability) for d in r.devices] == ["8.0", "7.5"]
    assert [d.torch_device for d in r.devices] == ["cuda:0", "cuda:1"]
    assert r.devices[1].memory_free_gib == pytest.approx(14.6, abs=0.01)
    assert r.driver == "550.54.15" and r.cuda_driver == "12.4"


def test_cuda_visible_devices_renumbers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    r = probe_nvml(fake_nvml([("A", (8, 0), 80, 80), ("B", (7, 5), 16, 16)]))
    assert [(d.name, d.torch_device) for d in r.devices] == [("B", "cuda:0")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "hides" in probe_nvml(fake_nvml([("A", (8, 0), 80, 80)])).error


def test_probe_machine_with_fake_gtx1060_reports_the_build_not_the_chip(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    m = probe_machine(nvml=fake_nvml([("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6, 5.8)]))
    assert m.devices[0].kind == "cuda" and m.devices[-1].kind == "cpu"
    # this machine's torch is a CPU build: the doctor says so for the GPU, with the fix
    found = findings(m)
    gpu_errors = [f for f in found if f.level == "error" and "GTX 1060" in f.message]
    assert gpu_errors and "CPU-only build" in gpu_errors[0].message and "whl/cu" in gpu_errors[0].fix


def test_cpuinfo_parser_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: Intel Xeon\nphysical id\t: 0\ncore id\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n\n" \
          "processor\t: 1\nmodel name\t: Intel Xeon\nphysical id\t: 0\ncore id\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
    model, isa, cores = parse_cpuinfo(x86, "x86_64")
    assert model == "Intel Xeon" and cores == 1
    assert isa == ("amx_bf16", "amx_tile", "avx2", "avx512f")
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp sve bf16 i8mm\n"
    assert parse_cpuinfo(arm, "aarch64")[1] == ("bf16", "dotprod", "i8mm", "neon", "sve")


def test_doctor_json_contract_and_isa_matches_proc_cpuinfo():
    out = run_json("doctor")
    m = out["machine"]
    assert {"devices", "cpu", "memory_gib", "software"} <= set(m)
    cpu_dev = [d for d in m["devices"] if d["kind"] == "cpu"]
    assert cpu_dev and cpu_dev[0]["compute_capability"] is None
    for d in m["devices"]:
        assert {"kind", "name", "compute_capability", "memory_gib"} <= set(d)
    assert {"model", "cores", "isa"} <= set(m["cpu"])
    assert all({"level", "message", "fix"} <= set(f) for f in out["findings"])
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(re.findall(r"^flags\s*:\s*(.*)$", text, re.M)[0].split()) if "flags" in text else set()
    for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx512_fp16"):
        assert (flag in m["cpu"]["isa"]) == (flag in flags), flag
    assert m["software"]["torch"] and m["software"]["packages"].get("transformers")


def test_probe_never_imports_torch_or_initialises_cuda():
    code = ("import sys, kernelfit.probe as p; m = p.probe_machine(); "
            "import kernelfit.cli.doctor as d; d.findings(m); "
            "bad = [k for k in ('torch', 'transformers', 'flash_attn', 'bitsandbytes') if k in sys.modules]; "
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_probed_machine_round_trips_json_and_toml(tmp_path):
    m = probe_machine()
    assert Machine.from_dict(json.loads(m.to_json()), origin=m.origin) == m
    from kernelfit.hardware.machine import load_machine_file

    f = tmp_path / "me.toml"
    f.write_text(m.to_toml())
    back = load_machine_file(f)
    assert back.devices == m.devices and back.cpu == m.cpu and back.software == m.software


def test_doctor_separates_the_torch_build_from_the_chip():
    from dataclasses import replace

    from kernelfit.profiles import load_profile

    gtx = load_profile("gtx1060-6gb")
    assert not [f for f in findings(gtx) if f.level == "error"]  # cu126 build: fine
    t4sw = load_profile("t4").software
    cu128 = replace(gtx, software=replace(gtx.software, torch="2.11.0+cu128",
                                          torch_cuda_arch_list=t4sw.torch_cuda_arch_list))
    errors = [f for f in findings(cu128) if f.level == "error"]
    assert len(errors) == 1 and "not compiled for sm_61" in errors[0].message
    assert errors[0].fix == "pip install torch==2.11.0 --index-url https://download.pytorch.org/whl/cu126"
    # and the chip's own limits are reported as information, not as the build's fault
    assert any("FlashAttention-2 needs compute capability 8.0" in f.message for f in findings(cu128))


def test_disk_probe_survives_an_unreadable_cache_dir(monkeypatch, tmp_path):
    """KERNELFIT_CACHE_DIR inside a folder the user cannot enter: stat() raises PermissionError (root
    ignores permissions, so the error is injected); the probe reports the disk as unknown."""
    from pathlib import Path

    import kernelfit.probe as probe

    locked = tmp_path / "locked"
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(locked / "cache"))
    real = Path.exists

    def exists(self):
        if str(self).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "exists", exists)
    assert probe._disk_free_gib() is None
    m = probe.probe_machine(nvml=fake_nvml(None))
    assert m.disk_free_gib is None
