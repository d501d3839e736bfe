import re
from pathlib import Path

from kernelfit.cli.matrix import support_matrix

ROOT = Path(__file__).parent.parent


def test_readme_matrix_is_generated_from_the_catalog():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- matrix:begin -->\n(.*?)\n<!-- matrix:end -->", text, re.S).group(1)
    assert block == support_matrix(markdown=True), "README matrix is stale: run `kernelfit matrix --markdown`"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")
