#!/usr/bin/env bash
# Seeds of a scenario as parallel processes (inline engine), for a machine with many cores or a GPU, where
# `veil run --seeds` would run them one after another. Each job's runs go under OUT/<job>/ (a sweep
# directory that `veil report` and `veil compare` read); at the end each job's results (not its private data,
# pool or nets) are packed into OUT/<job>.tar.gz.
#
#   bench/parallel_seeds.sh OUT DEADLINE_S SEEDS JOB=SCENARIO[;--set K=V...] ...
#   bench/parallel_seeds.sh /tmp/out 480 0-4 'base=scenarios/collab-10-1.yaml' \
#       'test300=scenarios/collab-10-1.yaml;--set dataset.test_per_class=300'
#
# Runs still going at DEADLINE_S seconds are stopped (their finished stages stay on disk).
set -uo pipefail
out=$1 deadline=$2 seeds=$3; shift 3
VEIL=${VEIL:-python3 -m simulator.cli}
mkdir -p "$out"
seed_list=$(python3 -c "from simulator.sweep import parse_seeds; print(*parse_seeds('$seeds'))")
pids=()
for spec in "$@"; do
  job=${spec%%=*} rest=${spec#*=}
  file=${rest%%;*} extra=""
  [[ $rest == *";"* ]] && extra=${rest#*;}
  mkdir -p "$out/$job"
  for s in $seed_list; do
    # shellcheck disable=SC2086
    $VEIL run "$file" --engine inline --set seed=$s $extra --out "$out/$job" >"$out/$job/seed-$s.log" 2>&1 &
    pids+=($!)
  done
done
start=$SECONDS
while (( SECONDS - start < deadline )); do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  (( alive )) || break
  sleep 5
done
for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done
sleep 3
for spec in "$@"; do
  job=${spec%%=*}
  (cd "$out" && tar czf "$job.tar.gz" --exclude='*/parties' --exclude='*/pool' --exclude='*/shared' \
     --exclude='*/public' --exclude='*/relay' --exclude='*/attacks' --exclude='*.lock' "$job")
done
echo "packed after $((SECONDS - start)) s:"; ls -la "$out"/*.tar.gz
