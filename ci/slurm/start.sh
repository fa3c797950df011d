#!/usr/bin/env bash
# Start a throwaway single-node SLURM cluster on this machine (for CI).
#
# Installs Debian/Ubuntu's slurmctld, slurmd, slurm-client and munge when they
# are missing, writes a one-node slurm.conf for localhost, and starts munged,
# slurmctld and slurmd by hand (no systemd needed). Idempotent: daemons that are
# already running are left alone. The PIDs of the daemons *this script* started
# are recorded in $SLURM_LOCAL_DIR/pids so that stop.sh stops exactly those.
#
# Needs root. Environment knobs (all optional):
#   SLURM_LOCAL_DIR       state, spool, logs, pid files   (/var/spool/slurm-local)
#   SLURM_LOCAL_PARTITION name of the (default) partition  (debug)
#   SLURM_LOCAL_WAIT      seconds to wait for the node       (60)
#   SLURM_LOCAL_GPUS      N>0 advertises N *fake* GPUs (gres gpu:fake:N) so that
#                         GPU requests (--gpus, --gres) can be scheduled, to test
#                         profiles that ask for GPUs. No GPU is behind them.
set -euo pipefail

SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
WAIT_SECS=${SLURM_LOCAL_WAIT:-60}
FAKE_GPUS=${SLURM_LOCAL_GPUS:-0}
CONF_DIR=/etc/slurm              # compiled-in default of Debian 12 / Ubuntu >= 22.04
CONF=$CONF_DIR/slurm.conf
PID_FILE=$SLURM_LOCAL_DIR/pids   # lines: "<daemon> <pid>", only daemons we started
MARKER="# Written by dgmbench ci/slurm/start.sh"

log() { printf '[slurm-start] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"

# --- packages -------------------------------------------------------------
install_packages() {
    local pkgs=(slurmctld slurmd slurm-client munge) missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing: ${missing[*]}"
    # On systemd hosts, installing these packages would start munge/slurmd as
    # services that then fight the daemons started below. A policy-rc.d that
    # exits 101 tells invoke-rc.d/deb-systemd-invoke not to start anything.
    # (Docker/Debian images already ship one; we only add it temporarily.)
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
    } || rc=$?
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die "apt-get failed (rc=$rc)"
}

# --- helpers -------------------------------------------------------------------
# pid_alive NAME PID: true if PID runs the program NAME (guards against PID
# reuse) and is not a zombie (a daemon's exited process can stay a zombie for
# seconds when PID 1 is a minimal init that reaps slowly).
pid_alive() {
    [[ -n ${2:-} && -r /proc/$2/comm ]] && [[ $(cat "/proc/$2/comm") == "$1" ]] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$2/status" 2>/dev/null
}

# recorded_pid NAME: the PID this script recorded for NAME, if still alive.
recorded_pid() {
    local name pid
    [[ -f $PID_FILE ]] || return 1
    while read -r name pid; do
        if [[ $name == "$1" ]] && pid_alive "$1" "$pid"; then
            echo "$pid"
            return 0
        fi
    done <"$PID_FILE"
    return 1
}

record_pid() { # NAME PID
    local tmp
    tmp=$(mktemp "$SLURM_LOCAL_DIR/.pids.XXXXXX")
    # keep the other daemons' lines, replace NAME's line
    [[ -f $PID_FILE ]] && awk -v n="$1" '$1 != n' "$PID_FILE" >"$tmp"
    echo "$1 $2" >>"$tmp"
    chmod 0644 "$tmp" # run.sh may read it as a non-root user
    mv "$tmp" "$PID_FILE"
}

# wait_pidfile FILE NAME: wait (bounded) until FILE names a live NAME process.
wait_pidfile() {
    local i pid
    for ((i = 0; i < 100; i++)); do
        if [[ -s $1 ]]; then
            pid=$(tr -dc '0-9' <"$1")
            if pid_alive "$2" "$pid"; then
                echo "$pid"
                return 0
            fi
        fi
        sleep 0.1
    done
    return 1
}

# --- munge ------------------------------------------------------------------
start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running${1:+ (ours)}"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        install -d -o munge -g munge -m 0700 /etc/munge
        # mungekey exists since munge 0.5.14; fall back to /dev/urandom
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    # Without systemd-tmpfiles nobody creates the socket/pid directory.
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    # --force: start even if a stale socket from an earlier (killed) munged exists.
    runuser -u munge -- munged --force
    local pid
    pid=$(wait_pidfile /run/munge/munged.pid munged) || die "munged did not start"
    record_pid munged "$pid"
    log "started munged (pid $pid)"
}

# --- slurm.conf ----------------------------------------------------------------
write_conf() {
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it"
    fi
    install -d -m 0755 "$CONF_DIR" "$SLURM_LOCAL_DIR" \
        "$SLURM_LOCAL_DIR/state" "$SLURM_LOCAL_DIR/slurmd" "$SLURM_LOCAL_DIR/log"

    # `slurmd -C` prints this machine's node line, e.g.
    #   NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=2 CoresPerSocket=1 ThreadsPerCore=1 RealMemory=24105
    # Advertise 5 % less memory than the total: the node is drained if it
    # ever reports less RealMemory than configured.
    local node_line mem host
    node_line=$(slurmd -C)
    node_line=${node_line%%$'\n'*} # first line; the second is "UpTime=..."
    [[ $node_line == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node_line"
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    host=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
    node_line=${node_line/RealMemory=$mem/RealMemory=$((mem * 95 / 100))}
    node_line+=" NodeAddr=127.0.0.1 State=UNKNOWN"

    local gres_types=""
    if ((FAKE_GPUS > 0)); then
        gres_types="GresTypes=gpu"
        node_line+=" Gres=gpu:fake:$FAKE_GPUS"
        # slurmd ignores a GPU line without File= (count-only GRES: the node is
        # then drained, "gres/gpu count reported lower than configured"), so
        # point it at stand-in device files: character devices 1:3, i.e. the
        # same device as /dev/null. No real device is behind them.
        local i dev=$SLURM_LOCAL_DIR/fakegpu
        install -d -m 0755 "$dev"
        for ((i = 0; i < FAKE_GPUS; i++)); do
            [[ -c $dev/gpu$i ]] || mknod -m 0666 "$dev/gpu$i" c 1 3
        done
        printf '%s\nNodeName=%s Name=gpu Type=fake File=%s/gpu[0-%d]\n' \
            "$MARKER" "$host" "$dev" "$((FAKE_GPUS - 1))" >"$CONF_DIR/gres.conf.new"
    else
        printf '%s\n' "$MARKER" >"$CONF_DIR/gres.conf.new"
    fi

    cat >"$CONF.new" <<EOF
$MARKER
# One-node test cluster on localhost. Not for production use.
ClusterName=dgmbench-ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
# No cgroups: works in containers/VMs without a cgroup hierarchy we own.
# Consequence: memory limits are not enforced at run time.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Finished jobs stay visible to 'squeue --states=all' for 300 s; the Snakemake
# plugin polls with squeue (no slurmdbd, so no sacct) and needs that window.
MinJobAge=300
# A node that was down (e.g. after a restart) comes back once it registers.
ReturnToService=2
SlurmdTimeout=60
# Client commands retry a down controller once per second for MessageTimeout
# seconds (default 10). Once stop.sh has run, every Snakemake start pays that:
# its SLURM plugin calls 'scontrol show config' on import, even for local runs.
MessageTimeout=3
InactiveLimit=0
$gres_types
StateSaveLocation=$SLURM_LOCAL_DIR/state
SlurmdSpoolDir=$SLURM_LOCAL_DIR/slurmd
SlurmctldPidFile=$SLURM_LOCAL_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_LOCAL_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_LOCAL_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_LOCAL_DIR/log/slurmd.log
$node_line
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # While our daemons run, the files on disk must keep matching what they
    # were started with (client commands such as sbatch read them too), so a
    # re-run with different settings only warns. Otherwise install the files.
    local f differs=0
    for f in "$CONF" "$CONF_DIR/gres.conf"; do
        cmp -s "$f.new" "$f" || differs=1
    done
    if ((differs)) && { recorded_pid slurmctld || recorded_pid slurmd; } >/dev/null; then
        log "WARNING: SLURM is running with other settings; keeping them (run stop.sh first to change them)"
        rm -f "$CONF.new" "$CONF_DIR/gres.conf.new"
    elif ((differs)); then
        mv "$CONF.new" "$CONF"
        mv "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"
        log "wrote $CONF"
    else
        rm -f "$CONF.new" "$CONF_DIR/gres.conf.new"
    fi
}

# --- slurmctld / slurmd ---------------------------------------------------------
start_slurm_daemon() { # NAME PIDFILE
    local name=$1 pidfile=$2 pid
    if pid=$(recorded_pid "$name"); then
        log "$name already running (ours, pid $pid)"
        return 0
    fi
    # A daemon we did not start (e.g. a systemd unit): do not fight it.
    for pid in $(pgrep -x "$name" || true); do
        pid_alive "$name" "$pid" &&
            die "$name is already running (pid $pid) but was not started by this script"
    done
    rm -f "$pidfile"
    # Both daemons fork into the background and write their pid file.
    "$name"
    pid=$(wait_pidfile "$pidfile" "$name") ||
        die "$name did not start; see $SLURM_LOCAL_DIR/log/$name.log"
    record_pid "$name" "$pid"
    log "started $name (pid $pid)"
}

wait_for_node() {
    local state="" i
    for ((i = 0; i < WAIT_SECS * 2; i++)); do
        # %t: compact state; '*' suffix = not responding.
        state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n1) || state=""
        case $state in
        idle | mix | alloc | comp)
            log "node is $state after $((i / 2)) s"
            return 0
            ;;
        drain | drng | down)
            # Responding but administratively down (e.g. left over from a
            # previous run's saved state): try to resume it every 5 s.
            if ((i % 10 == 0)); then
                scontrol update nodename="$(sinfo -h -N -o '%N' | head -n1)" state=resume \
                    >/dev/null 2>&1 || true
            fi
            ;;
        esac
        sleep 0.5
    done
    log "node did not become idle within $WAIT_SECS s (last state: '${state:-none}')"
    sinfo -N -l >&2 || true
    return 1
}

install_packages
install -d -m 0755 "$SLURM_LOCAL_DIR"
write_conf
start_munge "$(recorded_pid munged || true)"
start_slurm_daemon slurmctld "$SLURM_LOCAL_DIR/slurmctld.pid"
start_slurm_daemon slurmd "$SLURM_LOCAL_DIR/slurmd.pid"
wait_for_node || die "SLURM is not ready; run ci/slurm/logs.sh for the daemon logs"
sinfo >&2
