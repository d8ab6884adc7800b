#!/usr/bin/env bash
# Sets up Scriptorium on a bare Debian 12 VM, as root, in one run; a second run changes nothing
# (every step checks before it acts, and the summary says "no change").
#
#   scripts/cloudvps_setup.sh [--prefix /srv/scriptorium] [--user scriptorium]
#       [--http-host 127.0.0.1] [--http-port 5005] [--redis-port 6390]
#       [--spiped-bind 0.0.0.0] [--spiped-port 8025] [--source DIR] [--ref REF] [--start]
#
# Installs the Debian packages, an unprivileged service user, the layout described in
# scripts/deploy_lib.sh, the first release (REF of the git checkout SOURCE; default: HEAD of the
# checkout this script is in), the data dir with its redis password, the spiped key (0600, the
# service user's), the first admin API key (printed once) and a systemd unit that runs supervisord
# as the service user (supervisord runs redis, the worker, gunicorn, nginx and spiped). Without
# systemd (a container) the unit is only written under the prefix; --start then starts
# supervisord in the background. Upgrades: scripts/release.sh.
set -euo pipefail
umask 022
# The service's settings come from shared/scriptorium.env only, never from this shell.
for var in "${!SCRIPTORIUM_@}" SC_HOME SC_VENV; do unset "$var"; done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/deploy_lib.sh
. "$HERE/deploy_lib.sh"

PREFIX=/srv/scriptorium
SVC_USER=scriptorium
HTTP_HOST=127.0.0.1
HTTP_PORT=5005
REDIS_PORT=6390
SPIPED_BIND=0.0.0.0
SPIPED_PORT=8025
SOURCE=$(cd "$HERE/.." && pwd)
REF=HEAD
START=0
KEEP=5
PACKAGES=(redis-server nginx spiped python3-venv git ca-certificates curl)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) PREFIX=$2 && shift ;;
	--user) SVC_USER=$2 && shift ;;
	--http-host) HTTP_HOST=$2 && shift ;;
	--http-port) HTTP_PORT=$2 && shift ;;
	--redis-port) REDIS_PORT=$2 && shift ;;
	--spiped-bind) SPIPED_BIND=$2 && shift ;;
	--spiped-port) SPIPED_PORT=$2 && shift ;;
	--source) SOURCE=$(cd "$2" && pwd) && shift ;;
	--ref) REF=$2 && shift ;;
	--start) START=1 ;;
	-h | --help) usage && exit 0 ;;
	*) usage >&2 && die "unknown option $1" ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || die "run as root"
command -v apt-get >/dev/null || die "this is for Debian (apt-get not found)"
SYSTEMD=0
[ -d /run/systemd/system ] && SYSTEMD=1
ROOT="root:root"
SVC="$SVC_USER:$SVC_USER"

log "== Debian packages"
missing=()
for pkg in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
		missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	changed "installed ${missing[*]}"
else
	unchanged "${PACKAGES[*]}"
fi

log "== distro services (supervisord runs our own redis and nginx)"
if command -v systemctl >/dev/null; then
	for svc in redis-server nginx; do
		if systemctl is-enabled --quiet "$svc" 2>/dev/null ||
			{ [ $SYSTEMD -eq 1 ] && systemctl is-active --quiet "$svc"; }; then
			if [ $SYSTEMD -eq 1 ]; then systemctl disable --now --quiet "$svc"; else systemctl disable --quiet "$svc"; fi
			changed "disabled $svc.service"
		else
			unchanged "$svc.service disabled"
		fi
	done
else
	unchanged "no systemctl: nothing to disable"
fi

log "== service user"
if id -u "$SVC_USER" >/dev/null 2>&1; then
	unchanged "user $SVC_USER"
else
	useradd --system --user-group --no-create-home --home-dir "$PREFIX/shared/var" \
		--shell /usr/sbin/nologin "$SVC_USER"
	changed "created user $SVC_USER"
fi

log "== layout under $PREFIX"
before=$CHANGES
ensure_dir "$PREFIX" 755 "$ROOT"
for dir in releases shared bin shared/models shared/venvs shared/systemd; do
	ensure_dir "$PREFIX/$dir" 755 "$ROOT"
done
ensure_dir "$PREFIX/shared/cache" 700 "$ROOT"
ensure_dir "$PREFIX/shared/var" 750 "$SVC"
ensure_dir "$PREFIX/shared/keys" 700 "$SVC"
[ $CHANGES -ne "$before" ] || unchanged "directories, modes and owners"

put_file "$PREFIX/shared/scriptorium.env" 644 "$ROOT" <<EOF
# Scriptorium's settings on this machine: SCRIPTORIUM_<SECTION>__<KEY> overrides flask_config.yaml.
# Read by bin/scriptorium-env (so by supervisord and every program). No secrets here.
SC_HOME=$PREFIX/current
SC_VENV=$PREFIX/current/.venv
SCRIPTORIUM_DATA_DIR=$PREFIX/shared/var
SCRIPTORIUM_HTTP__HOST=$HTTP_HOST
SCRIPTORIUM_HTTP__PORT=$HTTP_PORT
SCRIPTORIUM_REDIS__PORT=$REDIS_PORT
SCRIPTORIUM_SPIPED__ENABLED=true
SCRIPTORIUM_SPIPED__LISTEN='[$SPIPED_BIND]:$SPIPED_PORT'
SCRIPTORIUM_SPIPED__KEY_FILE=$PREFIX/shared/keys/spiped.key
SCRIPTORIUM_MODELS__DIRS='["model/weights", "$PREFIX/shared/models"]'
EOF
SETTINGS_CHANGED=$PUT_CHANGED
put_file "$PREFIX/shared/deploy.env" 644 "$ROOT" <<EOF
# Read by scripts/release.sh.
SOURCE='$SOURCE'
SVC_USER='$SVC_USER'
KEEP=$KEEP
HTTP_URL='http://$HTTP_HOST:$HTTP_PORT'
EOF

put_file "$PREFIX/bin/scriptorium-env" 755 "$ROOT" <<EOF
#!/bin/bash
# scriptorium-env [--in DIR] CMD...: run CMD as $SVC_USER with shared/scriptorium.env only
# (a clean environment), in DIR (default: the current release).
set -euo pipefail
dir=$PREFIX/current
if [ "\${1:-}" = --in ]; then dir=\$2; shift 2; fi
cmd=(env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=$PREFIX/shared/var
	LANG=C.UTF-8 bash -c 'set -a; . "\$0"; set +a; cd "\$1"; shift; exec "\$@"'
	$PREFIX/shared/scriptorium.env "\$dir" "\$@")
[ "\$(id -un)" = $SVC_USER ] && exec "\${cmd[@]}"
[ "\$(id -u)" -eq 0 ] || { echo "run as root or $SVC_USER" >&2; exit 1; }
exec setpriv --reuid=$SVC_USER --regid=$SVC_USER --init-groups -- "\${cmd[@]}"
EOF
put_file "$PREFIX/bin/scriptorium" 755 "$ROOT" <<EOF
#!/bin/bash
# python -m model of the current release, as $SVC_USER: scriptorium keys list | smoke | ...
exec $PREFIX/bin/scriptorium-env $PREFIX/current/.venv/bin/python -m model "\$@"
EOF
put_file "$PREFIX/bin/scriptoriumctl" 755 "$ROOT" <<EOF
#!/bin/bash
# supervisorctl for the Scriptorium stack: scriptoriumctl status | restart worker | tail -f nginx
exec $PREFIX/bin/scriptorium ctl "\$@"
EOF
put_file "$PREFIX/bin/scriptorium-run" 755 "$ROOT" <<EOF
#!/bin/bash
# supervisord in the foreground with everything under it (what the systemd unit runs).
exec $PREFIX/bin/scriptorium-env $PREFIX/current/.venv/bin/python -m model stack
EOF

var="$PREFIX/shared/var"
# What `init` may create: compared by content, mode and owner (it rewrites some files as they were).
# (Before the first install none of them exist: find fails, which must not stop the script.)
state() {
	{ find "$var/secrets" "$PREFIX/shared/keys" "$var/run/nginx.conf" -type f \
		-printf '%p %m %u ' -exec md5sum {} \; 2>/dev/null || true; } | md5sum
}
before=$(state)

log "== first release"
if [ -L "$PREFIX/current" ]; then
	unchanged "release $(current_id) installed (upgrade with scripts/release.sh REF)"
else
	started=$SECONDS
	id=$(build_release "$REF")
	in_release "$id" -m model init >/dev/null
	in_release "$id" -m model smoke || die "release $id fails its smoke checks"
	switch_current "$id"
	changed "installed release $id from $SOURCE $REF in $((SECONDS - started)) s"
fi

log "== data dir, secrets"
as_service "$PREFIX/current/.venv/bin/python" -m model init >/dev/null
if [ "$before" = "$(state)" ]; then
	unchanged "data dir $var, redis password, spiped key"
else
	changed "initialised $var (redis password, spiped key $PREFIX/shared/keys/spiped.key)"
fi
if as_service "$PREFIX/current/.venv/bin/python" -m model keys list | grep -q $'^admin\t.*\tactive'; then
	unchanged "admin API key exists (rotate: $PREFIX/bin/scriptorium keys rotate admin)"
else
	key=$(as_service "$PREFIX/current/.venv/bin/python" -m model keys create admin --admin 2>/dev/null)
	changed "created the admin API key"
	log ""
	log "  ADMIN API KEY (shown once, store it now): $key"
	log ""
fi

log "== systemd unit"
unit=$(
	cat <<EOF
[Unit]
Description=Scriptorium (supervisord: redis, worker, gunicorn, nginx, spiped)
After=network-online.target
Wants=network-online.target

[Service]
User=$SVC_USER
Group=$SVC_USER
ExecStart=$PREFIX/bin/scriptorium-run
# TERM to supervisord only: it stops its programs in order, the worker with a warm shutdown.
KillMode=mixed
TimeoutStopSec=180
Restart=on-failure
RestartSec=5
# Lets nginx listen on a port below 1024 if http.port is one.
AmbientCapabilities=CAP_NET_BIND_SERVICE
NoNewPrivileges=true
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF
)
if [ $SYSTEMD -eq 1 ]; then
	put_file /etc/systemd/system/scriptorium.service 644 "$ROOT" <<<"$unit"
	[ $PUT_CHANGED -eq 0 ] || systemctl daemon-reload
	if systemctl is-enabled --quiet scriptorium && systemctl is-active --quiet scriptorium; then
		running=1
		unchanged "scriptorium.service enabled and running"
	else
		systemctl enable --now --quiet scriptorium
		changed "enabled and started scriptorium.service"
	fi
else
	put_file "$PREFIX/shared/systemd/scriptorium.service" 644 "$ROOT" <<<"$unit"
	unchanged "no systemd here: unit left in $PREFIX/shared/systemd/scriptorium.service"
	pidfile="$var/run/supervisord.pid"
	if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
		running=1
		unchanged "supervisord running (pid $(cat "$pidfile"))"
	elif [ $START -eq 1 ]; then
		setsid "$PREFIX/bin/scriptorium-run" </dev/null >>"$var/scriptorium-run.out" 2>&1 &
		changed "started supervisord in the background ($PREFIX/bin/scriptorium-run)"
	else
		log "  note: start it with $PREFIX/bin/scriptorium-run (or run this again with --start)"
	fi
fi

if [ "$SETTINGS_CHANGED" -eq 1 ] && [ -n "${running:-}" ]; then
	log "  note: shared/scriptorium.env changed under a running stack: it applies after"
	log "        systemctl restart scriptorium (or $PREFIX/bin/scriptoriumctl shutdown; --start)"
fi

log ""
if [ $CHANGES -eq 0 ]; then
	log "setup: no change"
else
	log "setup: $CHANGES changes"
fi
log "API: $HTTP_HOST:$HTTP_PORT (nginx)   tunnel: spiped on $SPIPED_BIND:$SPIPED_PORT"
log "operate: $PREFIX/bin/scriptoriumctl status   upgrade: scripts/release.sh --prefix $PREFIX REF"
