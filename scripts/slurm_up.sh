#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests marked `slurm` (tests/test_slurm_real.py) and for
# trying `hydra/launcher=slurm` as a cluster user would. Debian/Ubuntu, run as root, no systemd needed.
#
#   scripts/slurm_up.sh        # seconds when it is up, about 2 minutes fresh (apt-get install included)
#
# munged; MariaDB + slurmdbd (accounting: submitit reads job states from sacct, without it a cancelled
# task never counts as finished); slurmctld; slurmd. One node (this host, all its CPUs), one partition
# `debug` (default). Idempotent: checks what runs, installs, configures and starts only what is missing.
# Prints one line. Exit 0: up, `srun` runs a step, sacct answers. Exit 3: it cannot run here (not root,
# no apt-get): the tests skip. Exit 1: it should have worked and did not (the line says where to look).
# Stop it: kill $(cat /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/munge/munged.pid); mariadb-admin shutdown
set -u
say() { echo "slurm_up: $*"; }
die() { echo "slurm_up: $*" >&2; exit 1; }
cannot() { echo "slurm_up: cannot run here: $*" >&2; exit 3; }
started=$SECONDS
[ "$(id -u)" = 0 ] || cannot "needs root (it installs packages and starts daemons)"
LOGD=/var/log/slurm
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # $1 a pid file: stop that daemon only, by its pid
  if alive "$1"; then local p; p=$(cat "$1"); kill "$p"; for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done; fi
  rm -f "$1"
}

# 1. packages
missing=0
for c in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd-safe; do command -v $c >/dev/null || missing=1; done
if [ $missing = 1 ]; then
  command -v apt-get >/dev/null || cannot "no apt-get to install slurm-wlm munge slurmdbd mariadb-server"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server; } >/tmp/slurm_up-apt.log 2>&1 \
    || die "apt-get install slurm-wlm munge slurmdbd mariadb-server failed (see /tmp/slurm_up-apt.log)"
fi

# 2. munge: a key, then the daemon (as the munge user, as Debian's unit runs it)
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 || die "mungekey failed"
  else create-munge-key -f >/dev/null 2>&1 || die "create-munge-key failed"; fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
  # a pid file or socket left by a munged that is gone stops a new one
  if [ -f /run/munge/munged.pid ] && ! kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then rm -f /run/munge/munged.pid /run/munge/munge.socket.2*; fi
  runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 || /usr/sbin/munged --force >/dev/null 2>&1 || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 20); do munge_ok && break; sleep 0.25; done
  munge_ok || die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
fi

# 3. accounting: MariaDB (kept alive by mariadbd-safe) and slurmdbd
db_ok() { mariadb-admin --protocol=socket ping >/dev/null 2>&1; }
if ! db_ok; then
  mkdir -p /run/mysqld; chown mysql:root /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/tmp/slurm_up-db.log 2>&1 || die "mariadb-install-db failed (see /tmp/slurm_up-db.log)"
  nohup mariadbd-safe --user=mysql >>/var/log/slurm_up-mariadb.out 2>&1 </dev/null &
  for _ in $(seq 60); do db_ok && break; sleep 0.5; done
  db_ok || die "MariaDB did not start (see /var/log/slurm_up-mariadb.out)"
fi
DBPASS=slurmdb-local  # the database listens on this machine's socket only
mariadb --protocol=socket -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
  || die "could not create the accounting database"
HOST=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd $LOGD
DBD="# written by sweeper's scripts/slurm_up.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOGD/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db"
if [ "$(cat /etc/slurm/slurmdbd.conf 2>/dev/null)" != "$DBD" ]; then
  printf '%s\n' "$DBD" > /etc/slurm/slurmdbd.conf; stop /run/slurmdbd.pid
fi
chown root:root /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
if ! alive /run/slurmdbd.pid; then
  rm -f /run/slurmdbd.pid
  slurmdbd >>$LOGD/slurmdbd.out 2>&1 || die "slurmdbd did not start: $(tail -n 3 $LOGD/slurmdbd.log 2>/dev/null | tr '\n' ' ')"
fi

# 4. slurm.conf for this host (rewritten only when it differs; slurmctld and slurmd restart then)
CPUS=$(nproc --all)
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
PER_CPU=$(( MEM_MB / CPUS < 4000 ? MEM_MB / CPUS : 4000 ))
# 22.05: CgroupPlugin=disabled stops slurmd, so no cgroups at all (linuxproc, task/none, no cgroup.conf)
CONF="# written by sweeper's scripts/slurm_up.sh: one node, this host
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it every task holds the node's whole memory and array tasks run one at a time
DefMemPerCPU=$PER_CPU
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
Waittime=0
SchedulerParameters=sched_interval=2
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$CONF" ]; then
  printf '%s\n' "$CONF" > /etc/slurm/slurm.conf; changed=1
fi

# 5. the cluster in the accounting database, then the daemons
for _ in $(seq 40); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd is not answering (see $LOGD/slurmdbd.log)"
sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx local || sacctmgr -i add cluster local >/dev/null 2>&1
if [ $changed = 1 ]; then stop /run/slurmd.pid; stop /run/slurmctld.pid; fi
if ! alive /run/slurmctld.pid; then
  rm -f /run/slurmctld.pid
  slurmctld >>$LOGD/slurmctld.out 2>&1 || die "slurmctld did not start: $(tail -n 3 $LOGD/slurmctld.log 2>/dev/null | tr '\n' ' ')"
fi
for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld is not answering (see $LOGD/slurmctld.log)"
if ! alive /run/slurmd.pid; then
  rm -f /run/slurmd.pid
  slurmd >>$LOGD/slurmd.out 2>&1 || die "slurmd did not start: $(tail -n 3 $LOGD/slurmd.log 2>/dev/null | tr '\n' ' ')"
fi

# 6. the node up (one left down or drained earlier is resumed), a step runs, sacct answers
state=
for _ in $(seq 60); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1)
  case "$state" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*|fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 ;;
  esac
  sleep 0.5
done
case "$state" in idle*|mixed*|allocated*|completing*) ;; *) die "node $HOST is '$state' (see $LOGD/slurmd.log, sinfo -R)";; esac
if [ "${state%%[*~#$@+]}" = idle ]; then
  out=$(timeout 90 srun -p debug -N1 -n1 -t 1 hostname 2>&1) || die "srun hostname failed: $out"
else out="(node busy: no srun)"; fi
sacct -n -X -S now-1hours >/dev/null 2>&1 || die "sacct fails: $(sacct -n -X 2>&1 | head -n 1)"
say "up in $((SECONDS - started)) s: node $HOST ($CPUS CPUs) $state, partition debug, srun ran on $out, sacct answers"
