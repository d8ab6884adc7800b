#!/usr/bin/env bash
# Zero-downtime upgrade of a machine set up by cloudvps_setup.sh, whatever its role: see usage()
# (release.sh --help). The steps are functions of deploy_lib.sh.
#
# Gunicorn without a gap: nginx connects to run/upstream.sock, a symlink. `gunicorn-next` starts on
# the new code, the link is renamed onto its socket, `gunicorn` restarts on the new code once the
# requests already sent to it are done (graceful TERM), the link comes back, gunicorn-next stops.
# A HUP to gunicorn would not do: its master has the old code (and venv) imported.
# shellcheck disable=SC2310 # functions called in conditions check each of their steps themselves
set -euo pipefail
shopt -s inherit_errexit
# Started with INT or TERM ignored (a background job of a script, nohup, some CI runners): bash
# cannot trap a signal ignored on entry, and the rollback on Ctrl-C below would never run. Start
# again, once, with both at their default.
if [ -z "${SC_SIGNALS_RESET:-}" ] && trap -p INT TERM | grep -q "^trap -- '' "; then
	SC_SIGNALS_RESET=1 exec env --default-signal=INT,TERM "$BASH" "$0" "$@"
fi
unset SC_SIGNALS_RESET
umask 022
for var in "${!SCRIPTORIUM_@}" SC_HOME SC_VENV; do unset "$var"; done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=scripts/deploy_lib.sh
. "$HERE/deploy_lib.sh"

usage() {
	cat <<'EOF'
usage: release.sh [options] REF          build REF of the source checkout and switch to it
       release.sh [options] --rollback   back to the newest good release before `current`
       release.sh [options] --restart    fresh processes on `current` (after editing
                                         shared/scriptorium.env or adding to shared/models:
                                         each program reads the file as it starts; a port
                                         or path supervisord itself took needs a restart of
                                         supervisord, and the script says so)

Run as root on a machine set up by scripts/cloudvps_setup.sh (any --role).

options:
  --prefix P          the installation (default: the one this script is a release of,
                      else /srv/scriptorium)
  --ready-timeout S   seconds the switched-to release has to become ready (180)
  --keep N            good releases kept (5); of the failed ones, the newest 2 are kept
  --drain-seconds S   how long both gunicorns take requests while nginx's link moves (2)
  --restart-tunnel    also apply changed definitions of the tunnels (spiped, spiped-redis,
                      spiped-redis-client): restarting one drops every connection through it
                      (the front end's requests, worker hosts' Redis). Without it such a
                      change is left pending, with a warning
  -h, --help          this text

REF: builds releases/<id> (the venv is reused when requirements.txt did not change), runs
`python -m model smoke` in it, points `current` at it, then on an API host (role all or api)
moves gunicorn over without refusing a request, and on every host warm-restarts the worker.
Ready: this host's worker has its models loaded (its heartbeat in Redis) and, on an API host,
/readyz answers ready. Not ready within --ready-timeout, the worker or gunicorn given up by
supervisord (FATAL), or any step failing: the previous release is switched back at once, the
new one marked FAILED, exit status 3. Interrupted (Ctrl-C, TERM): the same switch back to
the release that was running, exit status 130 (143 for TERM).
EOF
}

# Run from <prefix>/releases/<id>/scripts, the prefix is the one this release belongs to.
PREFIX=/srv/scriptorium
if [ "$(basename "$(dirname "$(dirname "$HERE")")")" = releases ]; then
	PREFIX=$(dirname "$(dirname "$(dirname "$HERE")")")
fi
READY_TIMEOUT=180
DRAIN_S=2
KEEP_ARG=""
MODE=release
REF=""
RESTART_TUNNEL=0
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) PREFIX=${2:?--prefix needs a directory} && shift ;;
	--ready-timeout) READY_TIMEOUT=${2:?--ready-timeout needs seconds} && shift ;;
	--keep) KEEP_ARG=${2:?--keep needs a number} && shift ;;
	--drain-seconds) DRAIN_S=${2:?--drain-seconds needs seconds} && shift ;;
	--rollback) MODE=rollback ;;
	--restart) MODE=restart ;;
	--restart-tunnel) RESTART_TUNNEL=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	-*)
		usage >&2
		die "unknown option $1"
		;;
	*) REF=$1 ;;
	esac
	shift
done
[[ $READY_TIMEOUT =~ ^[0-9]+$ ]] || die "--ready-timeout: seconds, not $READY_TIMEOUT"
[[ $DRAIN_S =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--drain-seconds: seconds, not $DRAIN_S"
[[ $KEEP_ARG =~ ^([1-9][0-9]*)?$ ]] || die "--keep: a number of releases (1 or more)"
uid=$(id -u)
[ "$uid" -eq 0 ] || die "run as root"
if [ $MODE = release ] && [ -z "$REF" ]; then
	usage >&2
	die "which release? REF, --rollback or --restart"
fi
PREFIX=$(cd "$PREFIX" && pwd)
load_deploy_env
KEEP=${KEEP_ARG:-$KEEP}
RUN="$PREFIX/shared/var/run"
exec 9>"$PREFIX/shared/release.lock"
flock -n 9 || die "another release is running"

# What to undo when the script ends early (a signal, an unexpected error): PHASE says how far it
# got. build/smoke: nothing runs the new release yet; activate: switch back to $prev.
PHASE=start
SIGNAL=""
prev=$(current_id)
new=""
NGINX_LOADED=$(conf_sum "$RUN/nginx.conf")
before_ids=""

# on_exit: runs last, however the script ends (the EXIT trap). A trap runs with the redirections
# of the command it interrupted (`ctl start worker >/dev/null`): fds 7 and 8 keep the script's own.
exec 7>&1 8>&2
# shellcheck disable=SC2317 # (only ever invoked by the trap)
on_exit() {
	local rc=$? id
	case $PHASE in start | finished) return 0 ;; esac
	exec 1>&7 2>&8
	trap '' INT TERM # what follows must finish; its commands inherit the ignored signals
	log ""
	log "== ${SIGNAL:+SIG$SIGNAL: }stopped during $PHASE"
	case $PHASE in
	build)
		rm -rf "$PREFIX"/releases/.building-*
		for id in $(release_ids); do
			grep -qx -- "$id" <<<"$before_ids" || mark_failed "$id" "interrupted while built"
		done
		log "  nothing was switched; still running $prev"
		;;
	smoke)
		mark_failed "$new" "interrupted during its smoke checks"
		in_release "$prev" -m model init >/dev/null || log "  warning: init of $prev failed"
		log "  nothing was switched; still running $prev"
		;;
	activate | switch)
		[ -z "$new" ] || mark_failed "$new" "interrupted while it was being switched to"
		if [ "$TOUCHED" -eq 0 ]; then
			log "  nothing was switched; still running $prev"
		else
			log "== back to $prev"
			if activate "$prev"; then
				log "running $prev again"
			else
				log "error: $prev did not become ready either (docs/operations.md: When /readyz fails)"
				rc=1
			fi
		fi
		;;
	prune) log "  $new is live; pruning was cut short (the next release prunes)" ;;
	*) log "  (docs/operations.md: When /readyz fails)" ;;
	esac
	exit "$rc"
}
trap on_exit EXIT
trap 'SIGNAL=INT; exit 130' INT
trap 'SIGNAL=TERM; exit 143' TERM

started=$SECONDS
if [ $MODE != release ]; then
	target=$prev
	if [ $MODE = rollback ]; then
		target=$(previous_of "$prev") || die "no earlier release to go back to"
	fi
	log "== switching $prev -> $target"
	PHASE=switch
	if activate "$target"; then
		PHASE=finished
		warn_supervisord_stale
		log "running $target (switched in $((SECONDS - started)) s)"
		exit 0
	fi
	PHASE=finished
	die "$target did not become ready (docs/operations.md: When /readyz fails)"
fi

log "== building $REF from $SOURCE"
before_ids=$(release_ids)
PHASE=build
new=$(build_release "$REF")
PHASE=smoke
commit=$(sed -n 's/^commit=//p' "$PREFIX/releases/$new/RELEASE")
log "  releases/$new ($commit)"
log "== smoke checks"
if ! in_release "$new" -m model init >/dev/null || ! in_release "$new" -m model smoke; then
	mark_failed "$new" "failed its smoke checks"
	in_release "$prev" -m model init >/dev/null # the running release's nginx.conf again
	PHASE=finished
	die "releases/$new failed its smoke checks; nothing was switched"
fi
log "== activating $new (was $prev)"
PHASE=activate
if activate "$new"; then
	PHASE=prune
	log "== pruning (keeping $KEEP good releases)"
	prune
	PHASE=finished
	warn_supervisord_stale
	log "released $new in $((SECONDS - started)) s"
	exit 0
fi
PHASE=rollback
trap '' INT TERM # the rollback must finish
mark_failed "$new" "did not become ready"
log "== $new is not ready: rolling back to $prev"
if ! activate "$prev"; then
	PHASE=finished
	die "rollback to $prev did not become ready either (docs/operations.md: When /readyz fails)"
fi
PHASE=finished
log "rolled back to $prev in $((SECONDS - started)) s; $new is marked FAILED"
exit 3
