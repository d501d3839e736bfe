"""Every hardware fact and rule in the catalog carries a source that is defined."""

from kernelfit.catalog import kernel_errors, torch_builds
from kernelfit.catalog.attention import BACKENDS
from kernelfit.catalog.dtypes import dtype_verdicts
from kernelfit.catalog.quantization import ON_THE_FLY, PREQUANTIZED, SLOW_8BIT_SOURCES
from kernelfit.catalog.sources import SOURCES
from kernelfit.profiles import load_profile, profile_names


def test_every_cited_source_is_defined():
    cited = []
    for b in BACKENDS.values():
        assert b.sources, b.name
        cited += b.sources
    for q in PREQUANTIZED + ON_THE_FLY:
        assert q.sources, (q.method, q.name)
        cited += q.sources
    cited += [sid for _, sid in kernel_errors.CANNOT_RUN_HERE] + list(SLOW_8BIT_SOURCES)
    cited += [row[-1] for row in torch_builds._ROWS]
    for name in profile_names():
        m = load_profile(name)
        for d in m.accelerators + (m.cpu_device,):
            for v in dtype_verdicts(d, m.cpu, m.software):
                assert v.sources, (name, d.name, v.dtype)
                cited += v.sources
    missing = sorted(set(cited) - set(SOURCES))
    assert not missing, missing


def test_sources_say_where():
    for s in SOURCES.values():
        assert s.title and s.where, s.id
