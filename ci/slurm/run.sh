#!/usr/bin/env bash
# CI stage: run a Snakemake workflow through the official SLURM executor plugin
# on a real (throwaway, one-node) SLURM cluster and check that every job ran as
# a SLURM job.
#
# Usage: ci/slurm/run.sh [options] [CONFIGFILE] [-- TARGETS...]
#   -d, --directory DIR     workflow directory; Snakemake runs there and writes
#                           .snakemake/ there (default: the repository root)
#   -s, --snakefile FILE    Snakefile (default: Snakemake's lookup inside DIR)
#   -p, --profile DIR       profile (default: <repo>/profiles/slurm-ci)
#   -b, --budget SECS       time limit of the whole stage (default: 280)
#   --provenance GLOB       after the run, require that every JSON file matching
#                           GLOB (relative to DIR, ** allowed) has a non-empty
#                           SLURM job id under --provenance-key
#   --provenance-key KEY    key, dotted for nesting (default: slurm_job_id)
#   --allow-local RULES     comma-separated rules allowed to run on the submit
#                           host instead of SLURM (localrules; default: all)
#   --keep-running          do not stop SLURM at the end (for local debugging)
#   CONFIGFILE              passed to Snakemake as --configfile
#   TARGETS                 Snakemake targets (default: the workflow's first rule);
#                           extra Snakemake options may go here too (--forceall)
#
# Steps: start SLURM (start.sh) -> snakemake under `timeout -s INT` -> check the
# SLURM jobs of this run (snakemake log + squeue) -> optional provenance check.
# On failure it prints the daemon logs and failed jobs' SLURM logs and exits
# non-zero. The SLURM daemons it started are always stopped (EXIT trap).
# Environment: SNAKEMAKE (default <repo>/.venv/bin/snakemake), SLURM_LOCAL_DIR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}
export SLURM_LOCAL_DIR
SNAKEMAKE=${SNAKEMAKE:-$REPO/.venv/bin/snakemake}

workdir=$REPO
snakefile=""
profile=$REPO/profiles/slurm-ci
budget=280
prov_glob=""
prov_key=slurm_job_id
keep_running=0
allow_local=all
configfile=""
targets=()

log() { printf '[slurm-ci] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
abspath() { (cd "$(dirname "$1")" && printf '%s/%s\n' "$(pwd)" "$(basename "$1")"); }
# Starting/stopping SLURM needs root; Snakemake and the jobs run as the caller.
# On CI runners (non-root, passwordless sudo) the daemon scripts go via sudo.
as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo -n env SLURM_LOCAL_DIR="$SLURM_LOCAL_DIR" \
            ${SLURM_LOCAL_GPUS:+SLURM_LOCAL_GPUS="$SLURM_LOCAL_GPUS"} \
            ${SLURM_LOCAL_PARTITION:+SLURM_LOCAL_PARTITION="$SLURM_LOCAL_PARTITION"} "$@"
    else
        log "need root or passwordless sudo for: $*"
        return 1
    fi
}

while (($#)); do
    case $1 in
    -d | --directory) workdir=${2:?}; shift 2 ;;
    -s | --snakefile) snakefile=${2:?}; shift 2 ;;
    -p | --profile) profile=${2:?}; shift 2 ;;
    -b | --budget) budget=${2:?}; shift 2 ;;
    --provenance) prov_glob=${2:?}; shift 2 ;;
    --provenance-key) prov_key=${2:?}; shift 2 ;;
    --allow-local) allow_local=${2?}; shift 2 ;;
    --keep-running) keep_running=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    --) shift; targets=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        [[ -z $configfile ]] || die "only one CONFIGFILE allowed (targets go after --)"
        configfile=$1; shift ;;
    esac
done

[[ -d $workdir ]] || die "no such directory: $workdir"
workdir=$(cd "$workdir" && pwd)
[[ -d $profile || -f $profile ]] || die "no such profile: $profile"
profile=$(abspath "$profile")
[[ -z $configfile ]] || { [[ -f $configfile ]] || die "no such config file: $configfile"; configfile=$(abspath "$configfile"); }
[[ -z $snakefile ]] || { [[ -f $snakefile ]] || die "no such Snakefile: $snakefile"; snakefile=$(abspath "$snakefile"); }
[[ -x $SNAKEMAKE ]] || die "snakemake not found at $SNAKEMAKE (set SNAKEMAKE=...)"
PYTHON=$(dirname "$SNAKEMAKE")/python
[[ -x $PYTHON ]] || PYTHON=python3

deadline=$((SECONDS + budget))
out_dir=$workdir/.snakemake/ci-slurm
mkdir -p "$out_dir"
sm_log=$out_dir/snakemake.log

# --- start SLURM; stop what this run started on exit ---------------------------
pids_before=$(cat "$SLURM_LOCAL_DIR/pids" 2>/dev/null || true)
cleanup() {
    local rc=$?
    local pids_now
    pids_now=$(cat "$SLURM_LOCAL_DIR/pids" 2>/dev/null || true)
    if ((keep_running)); then
        log "leaving SLURM running (--keep-running); stop it with ci/slurm/stop.sh"
    elif [[ -n $pids_now && $pids_now != "$pids_before" ]]; then
        # this run started (some of) the daemons: stop them
        as_root timeout 60 "$HERE/stop.sh" || log "stop.sh failed"
    elif [[ -n $pids_before ]]; then
        log "SLURM was already running before this stage; leaving it running"
    fi
    exit "$rc"
}
# On SIGINT/SIGTERM (Ctrl-C, CI cancel) pass SIGINT on to Snakemake, which
# then scancels its SLURM jobs, and wait for it (bounded) before stopping SLURM.
# (`timeout` runs Snakemake in its own process group, so a Ctrl-C does not
# reach it directly.)
sm_pid_file=$out_dir/timeout.pid
rm -f "$sm_pid_file"
on_signal() {
    local pid
    pid=$(cat "$sm_pid_file" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        log "interrupted: sending SIGINT to snakemake so it cancels its SLURM jobs"
        kill -INT "$pid" 2>/dev/null || true
        for _ in {1..60}; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
    fi
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

fail() {
    log "FAILED: $*"
    as_root "$HERE/logs.sh" 60 >&2 || true
    # SLURM logs of failed jobs are kept by the plugin (successful ones deleted)
    local f
    while IFS= read -r -d '' f; do
        printf '\n===== tail -n 40 %s =====\n' "$f" >&2
        tail -n 40 "$f" >&2
    done < <(find "$workdir/.snakemake/slurm_logs" -name '*.log' -newer "$out_dir/.start" -print0 2>/dev/null)
    exit 1
}

touch "$out_dir/.start"
t0=$SECONDS
as_root timeout 120 "$HERE/start.sh" || fail "could not start SLURM (start.sh rc=$?)"
log "SLURM up in $((SECONDS - t0)) s"

# --- run snakemake ---------------------------------------------------------------
# Keep ~40 s of the budget for Snakemake's shutdown, the checks and stop.sh.
sm_secs=$((deadline - SECONDS - 40))
((sm_secs > 30)) || fail "budget of $budget s too small"
cmd=("$SNAKEMAKE" --profile "$profile")
[[ -n $snakefile ]] && cmd+=(--snakefile "$snakefile")
[[ -n $configfile ]] && cmd+=(--configfile "$configfile")
((${#targets[@]})) && cmd+=("${targets[@]}")
log "in $workdir: timeout -s INT $sm_secs ${cmd[*]}"
t0=$SECONDS
# SIGINT, not SIGTERM: a Snakemake stuck waiting on SLURM ignores SIGTERM but
# stops on SIGINT (and then scancels its jobs). -k: SIGKILL 20 s later.
# Runs in the background so that the signal traps above fire during `wait`;
# the subshell records its PID and then becomes `timeout` (exec).
(cd "$workdir" && echo "$BASHPID" >"$sm_pid_file" &&
    exec timeout -s INT -k 20 "$sm_secs" "${cmd[@]}") 2>&1 | tee "$sm_log" &
wait $! && rc=0 || rc=$? # pipefail: Snakemake's status, unless tee failed
rm -f "$sm_pid_file"
log "snakemake exited with $rc after $((SECONDS - t0)) s (output: $sm_log)"
((rc != 124 && rc != 137)) || fail "snakemake did not finish within $sm_secs s"
((rc == 0)) || fail "snakemake failed (exit $rc)"

# --- check: every non-local job ran as a SLURM job that COMPLETED ----------------
# Parses the run's Snakemake output: "rule R:" / "localrule R:" blocks with
# "jobid: N", "Job N has been submitted with SLURM jobid M" (plugin), and
# "Finished jobid: N (Rule: R)"; then asks squeue (finished jobs stay listed for
# MinJobAge=300 s) for the state of each SLURM job of this run.
check_slurm_jobs() {
    local squeue_out
    squeue_out=$(squeue --states=all -h -o '%i|%j|%k|%T') || return 1
    SQUEUE_OUT=$squeue_out "$PYTHON" - "$sm_log" "$out_dir/slurm-jobs.tsv" "$allow_local" <<'EOF'
import os, re, sys

log_path, tsv_path = sys.argv[1], sys.argv[2]
allow_local = {r.strip() for r in sys.argv[3].split(",") if r.strip()}
text = open(log_path, errors="replace").read()
rule_of, local, slurm_id, finished = {}, set(), {}, []
cur = None
for line in text.splitlines():
    m = re.match(r"^(local)?(?:rule|checkpoint) (\S+):$", line)
    if m:
        cur = (m.group(2), bool(m.group(1)))
        continue
    m = re.match(r"^\s+jobid: (\d+)$", line)
    if m and cur:
        rule_of[m.group(1)] = cur[0]
        if cur[1]:
            local.add(m.group(1))
        cur = None
        continue
    m = re.search(r"Job (\d+) has been submitted with SLURM jobid (\d+)", line)
    if m:
        slurm_id[m.group(1)] = m.group(2)  # a retry overwrites: last one counts
        continue
    m = re.match(r"^Finished jobid: (\d+) \(Rule: (\S+)\)", line)
    if m:
        finished.append((m.group(1), m.group(2)))
run_ids = set(re.findall(r"SLURM run ID: (\S+)", text))

state = {}
for row in os.environ["SQUEUE_OUT"].splitlines():
    jid, name, comment, st = (row.split("|") + ["", "", "", ""])[:4]
    if name in run_ids:
        state[jid] = (st, comment)

errors, rows = [], []
for sm_id, rule in finished:
    if sm_id in local:
        rows.append((rule, sm_id, "-", "local rule (ran on the submit host)"))
        if rule not in allow_local:
            errors.append(f"job {sm_id} (rule {rule}) ran locally, not in SLURM "
                          "(allow it with --allow-local if it is a localrule)")
        continue
    sid = slurm_id.get(sm_id)
    if sid is None:
        errors.append(f"job {sm_id} (rule {rule}) finished but was never submitted to SLURM")
        rows.append((rule, sm_id, "NONE", "NOT A SLURM JOB"))
        continue
    st, comment = state.get(sid, ("(not in squeue any more)", ""))
    if st not in ("COMPLETED", "(not in squeue any more)"):
        errors.append(f"SLURM job {sid} (rule {rule}) is {st}, expected COMPLETED")
    if comment and not comment.startswith(f"rule_{rule}"):
        errors.append(f"SLURM job {sid} has comment {comment!r}, expected rule_{rule}*")
    rows.append((rule, sm_id, sid, st + (f"  [{comment}]" if comment else "")))

if not run_ids:
    errors.append("Snakemake did not use the slurm executor (no 'SLURM run ID' in its log)")
elif not any(r[2] not in ("-", "NONE") for r in rows):
    # A run that submitted nothing proves nothing about SLURM.
    errors.append("no job of this run was submitted to SLURM (outputs already up "
                  "to date? remove them, or pass `-- --forceall [TARGETS]`)")

w = max([len(r[0]) for r in rows] + [4])
print(f"\nSLURM run ID(s): {', '.join(sorted(run_ids)) or '-'}")
print(f"{'rule':<{w}}  {'snakemake':>9}  {'slurm_job':>9}  state")
for r in rows:
    print(f"{r[0]:<{w}}  {r[1]:>9}  {r[2]:>9}  {r[3]}")
with open(tsv_path, "w") as f:
    f.write("rule\tsnakemake_jobid\tslurm_job_id\tstate\n")
    f.writelines("\t".join(r) + "\n" for r in rows)
for e in errors:
    print("ERROR:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}

# --- check: provenance files carry a SLURM job id ---------------------------------
# check_provenance GLOB KEY: every JSON file matching GLOB (relative to the
# workflow directory, ** allowed) must have a non-empty value under KEY
# ("a.b" looks up nested keys). Fails if no file matches. Independent of the
# check above, so it can also be used on its own.
check_provenance() {
    (cd "$workdir" && "$PYTHON" - "$1" "$2" "$out_dir/slurm-jobs.tsv") <<'EOF'
import csv, glob, json, sys

pattern, key, tsv = sys.argv[1:4]
files = sorted(glob.glob(pattern, recursive=True))
try:  # SLURM job ids of this run, from check_slurm_jobs (for information)
    ours = {r["slurm_job_id"] for r in csv.DictReader(open(tsv), delimiter="\t")}
except OSError:
    ours = set()
if not files:
    sys.exit(f"ERROR: no provenance file matches {pattern!r}")
bad = 0
for path in files:
    why = "null"
    try:
        val = json.load(open(path))
        for part in key.split("."):
            val = val[part]
    except (OSError, ValueError, KeyError, TypeError) as e:
        val, why = None, f"{type(e).__name__}: {e}"
    if val in (None, "") or str(val).strip() == "":
        bad += 1
        print(f"MISSING  {path}: no non-empty {key!r} ({why if val is None else 'empty'})")
        continue
    note = "" if not ours or str(val) in ours else "  (not a job of this run)"
    print(f"ok       {path}: {key}={val}{note}")
print(f"{len(files) - bad}/{len(files)} provenance files carry {key!r}")
sys.exit(1 if bad else 0)
EOF
}

log "checking the SLURM jobs of this run"
check_slurm_jobs || fail "SLURM job check failed"
if [[ -n $prov_glob ]]; then
    log "checking provenance files $prov_glob for '$prov_key'"
    check_provenance "$prov_glob" "$prov_key" || fail "provenance check failed"
fi
log "OK: all jobs ran under SLURM (table: $out_dir/slurm-jobs.tsv); stage took $SECONDS s"
