#!/usr/bin/env bash
# CPU time and context switches per durable commit, from `perf stat`, for
# each system and writer count given. Each point runs the commit workload
# twice under perf stat: for SECONDS, and for a blink (0.05 s); the
# difference is the steady state, free of set-up (opening the store,
# zero-filling files). Commits are ops/s x seconds from the report.
#
#   benches/scripts/cpu-per-commit.sh BENCH_BINARY DIR "ringkv-io_uring group-loop" "1 64" [SECONDS]
set -euo pipefail
bench=$1 dir=$2 systems=$3 threads=$4 seconds=${5:-5}
printf '%-22s %4s %10s %12s %10s %10s\n' system thr commits/s cpu_us/commit cs/commit perf_ms
for t in $threads; do
  for s in $systems; do
    run() { # seconds -> "task_clock_ms context_switches ops_per_second"
      local out
      out=$(perf stat -x, -e task-clock,context-switches -o /dev/stdout -- \
        "$bench" --workloads commit --systems "$s" --threads "$t" --seconds "$1" --dir "$dir" --out "$dir.report" 2>/dev/null)
      local clock cs ops
      clock=$(grep ',task-clock' <<<"$out" | cut -d, -f1)
      cs=$(grep ',context-switches' <<<"$out" | cut -d, -f1)
      ops=$(grep -E "^commit +$s +$t " <<<"$out" | awk '{print $4}')
      echo "$clock $cs $ops"
    }
    read -r c1 s1 ops1 < <(run "$seconds")
    read -r c0 s0 _ < <(run 0.05)
    awk -v s="$s" -v t="$t" -v c1="$c1" -v c0="$c0" -v s1="$s1" -v s0="$s0" -v ops="$ops1" -v secs="$seconds" 'BEGIN {
      commits = ops * (secs - 0.05);
      printf "%-22s %4d %10.0f %12.2f %10.2f %10.0f\n", s, t, ops, (c1 - c0) * 1000 / commits, (s1 - s0) / commits, c1 - c0 }'
  done
done
