#!/usr/bin/env bash
# Runs a built binary in a root that holds only what the Docker image's distroless cc base gives
# it — the dynamic loader, libc, libm, libgcc_s and the CA bundle — as uid 10001, like the image:
# serves, answers `easy-writer health`, registers a user, stops on SIGTERM with exit 0.
# A check of the image's runtime where no Docker engine runs. Needs root (chroot).
#
#     packaging/try-minimal-root.sh [binary, default target/dist/easy-writer]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/dist/easy-writer}"
root="$(mktemp -d)"
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/data" "$root/tmp"
cp "$bin" "$root/usr/local/bin/easy-writer"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
chown 10001:10001 "$root/data"
chmod 0700 "$root/data" "$root/tmp"
chown 10001:10001 "$root/tmp"
echo "the root: $(du -sh "$root" | cut -f1)"; (cd "$root" && find . -type f | sort)
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
run() { chroot --userspec=10001:10001 "$root" /usr/local/bin/easy-writer "$@"; }
EASY_WRITER_BIND="0.0.0.0:$port" EASY_WRITER_DATA_DIR=/data run serve >"$root.log" 2>&1 &
pid=$!
healthy=no
for _ in $(seq 100); do
    sleep 0.2
    if run health --addr "0.0.0.0:$port" 2>/dev/null; then healthy=yes; break; fi
done
echo "healthy: $healthy"
curl -fsS -XPOST "localhost:$port/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"root@example.com","password":"a long password"}' | cut -c1-60
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
echo "serve exit status after SIGTERM: $status"
rm -f "$root.log"
[ "$healthy" = yes ] && [ "$status" = 0 ]
