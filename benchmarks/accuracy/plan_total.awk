# The --plan lines of a grid script (grid_common.sh, PLAN=1): each job once, in order, then the total.
# A job listed by two commands (a seed-0 pass, then seeds 0-2) counts once; a reused base arm (0 minutes) is no run.
$1 == "plan" {
  job = $0
  sub(/^plan +[0-9.]+ /, "", job)
  sub(/  \(no finished run.*$/, "", job)
  if (job in seen) next
  seen[job] = 1
  print
  minutes += $2
  if ($2 > 0) runs++
  if (index($0, "minutes assumed")) assumed++
}
END {
  printf "total: %d runs, %.1f hours at the median minutes of finished runs of their kind", runs, minutes / 60
  if (assumed) printf " (%d of them assumed: no finished run of their kind)", assumed
  printf "\n"
}
