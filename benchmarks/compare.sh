#!/usr/bin/env bash
# Compare acme-ca with Pebble under the same load: for each concurrency level, start
# each server fresh, run `python -m acme_ca.bench` against it, stop it; then print a
# side-by-side table. Servers are restarted per level because Pebble 2.4.0 can
# deadlock under concurrency; the bench stops a level after --stall seconds without
# progress and reports the rate before the stall.
#
# usage: benchmarks/compare.sh [--only pebble|acme-ca] [--levels 1,2,4,8,32]
#          [--count N] [--duration SECONDS] [--stall SECONDS] [--challenge http-01|dns-01]
#          [--out DIR] [--keep] [-- extra bench options]
# env:   PYTHON, ACME_CA, PEBBLE, PEBBLE_CHALLTESTSRV, CHALLTESTSRV (pebble|acme-ca: the
#        DNS server both use; Pebble's when installed), ACME_CA_DIRECTORY, ports below;
#        ACME_CA_DATABASE (SQLAlchemy URL; default SQLite in the data dir), ACME_CA_WORKERS (2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
ACME_CA=${ACME_CA:-$ROOT/.venv/bin/acme-ca}
PEBBLE=${PEBBLE:-pebble}
PEBBLE_CHALLTESTSRV=${PEBBLE_CHALLTESTSRV:-pebble-challtestsrv}

HOST=127.0.0.1
PEBBLE_PORT=${PEBBLE_PORT:-14000}
PEBBLE_MGMT_PORT=${PEBBLE_MGMT_PORT:-15000}
ACME_CA_PORT=${ACME_CA_PORT:-14000}
ACME_CA_DIRECTORY=${ACME_CA_DIRECTORY:-https://$HOST:$ACME_CA_PORT/directory}
ACME_CA_DATABASE=${ACME_CA_DATABASE:-}
ACME_CA_WORKERS=${ACME_CA_WORKERS:-2}
REVOCATION_PORT=${REVOCATION_PORT:-14080}
DNS_PORT=${DNS_PORT:-8053}
MGMT_PORT=${MGMT_PORT:-8055}
HTTP01_PORT=${HTTP01_PORT:-5002}

ONLY=""
LEVELS="1,2,4,8,32"
COUNT=200
DURATION=60
STALL=5
CHALLENGE=http-01
OUT=""
KEEP=0
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) ONLY=$2; shift 2 ;;
        --levels) LEVELS=$2; shift 2 ;;
        --count) COUNT=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --stall) STALL=$2; shift 2 ;;
        --challenge) CHALLENGE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$ONLY" in
    "") SERVERS=(pebble acme-ca) ;;
    pebble|acme-ca) SERVERS=("$ONLY") ;;
    *) echo "compare.sh: --only takes pebble or acme-ca" >&2; exit 2 ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/acme-bench.XXXXXX")
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/acme-bench-results.XXXXXX")}
mkdir -p "$OUT"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP -eq 0 ]]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "== $*" >&2; }

# Wait until a TCP port accepts connections, or fail after ~20 s.
wait_port() {
    local port=$1 pid=$2 i
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "compare.sh: process $pid exited before listening on $port" >&2
            return 1
        fi
        if ! port_free "$port"; then return 0; fi
        sleep 0.1
    done
    echo "compare.sh: nothing listens on $HOST:$port" >&2
    return 1
}

# Refuse to start if a port is taken: we would otherwise measure someone else's server.
port_free() {
    ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}
busy=()
for port in "$DNS_PORT" "$MGMT_PORT" "$HTTP01_PORT" "$PEBBLE_PORT" "$PEBBLE_MGMT_PORT" \
    "$ACME_CA_PORT" "$REVOCATION_PORT"; do
    port_free "$port" || busy+=("$port")
done
if [[ ${#busy[@]} -gt 0 ]]; then
    echo "compare.sh: ports in use on $HOST: ${busy[*]}; set PEBBLE_PORT, PEBBLE_MGMT_PORT," \
        "ACME_CA_PORT, DNS_PORT, MGMT_PORT, HTTP01_PORT, REVOCATION_PORT" >&2
    exit 1
fi

stop() {
    local pid=$1 kept=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]+"${kept[@]}"}")
}

# -- the challenge test server: DNS answering 127.0.0.1 for every name, TXT via API ----
# The DNS server both CAs resolve through: Pebble's own challenge test server when it is
# installed (the reference's tool, and it costs the machine the same per query whoever
# asks), else acme-ca's (CHALLTESTSRV=acme-ca forces it).
CHALLTESTSRV=${CHALLTESTSRV:-}
if [[ -z $CHALLTESTSRV ]]; then
    if command -v "$PEBBLE_CHALLTESTSRV" >/dev/null 2>&1; then CHALLTESTSRV=pebble; else CHALLTESTSRV=acme-ca; fi
fi
if [[ $CHALLTESTSRV == acme-ca ]]; then
    log "challtestsrv: acme-ca challtestsrv"
    "$ACME_CA" challtestsrv --dns "$HOST:$DNS_PORT" --management "$HOST:$MGMT_PORT" \
        >"$WORK/challtestsrv.log" 2>&1 &
else
    log "challtestsrv: $PEBBLE_CHALLTESTSRV"
    # Only DNS: the bench's own responder answers http-01. No AAAA, so that the
    # validator dials the IPv4 loopback where the responder listens.
    "$PEBBLE_CHALLTESTSRV" -dns01 "$HOST:$DNS_PORT" -management "$HOST:$MGMT_PORT" \
        -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv4 "$HOST" -defaultIPv6 "" \
        >"$WORK/challtestsrv.log" 2>&1 &
fi
CHALLTESTSRV_PID=$!
PIDS+=("$CHALLTESTSRV_PID")
wait_port "$MGMT_PORT" "$CHALLTESTSRV_PID"

# -- Pebble: a TLS certificate for its API, and its config ---------------------------
if [[ " ${SERVERS[*]} " == *" pebble "* ]]; then
    "$PYTHON" - "$WORK" "$ROOT/benchmarks/pebble-config.json" "$HOST" "$PEBBLE_PORT" \
        "$PEBBLE_MGMT_PORT" "$HTTP01_PORT" <<'PY'
import datetime, ipaddress, json, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

work, template, host, port, mgmt, http01 = sys.argv[1:]
work_dir = Path(work)
now = datetime.datetime.now(datetime.timezone.utc)
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench TLS root")])
ca = (
    x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
    .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(hours=1))
    .not_valid_after(now + datetime.timedelta(days=2))
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    .sign(ca_key, hashes.SHA256())
)
key = ec.generate_private_key(ec.SECP256R1())
cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
    .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(hours=1))
    .not_valid_after(now + datetime.timedelta(days=2))
    .add_extension(x509.SubjectAlternativeName([
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
    .sign(ca_key, hashes.SHA256())
)
pem = serialization.Encoding.PEM
(work_dir / "tls-ca.pem").write_bytes(ca.public_bytes(pem))
(work_dir / "cert.pem").write_bytes(cert.public_bytes(pem))
(work_dir / "key.pem").write_bytes(key.private_bytes(
    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
config = json.loads(Path(template).read_text())
config["pebble"].update(
    listenAddress=f"{host}:{port}", managementListenAddress=f"{host}:{mgmt}",
    certificate=str(work_dir / "cert.pem"), privateKey=str(work_dir / "key.pem"),
    httpPort=int(http01),
)
(work_dir / "pebble-config.json").write_text(json.dumps(config, indent=2))
PY
fi

start_pebble() {
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
        "$PEBBLE" -config "$WORK/pebble-config.json" -dnsserver "$HOST:$DNS_PORT" \
        >>"$WORK/pebble.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$PEBBLE_PORT" "$SERVER_PID"
    DIRECTORY="https://$HOST:$PEBBLE_PORT/dir"
    TLS_ARGS=(--ca-bundle "$WORK/tls-ca.pem")
}

start_acme_ca() {
    if [[ ! -d "$WORK/acme-ca" ]]; then
        "$ACME_CA" init --data-dir "$WORK/acme-ca" >"$WORK/acme-ca-init.log" 2>&1
    fi
    "$ACME_CA" serve --data-dir "$WORK/acme-ca" --listen "$HOST:$ACME_CA_PORT" \
        --dns-resolver "$HOST:$DNS_PORT" --http-01-port "$HTTP01_PORT" \
        --allow-private-addresses --workers "$ACME_CA_WORKERS" \
        --revocation-listen "$HOST:$REVOCATION_PORT" \
        ${ACME_CA_DATABASE:+--database "$ACME_CA_DATABASE"} >>"$WORK/acme-ca.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$ACME_CA_PORT" "$SERVER_PID"
    DIRECTORY=$ACME_CA_DIRECTORY
    # acme-ca serves HTTPS with a certificate under the root that `init` made.
    if [[ $DIRECTORY != https:* ]]; then
        TLS_ARGS=()
    elif [[ -f $WORK/acme-ca/root.pem ]]; then
        TLS_ARGS=(--ca-bundle "$WORK/acme-ca/root.pem")
    else
        TLS_ARGS=(--insecure)
    fi
}

# -- the runs: each level against each server in turn ---------------------------------
IFS=, read -r -a LEVEL_LIST <<<"$LEVELS"
SPECS=()
for level in "${LEVEL_LIST[@]}"; do
    for server in "${SERVERS[@]}"; do
        log "$server, concurrency $level"
        if [[ $server == pebble ]]; then start_pebble; else start_acme_ca; fi
        json="$OUT/$server-c$level.json"
        "$PYTHON" -m acme_ca.bench --directory "$DIRECTORY" "${TLS_ARGS[@]}" \
            --concurrency "$level" --count "$COUNT" --duration "$DURATION" \
            --stall-timeout "$STALL" --challenge "$CHALLENGE" \
            --responder-listen "$HOST:$HTTP01_PORT" --challtestsrv "http://$HOST:$MGMT_PORT" \
            --server-pid "$SERVER_PID" --label "$server" --json "$json" --no-progress \
            --no-endpoints "${EXTRA[@]+"${EXTRA[@]}"}" ||
            log "$server at concurrency $level issued nothing (see $WORK/$server.log)"
        stop "$SERVER_PID"
        [[ -f $json ]] && SPECS+=("$server=$json")
    done
done

echo
echo "side by side (count $COUNT, at most ${DURATION}s and a ${STALL}s stall per level; results in $OUT):"
"$PYTHON" -m acme_ca.bench.compare "${SPECS[@]}"
