"""Flow: import the registry files a federation hands over (档案导入)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow

from sibifang.import_registry import ORDER
from tasks.import_registry import import_file_task

FILE_STEMS = {"areas": "areas", "households": "households", "cadres": "cadres", "meters": "meters",
              "visits": "visits", "resources": "resources", "mediation_rooms": "mediation_rooms"}


def registry_files(directory: Path) -> list[tuple[str, Path]]:
    """The files of a hand-over directory in import order; CSV is taken where both CSV and XLSX exist."""
    found = []
    for kind in ORDER:
        for ext in (".csv", ".xlsx"):
            p = directory / f"{FILE_STEMS[kind]}{ext}"
            if p.exists():
                found.append((kind, p))
                break
    return found


def _import_one(kind: str, path: str, now: datetime | None = None, history: bool = False) -> dict:
    """One file; a file that cannot be imported at all is recorded with its report (``rejected``)
    and the hand-over goes on with the next file (the file itself stays where it is)."""
    from schemas.validation import DataContractError
    from tasks.import_registry import record_rejected_file

    state = import_file_task(kind, path, now=now, history=history, return_state=True)
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    if not isinstance(error, DataContractError):
        raise error
    return record_rejected_file(kind, path, error)


@flow(name="import_registry", description="Validate and import registry files: areas, households, cadres, "
      "meters, visits, resources, mediation rooms. Bad rows are quarantined with their reason.")
def import_registry(directory: str | None = None, kind: str | None = None, file: str | None = None,
                    now: datetime | None = None) -> list[dict]:
    """``now``: the moment the import acts for (default: the clock): the families it registers
    first are on the register from then (a hand-over loaded for days replayed after it, the demo's)."""
    if file:
        if not kind:
            raise ValueError("importing one file needs its kind (households, cadres, ...)")
        return [_import_one(kind, file, now)]
    if not directory:
        raise ValueError("give a directory of registry files or one file with its kind")
    results = []
    for k, p in registry_files(Path(directory)):
        # Sequential on purpose: households reference grids, cadres reference grids, ...
        # A hand-over directory: its visits are the history, recorded when they were made.
        results.append(_import_one(k, str(p), now, history=True))
    return results
