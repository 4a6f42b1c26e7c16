#!/usr/bin/env bash
# GPU check (issue 25 item 7): on a machine with a CUDA device, the tests marked `gpu` (the CUDA
# path of the walker, the pruners, induction and export, each against the CPU's result) and the
# scaling benchmark for the Llama-3-8B layer shape at 128 x 2048 calibration tokens, all within
# 8 minutes; then one table. CI never runs it (it has no GPU).
#
#   bash benchmarks/gpu_check.sh            # from anywhere; works in the repository root
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${GPU_CHECK_SECONDS:-480}  # 8 minutes for everything below
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
OUT=${OUT:-$(mktemp -d)}

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv (torch from PyPI, then the project with its dev extra)"
    python3 -m venv .venv && .venv/bin/pip install -q torch && .venv/bin/pip install -q -e '.[dev]' || exit 1
fi
PY=.venv/bin/python
if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to torch ($($PY -c 'import torch; print(torch.__version__)')): nothing to check" >&2
    exit 2
fi
$PY -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"== {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'

echo "== tests marked gpu"
timeout "$(( $(left) * 2 / 5 ))" .venv/bin/pytest tests/gpu -m gpu -q -p no:cacheprovider -rs \
    --junitxml="$OUT/gpu-tests.xml" | tail -n 25
TESTS_RC=${PIPESTATUS[0]}

echo "== scaling, llama8b, 128 x 2048 tokens on cuda ($(left) s left)"
# llm-compressor's reference lives in its own CPU venv, normally absent here: then no ratio column.
LEFT=$(left); [ "$LEFT" -lt 30 ] && LEFT=30
timeout "$LEFT" $PY -m benchmarks.scaling --shapes llama8b --device cuda \
    --samples 128 --seq-len 2048 --json "$OUT/scaling.json" > "$OUT/scaling.log" 2>&1
SCALING_RC=$?
tail -n 3 "$OUT/scaling.log"

echo
echo "================ GPU check ($(( $(date +%s) - START )) s of ${BUDGET} s) ================"
$PY - "$OUT" "$TESTS_RC" "$SCALING_RC" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, tests_rc, scaling_rc = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rows = []
junit = out / "gpu-tests.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    for case in suite.iter("testcase"):
        state = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                state = tag
        rows.append((f"test {case.get('name')}", state, f"{float(case.get('time', 0)):.1f} s"))
else:
    rows.append(("tests/gpu", f"no result (rc {tests_rc}; timed out if 124)", ""))
scaling = out / "scaling.json"
data = json.loads(scaling.read_text()) if scaling.exists() else {}
shape = (data.get("shapes") or {}).get("llama8b")
if shape:
    llmc = shape.get("llmc") or {}
    for stage, s in shape["stages"].items():
        ref = (llmc.get(stage) or {}).get("prune_s")
        extra = f" ({s['seconds'] / ref:.2f}x llm-compressor)" if ref else ""
        rows.append((f"llama8b {stage}", f"{s['seconds']:.2f} s{extra}", f"{s['peak_mib']:.0f} MiB peak"))
else:
    rows.append(("scaling llama8b", f"no result (rc {scaling_rc}; timed out if 124)", str(out / "scaling.log")))
width = max(len(r[0]) for r in rows)
for name, what, more in rows:
    print(f"{name:<{width}}  {what:<40} {more}")
sys.exit(0 if tests_rc == 0 and scaling_rc == 0 else 1)
PYEOF
