"""Cold wall time of the planning commands next to `python -c pass`, measured in one run.

Goal (issue 3): `kernelfit doctor --json` < 1.0 s and `kernelfit plan smollm2-135m --profile t4
--json` < 1.5 s. Each command runs in a fresh interpreter (that is what a user pays); the
median of N runs is reported with the ratio to the bare interpreter start.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 7
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "kernelfit doctor --json": [sys.executable, "-m", "kernelfit", "doctor", "--json"],
    "kernelfit plan smollm2-135m --profile t4 --json": [sys.executable, "-m", "kernelfit", "plan", "smollm2-135m",
                                                        "--profile", "t4", "--json"],
}
GOALS = {"kernelfit doctor --json": 1.0, "kernelfit plan smollm2-135m --profile t4 --json": 1.5}


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    for cmd in COMMANDS.values():  # warm the page cache once; later runs are what we report
        wall(cmd)
    times = {name: [] for name in COMMANDS}
    for _ in range(RUNS):  # interleaved, so drift on a noisy machine hits every command alike
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<50} {'median s':>9} {'min s':>7} {'x python':>9} {'goal s':>7}  ok")
    ok = True
    for name, ts in times.items():
        med = statistics.median(ts)
        goal = GOALS.get(name)
        good = goal is None or med < goal
        ok &= good
        print(f"{name:<50} {med:9.3f} {min(ts):7.3f} {med / base:9.1f} {goal if goal else '':>7}  {'yes' if good else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
