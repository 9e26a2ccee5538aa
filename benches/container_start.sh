#!/usr/bin/env bash
# Container start: create + start + wait + delete of a busybox `true` container, through
# kinglet's runtime path (the per-container supervisor on libcontainer) and through Debian's
# crun and runc, on the same bundle, interleaved in one run. Runs inside a private mount and
# network namespace; containers go to a cgroup of their own that is removed afterwards.
#
# Usage: benches/container_start.sh [runs]   (default 50; needs root, crun, runc, busybox)
# KINGLET_BENCH_WRAP="strace -f -tt -o FILE" runs kinglet under a profiler.
set -euo pipefail
if [ -z "${KINGLET_BENCH_INNER:-}" ]; then
  cd "$(dirname "$0")/.."
  cargo build --release --quiet
  KINGLET_BENCH_INNER=1 exec unshare --mount --net --propagation private -- "$0" "$@"
fi
runs=${1:-50}
kinglet=$(pwd)/target/release/kinglet
work=$(mktemp -d)
cg="/kinglet-bench-$$"
trap 'rm -rf "$work"; for c in /sys/fs/cgroup/*/${cg#/} /sys/fs/cgroup/${cg#/}; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done; true' EXIT

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
cat > "$work/c/meta.json" <<JSON
{"id": "bench", "podUid": "", "podNamespace": "", "podName": "", "containerName": "bench",
 "attempt": 0, "image": "", "imageId": "", "lowerDirs": [], "logPath": "$work/c/0.log",
 "logMaxBytes": 10485760, "logMaxFiles": 2, "cgroupPath": "$cg/c", "createdAt": ""}
JSON

# crun refuses hybrid hosts (cgroup v1 plus a v2 mount holding a controller). In this
# benchmark's own mount namespace the v2 mount is hidden, so all three use the v1 controllers.
if [ -d /sys/fs/cgroup/unified ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
  umount /sys/fs/cgroup/unified
  echo "note: hybrid cgroups: v2 mount hidden in the benchmark's mount namespace"
fi

now() { date +%s%N; }
declare -A total=([kinglet]=0 [crun]=0 [runc]=0)
for i in $(seq "$runs"); do
  for rt in kinglet crun runc; do
    t0=$(now)
    case $rt in
      kinglet) rm -f "$work/c/status.json"; ${KINGLET_BENCH_WRAP:-} "$kinglet" supervise "$work/c" ;;
      crun) crun --root "$work/crun" run -b "$bundle" "b$i" >/dev/null ;;
      runc) runc --root "$work/runc" run -b "$bundle" "b$i" >/dev/null ;;
    esac
    t1=$(now)
    total[$rt]=$(( ${total[$rt]} + t1 - t0 ))
  done
done
grep -q '"code":0' "$work/c/status.json" || { echo "kinglet container failed: $(cat "$work/c/status.json")" >&2; exit 1; }
echo "machine: $(nproc) cores, $(uname -m), $(uname -r)"
echo "runs: $runs each, interleaved"
for rt in kinglet crun runc; do
  printf '%-8s %6.1f ms per container\n' "$rt" "$(echo "${total[$rt]} / $runs / 1000000" | bc -l)"
done
printf 'kinglet/crun %.2f   kinglet/runc %.2f\n' \
  "$(echo "${total[kinglet]} / ${total[crun]}" | bc -l)" "$(echo "${total[kinglet]} / ${total[runc]}" | bc -l)"
