#!/usr/bin/env bash
# Print the tails of the local SLURM/munge daemon logs and the cluster state.
# Used by run.sh on failure; handy by hand too: ci/slurm/logs.sh [LINES]
set -uo pipefail # no -e: print as much as possible even if parts are missing

SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}
LINES=${1:-40}

section() { printf '\n===== %s =====\n' "$*"; }

section "recorded daemons ($SLURM_LOCAL_DIR/pids)"
cat "$SLURM_LOCAL_DIR/pids" 2>/dev/null || echo "(none)"

for f in "$SLURM_LOCAL_DIR/log/slurmctld.log" "$SLURM_LOCAL_DIR/log/slurmd.log" \
    /var/log/munge/munged.log; do
    section "tail -n $LINES $f"
    tail -n "$LINES" "$f" 2>/dev/null || echo "(missing)"
done

if command -v sinfo >/dev/null; then
    section "sinfo -N -l"
    timeout 10 sinfo -N -l 2>&1
    section "squeue --states=all"
    timeout 10 squeue --states=all -o '%.8i %.9P %.40j %.8u %.10T %.10M %R %k' 2>&1
fi
