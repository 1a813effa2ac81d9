#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need when it is missing, then
# runs every test of the workspace. Extra arguments go to `cargo test`.
#
# Debian packages, installed with apt-get (as root, or through sudo) only when missing:
# - chromium and chromium-driver, for tests/browser.rs (headless Chromium over WebDriver);
# - nodejs when there is no `node` at all, for tests/js_client.rs (it needs Node 20.10 or
#   newer and says so if it finds an older one);
# - redis-server (Redis 7, with redis-cli), for the cluster tests (tests/cluster*.rs,
#   tests/redis_cluster.rs, loadtest/tests/cluster.rs), which start their own Redis in a temp
#   dir on a free port;
# - protobuf-compiler (protoc), for tests/proto.rs, which checks the binary protocol against
#   it (it encodes and decodes frames of proto/shardcast.proto independently of the server).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v node >/dev/null || missing+=(nodejs)
# python3, for the hook backend of tests/hooks.rs (standard library only).
command -v python3 >/dev/null || missing+=(python3)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing what the tests need: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
echo "node $(node --version)"
echo "$(protoc --version)"

# Integration tests open a few thousand sockets in one process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec cargo test --workspace "$@"
