#!/usr/bin/env bash
# Stop the daemons that ci/slurm/start.sh started, and nothing else.
#
# Reads the PIDs that start.sh recorded in $SLURM_LOCAL_DIR/pids and stops them
# in reverse start order (slurmd, slurmctld, munged). A PID is only signalled if
# it still runs the program that was recorded (guards against PID reuse).
# Jobs still queued/running on this throwaway cluster are cancelled first so
# that no slurmstepd/job processes are left behind. Packages, config and the
# state directory are kept (start.sh reuses them).
set -euo pipefail

SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}
PID_FILE=$SLURM_LOCAL_DIR/pids

log() { printf '[slurm-stop] %s\n' "$*" >&2; }

if [[ ! -s $PID_FILE ]]; then
    log "nothing to stop (no $PID_FILE)"
    exit 0
fi

# pid_alive NAME PID: true if PID runs the program NAME (guards against PID
# reuse) and is not a zombie (a daemon's exited process can stay a zombie for
# seconds when PID 1 is a minimal init that reaps slowly).
pid_alive() {
    [[ -n ${2:-} && -r /proc/$2/comm ]] && [[ $(cat "/proc/$2/comm") == "$1" ]] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$2/status" 2>/dev/null
}

recorded() { # NAME -> PID recorded for NAME (may be dead)
    awk -v n="$1" '$1 == n { print $2; exit }' "$PID_FILE"
}

# Cancel leftover jobs while slurmctld/slurmd can still clean them up.
ctld=$(recorded slurmctld)
if pid_alive slurmctld "$ctld" && command -v squeue >/dev/null; then
    jobs=$(squeue -h -o '%i' 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling leftover jobs: $(tr '\n' ' ' <<<"$jobs")"
        # shellcheck disable=SC2086 # word splitting of the id list is intended
        scancel $jobs 2>/dev/null || true
        for _ in {1..20}; do
            [[ -z $(squeue -h -t running,completing -o '%i' 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

status=0
for name in slurmd slurmctld munged; do
    pid=$(recorded "$name")
    [[ -n $pid ]] || continue
    if ! pid_alive "$name" "$pid"; then
        log "$name (pid $pid) is not running any more"
        continue
    fi
    kill -TERM "$pid"
    for _ in {1..50}; do # up to 10 s
        pid_alive "$name" "$pid" || break
        sleep 0.2
    done
    if pid_alive "$name" "$pid"; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" || status=1
    fi
    log "stopped $name (pid $pid)"
done

rm -f "$PID_FILE"
exit "$status"
