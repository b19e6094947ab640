"""Time synthetic-phantom generation at the real dataset geometries (target: MBAS < 2 s on 2 cores).

There is no peer to compare with, so the table shows our time against the target.
Usage: python bench/run_phantom.py [--repeats 5]
"""
import argparse

from benchlib import add_results_option, save, table, time_call

from c2w_fast.data.phantom import GEOMETRIES, make_phantom

TARGET_S = {"mbas": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="phantoms timed per layout (default 5)")
    add_results_option(parser)
    args = parser.parse_args()
    rows = []
    for layout in ("mbas", "lasc"):
        shape, spacing = GEOMETRIES[layout]
        seeds = iter(range(10**6))
        timing = time_call(lambda: make_phantom(shape, spacing, seed=next(seeds), label_right_atrium=layout != "lasc"),
                           repeats=args.repeats)
        target = TARGET_S.get(layout)
        rows.append({"case": f"{layout} {'x'.join(map(str, shape))} @ {spacing} mm",
                     "median_s": timing["median_ms"] / 1e3, "min_s": timing["min_ms"] / 1e3,
                     "target_s": target if target else "-",
                     "met": ("yes" if timing["median_ms"] / 1e3 < target else "NO") if target else "-"})
    printed = table(rows, ["case", "median_s", "min_s", "target_s", "met"])
    print(printed)
    print("saved", save("phantom_cpu", {"rows": rows}, printed, args.results))


if __name__ == "__main__":
    main()
