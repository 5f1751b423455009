#!/usr/bin/env bash
# The shared store for GPU runs: the GPU machine has no network and no Redis, so Debian's redis-server and
# redis-cli travel with the checkout, with the shared libraries they load (not the C library's own).
#   bash scripts/gpu/make-redis-kit.sh [DEST]     DEST default: <checkout>/.gpu-redis (ignored by git)
# There: bash DEST/redis/run.sh redis-server --port 6390 ...   (run.sh sets LD_LIBRARY_PATH)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEST=${1:-$ROOT/.gpu-redis}
grep -qxF "/.gpu-redis/" "$ROOT/.git/info/exclude" 2>/dev/null || echo "/.gpu-redis/" >> "$ROOT/.git/info/exclude"
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
rm -rf "$DEST/redis" && mkdir -p "$DEST/redis/bin" "$DEST/redis/lib"
cp "$(command -v redis-server)" "$(command -v redis-cli)" "$DEST/redis/bin/"
for bin in "$DEST"/redis/bin/*; do
    ldd "$bin" | awk '/=> \//{print $3}' | grep -vE '/(libc|libm|libpthread|libdl|ld-linux[^/]*)\.so' \
        | xargs -r cp -n -t "$DEST/redis/lib/"
done
cat > "$DEST/redis/run.sh" <<'RUN'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
cmd=$1; shift
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/$cmd" "$@"
RUN
chmod +x "$DEST/redis/run.sh"
du -sh "$DEST/redis"
bash "$DEST/redis/run.sh" redis-server --version
