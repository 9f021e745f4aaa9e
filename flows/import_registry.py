"""Flow: import the registry files a federation hands over (档案导入)."""

from __future__ import annotations

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


@flow(name="import_registry", description="Validate and import registry files: areas, households, cadres, "
      "meters, visits, resources, mediation rooms. Bad rows are quarantined with their reason.")
def import_registry(directory: str | None = None, kind: str | None = None, file: str | None = None,
                    database_url: str | None = None) -> list[dict]:
    if file:
        if not kind:
            raise ValueError("importing one file needs its kind (households, cadres, ...)")
        return [import_file_task(kind, file, database_url)]
    if not directory:
        raise ValueError("give a directory of registry files or one file with its kind")
    results = []
    for k, p in registry_files(Path(directory)):
        # Sequential on purpose: households reference grids, cadres reference grids, ...
        results.append(import_file_task(k, str(p), database_url))
    return results
