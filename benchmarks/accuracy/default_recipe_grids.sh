#!/usr/bin/env bash
# Every grid of README "The default recipe" (issue 15), in the order that spreads the machine's hours
# best: the resolution levers on every target (they could change the default), then seed 0 of every learner
# table, then the other levers of the ablation (seed 0, art_painting and sketch, paired against the
# default recipe's rows), then seeds 1 and 2, then seeds 1 and 2 of the resolution levers. Each command resumes: it
# skips the (recipe, target, seed) rows already in its file and continues an interrupted run from its
# checkpoint, so this script can be stopped at any point and started again, in this or a later session.
#
#   OMP_NUM_THREADS=2 bash benchmarks/accuracy/default_recipe_grids.sh [--data-root DIR]
#
# UNTIL=HH:MM starts no run that would not finish by that local time (each grid's --until), so a
# session can stop the script with no half-trained run.
# What is left, with its expected hours (runs nothing): PLAN=1 bash benchmarks/accuracy/default_recipe_grids.sh
# Each run takes 17-55 minutes on a 2-core CPU; the tables are rendered with the --table commands in README.
source "$(dirname "$0")/grid_common.sh"

# The resolution levers first, on every target: they could change the default recipe that every table below
# is measured with (README, "The per-lever ablation": 224 px gains on art and sketch, loses on cartoon).
recipe --recipes train224,train224-400 --base erm --targets $ALL --seeds 0 --out $RESULTS/erm_ablation.jsonl
for seeds in 0 0,1,2; do
  recipe --recipes default --base erm --targets $ALL --seeds $seeds --out $RESULTS/erm_default.jsonl
  recipe --recipes default --base dann --targets $ALL --seeds $seeds --out $RESULTS/dann_msda_default.jsonl
  recipe --recipes default --base mcd --targets $ALL --seeds $seeds --out $RESULTS/mcd_msda_default.jsonl
  recipe --recipes default --base jigen --protocol msda --targets $ALL --seeds $seeds --out $RESULTS/jigen_msda_default.jsonl
  recipe --recipes default --base dann --protocol dg --targets $ALL --seeds $seeds --out $RESULTS/dann_dg_default.jsonl
  recipe --recipes default --base jigen --protocol dg --targets $ALL --seeds $seeds --out $RESULTS/jigen_dg_default.jsonl
  # IWDAN, DANN corrected for label shift (README "The remedy"): not one of issue 15's tables, so it comes after them.
  recipe --recipes default --base iwdann --targets $ALL --seeds $seeds --out $RESULTS/iwdann_msda_default.jsonl
  if [[ $seeds == 0 ]]; then
    recipe --recipes train224,res176,freeze0,bn-trained,sgd,lr3e-4,lr5e-5,lp-ft,lite1,batch32,steps300 --base erm \
      --targets art_painting,sketch --seeds 0 --out $RESULTS/erm_ablation.jsonl
  fi
done
# More seeds of the resolution levers: what a change of the default would need (a paired average gain over targets).
recipe --recipes train224,train224-400 --base erm --targets $ALL --seeds 1,2 --out $RESULTS/erm_ablation.jsonl
