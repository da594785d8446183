#!/usr/bin/env bash
# Every job still open in README "Meta defaults, options and controls" (issue 17), in the order that spreads
# the machine's hours best: the DANN family's controls on the seeds its pairs cover, then seed by seed MCD's
# base runs (they fill issue 15's MCD table, mcd_msda_default.jsonl, and are reused from there) and the other
# families' pairs (MME + init, Feature-Critic around ERM, MCD + init), so every family reaches four pairs
# (one seed, all targets) before any reaches eight. Each command resumes: finished rows are skipped and
# an interrupted run continues from its checkpoint, so the script can be stopped anywhere and started again.
#
#   OMP_NUM_THREADS=2 bash benchmarks/accuracy/meta_grids.sh [--data-root DIR]
#
# UNTIL=HH:MM starts no run expected to end after that local time; a command whose next run does not fit
# skips it and the next command may start a shorter one. Runs take 21-75 minutes each on a 2-core CPU;
# tables: python benchmarks/accuracy/meta_grid.py --table benchmarks/results/accuracy/meta_grid.jsonl
# What is left, with its expected hours (runs nothing): PLAN=1 bash benchmarks/accuracy/meta_grids.sh
source "$(dirname "$0")/grid_common.sh"

for seed in 1 2; do
  meta --families dann-msda --arms init-inner0,base-lr --targets $ALL --seeds $seed
done
for seed in 0 1 2; do
  recipe --recipes default --base mcd --targets $ALL --seeds $seed --out $RESULTS/mcd_msda_default.jsonl
  meta --families mme-ssda --arms base,init --targets $ALL --seeds $seed
  meta --families erm-dg-critic --arms base,critic --targets $ALL --seeds $seed --base-from $RESULTS/erm_default.jsonl
  meta --families mcd-msda --arms base,init --targets $ALL --seeds $seed --base-from $RESULTS/mcd_msda_default.jsonl
done
