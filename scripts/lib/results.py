"""The RESULT lines every benchmark prints for scripts/bench-all, and the table bench-all
prints from them.

A line is RESULT<TAB>figure<TAB>value<TAB>goal<TAB>met: goal is "-" (none) or an operator and a
number ("<= 0.1", ">= 0.9", "< 64"); met is yes or no, computed from the value as printed, or
"-" when there is no goal. scripts/lib/results.sh prints the same lines from shell.

    python3 results.py table LOG NAME...
reads a bench-all log (markers BENCH<TAB>start<TAB>name and
BENCH<TAB>end<TAB>name<TAB>exit status<TAB>seconds around each benchmark's output), prints a
Markdown table of the figures of NAME... in that order, with a row for each benchmark that
failed, printed no figure or never finished, and exits 1 if there was any such row."""
import operator
import sys

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def met(value, goal):
    """yes / no / - for a printed value against a goal such as "<= 0.1" """
    if goal == "-":
        return "-"
    op, bound = goal.split()
    try:
        return "yes" if _OPS[op](float(value), float(bound)) else "no"
    except ValueError:  # not a number (nan is one, and compares false)
        return "no"


def result(figure, value, goal="-", digits=2):
    """prints one RESULT line; value is a number, shown with `digits` decimals"""
    text = f"{value:.{digits}f}"
    print(f"RESULT\t{figure}\t{text}\t{goal}\t{met(text, goal)}", flush=True)


def table(log, names):
    rows, status, current = {n: [] for n in names}, {}, None
    with open(log, errors="replace") as f:
        for line in f:
            fields = line.rstrip("\r\n").split("\t")
            if fields[0] == "BENCH" and len(fields) >= 3:
                if fields[1] == "start":
                    current = fields[2]
                elif fields[1] == "end" and len(fields) == 5:
                    status[fields[2]] = (int(fields[3]), float(fields[4]))
                    current = None
            elif fields[0] == "RESULT" and len(fields) == 5 and current in rows:
                rows[current].append(fields[1:])
    failed = False
    out = []
    for name in names:
        out += rows[name]
        if name not in status:
            out.append([f"{name}: did not finish", "-", "-", "no"])
        elif status[name][0] == 124:  # bench-all's timeout
            out.append([f"{name}: FAILED (over its time limit)", "-", "-", "no"])
        elif status[name][0] != 0:
            out.append([f"{name}: FAILED (exit {status[name][0]})", "-", "-", "no"])
        elif not rows[name]:
            out.append([f"{name}: printed no figures", "-", "-", "no"])
        else:
            continue
        failed = True
    head = ["figure", "value", "goal", "met"]
    widths = [max(len(r[i]) for r in out + [head]) for i in range(4)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    print(line(head))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in out:
        print(line(r))
    print()
    print("wall time: " + ", ".join(f"{n} {status[n][1]:.0f} s" if n in status else f"{n} -"
                                    for n in names))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "table":
        sys.exit("usage: results.py table LOG NAME...")
    sys.exit(table(sys.argv[2], sys.argv[3:]))
