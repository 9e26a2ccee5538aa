#!/usr/bin/env bash
# Container start: create + start + wait + delete of a busybox `true` container, through
# kinglet's runtime path (the per-container supervisor on libcontainer), through libcontainer
# alone (examples/libcontainer_floor.rs: the least any runtime built on it does) and through
# Debian's crun and runc, on the same bundle, interleaved in one run. Runs inside a private
# mount and network namespace; containers go to a cgroup of their own that is removed
# afterwards.
#
# Usage: benches/container_start.sh [runs]   (default 50; needs root, crun, runc, busybox)
# KINGLET_BENCH_WRAP="strace -f -tt -o FILE" runs kinglet under a profiler;
# KINGLET_BENCH_BIN runs that kinglet binary instead of building one, and
# KINGLET_BENCH_RUNTIMES="kinglet crun" runs only those (scripts/order-start-path uses these).
# Every run must succeed (the runtime's exit status, and for kinglet the container's exit code
# in exit.json): the first that fails stops the benchmark, saying which and why.
set -euo pipefail
if [ -z "${KINGLET_BENCH_INNER:-}" ]; then
  cd "$(dirname "$0")/.."
  # Both built as kinglet ships: static (scripts/static.sh).
  . scripts/static.sh
  # Apart: built together, the binary would get the example's dev-dependency features, and
  # other symbol names than scripts/start-path.order holds.
  [ -n "${KINGLET_BENCH_BIN:-}" ] || cargo build --release --quiet --target "$KINGLET_TARGET" --bin kinglet
  cargo build --release --quiet --target "$KINGLET_TARGET" --example libcontainer_floor
  KINGLET_BENCH_INNER=1 exec unshare --mount --net --propagation private -- "$0" "$@"
fi
runs=${1:-50}
kinglet=${KINGLET_BENCH_BIN:-$(pwd)/target/$KINGLET_TARGET/release/kinglet}
floor=$(pwd)/target/$KINGLET_TARGET/release/examples/libcontainer_floor
work=$(mktemp -d)
cg="/kinglet-bench-$$"
trap 'umount "$work/run" 2>/dev/null; rm -rf "$work"; for c in /sys/fs/cgroup/*/${cg#/} /sys/fs/cgroup/${cg#/}; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done; true' EXIT

# One bundle: rootfs with busybox, the OCI spec `runc spec` writes, running /bin/true.
bundle="$work/c/bundle"
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/dev" "$bundle/rootfs/sys"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/true"
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" "$cg" <<'PY'
import json, sys
p, cg = sys.argv[1], sys.argv[2]
s = json.load(open(p))
s["process"]["args"] = ["/bin/true"]
s["process"]["terminal"] = False
s["linux"]["cgroupsPath"] = cg + "/c"
json.dump(s, open(p, "w"))
PY
# Runtime state on a tmpfs for all three, as their defaults have it (/run/runc, /run/crun,
# /run/kinglet).
mkdir -p "$work/run" && mount -t tmpfs tmpfs "$work/run"
cat > "$work/c/meta.json" <<JSON
{"id": "bench", "podUid": "", "podNamespace": "", "podName": "", "containerName": "bench",
 "attempt": 0, "image": "", "imageId": "", "lowerDirs": [], "logPath": "$work/c/0.log",
 "logMaxBytes": 10485760, "logMaxFiles": 2, "cgroupPath": "$cg/c", "createdAt": "",
 "stateRoot": "$work/run/kinglet"}
JSON

# crun refuses hybrid hosts (cgroup v1 plus a v2 mount holding a controller). In this
# benchmark's own mount namespace the v2 mount is hidden, so all three use the v1 controllers.
if [ -d /sys/fs/cgroup/unified ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
  umount /sys/fs/cgroup/unified
  echo "note: hybrid cgroups: v2 mount hidden in the benchmark's mount namespace"
fi

# A failed start is no measurement: stop rather than time it.
fail() {
  echo "container_start: $1 run $2 of $runs failed: $3" >&2
  exit 1
}

read -ra runtimes <<<"${KINGLET_BENCH_RUNTIMES:-kinglet libcontainer crun runc}"
declare -A total times
for rt in "${runtimes[@]}"; do total[$rt]=0; times[$rt]=""; done
for i in $(seq "$runs"); do
  # A new order each round: a runtime's time depends on what ran just before it (the kernel
  # finishes removing the previous container's cgroups in the background).
  for rt in $(printf '%s\n' "${runtimes[@]}" | shuf); do
    # A fresh container directory each run, as the kubelet gives every attempt (clearing the
    # last run's files is not timed).
    [ $rt = kinglet ] && rm -f "$work/c/status.json" "$work/c/exit.json"
    # Each run's exit status is kept (`|| rc=$?`: set -e would stop without saying why) and
    # checked once the clock is read.
    rc=0
    # Bash's own clock (microseconds): no process is started to read it.
    t0=${EPOCHREALTIME/./}000
    case $rt in
      kinglet) ${KINGLET_BENCH_WRAP:-} "$kinglet" supervise "$work/c" || rc=$? ;;
      libcontainer) "$floor" "$bundle" "$work/run/floor" "f$i" "$cg/c" || rc=$? ;;
      crun) crun --root "$work/run/crun" run -b "$bundle" "b$i" >/dev/null || rc=$? ;;
      runc) runc --root "$work/run/runc" run -b "$bundle" "b$i" >/dev/null || rc=$? ;;
    esac
    t1=${EPOCHREALTIME/./}000
    [ "$rc" -eq 0 ] || fail "$rt" "$i" "exit status $rc"
    # kinglet's supervisor exits 0 once it has run the container, whatever the container did:
    # its exit code is in exit.json (crun, runc and the floor exit with the container's code).
    if [ "$rt" = kinglet ] && ! grep -q '^{"code":0,' "$work/c/exit.json" 2>/dev/null; then
      fail kinglet "$i" "exit.json: $(cat "$work/c/exit.json" 2>/dev/null || echo missing)"
    fi
    total[$rt]=$(( ${total[$rt]} + t1 - t0 ))
    times[$rt]+="$(( t1 - t0 )) "
  done
done
echo "machine: $(nproc) cores, $(uname -m), $(uname -r)"
echo "runs: $runs each, interleaved"
# The median resists this machine's noise better than the mean; both are printed.
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
declare -A med
for rt in "${runtimes[@]}"; do
  med[$rt]=$(median "${times[$rt]}")
  printf '%-12s mean %6.1f ms   median %6.1f ms per container\n' "$rt" \
    "$(echo "${total[$rt]} / $runs / 1000000" | bc -l)" "$(echo "${med[$rt]} / 1000000" | bc -l)"
done
# Ratios only when all four ran.
[ ${#runtimes[@]} -eq 4 ] || exit 0
for of in kinglet libcontainer; do
  printf 'mean:   %s/crun %.2f   %s/runc %.2f\n' \
    $of "$(echo "${total[$of]} / ${total[crun]}" | bc -l)" $of "$(echo "${total[$of]} / ${total[runc]}" | bc -l)"
  printf 'median: %s/crun %.2f   %s/runc %.2f\n' \
    $of "$(echo "${med[$of]} / ${med[crun]}" | bc -l)" $of "$(echo "${med[$of]} / ${med[runc]}" | bc -l)"
done
