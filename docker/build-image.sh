#!/usr/bin/env bash
# Builds the gantry container image from an already built release binary, without a registry:
# stages the binary (stripped), the shared libraries it links (found with ldd), a passwd/group for
# the unprivileged user and an empty /tmp, then runs `docker build` on that folder.
#
#   docker/build-image.sh [IMAGE] [BINARY]     defaults: gantry:latest, target/release/gantry
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
image="${1:-gantry:latest}"
bin="${2:-$root/target/release/gantry}"
[ -x "$bin" ] || { echo "no binary at $bin: run 'cargo build --release --locked' first" >&2; exit 2; }

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/rootfs/tmp" "$stage/rootfs/etc"
chmod 1777 "$stage/rootfs/tmp"
cp "$bin" "$stage/rootfs/gantry"
strip "$stage/rootfs/gantry" 2>/dev/null || true
# The dynamic loader and every library the binary links, at the paths it looks them up by.
ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | while read -r lib; do
  mkdir -p "$stage/rootfs$(dirname "$lib")"
  cp -L "$lib" "$stage/rootfs$lib"
done
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$stage/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$stage/rootfs/etc/group"
# Name lookups (backend host names, etcd endpoints): /etc/hosts first, then DNS.
printf 'hosts: files dns\n' >"$stage/rootfs/etc/nsswitch.conf"
cp "$root/Dockerfile" "$stage/Dockerfile"
# The classic builder: FROM scratch needs no registry and no BuildKit (its deprecation notice is
# shown only if the build fails, with the rest of its output).
if ! out="$(DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$stage" 2>&1)"; then
  echo "$out" >&2
  exit 1
fi
size="$(docker image inspect --format '{{.Size}}' "$image")"
echo "$image: $((size / 1000 / 1000)) MB ($size bytes)"
