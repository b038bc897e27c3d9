"""Studies: run folders, sweeps over methods and sparsities, several seeds, statistics.

- ``runfolder``: the files of a run folder (config, model, history, results, bench tables);
- ``sweep``: train if needed, prune with every method at every sparsity, evaluate;
- ``seeds`` / ``multiseed``: several seeds in worker processes, multi-seed folders;
- ``aggregate`` / ``stats``: summaries over seeds, t-intervals, paired differences, AUC;
- ``compare``: one summary across run folders on the same test set;
- ``speed`` / ``deploy``: latency of every backend on a run's pruned models; model files;
- ``memory``: peak memory of a block of code.
"""
