"""Repository-wide pytest settings for `make notebooks` (nbval).

nbval waits a fixed 5 s for a cell's outputs after the kernel has replied, with no option to change it. On
a loaded 2-core machine that wait was once exceeded after a cell that had finished correctly (notebook 04,
loading a bitsandbytes model; 2026-11-23), failing the run and skipping the rest of the notebook. The
cell's own time limit stays `--nbval-cell-timeout`; only this wait for already-produced output is raised.
"""

NBVAL_OUTPUT_TIMEOUT_S = 60


def pytest_collection_modifyitems(items):
    for item in items:
        if type(item).__name__ == "IPyNbCell" and hasattr(item, "output_timeout"):
            item.output_timeout = max(item.output_timeout, NBVAL_OUTPUT_TIMEOUT_S)
