#!/usr/bin/env bash
# Fails when the generated gRPC code kept in third_party/etcd-client/src/rpc/pb/ differs from what
# protoc and tonic-prost-build generate from the kept .proto files today. Needs protoc (Debian's
# protobuf-compiler + libprotobuf-dev). With --write, replaces the kept copy instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}" cargo run --quiet --manifest-path "$here/Cargo.toml" -- "$out"
kept="$here/../src/rpc/pb"
if [ "${1:-}" = "--write" ]; then
  rm -f "$kept"/*.rs
  cp "$out"/*.rs "$kept"/
  echo "regenerated $(ls "$kept" | wc -l) files in $kept"
  exit 0
fi
if ! diff -ru "$kept" "$out"; then
  echo "the generated etcd gRPC code kept in $kept is stale: run $0 --write" >&2
  exit 1
fi
echo "generated etcd gRPC code is current ($(ls "$kept" | wc -l) files)"
