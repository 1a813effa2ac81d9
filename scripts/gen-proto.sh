#!/usr/bin/env bash
# Regenerates src/wire/schema.rs from proto/shardcast.proto with prost-build (needs protoc:
# apt-get install protobuf-compiler). With --check, fails if the committed file is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/wire/schema.rs
target=$(pwd)/target/protogen
if [[ "${1:-}" == "--check" ]]; then
  tmp=$(mktemp)
  CARGO_TARGET_DIR=$target cargo run -q --manifest-path proto/gen/Cargo.toml -- "$tmp"
  rustfmt --edition 2024 "$tmp"
  if ! diff -u "$out" "$tmp"; then
    echo "src/wire/schema.rs is stale: run scripts/gen-proto.sh" >&2
    rm -f "$tmp"; exit 1
  fi
  rm -f "$tmp"
  exit 0
fi
CARGO_TARGET_DIR=$target cargo run -q --manifest-path proto/gen/Cargo.toml -- "$out"
rustfmt --edition 2024 "$out"
