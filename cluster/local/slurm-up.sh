#!/bin/bash
# Starts a throw-away Slurm cluster on this machine for graft's tests: munged, slurmctld and NODES
# slurmd daemons n1..nN, all on 127.0.0.1 (one port each). Each slurmd runs in its own UTS
# namespace so that MPI sees distinct host names (with one shared host name Open MPI's shared-memory
# segments of different "nodes" collide). Idempotent; needs root and the Debian packages slurmctld,
# slurmd, slurm-client, slurm-wlm-basic-plugins and munge. Prints the env file to source.
# Env: GRAFT_SLURM_DIR (/tmp/graft-slurm), NODES (2), CPUS per node (nproc).
set -euo pipefail
DIR=${GRAFT_SLURM_DIR:-/tmp/graft-slurm}
NODES=${NODES:-2}
CPUS=${CPUS:-$(nproc)}
[[ $(id -u) == 0 ]] || { echo "slurm-up: needs root" >&2; exit 1; }
for tool in slurmctld slurmd sbatch munged; do
  command -v "$tool" >/dev/null || { echo "slurm-up: $tool missing (apt-get install slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge)" >&2; exit 1; }
done
mkdir -p "$DIR"/{state,log,run}
is_running() { [[ -s $1 ]] && local s && s=$(ps -o stat= -p "$(cat "$1")" 2>/dev/null) && [[ $s != Z* ]]; }

# One munged serves every daemon (its unix socket is shared).
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  [[ -s /etc/munge/munge.key ]] || mungekey -c -k /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$DIR/run/munged.ours"
  for _ in $(seq 100); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.05; done
fi

{
  echo "ClusterName=graftlab"
  echo "SlurmctldHost=$(hostname -s)(127.0.0.1)"
  echo "SlurmUser=root"
  echo "SlurmdUser=root"
  echo "AuthType=auth/munge"
  echo "CredType=cred/munge"
  # A requeued job may start again only after cred_expire (default 120 s): keep it short.
  echo "AuthInfo=cred_expire=10"
  echo "SlurmctldPort=6817"
  echo "StateSaveLocation=$DIR/state"
  echo "SlurmdSpoolDir=$DIR/spool/%n"
  # The pmix plugin creates its directories under TmpFS; several slurmd need one each.
  echo "TmpFS=$DIR/tmp/%n"
  echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
  echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
  echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
  echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_Core"
  echo "SlurmdParameters=config_overrides"
  echo "SchedulerType=sched/backfill"
  echo "SchedulerParameters=bf_interval=2,sched_interval=2"
  echo "MpiDefault=pmix"
  echo "ReturnToService=2"
  echo "KillWait=10"
  echo "MinJobAge=600"
  echo "MailProg=/bin/true"
  echo "JobAcctGatherType=jobacct_gather/none"
  echo "AccountingStorageType=accounting_storage/none"
  echo "JobCompType=jobcomp/none"
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=n$i NodeHostname=n$i NodeAddr=127.0.0.1 Port=$((17100 + i)) CPUs=$CPUS RealMemory=4000 State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
} > "$DIR/slurm.conf.new"
if ! cmp -s "$DIR/slurm.conf.new" "$DIR/slurm.conf" && is_running "$DIR/run/slurmctld.pid"; then
  "$(dirname "$0")/slurm-down.sh" --keep-munge >/dev/null
fi
mv "$DIR/slurm.conf.new" "$DIR/slurm.conf"
export SLURM_CONF=$DIR/slurm.conf
cat > "$DIR/env.sh" <<ENV
export SLURM_CONF=$DIR/slurm.conf
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ENV

is_running "$DIR/run/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
for _ in $(seq 50); do is_running "$DIR/run/slurmctld.pid" && break; sleep 0.1; done
is_running "$DIR/run/slurmctld.pid" ||
  { echo "slurm-up: slurmctld did not start (port 6817 taken by another cluster?); see $DIR/log" >&2; exit 1; }
for i in $(seq 1 "$NODES"); do
  mkdir -p "$DIR/spool/n$i" "$DIR/tmp/n$i"
  is_running "$DIR/run/slurmd-n$i.pid" || unshare --uts sh -c "hostname n$i && exec slurmd -f '$SLURM_CONF' -N n$i"
done
for _ in $(seq 300); do
  up=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)/' | wc -l)
  (( up >= NODES )) && break
  sleep 0.1
done
(( up >= NODES )) || { echo "slurm-up: nodes did not come up; see $DIR/log" >&2; exit 1; }
echo "$DIR/env.sh"
