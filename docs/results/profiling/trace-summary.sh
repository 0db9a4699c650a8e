#!/usr/bin/env bash
# Writes docs/results/profiling/trace-summary.{md,json} (and their tables into docs/profiling.md): the SfBufNative events of a quick
# perf paper run, taken with the documented dotnet-trace recipe (docs/profiling.md).
# Run from the repository root after `dotnet build -c Release Native.sln`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=docs/results/profiling
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dotnet tool restore > /dev/null
dotnet dotnet-trace collect --providers SfBufNative:0x1FF:5 -o "$tmp/trace.nettrace" -- \
  dotnet perf/bin/Release/net10.0/perf.dll paper --quick --in-process --repeat 1 --cpus 2 \
  --strategies sfbuf-i386 epoch-cache --experiments pipe sendfile-cold md-rand > "$tmp/collect.log"
dotnet perf/bin/Release/net10.0/perf.dll trace-summary "$tmp/trace.nettrace" \
  --markdown "$out/trace-summary.md" --json "$out/trace-summary.json" > /dev/null
# docs/profiling.md renders its tables from the JSON.
dotnet perf/bin/Release/net10.0/perf.dll report > /dev/null
echo "wrote $out/trace-summary.md, $out/trace-summary.json and the tables of docs/profiling.md"
