#!/usr/bin/env bash
# Job control on a node, the same for every runner (local subprocess, SSH, kube exec):
# the runner pipes this script to `bash -s -- VERB DIR`. A phase directory holds
# cmd.sh, env, and what the detached job writes: pid, exit_code, log.
#
#   start DIR   claim DIR once (mkdir is atomic) and start the job detached, in its own
#               session, so it outlives the connection and the worker that started it
#   status DIR  one line: pending | running PID | exited CODE | killed
#   kill DIR    SIGTERM the job's whole process group, SIGKILL after 5 s
set -u
verb=$1
dir=$2

case "$verb" in
start)
  mkdir "$dir/claim" 2>/dev/null || exit 0
  cat >"$dir/wrapper.sh" <<'WRAP'
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
echo $$ >pid.tmp && mv pid.tmp pid
(
  set -a
  . ./env
  set +a
  mkdir -p "$SKYLOOM_CWD" 2>/dev/null; cd "$SKYLOOM_CWD" 2>/dev/null || cd ~
  exec bash "$here/cmd.sh"
) >>log 2>&1 </dev/null
code=$?
echo $code >exit_code.tmp && mv exit_code.tmp exit_code
WRAP
  # setsid: own session and process group (pgid == pid), detached from ours.
  setsid bash "$dir/wrapper.sh" >/dev/null 2>&1 </dev/null &
  ;;
status)
  if [ -f "$dir/exit_code" ]; then
    echo "exited $(cat "$dir/exit_code")"
  elif [ -f "$dir/pid" ]; then
    pid=$(cat "$dir/pid")
    if kill -0 "$pid" 2>/dev/null; then echo "running $pid"; else
      # The wrapper may have just written exit_code between our two looks.
      if [ -f "$dir/exit_code" ]; then echo "exited $(cat "$dir/exit_code")"; else echo killed; fi
    fi
  elif [ -d "$dir/claim" ]; then
    echo starting
  else
    echo pending
  fi
  ;;
kill)
  # Claiming first means a start that races this kill will not launch the job.
  mkdir -p "$dir"
  if mkdir "$dir/claim" 2>/dev/null; then exit 0; fi
  for _ in 1 2 3 4 5 6 7 8 9 10; do [ -f "$dir/pid" ] && break; sleep 0.2; done
  [ -f "$dir/pid" ] || exit 0
  pid=$(cat "$dir/pid")
  kill -TERM -- "-$pid" 2>/dev/null || exit 0
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    kill -0 -- "-$pid" 2>/dev/null || exit 0
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null
  exit 0
  ;;
*)
  echo "nodelet: unknown verb $verb" >&2
  exit 64
  ;;
esac
