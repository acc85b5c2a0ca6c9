"""Server life cycle pieces: housekeeping retention."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from webmacs.models import IngestBatch, Webhook, WebhookDelivery, utcnow


async def test_housekeeping_prunes_old_batch_ids_and_finished_deliveries(server):
    old = utcnow() - timedelta(days=40)

    def seed(session):
        hook = Webhook(url="http://127.0.0.1:9/x", events="[]")
        session.add(hook)
        session.flush()
        session.add_all([
            IngestBatch(sender="user:1", batch_id="old", accepted=1, rejected=0, created_on=old),
            IngestBatch(sender="user:1", batch_id="new", accepted=1, rejected=0),
            WebhookDelivery(webhook_id=hook.id, event_type="sensor.reading", payload="{}", status="delivered",
                            created_on=old),
            WebhookDelivery(webhook_id=hook.id, event_type="sensor.reading", payload="{}", status="dead_letter",
                            created_on=old),
            WebhookDelivery(webhook_id=hook.id, event_type="sensor.reading", payload="{}", status="pending",
                            created_on=old),
            WebhookDelivery(webhook_id=hook.id, event_type="sensor.reading", payload="{}", status="delivered"),
        ])

    db = server.services.db
    await db.session(seed)
    await server.services._housekeeping()

    def counts(session):
        batches = session.execute(select(IngestBatch.batch_id)).scalars().all()
        statuses = sorted(session.execute(select(WebhookDelivery.status)).scalars().all())
        return batches, statuses

    batches, statuses = await db.session(counts)
    assert batches == ["new"]
    assert statuses == ["delivered", "pending"]  # old pending ones are still to be delivered
    assert await db.session(lambda s: s.execute(select(func.count()).select_from(Webhook)).scalar()) == 1


async def test_access_log_redacts_tokens(server, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="tornado.access")
    sock = await server.ws("/ws/datapoints/stream")
    sock.close()
    await server.request("GET", f"/api/v1/events?token={server.admin_token}")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "tornado.access")
    assert "/ws/datapoints/stream?token=***" in text
    assert server.admin_token not in text
