#!/usr/bin/env bash
# Runs a command in a memory cgroup of its own, limited to BYTES, the
# kernel's page cache included: the machine as one with that much memory,
# so a data set larger than it cannot sit in the page cache and a store's
# "small cache" read test measures what it would on such a machine. Swap is
# limited too where the kernel lets us (memsw / memory.swap.max). Prints the
# group's peak usage at the end. Needs a writable cgroup file system (v2,
# or v1's memory controller), as root or a delegated group.
#
#   benches/scripts/in-memory-limit.sh 536870912 -- target/release/benches --cold-reads ...
set -euo pipefail
limit=${1:-}
[[ $limit =~ ^[0-9]+$ && ${2:-} == -- && $# -ge 3 ]] || { echo "usage: $0 BYTES -- COMMAND..." >&2; exit 2; }
shift 2

if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then # v2
  parent=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
  group=$parent/ringkv-limit-$$
  mkdir "$group"
  echo "$limit" >"$group/memory.max"
  echo 0 >"$group/memory.swap.max" 2>/dev/null || true
  peak_file=$group/memory.peak
else # v1
  parent=/sys/fs/cgroup/memory$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
  group=$parent/ringkv-limit-$$
  mkdir "$group"
  echo "$limit" >"$group/memory.limit_in_bytes"
  echo "$limit" >"$group/memory.memsw.limit_in_bytes" 2>/dev/null || true
  peak_file=$group/memory.max_usage_in_bytes
fi

cleanup() {
  echo "# memory cgroup $group: limit $((limit >> 20)) MiB, peak $(($(cat "$peak_file" 2>/dev/null || echo 0) >> 20)) MiB" >&2
  # Move ourselves out so the group can go.
  echo $$ >"$parent/cgroup.procs" 2>/dev/null || true
  rmdir "$group" 2>/dev/null || true
}
trap cleanup EXIT
# The child starts inside the group: it inherits it from this shell.
echo $$ >"$group/cgroup.procs"
status=0
"$@" || status=$?
exit "$status"
