#!/bin/sh
# Install curlerd system-wide from this repository checkout.
# Running it again upgrades curler and keeps the configuration; see --help.
set -eu

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${DESTDIR:-/}
PREFIX=/opt/curler
INIT=auto
PYTHON=python3
SYSTEM_SITE_PACKAGES=
PIP_ARGS=
EXAMPLE_CONFIG=$SOURCE/etc/curler.ini
USER_NAME=curler
# The oldest Python that curler supports.
MIN_PYTHON="3, 11"

usage() {
	cat <<EOF
Usage: $0 [OPTIONS]

Install curlerd from this checkout: the $USER_NAME system user, a virtualenv,
/etc/curler.ini from the example (an existing one is kept), /var/log/curler,
the logrotate config, and the systemd unit or the init.d script.
Running it again upgrades curler in the virtualenv and keeps the configuration.

Options:
  --root DIR              install under DIR instead of / (default: \$DESTDIR, else /);
                          the virtualenv then runs only from DIR, so use it for
                          staging and tests
  --prefix DIR            virtualenv directory (default: $PREFIX)
  --init KIND             service files to install: systemd, sysv or none
                          (default: systemd when the machine runs systemd, else sysv)
  --python PATH           Python $MIN_PYTHON or newer that creates the virtualenv
                          (default: $PYTHON)
  --system-site-packages  let the virtualenv use the packages installed for that Python
  --pip-args ARGS         more arguments for pip install, such as
                          "--no-index --find-links /srv/wheels"
  --example-config FILE   config file copied to /etc/curler.ini when there is none
                          (default: etc/curler.ini of this checkout)
  -h, --help              show this help
EOF
}

fail() {
	echo "install.sh: $*" >&2
	exit 1
}

note() {
	echo "install.sh: $*"
}

while [ $# -gt 0 ]; do
	case "$1" in
		--root) ROOT=${2:?--root needs a directory}; shift 2 ;;
		--prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
		--init) INIT=${2:?--init needs systemd, sysv or none}; shift 2 ;;
		--python) PYTHON=${2:?--python needs a path}; shift 2 ;;
		--system-site-packages) SYSTEM_SITE_PACKAGES=--system-site-packages; shift ;;
		--pip-args) PIP_ARGS=${2?--pip-args needs arguments}; shift 2 ;;
		--example-config) EXAMPLE_CONFIG=${2:?--example-config needs a file}; shift 2 ;;
		-h|--help) usage; exit 0 ;;
		*) usage >&2; fail "unknown option: $1" ;;
	esac
done

# Paths on the target machine are absolute; $ROOT is put in front of them to write.
ROOT=${ROOT%/}
case "$PREFIX" in
	/?*) ;;
	*) fail "--prefix must be an absolute directory other than /, got '$PREFIX'" ;;
esac
PREFIX=${PREFIX%/}

case "$INIT" in
	auto)
		# The test sd_booted() makes: systemd is PID 1 when this directory exists.
		if [ -d /run/systemd/system ]; then INIT=systemd; else INIT=sysv; fi ;;
	systemd|sysv|none) ;;
	*) fail "--init must be systemd, sysv or none, got '$INIT'" ;;
esac

[ -f "$SOURCE/pyproject.toml" ] || fail "$SOURCE is not a curler checkout (no pyproject.toml)"
[ -f "$EXAMPLE_CONFIG" ] || fail "example config $EXAMPLE_CONFIG not found: give one with --example-config"
"$PYTHON" -c "import sys; sys.exit(sys.version_info < ($MIN_PYTHON))" 2> /dev/null \
	|| fail "$PYTHON is missing or older than Python $MIN_PYTHON: give another with --python"

IS_ROOT=no
[ "$(id -u)" -eq 0 ] && IS_ROOT=yes
if [ -z "$ROOT" ] && [ "$IS_ROOT" = no ]; then
	fail "installing into / needs root: run it with sudo, or give --root DIR"
fi

# -- the system user ---------------------------------------------------------

# Print the uid and gid of $USER_NAME on the target machine, or nothing.
user_ids() {
	passwd=${ROOT:-}/etc/passwd
	[ -r "$passwd" ] || return 0
	awk -F: -v name="$USER_NAME" '$1 == name { print $3 " " $4 }' "$passwd"
}

group_exists() {
	[ -r "${ROOT:-}/etc/group" ] && grep -q "^$USER_NAME:" "${ROOT:-}/etc/group"
}

create_user() {
	if [ -n "$(user_ids)" ]; then
		note "user $USER_NAME exists"
		return
	fi
	if [ "$IS_ROOT" = no ] || [ ! -f "${ROOT:-}/etc/passwd" ]; then
		note "WARNING: not creating user $USER_NAME (needs root and ${ROOT:-}/etc/passwd); files stay owned by $(id -un)"
		return
	fi
	set -- --system --home-dir "$PREFIX" --no-create-home --shell /usr/sbin/nologin \
		--comment "curlerd job worker"
	if group_exists; then set -- "$@" --gid "$USER_NAME"; else set -- "$@" --user-group; fi
	if [ -n "$ROOT" ]; then set -- "$@" --prefix "$ROOT"; fi
	useradd "$@" "$USER_NAME"
	note "created system user $USER_NAME"
}

# Hand a path to the curler user (or only its group) when the user exists and we are root.
give() {
	owner=$1
	path=$2
	ids=$(user_ids)
	[ -n "$ids" ] && [ "$IS_ROOT" = yes ] || return 0
	uid=${ids% *}
	gid=${ids#* }
	case "$owner" in
		user) chown "$uid:$gid" "$path" ;;
		group) chown "0:$gid" "$path" ;;
	esac
}

# -- the virtualenv ------------------------------------------------------------

install_virtualenv() {
	venv=$ROOT$PREFIX
	if [ -x "$venv/bin/python" ]; then
		note "upgrading curler in $venv"
	else
		note "creating the virtualenv $venv"
		mkdir -p "$(dirname "$venv")"
		# shellcheck disable=SC2086
		"$PYTHON" -m venv $SYSTEM_SITE_PACKAGES "$venv"
	fi
	# pip builds in the source tree; a copy keeps the checkout free of build files owned by root.
	build=$(mktemp -d "${TMPDIR:-/tmp}/curler-install.XXXXXX")
	tar -C "$SOURCE" --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
		--exclude=__pycache__ -cf - . | tar -C "$build" -xf -
	# shellcheck disable=SC2086
	if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade $PIP_ARGS "$build"; then
		rm -rf "$build"
		fail "pip could not install curler into $venv"
	fi
	rm -rf "$build"
	[ -x "$venv/bin/curlerd" ] || fail "pip did not install $venv/bin/curlerd"
}

# -- configuration, logs and service files -------------------------------------------

install_config() {
	config=$ROOT/etc/curler.ini
	mkdir -p "$ROOT/etc"
	if [ -e "$config" ]; then
		note "kept the existing /etc/curler.ini"
		return
	fi
	install -m 0640 "$EXAMPLE_CONFIG" "$config"
	give group "$config"
	note "installed /etc/curler.ini: set curl-paths and job-servers in it"
}

install_log_directory() {
	install -d -m 0750 "$ROOT/var/log/curler"
	give user "$ROOT/var/log/curler"
	install -d -m 0755 "$ROOT/etc/logrotate.d"
	install -m 0644 "$SOURCE/packaging/logrotate/curlerd" "$ROOT/etc/logrotate.d/curlerd"
}

install_systemd() {
	unit=$ROOT/etc/systemd/system/curlerd.service
	install -d -m 0755 "$(dirname "$unit")"
	sed "s#/opt/curler/#$PREFIX/#g" "$SOURCE/packaging/systemd/curlerd.service" > "$unit.new"
	chmod 0644 "$unit.new"
	mv "$unit.new" "$unit"
	note "installed the systemd unit /etc/systemd/system/curlerd.service"
	if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		systemctl enable curlerd.service
		note "start it with: systemctl start curlerd (after an upgrade: systemctl restart curlerd)"
	fi
}

install_sysv() {
	script=$ROOT/etc/init.d/curlerd
	install -d -m 0755 "$ROOT/etc/init.d" "$ROOT/etc/default"
	sed "s#^DAEMON=/opt/curler/#DAEMON=$PREFIX/#" "$SOURCE/packaging/init.d/curlerd" > "$script.new"
	chmod 0755 "$script.new"
	mv "$script.new" "$script"
	if [ ! -e "$ROOT/etc/default/curlerd" ]; then
		cat > "$ROOT/etc/default/curlerd" <<EOF
# Settings of /etc/init.d/curlerd; the values shown are the defaults.
#DAEMON=$PREFIX/bin/curlerd
#CONFIG=/etc/curler.ini
#PIDFILE=/run/curlerd/curlerd.pid
#RUN_USER=$USER_NAME
#RUN_GROUP=$USER_NAME
#STOP_TIMEOUT=45
#DAEMON_OPTS=
EOF
		chmod 0644 "$ROOT/etc/default/curlerd"
	fi
	note "installed the init script /etc/init.d/curlerd"
	if [ -z "$ROOT" ] && command -v update-rc.d > /dev/null; then
		update-rc.d curlerd defaults
		note "start it with: service curlerd start (after an upgrade: service curlerd restart)"
	fi
}

create_user
install_virtualenv
install_config
install_log_directory
case "$INIT" in
	systemd) install_systemd ;;
	sysv) install_sysv ;;
	none) note "no service files installed (--init none)" ;;
esac
note "done: curlerd is $PREFIX/bin/curlerd"
