"""Analysis of mfsweep studies from MLflow alone (never imports the training code).

    analysis.load     load_study, tidy, history, trials: MLflow runs → pandas
    analysis.tables   metric-versus-NFE tables (Markdown, LaTeX, HTML, CSV)
    analysis.paper    the MeanFlow paper's Table 1 / Table 5 numbers
    analysis.plots    seaborn figures (metric vs NFE / step, samples per variant)
    analysis.report   write_report(...) and `python -m analysis.report STUDY`
    analysis.ui       ui_command / start_ui: the MLflow UI on a tracking store

Submodules are imported on demand so `import analysis` stays light (no matplotlib).
"""

__all__ = ["load", "paper", "plots", "report", "tables", "ui"]
