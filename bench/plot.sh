#!/usr/bin/env bash
# Plots shmq_pingpong's summary rows with gnuplot: one PNG, two panels.
#   top:    one-way latency p50 / p99 / p99.9 of 64-byte messages per system (log scale, ns)
#   bottom: throughput in MB/s per system and message size, memcpy beside them (log scale)
# usage: bench/plot.sh PINGPONG_SUMMARY_TSV OUT_PNG "TITLE"
# Needs gnuplot (Debian: gnuplot-nox; `make bench` installs it). Prints nothing on success.
set -euo pipefail
tsv=$1 png=$2 title=${3:-shmq benchmarks}
command -v gnuplot >/dev/null || { echo "plot.sh: gnuplot not installed (apt-get install gnuplot-nox)" >&2; exit 2; }
work="$(mktemp -d /tmp/shmq-plot-XXXXXX)"
trap 'rm -rf "$work"' EXIT

# Latency at 64 B: "system" p50 p99 p99.9, systems with a latency only.
awk -F'\t' 'NR > 1 && $2 == "64 B" && $4 != "" { printf "\"%s\" %s %s %s\n", $3, $4, $5, $6 }' "$tsv" >"$work/latency.dat"

# Throughput: one line per system, one column per message size, in the order they appear ("-": none).
awk -F'\t' '
  NR > 1 {
    if (!($2 in size_seen)) { size_seen[$2] = 1; sizes[++ns] = $2 }
    if (!($3 in sys_seen)) { sys_seen[$3] = 1; systems[++nsys] = $3 }
    if ($9 != "") v[$3, $2] = $9
  }
  END {
    printf "system"; for (i = 1; i <= ns; i++) printf " \"%s\"", sizes[i]; printf "\n"
    for (j = 1; j <= nsys; j++) {
      printf "\"%s\"", systems[j]
      for (i = 1; i <= ns; i++) printf " %s", ((systems[j], sizes[i]) in v) ? v[systems[j], sizes[i]] : "-"
      printf "\n"
    }
  }' "$tsv" >"$work/throughput.dat"
sizes=$(head -1 "$work/throughput.dat" | awk '{ print NF - 1 }')

gnuplot <<GP
set terminal pngcairo size 1400,1100 font "sans,10"
set output "$png"
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set grid ytics
set key top left
set xtics rotate by -25 noenhanced
set multiplot layout 2,1 title "$title" noenhanced
set title "One-way latency, 64-byte messages, two pinned processes (ping-pong RTT / 2): lower is better"
set ylabel "ns (log scale)"
plot "$work/latency.dat" using 2:xtic(1) title "p50", '' using 3 title "p99", '' using 4 title "p99.9"
set title "Throughput by message size, every message checked (memcpy: one core copying, no check): higher is better"
set ylabel "MB/s of payload (log scale)"
plot for [i=2:$((sizes + 1))] "$work/throughput.dat" using i:xtic(1) title columnheader(i)
unset multiplot
GP
