"""Reads run directories (files only: no torch, no simulation) and writes what a researcher reads.

runs.py      the one reader of run results (a run, or a sweep of runs)
paper.py     the papers' numbers, in one place
tables.py    the tables beside the papers'; compare.py means, intervals, paired differences
report.py    report/ (HTML, Markdown, CSV, plots); plots.py the plots
attacks.py   the attack records and the referee's image grids, as the report reads them
"""
