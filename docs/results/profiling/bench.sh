#!/usr/bin/env bash
# The cost of the SfBufNative events, with BenchmarkDotNet's default job:
#   SfBufBenchmarks.AllocKvaFree (sfbuf-i386, epoch-cache) on the tree before the events
#   (BEFORE, default 3d1031e) and on this tree, and TraceGuard*Benchmarks on this tree.
# Each tree is exported with git archive and built apart, since BenchmarkDotNet rebuilds the
# project it runs from source. Writes the reports BenchmarkDotNet wrote, unchanged, into
# docs/results/profiling/, and before-after.md from them. Takes about an hour on 2 cores.
# Usage: docs/results/profiling/bench.sh   (BEFORE=rev AFTER=rev to compare other trees)
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=$PWD/docs/results/profiling
before_rev=${BEFORE:-3d1031e}
after_rev=${AFTER:-HEAD}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
filters=("*SfBufBenchmarks.AllocKvaFree(*sfbuf-i386*" "*SfBufBenchmarks.AllocKvaFree(*epoch-cache*")
# REPORTS_ONLY=1: only write before-after.md from the reports already in docs/results/profiling/.
for side in before after; do
  [ "${REPORTS_ONLY:-0}" = 1 ] && break
  rev=$before_rev; [ "$side" = after ] && rev=$after_rev
  mkdir -p "$work/$side"
  git archive "$rev" | tar -x -C "$work/$side"
  (cd "$work/$side" && dotnet build -c Release perf > build.log)
  extra=(); [ "$side" = after ] && extra=("*TraceGuard*")
  (cd "$work/$side" && dotnet run -c Release --no-build --project perf -- bench --filter "${filters[@]}" "${extra[@]}" > bench.log)
  for report in "$work/$side"/BenchmarkDotNet.Artifacts/results/*-report-github.md; do
    name=$(basename "$report" | sed 's/^Native\.Perf\.Benchmarks\.//')
    cp "$report" "$out/$side-$name"
  done
done
{
  echo "# SfBufBenchmarks.AllocKvaFree before and after the events"
  echo
  echo "Written by docs/results/profiling/bench.sh from the BenchmarkDotNet reports beside this file (before = $before_rev, after = ${AFTER_LABEL:-$(git rev-parse --short "$after_rev")}): default job, one run each, on a 2-core host shared with other builds."
  echo
  echo "## Before"
  echo
  cat "$out/before-SfBufBenchmarks-report-github.md"
  echo
  echo "## After"
  echo
  cat "$out/after-SfBufBenchmarks-report-github.md"
} > "$out/before-after.md"
echo "wrote $out/before-after.md and the reports beside it"
