"""Run every benchmark script, print their tables, and merge their figures into build/bench.json.

Each `benchmarks/bench_*.py` prints its own table and writes its figures as one flat JSON object to
`build/bench/<script name>.json`; this runner only sequences them and merges the results.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    figures = {}
    failed = []
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        if script.name.startswith("bench_openzfs"):
            print(f"== {script.name}: not run here (needs the OpenZFS tier: make bench-openzfs)")
            continue
        print(f"== {script.name}", flush=True)
        result = subprocess.run([sys.executable, str(script)], cwd=ROOT, check=False)
        part = OUT / (script.stem + ".json")
        if result.returncode != 0 or not part.exists():
            failed.append(script.name)
            continue
        figures.update(json.loads(part.read_text()))
    (ROOT / "build" / "bench.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"wrote build/bench.json ({len(figures)} figures)")
    if failed:
        print("benchmarks that failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
