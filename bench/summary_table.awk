# Renders the run's summary rows (tab-separated, one file per benchmark; the columns are described
# in bench/harness.hpp, SummaryRow) as one markdown table, then lists every goal with its verdict.
# usage: awk -f summary_table.awk pingpong.summary.tsv consumers.summary.tsv ...
BEGIN { FS = "\t" }

# 1234567 -> "1234567"; 95.4 -> "95"; 3.2 -> "3.2"; "" -> "-"
function ns(v) {
  if (v == "") return "-"
  return (v + 0 >= 10) ? sprintf("%.0f", v) : sprintf("%.1f", v)
}
function rate(v) {
  if (v == "") return "-"
  if (v + 0 >= 1e6) return sprintf("%.2f M", v / 1e6)
  if (v + 0 >= 1e4) return sprintf("%.0f k", v / 1e3)
  return sprintf("%.0f", v)
}
function mb(v) {
  if (v == "") return "-"
  return (v + 0 >= 100) ? sprintf("%.0f", v) : sprintf("%.2f", v)
}

FNR == 1 { next }  # each file's header line
{
  section = $1; kase = $2
  show_section = (section != last_section) ? "**" section "**" : ""
  show_case = (section != last_section || kase != last_case) ? kase : ""
  if (!printed_header) {
    print "| section | case | system | p50 (ns) | p99 (ns) | p99.9 (ns) | max (ns) | msgs/s | MB/s | ratios (shmq / this unless said) | goals |"
    print "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"
    printed_header = 1
  }
  printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", show_section, show_case, $3, ns($4), ns($5),
         ns($6), ns($7), rate($8), mb($9), ($10 == "" ? "-" : $10), verdicts($11)
  last_section = section; last_case = kase
  n = split($11, parts, "; ")
  for (k = 1; k <= n; k++) {  # the list below the table: "case, system: goal: verdict"
    g = parts[k]
    if (index(g, kase " ") == 1) g = substr(g, length(kase) + 2)  # the case is said once
    goals[++ngoals] = kase ", " $3 ": " g
  }
}
# A row's goals in the table: how many are met and missed (each is listed below the table).
function verdicts(text,    n, k, parts, met, missed) {
  if (text == "") return "-"
  n = split(text, parts, "; ")
  for (k = 1; k <= n; k++) {
    if (parts[k] ~ /: met$/) met++
    else if (parts[k] ~ /MISSED/) missed++
  }
  return (met + 0) " met, " (missed + 0) " MISSED" ((missed + 0) ? " (below)" : "")
}
END {
  if (!printed_header) { print "(no figures)"; exit }
  met = 0; missed = 0; na = 0
  print ""
  print "Goals, from the figures above (never asserted):"
  for (i = 1; i <= ngoals; i++) {
    print "- " goals[i]
    if (goals[i] ~ /: met$/) met++
    else if (goals[i] ~ /MISSED/) missed++
    else na++
  }
  printf "\n%d goals met, %d MISSED%s.\n", met, missed, (na ? ", " na " without a figure" : "")
}
