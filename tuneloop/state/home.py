"""The run-state home folder (``--home``, default ``./.tuneloop``) and where everything lives in it.

Layout::

    <home>/
      bentoml/models/...   BentoML model store (every trained model, one version per tag)
      champion.json        the champion pointer: which tag serves (atomic replace on promotion)
      traffic.db           SQLite (WAL): predictions, feedback, monitor decisions (the default store;
                           ``--db-url`` / ``$TUNELOOP_DB_URL`` puts them in PostgreSQL instead)
      evidently/           Evidently workspace (one project, a snapshot per monitoring window)
      reports/             monitoring reports, HTML + JSON per window
      runs/<run-id>/       demo runs: report.json and the data files each run made
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path(".tuneloop")
HOME_ENV = "TUNELOOP_HOME"
DB_URL_ENV = "TUNELOOP_DB_URL"
DB_URL_HELP = (  # the --db-url option's help, the same in every command that opens the traffic store
    "Traffic store (predictions, feedback, monitor decisions and state) as a SQLAlchemy URL. Default: "
    "SQLite at <home>/traffic.db (one machine). For several replicas or hosts: PostgreSQL, "
    "postgresql+psycopg://user:password@host:5432/dbname. Prefer the TUNELOOP_DB_URL variable: a "
    "password on the command line shows in `ps`; logs print the URL with the password masked."
)


@dataclass(frozen=True)
class Home:
    """Paths inside one tuneloop home folder. Creating the object touches nothing on disk.

    Args:
        root: the home folder; relative paths are made absolute at construction.
        db_url: SQLAlchemy URL of the traffic store (predictions, feedback, decisions, monitor state),
            e.g. ``postgresql+psycopg://user:pass@host/db``; None: SQLite at ``<root>/traffic.db``.
    """

    root: Path
    db_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @classmethod
    def from_env(cls, default: Path | str = DEFAULT_HOME) -> Home:
        """The home named by ``$TUNELOOP_HOME``, else ``default``; its store from ``$TUNELOOP_DB_URL``
        when set."""
        return cls(Path(os.environ.get(HOME_ENV, str(default))), db_url=os.environ.get(DB_URL_ENV) or None)

    @property
    def bentoml_dir(self) -> Path:
        return self.root / "bentoml"

    @property
    def models_dir(self) -> Path:
        return self.bentoml_dir / "models"

    @property
    def champion_path(self) -> Path:
        return self.root / "champion.json"

    @property
    def traffic_db_path(self) -> Path:
        return self.root / "traffic.db"

    @property
    def store_url(self) -> str:
        """SQLAlchemy URL of the traffic store: ``db_url``, else ``sqlite:///<root>/traffic.db``."""
        return self.db_url or f"sqlite:///{self.traffic_db_path}"

    @property
    def evidently_dir(self) -> Path:
        return self.root / "evidently"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def ensure(self) -> Home:
        """Create the folders of the layout (idempotent) and return self."""
        for path in (self.models_dir, self.evidently_dir, self.reports_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def env(self) -> dict[str, str]:
        """Environment variables that point a child process (``bentoml serve``, the monitor) here."""
        env = {HOME_ENV: str(self.root), "BENTOML_HOME": str(self.bentoml_dir), "BENTOML_DO_NOT_TRACK": "true"}
        if self.db_url:
            env[DB_URL_ENV] = self.db_url
        return env
