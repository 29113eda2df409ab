#!/bin/bash
# Stops the cluster of slurm-up.sh: cancels its jobs, stops its daemons (munged only if slurm-up
# started it; not with --keep-munge). Idempotent.
set -uo pipefail
DIR=${GRAFT_SLURM_DIR:-/tmp/graft-slurm}
export SLURM_CONF=$DIR/slurm.conf
is_running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $s != Z* ]]; }
stop() {  # TERM, then KILL after 10 s
  local p
  for p in "$@"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 100); do
    local left=0
    for p in "$@"; do is_running "$p" && left=1; done
    (( left )) || return 0
    sleep 0.1
  done
  for p in "$@"; do kill -9 "$p" 2>/dev/null; done
}
if [[ -s $DIR/run/slurmctld.pid ]] && is_running "$(cat "$DIR/run/slurmctld.pid")"; then
  jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  [[ -n ${jobs// } ]] && scancel $jobs
  for _ in $(seq 100); do [[ -z $(squeue -h -t R,CG -o %i 2>/dev/null) ]] && break; sleep 0.2; done
fi
pids=()
for f in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid"; do
  [[ -s $f ]] && is_running "$(cat "$f")" && pids+=("$(cat "$f")")
done
((${#pids[@]})) && stop "${pids[@]}"
if [[ " $* " != *" --keep-munge "* && -e $DIR/run/munged.ours ]]; then
  [[ -s /run/munge/munged.pid ]] && stop "$(cat /run/munge/munged.pid)"
  rm -f "$DIR/run/munged.ours"
fi
echo "slurm-down: stopped"
