"""Keep every window's Evidently snapshot in a local Evidently Workspace, so ``evidently ui`` shows history.

Layout (Evidently's own): ``<workspace_dir>/<project-uuid>/{metadata.json, dashboard.json,
snapshots/<snapshot-uuid>.json}``. Browse it with
``evidently ui --workspace <home>/evidently --host 127.0.0.1`` (api-notes §2.6; the default host is
127.0.0.1, keep it). The first call for a project name creates the project and its dashboard: a "Drift"
tab with one line panel per drift score and a "Performance" tab (estimated and feedback accuracy).
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.monitoring.drift import WindowReport

# (tab, panel title, Evidently metric, its labels) -- the metrics build_snapshot puts in every report
PANELS = (
    ("Drift", "Text drift: domain classifier ROC AUC", "ValueDrift", {"column": "text"}),
    ("Drift", "Text length: K-S p-value", "ValueDrift", {"column": "text_length"}),
    ("Drift", "Out-of-vocabulary share: K-S p-value", "ValueDrift", {"column": "oov_share"}),
    ("Drift", "Non-letter share: K-S p-value", "ValueDrift", {"column": "non_letter_share"}),
    ("Drift", "Embedding drift (champion embeddings)", "EmbeddingsDriftScore", {"embeddings_name": "champion"}),
    ("Drift", "Predicted-label drift: permutation p-value", "ValueDrift", {"column": "label"}),
    ("Drift", "Confidence drift: K-S p-value", "ValueDrift", {"column": "confidence"}),
    ("Performance", "Estimated accuracy: CBPE (mean calibrated confidence)", "MeanValue",
     {"column": "calibrated_confidence"}),
    ("Performance", "Estimated accuracy: ATC (share above the threshold)", "MeanValue",
     {"column": "above_atc_threshold"}),
    ("Performance", "Accuracy on feedback labels", "MeanValue", {"column": "correct"}),
)
DRIFT_PANELS = tuple((title, labels["column"]) for tab, title, metric, labels in PANELS if metric == "ValueDrift")


def _add_dashboard(ws, project) -> None:
    """Two tabs ("Drift", "Performance"), one line panel per signal."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    for tab, title, metric, labels in PANELS:
        legend = next(iter(labels.values()))
        project.dashboard.add_panel(
            line_plot_panel(title=title, values=[PanelMetric(legend=legend, metric=metric, metric_labels=labels)]),
            tab=tab,
        )
    # Evidently 0.7.23 bug: add_panel() on an existing tab appends the panel id to it twice (the UI
    # would draw every panel after the first twice). Deduplicate and save once more.
    model = project.dashboard.model()
    for tab in model.tabs:
        tab.panels = list(dict.fromkeys(tab.panels))
    ws.save_dashboard(project.id, model)


def add_to_workspace(report: WindowReport, workspace_dir: Path, project_name: str = "tuneloop-monitoring",
                     run_name: str | None = None) -> str:
    """Store ``report``'s snapshot in the workspace project ``project_name`` (created when missing).

    Args:
        report: a ``compute_signals`` result that still holds its snapshot.
        workspace_dir: the workspace folder (``Home.evidently_dir``); created when missing.
        project_name: project to add to; the first project with this name is used.
        run_name: optional snapshot name shown in the UI (e.g. ``"window 12"``).

    Returns:
        The snapshot id (str).

    Raises:
        ValueError: the report carries no snapshot.
    """
    if report.snapshot is None:
        raise ValueError("report has no Evidently snapshot; pass the WindowReport compute_signals returned")
    from evidently.ui.workspace import Workspace

    Path(workspace_dir).mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(workspace_dir))
    found = ws.search_project(project_name)
    if found:
        project = found[0]
    else:
        project = ws.create_project(project_name, description="tuneloop: live traffic vs the champion's reference")
        _add_dashboard(ws, project)
    ref = ws.add_run(project.id, report.snapshot, include_data=False, name=run_name)
    return str(ref.id)

