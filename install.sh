#!/bin/sh
# kinglet installer. The one-command `curl | sh` install (download, systemd/openrc unit,
# air-gap images) is its own issue; until then this installs a locally built binary.
set -eu
BIN=${KINGLET_BIN:-./target/kinglet}
if [ ! -x "$BIN" ]; then
  echo "install.sh: build first (scripts/build) or set KINGLET_BIN" >&2
  exit 1
fi
install -m 0755 "$BIN" /usr/local/bin/kinglet
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  install -m 0644 "$(dirname "$0")/packaging/kinglet.service" /etc/systemd/system/kinglet.service
  systemctl daemon-reload
  systemctl enable --now kinglet
  echo "kinglet installed and started; kubeconfig: /etc/kinglet/kinglet.yaml"
else
  echo "kinglet installed to /usr/local/bin/kinglet; start it with: kinglet server"
fi
