"""Run REDbot (its Python API, as its own CLI does) on one URL; print its notes as JSON lines.

    python tests/support/redbot_notes.py URL

Each line: {"name": the note's class, "level": good|info|warning|bad, "summary": ...}, subnotes included.
"""

from __future__ import annotations

import json
import sys
from configparser import ConfigParser

import thor
from redbot.resource import HttpResource


def notes_of(url: str) -> list[dict[str, str]]:
    config = ConfigParser()
    config.read_dict({"redbot": {"enable_local_access": "True"}})
    resource = HttpResource(config["redbot"])
    resource.set_request(url)

    @thor.events.on(resource)
    def check_done() -> None:
        thor.stop()

    resource.check()
    thor.run()
    if resource.fetch_error is not None:
        raise SystemExit(f"REDbot could not fetch {url}: {resource.fetch_error.desc}")
    found = []
    pending = list(resource.response.notes)
    while pending:
        note = pending.pop(0)
        level = note.level.value if note.level is not None else "none"
        found.append({"name": type(note).__name__, "level": level, "summary": note.summary})
        pending.extend(note.subnotes)
    return found


if __name__ == "__main__":
    for note in notes_of(sys.argv[1]):
        print(json.dumps(note))
