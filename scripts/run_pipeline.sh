#!/usr/bin/env bash
# The pipeline part of `make run`, offline:
#   1. restore data/ when it is missing: from the DVC cache (`dvc checkout data.dvc`) if the cache has it,
#      else rebuild it with `safealign data build` (deterministic: the same bytes on every machine);
#   2. make DVC itself confirm that data/ matches data.dvc (`dvc data status` clean, then, once data/ is in
#      the local cache, `dvc status data.dvc` up to date), else exit 2;
#   3. open an MLflow parent run and export SAFEALIGN_PARENT_RUN_ID so every stage nests under it;
#   4. `dvc repro` (stages whose inputs did not change are skipped, so a second run is fast);
#   5. close the parent run with FINISHED or FAILED, and print where the results are.
# Exit codes: 0 ok, 2 data/ does not match data.dvc or failed validation, 3 a gate said no, 1 otherwise.
#
# Options: --data-only     stop after step 2 (restore + DVC check);
#          --until STAGE   reproduce only STAGE and what it depends on (e.g. --until validate).
# A data/ that exists but differs from data.dvc is never overwritten: that may be someone's deliberate
# edit. The message says how to discard it or how to make it the new version.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GX_ANALYTICS_ENABLED=false
export DVC_NO_ANALYTICS=1
start=$(date +%s)

data_only=0
until=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-only) data_only=1 ;;
    --until) until=${2:?--until needs a stage name}; shift ;;
    *) echo "usage: $0 [--data-only] [--until STAGE]" >&2; exit 2 ;;
  esac
  shift
done

die() { # die CODE MESSAGE
  echo "run_pipeline: error: $2" >&2
  exit "$1"
}

# ---------------------------------------------------------------------------------------- 1. data/
[ -f data.dvc ] || die 2 "data.dvc is missing: build the data with 'safealign data build', then 'dvc add data' and commit data.dvc"

if [ ! -d data ] || [ -z "$(ls -A data 2>/dev/null)" ]; then
  echo "== data/ is missing: restoring it"
  if dvc checkout data.dvc >/dev/null 2>&1 && [ -n "$(ls -A data 2>/dev/null)" ]; then
    echo "   restored from the DVC cache (dvc checkout data.dvc)"
  else
    echo "   not in the DVC cache: rebuilding it deterministically (safealign data build)"
    safealign data build >/dev/null
  fi
fi

# ---------------------------------------------------------------------------------------- 2. DVC check
# `dvc status data.dvc` alone cannot decide on a fresh clone: with an empty cache it reports "not in cache"
# whether or not data/ matches. So DVC is asked twice: `dvc data status` hashes data/ and compares it with
# data.dvc (independent of the cache); only if that is clean is data/ committed to the local cache (which
# cannot change data.dvc, since the hashes are equal), and then `dvc status data.dvc` must be up to date.
echo "== DVC: checking data/ against data.dvc"
mismatch=$(python - <<'EOF'
import json, subprocess, sys
out = subprocess.run(["dvc", "data", "status", "--json"], capture_output=True, text=True)
if out.returncode != 0:
    print(f"dvc data status failed: {out.stderr.strip()}")
    sys.exit(0)
status = json.loads(out.stdout or "{}")
bad = {kind: [p for p in paths if p.rstrip("/") == "data" or p.startswith("data/")]
       for kind, paths in (status.get("uncommitted") or {}).items()}
bad = {kind: paths for kind, paths in bad.items() if paths}
print(json.dumps(bad) if bad else "")
EOF
)
if [ -n "$mismatch" ]; then
  dvc status data.dvc >&2 || true
  die 2 "data/ does not match data.dvc (dvc data status, uncommitted: $mismatch).
  To discard local changes:     dvc checkout --force data.dvc   (or: rm -rf data && make run)
  To make them the new version: dvc add data && git commit data.dvc
  If a fresh 'safealign data build' differs from data.dvc, the builder changed without 'dvc add data'."
fi
dvc commit --force --quiet data.dvc >/dev/null 2>&1 || die 2 "dvc commit data.dvc failed"
status_json=$(dvc status data.dvc --json 2>&1) || die 2 "dvc status data.dvc failed: $status_json"
[ "$status_json" = "{}" ] || die 2 "dvc status data.dvc is not up to date after commit: $status_json"
echo "   data/ matches data.dvc: $(python -c 'from safealign.tracking import data_version; print(data_version())')"
[ "$data_only" = 1 ] && exit 0

# ---------------------------------------------------------------------------------------- 3-4. repro
# Stages in DAG order with the module that implements each. Until every stage exists, run up to the last
# stage whose whole prefix is implemented (`dvc repro STAGE` also runs everything upstream of it).
stages=(validate train_reward calibrate grpo evaluate promote)
modules=(safealign.data.validate safealign.reward.train safealign.reward.calibrate safealign.policy.grpo
  safealign.evaluation.evaluate safealign.promotion)
read -r -a present <<<"$(python - "${modules[@]}" <<'EOF'
import importlib.util, sys
print(" ".join("1" if importlib.util.find_spec(m) else "0" for m in sys.argv[1:]))
EOF
)"
target=""
missing=()
for i in "${!stages[@]}"; do
  if [ "${present[$i]}" = 1 ] && [ ${#missing[@]} -eq 0 ]; then
    target=${stages[$i]}
  else
    missing+=("${stages[$i]}")
  fi
  [ "${stages[$i]}" = "$until" ] && break
done
if [ -n "$until" ] && [ "$target" != "$until" ]; then
  [[ " ${stages[*]} " == *" $until "* ]] || die 2 "--until: unknown stage '$until' (stages: ${stages[*]})"
fi
[ -n "$target" ] || die 1 "no stage is implemented yet"
repro_args=()
status_args=()
if [ ${#missing[@]} -gt 0 ] || [ -n "$until" ]; then
  [ ${#missing[@]} -gt 0 ] && echo "== not implemented yet, skipped: ${missing[*]}"
  repro_args=("$target")
  status_args=(--with-deps "$target")
fi

if [ "$(dvc status --json "${status_args[@]}" 2>/dev/null)" = "{}" ]; then
  echo "== dvc: every stage is up to date, nothing to run"
  rc=0
  ran=0
else
  ran=1
  parent=$(python -m safealign.tracking start --name "make run") || die 1 "could not start the MLflow parent run"
  export SAFEALIGN_PARENT_RUN_ID=$parent
  echo "== MLflow parent run $parent"
  end_parent() { python -m safealign.tracking end --run-id "$parent" --status "$1" >/dev/null || true; }
  trap 'end_parent KILLED; exit 130' INT TERM
  log=$(mktemp)
  echo "== dvc repro ${repro_args[*]}"
  set +e
  # measure: wall time and peak RSS of the largest stage process -> artifacts/run_resources.json
  python -m safealign.results measure -- dvc repro "${repro_args[@]}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  trap - INT TERM
  if [ "$rc" -ne 0 ]; then
    # DVC exits 255 for any failed stage; the stage's own code (2 bad data, 3 gate) is in its message.
    stage_rc=$(grep -oE 'exited with [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
    rc=${stage_rc:-1}
    [ "$rc" -eq 0 ] && rc=1
    end_parent FAILED
  else
    end_parent FINISHED
  fi
  rm -f "$log"
fi

# ---------------------------------------------------------------------------------------- 5. where
end=$(date +%s)
echo
# the README-ready results section (per-aspect table, refusals, time, memory, verdict), from metrics/*.json
# (only after a run that did work: an up-to-date second run keeps the first run's times)
if [ "$ran" = 1 ] && [ -f metrics/evaluation.json ] && [ -z "$until" ]; then
  python -m safealign.results render --pipeline-seconds "$((end - start))" >/dev/null || true
fi
# A refused promotion is a result of the pipeline, not a failure of it: every stage ran, the report exists
# and 'champion' was left alone. `make run` reports the verdict and exits 0; `safealign promote` itself
# (and dvc repro) still exit 3, so automation that gates on it sees the refusal.
refused=0
if [ "$rc" -eq 3 ] && [ -f metrics/promotion.json ] && python -c '
import json, sys
sys.exit(0 if json.load(open("metrics/promotion.json")).get("verdict") == "refused" else 1)'
then
  refused=1
  rc=0
fi
echo "== $([ "$rc" -eq 0 ] && echo done || echo "FAILED (exit $rc)") in $((end - start)) s"
if [ -f metrics/promotion.json ]; then
  python -c '
import json
v = json.load(open("metrics/promotion.json"))
print("promotion:  ", "PROMOTED to champion" if v.get("verdict") == "promoted" else "REFUSED (champion untouched)")
for g in v.get("gates") or []:
    print("   %s  %s: %s" % ("pass" if g.get("passed") else "FAIL", g.get("gate"), g.get("reason", "")))'
fi
if [ "$refused" = 1 ]; then echo "   (promote exited 3: a gate said no; see metrics/promotion.json)"; fi
show() { [ -e "$2" ] && printf '%-12s %s\n' "$1" "$2" || true; }
show "validation:" artifacts/validation/report.html
show "" artifacts/validation_failed/report.html
show "calibration:" artifacts/calibration
show "evaluation:" artifacts/evaluation/report.md
show "" artifacts/evaluation/report.html
show "results:" artifacts/results.md
echo "metrics:     metrics/*.json   (dvc metrics show; dvc plots show)"
echo "experiments: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db   (then open http://127.0.0.1:5000)"
exit "$rc"
