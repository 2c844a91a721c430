# shellcheck shell=bash
# The RESULT lines of scripts/lib/results.py, from shell (source this file).

# result FIGURE VALUE [GOAL]: VALUE as it should be shown; GOAL "-" or e.g. "<= 0.1"; met is
# computed from VALUE as shown, as results.py does.
result() {
    local goal=${3:--} met=-
    if [ "$goal" != - ]; then
        met=$(awk -v v="$2" -v g="$goal" 'BEGIN {
            split(g, p, " "); b = p[2] + 0
            if (v !~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/) { print "no"; exit }
            v += 0
            ok = p[1] == "<=" ? v <= b : p[1] == "<" ? v < b : p[1] == ">=" ? v >= b : v > b
            print ok ? "yes" : "no" }')
    fi
    printf 'RESULT\t%s\t%s\t%s\t%s\n' "$1" "$2" "$goal" "$met"
}

# wrk_results FILE LABEL CONNECTIONS: from wrk --latency output, the figure its run is for:
# with one connection the latency a caller sees (median, ms), with more the requests per second.
wrk_results() {
    if [ "$3" == 1 ]; then
        result "$2: latency median (ms)" "$(awk '$1 == "50%" { v = $2; u = v; sub(/^[0-9.]+/, "", u)
            v += 0; printf "%.3f", u == "us" ? v / 1000 : u == "s" ? v * 1000 : u == "m" ? v * 60000 : v }' "$1")"
    else
        result "$2: requests/s" "$(awk '/^Requests\/sec:/ { print $2 }' "$1")"
    fi
}
