#!/bin/sh
# A hook module whose top-level await never settles.
#   sh test/audit/dependencies/hook-load-hang.sh      (after `npx tsc -b`)
# Expected: the relay refuses to start, exit code 2, naming the file (HOOKS.md, "Writing a hook module").
# Found before the fix: exit code 0 and no message at all (nothing kept Node's event loop alive);
# with a timer alive in the module (second case), the relay waits before listening for good.
set -u
dir=$(mktemp -d) data=$(mktemp -d)
trap 'rm -rf "$dir" "$data"' EXIT
relay="$(dirname "$0")/../../../relay/dist/main.js"
echo 'await new Promise(() => {}); export default 1' > "$dir/stuck.mjs"
timeout 60 node "$relay" --dev --port 0 --data-dir "$data" --hooks "$dir" >/dev/null 2>"$dir/err"
echo "never-settling import: exit $? ($(cat "$dir/err"))"
echo 'setInterval(() => {}, 1000); await new Promise(() => {}); export default 1' > "$dir/stuck.mjs"
timeout 60 node "$relay" --dev --port 0 --data-dir "$data" --hooks "$dir" >/dev/null 2>"$dir/err"
echo "never-settling import, loop kept alive: exit $? (124 = still waiting after 60 s) ($(cat "$dir/err"))"
