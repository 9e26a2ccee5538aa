#!/bin/sh
# kinglet installer: installs the kinglet binary, a systemd unit (or an OpenRC script), an
# environment file and kinglet-killall.sh / <unit>-uninstall.sh, then starts kinglet.
#
# Usage:
#   curl -sfL <site>/install.sh | sh -                                      # a server
#   curl -sfL <site>/install.sh | KINGLET_URL=https://<server>:6443 KINGLET_TOKEN=<token> sh -
#   curl -sfL <site>/install.sh | sh -s - server --tls-san edge.example     # flags as arguments
# Run again to upgrade in place (the binary is replaced and the service restarted).
#
# Environment:
#   KINGLET_*                      kept in the service's environment file (mode 0600); kinglet
#                                  reads every flag as KINGLET_<FLAG>. KINGLET_URL without a
#                                  command in INSTALL_KINGLET_EXEC installs an agent (unit
#                                  kinglet-agent), which then needs KINGLET_TOKEN or
#                                  KINGLET_TOKEN_FILE.
#   INSTALL_KINGLET_EXEC           command and flags of the service ("server --tls-san x",
#                                  "agent", or only flags); words are split at white space,
#                                  script arguments are appended as they are.
#   INSTALL_KINGLET_VERSION        release to download (default: latest).
#   INSTALL_KINGLET_DOWNLOAD_URL   base URL of the releases, for mirrors and air-gapped sites:
#                                  <base>/<version>/kinglet-<arch> and
#                                  <base>/<version>/sha256sum-<arch>.txt are downloaded.
#   INSTALL_KINGLET_BIN_DIR        where the binary and scripts go (default /usr/local/bin).
#   INSTALL_KINGLET_SKIP_DOWNLOAD  true: use the kinglet already in the bin directory.
#   INSTALL_KINGLET_SKIP_PACKAGES  true: do not install missing host packages (iptables,
#                                  conntrack) with the system's package manager.
#   INSTALL_KINGLET_SKIP_ENABLE    true: neither enable nor start the service.
#   INSTALL_KINGLET_SKIP_START     true: enable the service but do not (re)start it.
#
# Run as ./install.sh from a source checkout (Cargo.toml beside it, target/kinglet built by
# scripts/build), it installs that binary instead of downloading one.

set -eu
set -f

DEFAULT_DOWNLOAD_URL=https://github.com/kinglet/kinglet/releases/download

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
    echo "[ERROR] $*" >&2
    exit 1
}

# 'text' for sh, with embedded single quotes kept.
sh_quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# One argument of a systemd ExecStart= line: quoted when it needs to be, with systemd's
# specifier (%) and variable ($) characters escaped.
systemd_quote() {
    escaped=$(printf '%s' "$1" | sed -e 's/%/%%/g' -e 's/\$/$$/g')
    case $1 in
        '' | *[!A-Za-z0-9_@%+=:,./-]*)
            escaped=$(printf '%s' "$escaped" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')
            printf '"%s"' "$escaped"
            ;;
        *) printf '%s' "$escaped" ;;
    esac
}

# --- what to install ---
setup_env() {
    [ "$(id -u)" -eq 0 ] || fatal "run as root, e.g. curl -sfL <site>/install.sh | sudo sh -"
    BIN_DIR=${INSTALL_KINGLET_BIN_DIR:-/usr/local/bin}
    case $BIN_DIR in
        /*) ;;
        *) fatal "INSTALL_KINGLET_BIN_DIR must be an absolute path (have '$BIN_DIR')" ;;
    esac
    BIN=$BIN_DIR/kinglet
    KINGLET_URL=${KINGLET_URL:-}
    case $KINGLET_URL in
        '' | https://*) ;;
        *) fatal "KINGLET_URL must be an https:// URL (have '$KINGLET_URL')" ;;
    esac

    # The service's command line: INSTALL_KINGLET_EXEC split at white space, then our arguments.
    # shellcheck disable=SC2086 # word splitting (not globbing: set -f) is what is meant
    set -- ${INSTALL_KINGLET_EXEC:-} "$@"
    case ${1:-} in
        server | agent)
            COMMAND=$1
            shift
            ;;
        '' | -*)
            if [ -n "$KINGLET_URL" ]; then
                COMMAND=agent
            else
                COMMAND=server
            fi
            ;;
        *) fatal "the command must be 'server' or 'agent' (have '$1')" ;;
    esac
    if [ "$COMMAND" = agent ] && [ -z "$KINGLET_URL" ]; then
        has_server=
        for arg in "$@"; do
            case $arg in --server | --server=*) has_server=1 ;; esac
        done
        [ -n "$has_server" ] || fatal "an agent needs KINGLET_URL=https://<server>:6443 (or --server)"
    fi
    if [ "$COMMAND" = agent ] && [ -z "${KINGLET_TOKEN:-}" ] && [ -z "${KINGLET_TOKEN_FILE:-}" ]; then
        has_token=
        for arg in "$@"; do
            case $arg in --token | --token=* | --token-file | --token-file=*) has_token=1 ;; esac
        done
        [ -n "$has_token" ] || fatal "an agent needs KINGLET_TOKEN or KINGLET_TOKEN_FILE (the server's 'kinglet token')"
    fi
    EXEC_SYSTEMD=$COMMAND
    EXEC_SH=$COMMAND
    for arg in "$@"; do
        case $arg in
            *'
'*) fatal "arguments must not contain line breaks" ;;
        esac
        EXEC_SYSTEMD="$EXEC_SYSTEMD $(systemd_quote "$arg")"
        EXEC_SH="$EXEC_SH $(sh_quote "$arg")"
    done

    if [ "$COMMAND" = server ]; then UNIT=kinglet; else UNIT=kinglet-agent; fi
    KILLALL_SH=$BIN_DIR/kinglet-killall.sh
    UNINSTALL_SH=$BIN_DIR/$UNIT-uninstall.sh
    COMMAND_FILE=/etc/kinglet/$UNIT.command

    # The init system: OpenRC where its runner exists, else systemd where systemctl exists
    # (the unit is written even when systemd is not running, e.g. while building an image).
    INIT=none
    SERVICE_FILE=
    ENV_FILE=
    if [ -x /sbin/openrc-run ]; then
        INIT=openrc
        SERVICE_FILE=/etc/init.d/$UNIT
        ENV_FILE=/etc/kinglet/$UNIT.env
    elif command -v systemctl >/dev/null 2>&1; then
        INIT=systemd
        SERVICE_FILE=/etc/systemd/system/$UNIT.service
        ENV_FILE=/etc/systemd/system/$UNIT.service.env
    fi
    SYSTEMD_RUNNING=
    if [ -d /run/systemd/system ]; then SYSTEMD_RUNNING=1; fi
}

# --- the binary: a local build, a download checked against its checksum, or the one there ---
setup_arch() {
    machine=$(uname -m)
    case $machine in
        x86_64 | amd64) ARCH=amd64 ;;
        aarch64 | arm64) ARCH=arm64 ;;
        armv7l | armv7* | armv8l) ARCH=arm ;;
        *) fatal "unsupported architecture $machine: kinglet is built for x86_64, aarch64 and armv7 (armhf)" ;;
    esac
}

download() {
    case $DOWNLOADER in
        curl) curl -sfL -o "$1" "$2" || fatal "downloading $2 failed" ;;
        wget) wget -qO "$1" "$2" || fatal "downloading $2 failed" ;;
    esac
}

sha256_of() {
    sum=$(sha256sum "$1") || fatal "sha256sum $1 failed"
    echo "${sum%%[[:space:]]*}"
}

# Sets NEW_BIN to a verified binary to install, or leaves it empty when the installed one is
# already that binary.
fetch_binary() {
    NEW_BIN=
    source_dir=$(CDPATH='' cd -- "$(dirname -- "$0")" 2>/dev/null && pwd) || source_dir=
    if [ -n "$source_dir" ] && [ "$(basename -- "$0")" = install.sh ] &&
        [ -f "$source_dir/Cargo.toml" ] && [ -x "$source_dir/target/kinglet" ]; then
        info "installing the local build $source_dir/target/kinglet"
        NEW_BIN=$source_dir/target/kinglet
        return
    fi
    if [ "${INSTALL_KINGLET_SKIP_DOWNLOAD:-}" = true ]; then
        [ -x "$BIN" ] || fatal "INSTALL_KINGLET_SKIP_DOWNLOAD=true, but there is no kinglet at $BIN"
        info "using the installed $BIN"
        return
    fi
    setup_arch
    if command -v curl >/dev/null 2>&1; then
        DOWNLOADER=curl
    elif command -v wget >/dev/null 2>&1; then
        DOWNLOADER=wget
    else
        fatal "curl or wget is needed to download kinglet"
    fi
    command -v sha256sum >/dev/null 2>&1 || fatal "sha256sum is needed to check the download"
    base=${INSTALL_KINGLET_DOWNLOAD_URL:-$DEFAULT_DOWNLOAD_URL}
    base=${base%/}
    version=${INSTALL_KINGLET_VERSION:-latest}
    TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kinglet-install.XXXXXXXXXX")
    trap 'rm -rf "$TMP_DIR"' EXIT
    trap 'exit 130' INT TERM
    info "downloading $base/$version/sha256sum-$ARCH.txt"
    download "$TMP_DIR/sha256sum.txt" "$base/$version/sha256sum-$ARCH.txt"
    expected=$(sed -n "s/^\([0-9a-fA-F]\{64\}\)[[:space:]][[:space:]]*\*\{0,1\}kinglet-$ARCH\$/\1/p" "$TMP_DIR/sha256sum.txt" | head -n 1)
    [ -n "$expected" ] || fatal "sha256sum-$ARCH.txt has no line for kinglet-$ARCH"
    if [ -x "$BIN" ] && [ "$(sha256_of "$BIN")" = "$expected" ]; then
        info "$BIN is already $version ($ARCH)"
        return
    fi
    info "downloading $base/$version/kinglet-$ARCH"
    download "$TMP_DIR/kinglet" "$base/$version/kinglet-$ARCH"
    actual=$(sha256_of "$TMP_DIR/kinglet")
    [ "$actual" = "$expected" ] ||
        fatal "the downloaded kinglet-$ARCH does not match its checksum (sha256 $actual, expected $expected); nothing was changed"
    NEW_BIN=$TMP_DIR/kinglet
}

# Replaces the binary by a rename, so a running kinglet keeps its old file.
install_binary() {
    [ -n "$NEW_BIN" ] || return 0
    mkdir -p "$BIN_DIR"
    cp "$NEW_BIN" "$BIN.new"
    chmod 0755 "$BIN.new"
    mv -f "$BIN.new" "$BIN"
    info "installed $BIN ($("$BIN" --version 2>/dev/null || echo 'version unknown'))"
}

# --- host packages the node needs: iptables (service proxy) and conntrack ---
install_packages() {
    missing=
    command -v iptables-restore >/dev/null 2>&1 || missing="$missing iptables"
    command -v conntrack >/dev/null 2>&1 || missing="$missing conntrack"
    [ -n "$missing" ] || return 0
    if [ "${INSTALL_KINGLET_SKIP_PACKAGES:-}" = true ]; then
        warn "missing:$missing (INSTALL_KINGLET_SKIP_PACKAGES=true: install them yourself)"
        return 0
    fi
    info "installing$missing"
    # Package names per family: conntrack is conntrack-tools outside Debian.
    conntrack_tools=
    case $missing in *conntrack*) conntrack_tools=conntrack-tools ;; esac
    iptables=
    case $missing in *iptables*) iptables=iptables ;; esac
    # shellcheck disable=SC2086 # package lists
    if command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } && return 0
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y $iptables $conntrack_tools && return 0
    elif command -v yum >/dev/null 2>&1; then
        yum install -y $iptables $conntrack_tools && return 0
    elif command -v apk >/dev/null 2>&1; then
        apk add --no-cache $iptables $conntrack_tools && return 0
    elif command -v zypper >/dev/null 2>&1; then
        zypper --non-interactive install $iptables $conntrack_tools && return 0
    fi
    warn "could not install$missing: install them with the system's package manager (Services and NetworkPolicies need iptables)"
}

# --- the scripts that undo the installation ---
# The service's command line, for the scripts below: they ask kinglet which directories it
# uses (`kinglet dirs`), with the service's environment files, config file and drop-ins.
write_command_file() {
    mkdir -p /etc/kinglet
    {
        echo "# The $UNIT service's command line, for kinglet-killall.sh and $UNIT-uninstall.sh."
        echo "# Written by kinglet's install.sh: run it again to change the command line."
        echo "SERVICE_UNIT=$(sh_quote "$UNIT")"
        echo "SERVICE_ENV_FILE=$(sh_quote "$ENV_FILE")"
        echo "set -- $EXEC_SH"
    } >"$COMMAND_FILE.new"
    chmod 0600 "$COMMAND_FILE.new"
    mv -f "$COMMAND_FILE.new" "$COMMAND_FILE"
}

# Functions of the generated scripts.
script_functions() {
    cat <<'EOF'
# DATA_DIR, RUN_DIR, POD_LOG_DIR and CGROUP_ROOT of the service whose command file is $1, as
# kinglet resolves them: environment files, then flags, over config.yaml and config.yaml.d.
service_dirs() (
    for name in $(env | sed -n 's/^\(KINGLET_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$name"; done
    SERVICE_UNIT=
    SERVICE_ENV_FILE=
    # shellcheck disable=SC1090 # written by install.sh
    . "$1" || exit 1
    for env_file in "/etc/default/$SERVICE_UNIT" "/etc/sysconfig/$SERVICE_UNIT" "$SERVICE_ENV_FILE"; do
        if [ -n "$env_file" ] && [ -f "$env_file" ]; then
            set -a
            # shellcheck disable=SC1090 # the service's environment
            . "$env_file"
            set +a
        fi
    done
    [ -x "$BIN" ] || { echo "$BIN is missing" >&2; exit 1; }
    cd / && "$BIN" dirs "$@"
)

# Mount points at or below $1, deepest first; /proc/self/mounts writes a space as \040.
mounts_under() {
    while read -r _ mount_point _; do
        mount_point=$(printf '%b' "$mount_point")
        case $mount_point in "$1" | "$1"/*) echo "$mount_point" ;; esac
    done </proc/self/mounts | sort -r
}
EOF
}

create_killall() {
    info "writing $KILLALL_SH"
    {
        echo '#!/bin/sh'
        echo '# Stops kinglet and everything it started: the service, kinglet and container'
        echo '# processes, their mounts and cgroups, and its network set-up (kinglet cleanup).'
        echo "# Written by kinglet's install.sh."
        echo "BIN=$(sh_quote "$BIN")"
        cat <<'EOF'
set -u
[ "$(id -u)" -eq 0 ] || { echo "kinglet-killall.sh: run as root" >&2; exit 1; }

EOF
        script_functions
        cat <<'EOF'

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for unit in /etc/systemd/system/kinglet*.service; do
        [ -f "$unit" ] && systemctl stop "${unit##*/}"
    done
fi
for service in /etc/init.d/kinglet*; do
    [ -x "$service" ] && "$service" stop
done

# kinglet's own processes (server, agent, container supervisors): those running our binary
# in this mount namespace, which is the host's for all of them.
# shellcheck disable=SC2317 # called through kill_all_of
kinglet_pids() {
    own_ns=$(readlink /proc/self/ns/mnt)
    for proc in /proc/[0-9]*; do
        exe=$(readlink "$proc/exe" 2>/dev/null) || continue
        case $exe in
            "$BIN" | "$BIN (deleted)")
                [ "$(readlink "$proc/ns/mnt" 2>/dev/null)" = "$own_ns" ] && echo "${proc#/proc/}"
                ;;
        esac
    done
}

# Pod cgroups below $CGROUP_ROOT, in every hierarchy (one on cgroup v2, one per controller
# on v1).
kubepods_dirs() {
    for hierarchy in /sys/fs/cgroup /sys/fs/cgroup/*; do
        [ -d "$hierarchy$CGROUP_ROOT/kubepods" ] && echo "$hierarchy$CGROUP_ROOT/kubepods"
    done
}
# shellcheck disable=SC2317 # called through kill_all_of
pod_pids() {
    kubepods_dirs | while IFS= read -r dir; do
        find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
}

# Kills what $1 (a function) lists, until it lists nothing.
kill_all_of() {
    round=0
    while [ $round -lt 30 ]; do
        pids=$("$1")
        [ -n "$pids" ] || return 0
        # shellcheck disable=SC2086 # a list of process ids
        kill -9 $pids 2>/dev/null
        sleep 1
        round=$((round + 1))
    done
}

kill_all_of kinglet_pids
status=0
cleaned=
for command_file in /etc/kinglet/kinglet*.command; do
    [ -f "$command_file" ] || continue
    if ! dirs=$(service_dirs "$command_file"); then
        echo "kinglet-killall.sh: cannot tell the directories of $command_file: its containers and mounts are left" >&2
        status=1
        continue
    fi
    eval "$dirs"
    CGROUP_ROOT=${CGROUP_ROOT%/}
    # Containers: every process in the pod cgroups.
    kill_all_of pod_pids
    kubepods_dirs | while IFS= read -r dir; do
        find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    # Mounts below the data and run directories (root file systems, volumes, namespace pins).
    for top in "$DATA_DIR" "$RUN_DIR"; do
        mounts_under "$top" | while IFS= read -r mount_point; do
            [ "$mount_point" = "$top" ] && continue
            umount "$mount_point" 2>/dev/null || umount -l "$mount_point"
        done
    done
    # The network set-up: iptables chains and jumps, the bridge, routes, the DNS address.
    if (
        SERVICE_ENV_FILE=
        # shellcheck disable=SC1090 # written by install.sh
        . "$command_file"
        if [ -n "$SERVICE_ENV_FILE" ] && [ -f "$SERVICE_ENV_FILE" ]; then
            set -a
            # shellcheck disable=SC1090 # the service's environment
            . "$SERVICE_ENV_FILE"
            set +a
        fi
        "$BIN" cleanup --run-dir "$RUN_DIR"
    ); then
        cleaned=1
    else
        echo "kinglet-killall.sh: kinglet cleanup failed" >&2
        status=1
    fi
done
if [ -z "$cleaned" ] && [ -x "$BIN" ]; then
    "$BIN" cleanup || {
        echo "kinglet-killall.sh: kinglet cleanup failed" >&2
        status=1
    }
fi
exit $status
EOF
    } >"$KILLALL_SH.new"
    chmod 0755 "$KILLALL_SH.new"
    mv -f "$KILLALL_SH.new" "$KILLALL_SH"
}

create_uninstall() {
    info "writing $UNINSTALL_SH"
    {
        echo '#!/bin/sh'
        echo "# Removes the $UNIT service and, when no other kinglet service is left, everything"
        echo "# kinglet created. Written by kinglet's install.sh."
        echo "BIN=$(sh_quote "$BIN")"
        echo "UNIT=$(sh_quote "$UNIT")"
        echo "SERVICE_FILE=$(sh_quote "$SERVICE_FILE")"
        echo "ENV_FILE=$(sh_quote "$ENV_FILE")"
        echo "COMMAND_FILE=$(sh_quote "$COMMAND_FILE")"
        echo "KILLALL_SH=$(sh_quote "$KILLALL_SH")"
        cat <<'EOF'
set -u
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root" >&2; exit 1; }

EOF
        script_functions
        cat <<'EOF'

# Asked before anything is stopped or removed.
status=0
if dirs=$(service_dirs "$COMMAND_FILE"); then
    eval "$dirs"
else
    echo "$0: cannot tell $UNIT's directories: they are kept" >&2
    DATA_DIR='' RUN_DIR='' POD_LOG_DIR=''
    status=1
fi

[ -x "$KILLALL_SH" ] && "$KILLALL_SH"

if command -v systemctl >/dev/null 2>&1; then
    systemctl disable "$UNIT" >/dev/null 2>&1
    if [ -d /run/systemd/system ]; then
        systemctl reset-failed "$UNIT" 2>/dev/null
        systemctl daemon-reload
    fi
fi
if command -v rc-update >/dev/null 2>&1; then
    rc-update delete "$UNIT" default >/dev/null 2>&1
fi
rm -f "$SERVICE_FILE" "$ENV_FILE" "$COMMAND_FILE" "/var/log/$UNIT.log" "/etc/logrotate.d/$UNIT"
rm -f "$0"

if ls /etc/systemd/system/kinglet*.service /etc/init.d/kinglet* >/dev/null 2>&1; then
    echo "another kinglet service is installed: kinglet's binary and data are kept"
    exit $status
fi

# Never a system or relative directory, and never through a mount that is still there (a
# volume's hostPath would be emptied).
remove_tree() {
    case $1 in
        '' | / | /etc | /run | /tmp | /var | /var/lib | /var/log | /usr | /usr/local | /home | /root | \
            [!/]* | */../* | */.. | */./* | */.)
            echo "$0: refusing to remove '$1'" >&2
            return 1
            ;;
    esac
    [ -e "$1" ] || return 0
    if mounts_under "$1" | grep -qvxF -- "$1"; then
        echo "$0: '$1' still has mounts below it; unmount them and remove it by hand" >&2
        return 1
    fi
    rm -rf -- "$1"
}

# The data directory only where kinglet marked it as its own: the lock its server or agent
# holds. Before it goes, the log directories (<namespace>_<pod>_<uid>) of the pods it ran.
if [ -n "$DATA_DIR" ] && [ -e "$DATA_DIR" ]; then
    if [ -f "$DATA_DIR/server/lock" ] || [ -f "$DATA_DIR/agent/lock" ]; then
        if [ -d "$POD_LOG_DIR" ]; then
            for pod_log in "$POD_LOG_DIR"/*_*_*; do
                uid=${pod_log##*_}
                if [ -d "$pod_log" ] && [ -d "$DATA_DIR/agent/pods/$uid" ]; then
                    remove_tree "$pod_log" || status=1
                fi
            done
            rmdir "$POD_LOG_DIR" 2>/dev/null
        fi
        remove_tree "$DATA_DIR" || status=1
    else
        echo "$0: '$DATA_DIR' has neither server/lock nor agent/lock, so kinglet did not make it: it is kept" >&2
        status=1
    fi
fi
# The run directory: empty, or with kinglet's container state in it.
if [ -n "$RUN_DIR" ] && [ -d "$RUN_DIR" ] && ! rmdir "$RUN_DIR" 2>/dev/null; then
    if [ -d "$RUN_DIR/containers" ]; then
        remove_tree "$RUN_DIR" || status=1
    else
        echo "$0: '$RUN_DIR' has no containers/ of kinglet's: it is kept" >&2
        status=1
    fi
fi
remove_tree /etc/kinglet || status=1
rm -f "$BIN" "$KILLALL_SH"
exit $status
EOF
    } >"$UNINSTALL_SH.new"
    chmod 0755 "$UNINSTALL_SH.new"
    mv -f "$UNINSTALL_SH.new" "$UNINSTALL_SH"
}

# --- the service ---
# KINGLET_* (and proxy) variables of this environment, as NAME='value' lines, for systemd's
# EnvironmentFile= and for sh alike.
write_env_file() {
    mkdir -p "$(dirname "$ENV_FILE")"
    old_umask=$(umask)
    umask 077
    : >"$ENV_FILE.new"
    umask "$old_umask"
    chmod 0600 "$ENV_FILE.new"
    for name in $(env | sed -n 's/^\(KINGLET_[A-Za-z0-9_]*\)=.*/\1/p; s/^\([Hh][Tt][Tt][Pp][Ss]\{0,1\}_[Pp][Rr][Oo][Xx][Yy]\)=.*/\1/p; s/^\([Nn][Oo]_[Pp][Rr][Oo][Xx][Yy]\)=.*/\1/p' | sort); do
        eval "value=\${$name-}"
        [ -n "$value" ] || continue
        case $value in
            *"'"* | *'
'*) fatal "$name must not contain a single quote or a line break" ;;
        esac
        printf "%s='%s'\n" "$name" "$value" >>"$ENV_FILE.new"
    done
    mv -f "$ENV_FILE.new" "$ENV_FILE"
    info "wrote $ENV_FILE"
}

write_systemd_unit() {
    cat >"$SERVICE_FILE.new" <<EOF
[Unit]
Description=kinglet: Kubernetes in one binary ($COMMAND)
Documentation=https://github.com/kinglet/kinglet
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
# Ready once this machine's node is Ready (the API serving, with --disable-agent).
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-$ENV_FILE
# Containers run in cgroups of their own and must outlive a restart of kinglet.
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStart=$(systemd_quote "$BIN") $EXEC_SYSTEMD
EOF
    chmod 0644 "$SERVICE_FILE.new"
    mv -f "$SERVICE_FILE.new" "$SERVICE_FILE"
    info "wrote $SERVICE_FILE"
}

write_openrc_script() {
    log=/var/log/$UNIT.log
    # The arguments, quoted for sh, inside a double-quoted assignment.
    args_dq=$(printf '%s' "$EXEC_SH" | sed -e 's/[\\"$`]/\\&/g')
    cat >"$SERVICE_FILE.new" <<EOF
#!/sbin/openrc-run
# kinglet: Kubernetes in one binary ($COMMAND). Written by kinglet's install.sh.

depend() {
    after network-online
    want cgroups
}

supervisor=supervise-daemon
name=$UNIT
command=$(sh_quote "$BIN")
command_args="$args_dq"
output_log=$log
error_log=$log
pidfile=/var/run/$UNIT.pid
respawn_delay=5
respawn_max=0

set -o allexport
if [ -f /etc/environment ]; then . /etc/environment; fi
if [ -f $(sh_quote "$ENV_FILE") ]; then . $(sh_quote "$ENV_FILE"); fi
set +o allexport
EOF
    chmod 0755 "$SERVICE_FILE.new"
    mv -f "$SERVICE_FILE.new" "$SERVICE_FILE"
    mkdir -p /etc/logrotate.d
    printf '%s {\n\tmissingok\n\tnotifempty\n\tcopytruncate\n}\n' "$log" >/etc/logrotate.d/"$UNIT"
    info "wrote $SERVICE_FILE"
}

installed_hashes() {
    sha256sum "$BIN" "${SERVICE_FILE:-/nonexistent}" "${ENV_FILE:-/nonexistent}" 2>/dev/null || true
}

start_service() {
    if [ "${INSTALL_KINGLET_SKIP_ENABLE:-}" = true ]; then
        info "not enabling $UNIT (INSTALL_KINGLET_SKIP_ENABLE=true)"
        return
    fi
    case $INIT in
        systemd)
            systemctl enable "$UNIT" >/dev/null 2>&1 || warn "systemctl enable $UNIT failed"
            if [ -z "$SYSTEMD_RUNNING" ]; then
                info "systemd is not running here: $UNIT starts at the next boot (or run: $BIN $EXEC_SH)"
                return
            fi
            systemctl daemon-reload
            ;;
        openrc) rc-update add "$UNIT" default >/dev/null ;;
    esac
    if [ "${INSTALL_KINGLET_SKIP_START:-}" = true ]; then
        info "not starting $UNIT (INSTALL_KINGLET_SKIP_START=true)"
        return
    fi
    if [ "$PRE_INSTALL" = "$(installed_hashes)" ] && service_active; then
        info "no change: $UNIT keeps running"
        return
    fi
    info "starting $UNIT"
    case $INIT in
        systemd) systemctl restart "$UNIT" ;;
        openrc) "$SERVICE_FILE" restart ;;
    esac
}

service_active() {
    case $INIT in
        systemd) systemctl is-active --quiet "$UNIT" ;;
        openrc) "$SERVICE_FILE" status >/dev/null 2>&1 ;;
    esac
}

main() {
    setup_env "$@"
    PRE_INSTALL=$(installed_hashes)
    fetch_binary
    install_packages
    install_binary
    write_command_file
    create_killall
    create_uninstall
    if [ "$INIT" = none ]; then
        warn "neither systemd nor OpenRC found: kinglet is installed but no service is set up"
        info "run it under your init system as: $BIN $EXEC_SH"
        return
    fi
    write_env_file
    case $INIT in
        systemd) write_systemd_unit ;;
        openrc) write_openrc_script ;;
    esac
    start_service
    if [ "$COMMAND" = server ]; then
        info "kubeconfig: /etc/kinglet/kinglet.yaml; join token: kinglet token; uninstall: $UNINSTALL_SH"
    else
        info "uninstall: $UNINSTALL_SH"
    fi
}

main "$@"
