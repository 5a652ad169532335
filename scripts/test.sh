#!/usr/bin/env bash
# Runs every Hull test project and prints one closing line: "tests: N passed, N failed".
# Usage: scripts/test.sh [filter]   (filter is passed to dotnet test --filter)
set -uo pipefail
cd "$(dirname "$0")/.."
filter=${1:-}
passed=0; failed=0; skipped=0
mkdir -p artifacts/test-results
for proj in tests/*/*.csproj; do
  name=$(basename "$proj" .csproj)
  [ "$name" = "Hull.TestSupport" ] && continue
  # Helper programs and libraries next to the test projects (e.g. tests/Hull.Seccomp.Probe) are not test projects.
  grep -q "Microsoft.NET.Test.Sdk" "$proj" || continue
  log="artifacts/test-results/$name.log"
  echo "== $name"
  args=(test "$proj" -c Release --nologo --logger "console;verbosity=normal" --results-directory artifacts/test-results)
  [ -n "$filter" ] && args+=(--filter "$filter")
  dotnet "${args[@]}" >"$log" 2>&1
  rc=$?
  # vstest's closing block: "Total tests: N" then "Passed: N", "Failed: N", "Skipped: N" lines.
  if ! grep -qE "^Total tests: [0-9]+" "$log"; then
    if grep -q "No test matches" "$log"; then echo "   no tests matched"; continue; fi
    echo "   $name did not run (exit $rc); the end of its log:"; tail -30 "$log" | sed 's/^/   /'
    failed=$((failed + 1)); continue
  fi
  count() { sed -n '/^Total tests:/,$p' "$log" | grep -E "^ +$1: +[0-9]+" | tail -1 | grep -oE "[0-9]+" || echo 0; }
  p=$(count Passed); f=$(count Failed); s=$(count Skipped)
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  echo "   passed $p, failed $f, skipped $s"
  if [ "$f" != "0" ]; then grep -E "^\s+Failed |Error Message|^\s+(Assert|System\.|Hull\.)" "$log" | head -60 | sed 's/^/   /'; fi
done
echo "tests: $passed passed, $failed failed, $skipped skipped" | tee artifacts/test-results/summary
[ "$failed" = "0" ]
