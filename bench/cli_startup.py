"""How quickly ``tinyssd --help`` answers, against ``python -c "import torch"``.

    python bench/cli_startup.py [--out bench/results/cli_startup.json] [--repeat 5]

Prints JSON: the median wall-clock seconds of each command (fresh processes,
measured alternately in the same run, so that a busy machine slows both alike)
and ``ratio`` = help / import torch. The help imports no torch, so the ratio
should stay well under 0.5.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _common import emit

COMMANDS = {
    "tinyssd_help": [sys.executable, "-m", "tinyssd", "--help"],
    "tinyssd_train_help": [sys.executable, "-m", "tinyssd", "train", "--help"],
    "import_torch": [sys.executable, "-c", "import torch"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--repeat", type=int, default=5, help="runs of each command (median)")
    a = p.parse_args()
    for command in COMMANDS.values():  # warm the file cache; not measured
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(a.repeat):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "seconds": {name: round(s, 3) for name, s in median.items()},
        "repeat": a.repeat,
        "ratio": round(median["tinyssd_help"] / median["import_torch"], 3),
        "train_help_ratio": round(median["tinyssd_train_help"] / median["import_torch"], 3),
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
