"""``GET /api/v1/experiments/{id}/export/csv``: the experiment's datapoints as CSV,
streamed page by page with constant memory (:class:`webmacs.storage.export.CsvExport`).
``?bom=true`` puts a UTF-8 byte order mark first, so spreadsheet programs that
guess the encoding (Excel) read units such as ``°C`` right.

While one page goes out the next is read on the database executor; no connection
or thread is held between pages, so a slow client costs nothing but its socket.

``POST /api/v1/experiments/{id}/export/ticket``: a download URL for a browser, which
cannot put an ``Authorization`` header on a plain navigation (and must not put its bearer
token in a URL). The answer's ``url`` carries a *download token*
(:class:`webmacs.security.DownloadTickets`: signed, bound to this experiment and user,
60 s, one download). The browser navigates to the URL and saves the streamed file, so a
multi-million-row export never sits in the page's memory. See docs/webapp.md.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

from tornado.iostream import StreamClosedError

from webmacs.handlers.base import ApiError, BaseHandler, authenticated
from webmacs.security import DOWNLOAD_SECONDS
from webmacs.storage.export import CsvExport, csv_header, export_filename
from webmacs.storage.export import plan as export_plan

log = logging.getLogger("webmacs.export")

UTF8_BOM = "\ufeff".encode("utf-8")


class ExperimentCsvTicketHandler(BaseHandler):
    @authenticated()
    async def post(self, public_id: str) -> None:
        if await self.db.session(export_plan, public_id) is None:
            raise ApiError(404, "Experiment not found.")
        token = self.services.downloads.issue(public_id, self.principal.public_id)
        bom = "&bom=true" if self.bool_arg("bom", False) else ""
        self.send({"url": f"/api/v1/experiments/{quote(public_id, safe='')}/export/csv?token={token}{bom}",
                   "expires_in": DOWNLOAD_SECONDS}, 201)


class ExperimentCsvHandler(BaseHandler):
    async def get(self, public_id: str) -> None:
        token = self.get_query_argument("token", None)
        if token is None:
            await self._with_bearer(public_id)
            return
        if not self.services.downloads.redeem(token, public_id):
            raise ApiError(401, "Invalid, expired or already used download token.")
        await self._export(public_id)

    @authenticated()
    async def _with_bearer(self, public_id: str) -> None:
        await self._export(public_id)

    async def _export(self, public_id: str) -> None:
        bom = self.bool_arg("bom", False)
        plan = await self.db.session(export_plan, public_id)
        if plan is None:
            raise ApiError(404, "Experiment not found.")
        export = CsvExport(self.db, plan.experiment_id, plan.events, plan.lo, plan.hi)

        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{export_filename(plan.name, public_id)}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.write(UTF8_BOM + csv_header() if bom else csv_header())
        pending = None
        try:
            await self.flush()  # headers and the CSV header row go out at once
            pending = asyncio.ensure_future(self.db.run(export.next_page))
            while pending is not None:
                chunk = await pending
                # fetch the next page (a task: it starts now) while this one goes out
                pending = None if export.done else asyncio.ensure_future(self.db.run(export.next_page))
                if chunk:
                    self.write(chunk)
                    await self.flush()
        except StreamClosedError:
            log.info("CSV export of %s: client went away after %d rows", public_id, export.rows)
            await _settle(pending)
            return
        except Exception:
            # Headers are out: a clean end would pass a truncated file off as
            # complete. Drop the connection so the client sees an incomplete body.
            log.exception("CSV export of %s failed after %d rows", public_id, export.rows)
            await _settle(pending)
            self.request.connection.close()
            try:
                self.finish()  # bookkeeping only: the stream is closed, nothing is written
            except Exception:  # noqa: BLE001
                pass
            return
        log.info("CSV export of %s: %d rows in %d pages", public_id, export.rows, export.pages)
        self.finish()


async def _settle(future) -> None:
    """Wait out a page fetch still running (its result is not needed)."""
    if future is not None:
        try:
            await future
        except Exception:  # noqa: BLE001 - already failing; nothing to add
            pass


default_handlers = [
    (r"/api/v1/experiments/([^/]+)/export/csv", ExperimentCsvHandler),
    (r"/api/v1/experiments/([^/]+)/export/ticket", ExperimentCsvTicketHandler),
]
