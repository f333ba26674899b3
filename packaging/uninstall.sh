#!/bin/sh
# Remove what packaging/install.sh installed. /etc/curler.ini and
# /etc/default/curlerd are kept; the logs are kept unless --purge-logs is given.
set -eu

ROOT=${DESTDIR:-/}
PREFIX=/opt/curler
PURGE_LOGS=no
USER_NAME=curler

usage() {
	cat <<EOF
Usage: $0 [OPTIONS]

Stop curlerd and remove its service files, logrotate config, virtualenv and
the $USER_NAME system user. /etc/curler.ini and /etc/default/curlerd are kept,
and so is /var/log/curler, handed to root, unless --purge-logs is given.

Options:
  --root DIR      remove from under DIR instead of / (default: \$DESTDIR, else /)
  --prefix DIR    virtualenv directory given to install.sh (default: $PREFIX)
  --purge-logs    remove /var/log/curler too
  -h, --help      show this help
EOF
}

fail() {
	echo "uninstall.sh: $*" >&2
	exit 1
}

note() {
	echo "uninstall.sh: $*"
}

while [ $# -gt 0 ]; do
	case "$1" in
		--root) ROOT=${2:?--root needs a directory}; shift 2 ;;
		--prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
		--purge-logs) PURGE_LOGS=yes; shift ;;
		-h|--help) usage; exit 0 ;;
		*) usage >&2; fail "unknown option: $1" ;;
	esac
done

ROOT=${ROOT%/}
case "$PREFIX" in
	/?*) ;;
	*) fail "--prefix must be an absolute directory other than /, got '$PREFIX'" ;;
esac
PREFIX=${PREFIX%/}
IS_ROOT=no
[ "$(id -u)" -eq 0 ] && IS_ROOT=yes
if [ -z "$ROOT" ] && [ "$IS_ROOT" = no ]; then
	fail "removing from / needs root: run it with sudo, or give --root DIR"
fi

stop_service() {
	[ -z "$ROOT" ] || return 0
	if [ -e /etc/systemd/system/curlerd.service ] && [ -d /run/systemd/system ]; then
		systemctl disable --now curlerd.service || note "WARNING: systemctl could not stop curlerd"
	fi
	if [ -x /etc/init.d/curlerd ] && [ ! -d /run/systemd/system ]; then
		/etc/init.d/curlerd stop || note "WARNING: /etc/init.d/curlerd stop failed"
		if command -v update-rc.d > /dev/null; then
			update-rc.d -f curlerd remove
		fi
	fi
}

remove_service_files() {
	for file in /etc/systemd/system/curlerd.service /etc/init.d/curlerd /etc/logrotate.d/curlerd; do
		if [ -e "$ROOT$file" ]; then
			rm -f "$ROOT$file"
			note "removed $file"
		fi
	done
	if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
		systemctl daemon-reload
	fi
}

remove_virtualenv() {
	venv=$ROOT$PREFIX
	[ -e "$venv" ] || return 0
	# Remove the directory only when it is the virtualenv install.sh made.
	if [ -f "$venv/pyvenv.cfg" ] && [ -x "$venv/bin/curlerd" ]; then
		rm -rf "$venv"
		note "removed the virtualenv $PREFIX"
	else
		note "WARNING: kept $PREFIX: it is not a virtualenv with curlerd in it"
	fi
}

remove_logs() {
	logs=$ROOT/var/log/curler
	[ -d "$logs" ] || return 0
	if [ "$PURGE_LOGS" = yes ]; then
		rm -rf "$logs"
		note "removed /var/log/curler"
	elif [ "$IS_ROOT" = yes ]; then
		# The curler user is about to go; root keeps the logs instead of a dangling uid.
		chown -R 0:0 "$logs"
		note "kept /var/log/curler"
	fi
}

remove_user() {
	passwd=$ROOT/etc/passwd
	[ -r "$passwd" ] && grep -q "^$USER_NAME:" "$passwd" || return 0
	if [ "$IS_ROOT" = no ]; then
		note "WARNING: not removing user $USER_NAME (needs root)"
		return
	fi
	config=$ROOT/etc/curler.ini
	if [ -e "$config" ]; then
		chgrp 0 "$config"
	fi
	if [ -n "$ROOT" ]; then
		userdel --prefix "$ROOT" "$USER_NAME"
	else
		userdel "$USER_NAME"
	fi
	# userdel removes the user's own group only when USERGROUPS_ENAB is set.
	if grep -q "^$USER_NAME:" "$ROOT/etc/group" 2> /dev/null; then
		if [ -n "$ROOT" ]; then groupdel --prefix "$ROOT" "$USER_NAME"; else groupdel "$USER_NAME"; fi
	fi
	note "removed user $USER_NAME"
}

stop_service
remove_service_files
remove_virtualenv
remove_logs
remove_user
note "done: /etc/curler.ini is kept"
