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
    from kernelfit.catalog.engine_checkpoints import ENGINE_CHECKPOINT_SOURCES

    cited += list(ENGINE_CHECKPOINT_SOURCES)
    from kernelfit.catalog.engines import FACTS

    for facts in FACTS.values():
        assert facts.sources, facts.name
        cited += facts.sources
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


REPO = __import__("pathlib").Path(__file__).parent.parent
REF_FORMS = (
    (r"https://[^\s;]+", None),  # a public URL
    (r"[\w.-]+/[\w.-]+@[0-9a-f]{7,40}:[^\s;]+", None),  # owner/repo@commit:path
    (r"doc: .{8,}", None),  # a published document, by its title
    (r"kernelfit:([^\s;]+)", "file"),  # kernelfit's own measurement, shipped in this repository
    (r"probe: .+", None),  # read on the machine itself
)


def test_every_source_resolves_to_a_public_reference():
    import re

    bad = []
    for s in SOURCES.values():
        for ref in (r.strip() for r in s.where.split(" ; ")):
            for pattern, check in REF_FORMS:
                m = re.fullmatch(pattern, ref)
                if m:
                    if check == "file" and not (REPO / m.group(1)).is_file():
                        bad.append((s.id, ref, "no such file"))
                    break
            else:
                bad.append((s.id, ref))
    assert not bad, bad
