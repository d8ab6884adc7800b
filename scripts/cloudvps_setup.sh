#!/usr/bin/env bash
# Sets up Scriptorium on a bare Debian 12 VM, as root, in one run; a second run changes nothing
# (every step checks before it acts, and the summary says "no change"). Options: usage() below
# (cloudvps_setup.sh --help). Upgrades: scripts/release.sh.
# shellcheck disable=SC2310 # the functions called in conditions check each of their own steps
set -euo pipefail
shopt -s inherit_errexit
umask 022
# The service's settings come from shared/scriptorium.env only, never from this shell.
for var in "${!SCRIPTORIUM_@}" SC_HOME SC_VENV; do unset "$var"; done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/deploy_lib.sh
. "$HERE/deploy_lib.sh"

usage() {
	cat <<'EOF'
usage: cloudvps_setup.sh [--role all|api|worker] [options]

Run as root on Debian 12, from a checkout of Scriptorium. Installs the Debian packages, an
unprivileged service user, the first release (REF of the git checkout SOURCE) with its venv, the
data dir and its secrets, and a systemd unit running supervisord as the service user. Without
systemd (a container) the unit is only written under the prefix; --start then starts
supervisord in the background. Running it again changes only what differs.

roles:
  all      (default) one VM: redis, the worker, gunicorn, nginx and spiped (the front end's
           tunnel); prints the first admin API key once
  api      the same, plus the server end of the Redis tunnel that worker hosts connect
           through (spiped on --redis-tunnel-bind:--redis-tunnel-port); Redis itself stays
           on loopback, with its password
  worker   a worker host: the Celery worker only, reaching the API host's Redis through its
           own end of that tunnel (needs --api-host and, the first time, --redis-secrets-from)

options:
  --prefix DIR              installation directory (/srv/scriptorium)
  --user NAME               service user (scriptorium)
  --source DIR              git checkout releases come from (the one this script is in)
  --ref REF                 what the first release is (HEAD)
  --redis-port N            Redis's port on loopback (6390); on a worker host the port its
                            tunnel end listens on, where the worker expects Redis
  --http-host ADDR          nginx's address (127.0.0.1)                  [all, api]
  --http-port N             nginx's port (5005)                          [all, api]
  --spiped-bind ADDR        the front end's tunnel: address (0.0.0.0)    [all, api]
  --spiped-port N           ... and port (8025)                          [all, api]
  --redis-tunnel-bind ADDR  the Redis tunnel's server end (0.0.0.0)      [api]
  --redis-tunnel-port N     its port (8026); on a worker host: the API host's tunnel port
  --api-host HOST           the API host's name or address               [worker]
  --redis-secrets-from FILE the API host's Redis password and tunnel key, made there by
                            `scriptorium worker-secrets` (docs/operations.md: worker hosts)  [worker]
  --worker-name NAME        how this host's workers name themselves (/readyz, /models,
                            `scriptorium workers`): the one set before, else the host name;
                            refused when a live worker of another installation has it
  --start                   without systemd: start supervisord in the background (its
                            ports checked free first; then /readyz must name this installation)
  -h, --help                this text
EOF
}

PREFIX=/srv/scriptorium
SVC_USER=scriptorium
ROLE=all
HTTP_HOST=127.0.0.1
HTTP_PORT=5005
REDIS_PORT=6390
SPIPED_BIND=0.0.0.0
SPIPED_PORT=8025
REDIS_TUNNEL_BIND=0.0.0.0
REDIS_TUNNEL_PORT=8026
API_HOST=""
SECRETS_FROM=""
WORKER_NAME=""
SOURCE=$(cd "$HERE/.." && pwd)
REF=HEAD
START=0
KEEP=5
TUNNEL_KEY_CHANGED=0

while [ $# -gt 0 ]; do
	case $1 in
	--prefix | --user | --role | --http-host | --http-port | --redis-port | --spiped-bind | \
		--spiped-port | --redis-tunnel-bind | --redis-tunnel-port | --api-host | \
		--redis-secrets-from | --source | --ref | --worker-name)
		[ $# -ge 2 ] || die "$1 needs a value"
		;;
	esac
	case $1 in
	--prefix) PREFIX=$2 && shift ;;
	--user) SVC_USER=$2 && shift ;;
	--role) ROLE=$2 && shift ;;
	--http-host) HTTP_HOST=$2 && shift ;;
	--http-port) HTTP_PORT=$2 && shift ;;
	--redis-port) REDIS_PORT=$2 && shift ;;
	--spiped-bind) SPIPED_BIND=$2 && shift ;;
	--spiped-port) SPIPED_PORT=$2 && shift ;;
	--redis-tunnel-bind) REDIS_TUNNEL_BIND=$2 && shift ;;
	--redis-tunnel-port) REDIS_TUNNEL_PORT=$2 && shift ;;
	--api-host) API_HOST=$2 && shift ;;
	--redis-secrets-from) SECRETS_FROM=$2 && shift ;;
	--source) SOURCE=$(cd "$2" && pwd) && shift ;;
	--ref) REF=$2 && shift ;;
	--worker-name) WORKER_NAME=$2 && shift ;;
	--start) START=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown option $1"
		;;
	esac
	shift
done

# What ends up in unit files, sourced files and spiped's arguments: checked, not trusted.
case $ROLE in all | api | worker) ;; *) die "--role: all, api or worker, not $ROLE" ;; esac
[[ $PREFIX =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "--prefix: an absolute path of letters, digits, ._/+-"
[[ $SVC_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user: not a valid user name: $SVC_USER"
for port in "$HTTP_PORT" "$REDIS_PORT" "$SPIPED_PORT" "$REDIS_TUNNEL_PORT"; do
	if ! [[ $port =~ ^[1-9][0-9]{0,4}$ ]] || [ "$port" -gt 65535 ]; then die "not a port: $port"; fi
done
for addr in "$HTTP_HOST" "$SPIPED_BIND" "$REDIS_TUNNEL_BIND"; do
	[[ $addr =~ ^[0-9A-Fa-f:.]+$ ]] || die "not an IP address: $addr"
done
if [ "$ROLE" = worker ]; then
	[ -n "$API_HOST" ] || die "--role worker needs --api-host (the API host's name or address)"
	API_HOST=${API_HOST#[}
	API_HOST=${API_HOST%]}
	[[ $API_HOST =~ ^[A-Za-z0-9.:-]+$ ]] || die "--api-host: not a host name or address: $API_HOST"
	# spiped's syntax: host:port, [IPv4]:port or [IPv6]:port
	if [[ $API_HOST =~ ^[0-9A-Fa-f:.]+$ ]]; then TUNNEL_SERVER="[$API_HOST]:$REDIS_TUNNEL_PORT"; else
		TUNNEL_SERVER="$API_HOST:$REDIS_TUNNEL_PORT"
	fi
else
	[ -z "$API_HOST$SECRETS_FROM" ] || die "--api-host and --redis-secrets-from are for --role worker"
fi
uid=$(id -u)
[ "$uid" -eq 0 ] || die "run as root"
command -v apt-get >/dev/null || die "this is for Debian (apt-get not found)"
SYSTEMD=0
[ ! -d /run/systemd/system ] || SYSTEMD=1
ROOT="root:root"
SVC="$SVC_USER:$SVC_USER"
var="$PREFIX/shared/var"
ENV_FILE="$PREFIX/shared/scriptorium.env"
# The worker's name: as asked, else the one this installation has, else the host name.
OLD_WORKER_NAME=""
if [ -f "$ENV_FILE" ]; then
	OLD_WORKER_NAME=$(sed -n "s/^SCRIPTORIUM_WORKER__NAME='\(.*\)'$/\1/p" "$ENV_FILE" | tail -n 1)
fi
[ -n "$WORKER_NAME" ] || WORKER_NAME=$OLD_WORKER_NAME
[ -n "$WORKER_NAME" ] || WORKER_NAME=$(hostname)
[[ $WORKER_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] ||
	die "--worker-name: letters, digits and ._- (at most 63), not $WORKER_NAME"

# stack_running: this installation's supervisord runs (under systemd or not).
stack_running() {
	local pid
	pid=$(cat "$var/run/supervisord.pid" 2>/dev/null) || return 1
	kill -0 "$pid" 2>/dev/null
}
# port_in_use ADDR PORT: something accepts connections there (a wildcard address: on loopback).
port_in_use() {
	local addr=$1
	case $addr in 0.0.0.0 | ::) addr=127.0.0.1 ;; esac
	# shellcheck disable=SC2016 # expanded by that bash
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$addr" "$2" 2>/dev/null
}
# Before anything else: a stack that will be started here needs its ports free (another stack
# on them left redis and nginx in BACKOFF and /readyz answering for the other one).
if ! stack_running && { [ $START -eq 1 ] || [ -d /run/systemd/system ]; }; then
	ports=("127.0.0.1 $REDIS_PORT --redis-port")
	if [ "$ROLE" != worker ]; then
		ports+=("$HTTP_HOST $HTTP_PORT --http-port" "$SPIPED_BIND $SPIPED_PORT --spiped-port")
	fi
	[ "$ROLE" != api ] || ports+=("$REDIS_TUNNEL_BIND $REDIS_TUNNEL_PORT --redis-tunnel-port")
	busy=()
	for entry in "${ports[@]}"; do
		read -r addr port option <<<"$entry"
		if port_in_use "$addr" "$port"; then busy+=("$port ($option)"); fi
	done
	[ ${#busy[@]} -eq 0 ] ||
		die "port ${busy[*]} already in use (another stack?): stop it, or choose free ports"
fi
if [ "$ROLE" = worker ]; then
	PACKAGES=(spiped python3-venv git ca-certificates curl)
else
	PACKAGES=(redis-server nginx spiped python3-venv git ca-certificates curl)
fi

log "== Debian packages (role $ROLE)"
missing=()
for pkg in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) || status=""
	[ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	changed "installed ${missing[*]}"
else
	unchanged "${PACKAGES[*]}"
fi

if [ "$ROLE" != worker ]; then
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
fi

log "== service user"
if id -u "$SVC_USER" >/dev/null 2>&1; then
	unchanged "user $SVC_USER"
else
	useradd --system --user-group --no-create-home --home-dir "$var" \
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
ensure_dir "$var" 750 "$SVC"
ensure_dir "$PREFIX/shared/keys" 700 "$SVC"
[ "$ROLE" != worker ] || ensure_dir "$var/secrets" 700 "$SVC"
[ $CHANGES -ne "$before" ] || unchanged "directories, modes and owners"

if [ "$ROLE" = worker ]; then
	log "== the API host's Redis password and tunnel key"
	password_file="$var/secrets/redis_password"
	key_file="$PREFIX/shared/keys/redis-tunnel.key"
	if [ -n "$SECRETS_FROM" ]; then
		[ -f "$SECRETS_FROM" ] || die "cannot read $SECRETS_FROM"
		password=$(sed -n 's/^redis_password=//p' "$SECRETS_FROM")
		key_b64=$(sed -n 's/^redis_tunnel_key=//p' "$SECRETS_FROM")
		if ! [[ $password =~ ^[[:graph:]]+$ && $key_b64 =~ ^[A-Za-z0-9+/]+=*$ ]]; then
			die "$SECRETS_FROM is not what \`scriptorium worker-secrets\` prints on the API host"
		fi
		key_bytes=$(base64 -d <<<"$key_b64" | wc -c)
		[ "$key_bytes" -eq 32 ] || die "$SECRETS_FROM: the tunnel key is $key_bytes bytes, not 32"
		before=$CHANGES
		put_file "$password_file" 600 "$SVC" <<<"$password"
		# (not `base64 -d | put_file`: put_file's count of changes would stay in that subshell)
		put_file "$key_file" 600 "$SVC" < <(base64 -d <<<"$key_b64")
		TUNNEL_KEY_CHANGED=$PUT_CHANGED
		[ $CHANGES -ne "$before" ] || unchanged "Redis password and tunnel key as in $SECRETS_FROM"
	elif [ -f "$password_file" ] && [ -f "$key_file" ]; then
		unchanged "Redis password and tunnel key installed"
	else
		die "a worker host needs the API host's Redis password and tunnel key: on the API host run
  /srv/scriptorium/bin/scriptorium worker-secrets > worker.secrets, copy that file here
  (scp), then run this again with --redis-secrets-from worker.secrets (docs/operations.md: worker hosts)"
	fi
fi

log "== settings"
# Setup owns the lines between the markers of shared/scriptorium.env (ENV_BEGIN, ENV_END); the
# operator's (below them) stay as they are.
setup_settings() {
	printf '%s\n' "$ENV_BEGIN" \
		"# Scriptorium's settings on this machine: SCRIPTORIUM_<SECTION>__<KEY> overrides" \
		"# flask_config.yaml. Read by bin/scriptorium-env and by each program as it starts" \
		"# (release.sh --restart applies an edit). No secrets here. Values are single-quoted:" \
		"# bash sources this file; a later line wins."
	env_line SC_HOME "$PREFIX/current"
	env_line SC_VENV "$PREFIX/current/.venv"
	env_line SCRIPTORIUM_ROLE "$ROLE"
	env_line SCRIPTORIUM_DATA_DIR "$var"
	env_line SCRIPTORIUM_REDIS__PORT "$REDIS_PORT"
	if [ "$ROLE" = worker ]; then
		env_line SCRIPTORIUM_REDIS_TUNNEL__SERVER "$TUNNEL_SERVER"
		env_line SCRIPTORIUM_REDIS_TUNNEL__KEY_FILE "$PREFIX/shared/keys/redis-tunnel.key"
	else
		env_line SCRIPTORIUM_HTTP__HOST "$HTTP_HOST"
		env_line SCRIPTORIUM_HTTP__PORT "$HTTP_PORT"
		env_line SCRIPTORIUM_SPIPED__ENABLED true
		env_line SCRIPTORIUM_SPIPED__LISTEN "[$SPIPED_BIND]:$SPIPED_PORT"
		env_line SCRIPTORIUM_SPIPED__KEY_FILE "$PREFIX/shared/keys/spiped.key"
	fi
	if [ "$ROLE" = api ]; then
		env_line SCRIPTORIUM_REDIS_TUNNEL__LISTEN "[$REDIS_TUNNEL_BIND]:$REDIS_TUNNEL_PORT"
		env_line SCRIPTORIUM_REDIS_TUNNEL__KEY_FILE "$PREFIX/shared/keys/redis-tunnel.key"
	fi
	env_line SCRIPTORIUM_MODELS__DIRS "[\"model/weights\", \"$PREFIX/shared/models\"]"
	env_line SCRIPTORIUM_WORKER__NAME "$WORKER_NAME"
	printf '%s\n' "$ENV_END"
}
old_settings=""
[ ! -f "$ENV_FILE" ] || old_settings=$(cat "$ENV_FILE")
settings=$(
	setup_settings
	operator_settings "$ENV_FILE"
)
# (here-strings, not `{...} | put_file`: a pipe would run put_file in a subshell, losing its
# count of changes and PUT_CHANGED)
put_file "$ENV_FILE" 644 "$ROOT" <<<"$settings"
SETTINGS_CHANGED=$PUT_CHANGED
HTTP_URL="http://$HTTP_HOST:$HTTP_PORT"
[ "$ROLE" != worker ] || HTTP_URL=""
deploy_settings=$(
	printf '# Read by scripts/release.sh (sourced by bash: values single-quoted).\n'
	env_line SOURCE "$SOURCE"
	env_line SVC_USER "$SVC_USER"
	env_line KEEP "$KEEP"
	env_line ROLE "$ROLE"
	env_line HTTP_URL "$HTTP_URL"
)
put_file "$PREFIX/shared/deploy.env" 644 "$ROOT" <<<"$deploy_settings"

q_prefix=$(shell_quote "$PREFIX")
q_user=$(shell_quote "$SVC_USER")
put_file "$PREFIX/bin/scriptorium-env" 755 "$ROOT" <<EOF
#!/bin/bash
# scriptorium-env [--in DIR] CMD...: run CMD as $SVC_USER with shared/scriptorium.env only
# (a clean environment), in DIR (default: the current release).
set -euo pipefail
prefix=$q_prefix
user=$q_user
dir=\$prefix/current
if [ "\${1:-}" = --in ]; then dir=\$2; shift 2; fi
cmd=(env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "HOME=\$prefix/shared/var"
	LANG=C.UTF-8 "SC_ENV_FILE=\$prefix/shared/scriptorium.env" bash -c 'set -a; . "\$0"; set +a; cd "\$1"; shift; exec "\$@"'
	"\$prefix/shared/scriptorium.env" "\$dir" "\$@")
[ "\$(id -un)" = "\$user" ] && exec "\${cmd[@]}"
[ "\$(id -u)" -eq 0 ] || { echo "run as root or \$user" >&2; exit 1; }
exec setpriv --reuid="\$user" --regid="\$user" --init-groups -- "\${cmd[@]}"
EOF
put_file "$PREFIX/bin/scriptorium" 755 "$ROOT" <<EOF
#!/bin/bash
# python -m model of the current release, as $SVC_USER: scriptorium keys list | smoke | ...
prefix=$q_prefix
exec "\$prefix/bin/scriptorium-env" "\$prefix/current/.venv/bin/python" -m model "\$@"
EOF
put_file "$PREFIX/bin/scriptoriumctl" 755 "$ROOT" <<EOF
#!/bin/bash
# supervisorctl for the Scriptorium stack: scriptoriumctl status | restart worker | tail -f worker
prefix=$q_prefix
exec "\$prefix/bin/scriptorium" ctl "\$@"
EOF
put_file "$PREFIX/bin/scriptorium-run" 755 "$ROOT" <<EOF
#!/bin/bash
# supervisord in the foreground with everything under it (what the systemd unit runs).
prefix=$q_prefix
exec "\$prefix/bin/scriptorium-env" "\$prefix/current/.venv/bin/python" -m model stack
EOF

# What `init` may create: compared by content, mode and owner (it rewrites some files as they were).
# (Before the first install none of them exist: find fails, which must not stop the script.)
state() {
	{ find "$var/secrets" "$PREFIX/shared/keys" "$var/run/nginx.conf" -type f \
		-printf '%p %m %u ' -exec md5sum {} \; 2>/dev/null || true; } | md5sum
}
before=$(state)

log "== first release"
if [ -L "$PREFIX/current" ]; then
	id=$(current_id)
	unchanged "release $id installed (upgrade with scripts/release.sh REF)"
else
	started=$SECONDS
	id=$(build_release "$REF")
	in_release "$id" -m model init >/dev/null
	smoke=(smoke)
	# (a worker host's tunnel to Redis starts with supervisord, after this)
	[ "$ROLE" != worker ] || smoke+=(--no-redis)
	in_release "$id" -m model "${smoke[@]}"
	switch_current "$id"
	changed "installed release $id from $SOURCE $REF in $((SECONDS - started)) s"
fi

# worker_name_taken: a live worker of another installation goes by WORKER_NAME, says Redis (this
# host's, or the API host's through the tunnel: before a worker host's first start, through a
# temporary end of it). Prints why when so. Fresh Redis of an API host's own: nobody yet.
worker_name_taken() {
	local rc=0 tunnel=""
	if ! stack_running; then
		[ "$ROLE" = worker ] || return 1
		spiped -e -F -s "[127.0.0.1]:$REDIS_PORT" -t "$TUNNEL_SERVER" -k "$key_file" -o 5 &
		tunnel=$!
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			if port_in_use 127.0.0.1 "$REDIS_PORT"; then break; fi
			sleep 0.5
		done
	fi
	as_service "$PREFIX/current/.venv/bin/python" -m model workers --taken "$WORKER_NAME" || rc=$?
	if [ -n "$tunnel" ]; then
		kill "$tunnel"
		wait "$tunnel" 2>/dev/null || true
	fi
	case $rc in
	0) return 1 ;;
	3) return 0 ;;
	*)
		log "  note: could not ask Redis whether worker name $WORKER_NAME is free (above)"
		return 1
		;;
	esac
}
if [ "$WORKER_NAME" != "$OLD_WORKER_NAME" ]; then
	log "== worker name"
	if worker_name_taken; then
		# Back to the settings as they were: nothing runs under the name.
		if [ -n "$old_settings" ]; then
			put_file "$ENV_FILE" 644 "$ROOT" <<<"$old_settings"
		else
			rm -f "$ENV_FILE"
		fi
		die "worker name $WORKER_NAME is taken: run this again with --worker-name NAME"
	fi
	unchanged "worker name $WORKER_NAME (no live worker of another installation has it)"
fi

log "== data dir, secrets"
as_service "$PREFIX/current/.venv/bin/python" -m model init >/dev/null
after=$(state)
if [ "$before" = "$after" ]; then
	unchanged "data dir $var and its secrets"
else
	changed "initialised $var (secrets; keys in $PREFIX/shared/keys)"
fi
if [ "$ROLE" != worker ]; then
	keys=$(as_service "$PREFIX/current/.venv/bin/python" -m model keys list)
	if grep -q $'^admin\t.*\tactive' <<<"$keys"; then
		unchanged "admin API key exists (rotate: $PREFIX/bin/scriptorium keys rotate admin)"
	else
		key=$(as_service "$PREFIX/current/.venv/bin/python" -m model keys create admin --admin 2>/dev/null)
		changed "created the admin API key"
		log ""
		log "  ADMIN API KEY (shown once, store it now): $key"
		log ""
	fi
fi

log "== systemd unit"
case $ROLE in
worker) programs="worker host: the worker, spiped to the API host's redis" ;;
api) programs="redis, worker, gunicorn, nginx, spiped, spiped-redis" ;;
*) programs="redis, worker, gunicorn, nginx, spiped" ;;
esac
unit=$(
	cat <<EOF
[Unit]
Description=Scriptorium (supervisord: $programs)
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
running=""
just_started=""
if [ $SYSTEMD -eq 1 ]; then
	put_file /etc/systemd/system/scriptorium.service 644 "$ROOT" <<<"$unit"
	[ $PUT_CHANGED -eq 0 ] || systemctl daemon-reload
	if systemctl is-enabled --quiet scriptorium && systemctl is-active --quiet scriptorium; then
		running=1
		unchanged "scriptorium.service enabled and running"
	else
		systemctl enable --now --quiet scriptorium
		changed "enabled and started scriptorium.service"
		just_started=1
	fi
else
	put_file "$PREFIX/shared/systemd/scriptorium.service" 644 "$ROOT" <<<"$unit"
	unchanged "no systemd here: unit left in $PREFIX/shared/systemd/scriptorium.service"
	pidfile="$var/run/supervisord.pid"
	pid=$(cat "$pidfile" 2>/dev/null) || pid=""
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		running=1
		unchanged "supervisord running (pid $pid)"
	elif [ $START -eq 1 ]; then
		setsid "$PREFIX/bin/scriptorium-run" </dev/null >>"$var/scriptorium-run.out" 2>&1 &
		changed "started supervisord in the background ($PREFIX/bin/scriptorium-run)"
		just_started=1
	else
		log "  note: start it with $PREFIX/bin/scriptorium-run (or run this again with --start)"
	fi
fi

# own_stack_answers: /readyz on HTTP_URL is this installation's (its id in a header), within
# 120 s; else says what answers instead.
own_stack_answers() {
	local id seen="" deadline=$((SECONDS + 120))
	id=$(cat "$var/installation_id")
	while [ $SECONDS -lt $deadline ]; do
		seen=$(curl -s -m 5 -o /dev/null -D - "$HTTP_URL/readyz" | tr -d '\r' |
			sed -n 's/^x-scriptorium-installation: *//Ip') || seen=""
		if [ "$seen" = "$id" ]; then
			unchanged "$HTTP_URL/readyz answers as this installation ($id)"
			return 0
		fi
		[ -z "$seen" ] || break
		sleep 1
	done
	log "  $HTTP_URL/readyz: ${seen:+installation $seen answers, not this one ($id)}${seen:-no answer in 120 s}"
	return 1
}
if [ -n "$just_started" ] && [ "$ROLE" != worker ] && ! own_stack_answers; then
	die "the stack started here does not answer on $HTTP_URL ($PREFIX/bin/scriptoriumctl status; logs in $var/logs)"
fi

if [ "$SETTINGS_CHANGED" -eq 1 ] && [ -n "$running" ]; then
	log "  note: shared/scriptorium.env changed under a running stack: apply it with"
	log "        $PREFIX/current/scripts/release.sh --restart (it says if supervisord must restart)"
fi
if [ "$TUNNEL_KEY_CHANGED" -eq 1 ] && [ -n "$running" ]; then
	log "  note: a new Redis tunnel key: $PREFIX/bin/scriptoriumctl restart spiped-redis-client"
fi

log ""
if [ $CHANGES -eq 0 ]; then
	log "setup: no change"
else
	log "setup: $CHANGES changes"
fi
case $ROLE in
worker)
	log "worker host: the worker reaches Redis at 127.0.0.1:$REDIS_PORT, spiped to $TUNNEL_SERVER"
	;;
*)
	log "API: $HTTP_HOST:$HTTP_PORT (nginx)   tunnel: spiped on $SPIPED_BIND:$SPIPED_PORT"
	if [ "$ROLE" = api ]; then
		log "Redis tunnel for worker hosts: spiped on $REDIS_TUNNEL_BIND:$REDIS_TUNNEL_PORT; their secrets:"
		log "  $PREFIX/bin/scriptorium worker-secrets > worker.secrets (docs/operations.md: worker hosts)"
	fi
	;;
esac
log "operate: $PREFIX/bin/scriptoriumctl status   upgrade: scripts/release.sh --prefix $PREFIX REF"
