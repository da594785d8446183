# Sourced by the grid scripts (default_recipe_grids.sh, meta_grids.sh): the repository root as the working
# directory, the data root (DATA_ROOT, or --data-root DIR as the first arguments), and one function per grid
# runner, each passing UNTIL=HH:MM on as --until.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA_ROOT=${DATA_ROOT:-../shared/data}
if [[ ${1:-} == "--data-root" ]]; then DATA_ROOT=$2; fi
RESULTS=benchmarks/results/accuracy
ALL=art_painting,cartoon,photo,sketch
# PLAN=1 runs nothing: every grid lists its unfinished jobs (--plan), and the script prints them once each, in
# the order they would run, with their total.
if [[ -n ${PLAN:-} ]]; then
  PLANNED=$(mktemp)
  trap 'awk -f benchmarks/accuracy/plan_total.awk "$PLANNED"; rm -f "$PLANNED"' EXIT
fi
grid() {
  if [[ -n ${PLAN:-} ]]; then python "$@" --plan >> "$PLANNED"; else python "$@"; fi
}
recipe() { grid benchmarks/accuracy/recipe_grid.py --data-root "$DATA_ROOT" ${UNTIL:+--until "$UNTIL"} "$@"; }
meta() { grid benchmarks/accuracy/meta_grid.py --data-root "$DATA_ROOT" ${UNTIL:+--until "$UNTIL"} --out $RESULTS/meta_grid.jsonl "$@"; }
