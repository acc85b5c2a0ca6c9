"""What the ingest pipeline checks each batch against, read in one query set."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text


@dataclass(frozen=True)
class EventInfo:
    id: int
    public_id: str
    name: str
    unit: str | None


@dataclass(frozen=True)
class Linkage:
    """Events linked to an enabled plugin instance (by public id, and by id in
    ``by_id``), and the running experiment as ``(id, public_id)``."""

    events: dict[str, EventInfo]
    experiment: tuple[int, str] | None
    by_id: dict[int, EventInfo] = field(init=False, repr=False, compare=False)  # the same events by id

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {info.id: info for info in self.events.values()})


def load_linkage(session) -> Linkage:
    rows = session.execute(text(
        "SELECT DISTINCT e.id, e.public_id, e.name, e.unit FROM events e "
        "JOIN channel_mappings m ON m.event_id = e.id "
        "JOIN plugin_instances p ON p.id = m.instance_id WHERE p.enabled = :t"
    ), {"t": True}).all()
    exp = session.execute(text(
        "SELECT id, public_id FROM experiments WHERE started_on IS NOT NULL AND stopped_on IS NULL "
        "ORDER BY started_on DESC LIMIT 1"
    )).first()
    return Linkage({r.public_id: EventInfo(r.id, r.public_id, r.name, r.unit) for r in rows},
                   (exp.id, exp.public_id) if exp else None)
