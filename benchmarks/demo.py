"""Wall time and peak RSS of the README demo (`tinyllava-demo`), the whole offline pipeline (targets: <= 4 minutes
and <= 1 GB on 2 CPU cores).

    python -m benchmarks.demo                  # runs `python -m tinyllava_hf.demo --output_dir <tmp>`
    python -m benchmarks.demo -- --flag value  # extra flags passed to the demo

The demo runs as a child process with the environment a user has (no thread pinning): this measures what a user
waits for. Its peak RSS is read from the child's resource usage.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .measure import format_table, machine_load, write_results

TARGET_SECONDS = 240
TARGET_RSS_MB = 1024
REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_args", nargs="*", help="extra arguments for `tinyllava-demo` (after --)")
    args = parser.parse_args(argv)
    load_before = machine_load()
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, "-m", "tinyllava_hf.demo", "--output_dir", output_dir, *args.demo_args]
        start = time.perf_counter()
        completed = subprocess.run(
            command,
            check=False,
            cwd=REPO_ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if completed.returncode != 0:
            raise SystemExit(f"The demo failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
        outputs = sorted(str(path.relative_to(output_dir)) for path in Path(output_dir).rglob("*") if path.is_file())
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row = {
        "command": "tinyllava-demo " + " ".join(args.demo_args),
        "wall_s": seconds,
        "peak_RSS_MB": peak_rss_mb,
        f"met (<= {TARGET_SECONDS} s)": seconds <= TARGET_SECONDS,
        f"met (<= {TARGET_RSS_MB} MB)": peak_rss_mb <= TARGET_RSS_MB,
        "load_1m_before": load_before["loadavg_1m"],
        "load_1m_after": machine_load()["loadavg_1m"],
    }
    path = write_results(
        "demo", {"result": row, "demo_stdout_tail": completed.stdout[-3000:], "output_files": outputs[:200]}
    )
    print(format_table([row], list(row)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
