#!/usr/bin/env bash
# The pipeline part of `make run`: restore or rebuild data/, let DVC confirm it matches data.dvc, then
# `dvc repro`, then print where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)

if [ ! -d data ] || ! dvc status data.dvc --quiet 2>/dev/null; then
  echo "== data/ missing or changed: rebuilding it deterministically from installed packages"
  safealign data build
fi
echo "== DVC: checking data/ against data.dvc"
if ! dvc status data.dvc --quiet; then
  dvc status data.dvc
  echo "data/ does not match data.dvc: rebuild with 'safealign data build' and, if the change is intended, 'dvc add data'" >&2
  exit 2
fi

echo "== dvc repro"
dvc repro

end=$(date +%s)
echo
echo "== done in $((end - start)) s"
echo "metrics:      metrics/*.json   (dvc metrics show)"
[ -f artifacts/evaluation/report.md ] && echo "report:       artifacts/evaluation/report.md"
[ -f artifacts/validation/report.html ] && echo "validation:   artifacts/validation/report.html"
echo "experiments:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db   (then open http://127.0.0.1:5000)"
