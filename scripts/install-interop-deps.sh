#!/usr/bin/env bash
# Install the real ACME clients that tests/interop drives: lego, dehydrated, uacme, acme-tiny, lacme, Caddy,
# golang.org/x/crypto/acme with Go, the Erlang library p1_acme and the Ruby gem acme-client
# (Debian packages), the npm packages acme-client and acme (ACME.js), certbot
# (latest from PyPI, in its own venv so its pins never touch the project's .venv), and nginx
# (Debian package), the load balancer of tests/scale.
# Idempotent and quick when both are present; non-interactive; meant to run as root on Debian.
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
CERTBOT_VENV="${CERTBOT_VENV:-.venv-certbot}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "install-interop-deps: need root to run: $*" >&2
        return 1
    fi
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing or stale on a fresh machine: update only on failure.
    if ! as_root apt-get install -y -q "$@"; then
        as_root apt-get update -q
        as_root apt-get install -y -q "$@"
    fi
}

# Servers installed only as test tools (nginx, Caddy): Debian would start their services
# (ports 80/443) on a machine with systemd. invoke-rc.d and deb-systemd-invoke ask
# /usr/sbin/policy-rc.d first; exit 101 means "do not start", for this install only.
apt_install_no_start() {
    local policy=/usr/sbin/policy-rc.d made=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        made=1
    fi
    local status=0
    apt_install "$@" || status=$?
    if [ "$made" -eq 1 ]; then as_root rm -f "$policy"; fi
    return "$status"
}

if ! command -v lego >/dev/null 2>&1; then
    apt_install lego
fi

# dehydrated, the bash client on curl (tests/interop/test_interop_dehydrated.py).
if ! command -v dehydrated >/dev/null 2>&1; then
    apt_install dehydrated
fi

# uacme, the C client on libcurl/GnuTLS (tests/interop/test_interop_uacme.py). It trusts only
# the system store, so each test run mounts its own /etc/ssl/certs in a private mount namespace
# (unshare and mount, from util-linux and mount); /etc/ssl/certs must exist (ca-certificates).
if ! command -v uacme >/dev/null 2>&1; then
    apt_install uacme
fi
if ! command -v unshare >/dev/null 2>&1 || ! command -v mount >/dev/null 2>&1; then
    apt_install util-linux mount
fi
if [ ! -d /etc/ssl/certs ]; then
    apt_install ca-certificates
fi

# acme-tiny, the minimal Python client that takes a CN-only CSR
# (tests/interop/test_interop_acme_tiny.py).
if ! command -v acme-tiny >/dev/null 2>&1; then
    apt_install acme-tiny
fi

# lacme, the Perl client with privilege separation, and lacme-accountd, the account key
# manager it spawns (tests/interop/test_interop_lacme.py). lacme is in /usr/sbin.
if [ ! -x /usr/sbin/lacme ] || ! command -v lacme-accountd >/dev/null 2>&1; then
    apt_install lacme lacme-accountd
fi

# The Ruby gem acme-client (Debian's ruby-acme-client, with ruby and Faraday)
# (tests/interop/test_interop_ruby_acme_client.py).
if ! command -v ruby >/dev/null 2>&1 || ! ruby -e 'require "acme-client"' >/dev/null 2>&1; then
    apt_install ruby-acme-client
fi

# Caddy, whose ACME client is CertMagic/acmez (tests/interop/test_interop_caddy.py). The
# tests run their own instance by PID; the package's service is not started.
if ! command -v caddy >/dev/null 2>&1; then
    apt_install_no_start caddy
fi

# golang.org/x/crypto/acme, the Go library behind autocert (tests/interop/test_interop_go_acme.py):
# its source as Debian packages it, built by the test with Debian's Go in GOPATH mode, offline.
if ! command -v go >/dev/null 2>&1; then
    apt_install golang-go
fi
if [ ! -f /usr/share/gocode/src/golang.org/x/crypto/acme/rfc8555.go ]; then
    apt_install golang-golang-x-crypto-dev
fi

# p1_acme, ProcessOne's Erlang ACME client library (ejabberd's), with Erlang/OTP and escript
# (tests/interop/test_interop_p1_acme.py): the driver runs it from OTP's library directory.
if ! command -v escript >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' erlang-p1-acme 2>/dev/null | grep -q 'ok installed'; then
    apt_install erlang-p1-acme
fi

# nginx: the load balancer of tests/scale (deploy/nginx.conf). The tests run their own
# instance by PID; the package's service is not started.
if [ ! -x /usr/sbin/nginx ]; then
    apt_install_no_start nginx
fi

if [ ! -x "$CERTBOT_VENV/bin/certbot" ]; then
    rm -rf "$CERTBOT_VENV"
    if ! "$PYTHON" -m venv "$CERTBOT_VENV"; then
        # Debian's python3 ships venv/ensurepip separately.
        rm -rf "$CERTBOT_VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$CERTBOT_VENV"
    fi
    "$CERTBOT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check certbot
fi

# The npm package acme-client (tests/interop/test_interop_node_acme_client.py), at the version
# pinned in tests/interop/node/package.json and its lockfile.
NODE_DIR="tests/interop/node"
if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if [ ! -d "$NODE_DIR/node_modules" ]; then
    if [ -f "$NODE_DIR/package-lock.json" ]; then
        npm ci --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error
    else
        npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error
    fi
fi

# ACME.js, Root's client at the core of Greenlock (tests/interop/test_interop_acmejs.py): the npm
# package acme (a shim loading @root/acme) and its companions, at the versions pinned in
# tests/interop/acmejs/package.json and its lockfile.
ACMEJS_DIR="tests/interop/acmejs"
if [ ! -d "$ACMEJS_DIR/node_modules" ]; then
    npm ci --prefix "$ACMEJS_DIR" --no-audit --no-fund --loglevel=error
fi

echo "lego: $(lego --version 2>&1 | head -n 1) (package $(dpkg-query -W -f='${Version}' lego 2>/dev/null || echo unknown))"
echo "caddy: $(caddy version 2>&1 | head -n 1)"
echo "dehydrated: $(dpkg-query -W -f='${Version}' dehydrated 2>/dev/null || echo unknown)"
echo "uacme: $(dpkg-query -W -f='${Version}' uacme 2>/dev/null || echo unknown)"
echo "acme-tiny: $(dpkg-query -W -f='${Version}' acme-tiny 2>/dev/null || echo unknown)"
echo "lacme: $(dpkg-query -W -f='${Version}' lacme 2>/dev/null || echo unknown) (lacme-accountd $(dpkg-query -W -f='${Version}' lacme-accountd 2>/dev/null || echo unknown))"
echo "golang.org/x/crypto/acme: $(dpkg-query -W -f='${Version}' golang-golang-x-crypto-dev 2>/dev/null || echo unknown) on $(go version 2>&1 | head -n 1)"
echo "p1_acme: $(dpkg-query -W -f='${Version}' erlang-p1-acme 2>/dev/null || echo unknown) on Erlang/OTP $(erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().' 2>&1)"
echo "certbot: $("$CERTBOT_VENV/bin/certbot" --version 2>&1 | head -n 1)"
echo "nginx: $(/usr/sbin/nginx -v 2>&1 | head -n 1)"
echo "acme-client (npm): $(node -p "require('./$NODE_DIR/node_modules/acme-client/package.json').version") on node $(node --version)"
echo "ACME.js (npm acme): $(node -p "require('./$ACMEJS_DIR/node_modules/acme/package.json').version") (@root/acme $(node -p "require('./$ACMEJS_DIR/node_modules/@root/acme/package.json').version")) on node $(node --version)"
echo "acme-client (gem): $(ruby -e 'require "acme-client"; print Acme::Client::VERSION') (package $(dpkg-query -W -f='${Version}' ruby-acme-client 2>/dev/null || echo unknown)) on ruby $(ruby -e 'print RUBY_VERSION')"
