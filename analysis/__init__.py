"""Analysis of mfsweep studies from MLflow alone (never imports the training code).

    analysis.load     load_study, tidy, history, trials: MLflow runs → pandas
    analysis.tables   metric-versus-NFE tables (Markdown, LaTeX, HTML, CSV) with seed intervals and
                      paired differences against a baseline
    analysis.stats    t-intervals, paired differences, seeds needed (pure functions)
    analysis.search   search studies: leaderboard, best config, importance, history, Optuna journal
    analysis.paper    the MeanFlow paper's numbers (Tables 1, 2, 3, 5)
    analysis.plots    seaborn figures (metric vs NFE / step, samples per variant)
    analysis.search_plots  parameter effects, parallel coordinates, importance, search history
    analysis.report   write_report(...) and `python -m analysis.report STUDY`
    analysis.ui       ui_command / start_ui: the MLflow UI on a tracking store

Submodules are imported on demand so `import analysis` stays light (no matplotlib).
"""

__all__ = ["load", "paper", "plots", "report", "search", "search_plots", "stats", "tables", "ui"]
