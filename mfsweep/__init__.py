"""mfsweep: MeanFlow ablation studies (Geng et al. 2025, arXiv 2505.13447) as one command."""

__version__ = "0.1.0"

from mfsweep.meanflow import MeanFlowLoss, meanflow_target  # noqa: E402
from mfsweep.sampling import make_time_grid, sample  # noqa: E402

__all__ = ["MeanFlowLoss", "meanflow_target", "make_time_grid", "sample", "__version__"]
