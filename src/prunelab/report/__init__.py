"""Reports read only the files of a run folder, never a model.

- ``plots`` / ``bandplots``: matplotlib charts of one run / of a summary with 95 % bands;
- ``markdown`` / ``summary``: report.md of one run / of a summary over seeds or runs;
- ``html``: the self-contained interactive report.html (Vega-Lite);
- ``speed``: the latency benchmark's plot and section;
- ``writer``: writes all of the above for a run folder.
"""
