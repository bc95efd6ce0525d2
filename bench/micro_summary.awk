# Turns shmq_micro_bench's CSV (columns: table, benchmark, what is timed, ns / message (median),
# min - max, M msgs/s, runs) into summary rows (bench/harness.hpp, SummaryRow): one per benchmark.
BEGIN {
  OFS = "\t"
  print "section", "case", "system", "p50_ns", "p99_ns", "p999_ns", "max_ns", "msgs_per_s", "mb_per_s", "vs", "goal"
}
# Splits one CSV line (fields may be quoted, "" inside quotes is a quote) into f[1..n].
function split_csv(line, f,    n, i, c, field, quoted) {
  n = 1; field = ""; quoted = 0
  for (i = 1; i <= length(line); i++) {
    c = substr(line, i, 1)
    if (quoted) {
      if (c == "\"" && substr(line, i + 1, 1) == "\"") { field = field "\""; i++ }
      else if (c == "\"") quoted = 0
      else field = field c
    } else if (c == "\"") quoted = 1
    else if (c == ",") { f[n++] = field; field = "" }
    else field = field c
  }
  f[n] = field
  return n
}
NR == 1 { next }
{
  n = split_csv($0, f)
  if (f[1] != "micro_bench" || n < 7) next
  msgs = (f[6] ~ /^[0-9.]+$/) ? f[6] * 1e6 : ""
  vs = (f[4] ~ /^[0-9.]+$/) ? sprintf("%.1f ns per message (median of runs)", f[4]) : f[4]
  print "one thread, one process (Google Benchmark, Memory, Spin)", f[3], "shmq " f[2], "", "", "", "", msgs, "", vs, ""
}
