"""C-STORE SCU: the ``dimse`` sender of store-and-forward (R-A2 SCU side, R-B2, R-B3).

One association per forwarding job (per study): the presentation contexts proposed are
the C-MOVE ones (``contexts.move_contexts``: each SOP class with its stored transfer
syntax, plus uncompressed fallbacks). Each instance is read through the one retrieve path
(``RetrieveService.object_chunks``, sha256-checked; the next one read ahead) and sent
with the same bit-exact path as C-MOVE sub-operations (``net.Outgoing``: the data set bytes as
stored when the peer accepted that transfer syntax, otherwise a verified lossless
transcode). TCP_NODELAY on the socket (``net.PacsdAE``).

pynetdicom is blocking, so the association runs in a thread of its own
(``asyncio.to_thread``, not the archive's worker pool, whose threads the staging reads
need) and reaches the services on the event loop through ``bridge.Bridge``.

Statuses: 0x0000 and warnings (0xB000, 0xB006, 0xB007) confirm the instance; 0xA7xx (out
of resources), no response, a lost or refused connection, a transient A-ASSOCIATE-RJ are
retried; any other failure status or a permanent A-ASSOCIATE-RJ is permanent.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from .. import errors
from ..config import ForwardDestination, Settings
from ..model import InstanceRow
from ..services.forward import SendError
from ..services.retrieve import RetrieveService
from .bridge import Bridge
from .contexts import move_contexts
from .net import Outgoing, PacsdAE, Policy, ReadAhead, accepted_syntaxes  # noqa: F401
from .server import configure_pynetdicom

log = logging.getLogger(__name__)

WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
#: Confirmed instances are logged as sent in batches of this many.
CONFIRM_BATCH = 20


class CStoreSender:
    """``Sender`` for ``type = "dimse"`` destinations."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, destination: ForwardDestination, rows: list[InstanceRow],
                   retrieve: RetrieveService,
                   on_sent: Callable[[list[InstanceRow]], Any]) -> None:
        bridge = Bridge(asyncio.get_running_loop())
        await asyncio.to_thread(self._send, destination, rows, retrieve, on_sent, bridge)

    def _ae(self, dest: ForwardDestination) -> PacsdAE:
        configure_pynetdicom()
        d = self.settings.dimse
        ae = PacsdAE(ae_title=dest.calling_ae_title or self.settings.server.ae_title)
        ae.policy = Policy([], d.max_pdu, max(d.network_timeout_s, dest.timeout_s))
        ae.maximum_pdu_size = d.max_pdu
        ae.acse_timeout = dest.timeout_s
        ae.dimse_timeout = dest.timeout_s
        ae.network_timeout = dest.timeout_s
        ae.connection_timeout = dest.timeout_s
        return ae

    def _send(self, dest: ForwardDestination, rows: list[InstanceRow],
              retrieve: RetrieveService, on_sent: Callable[[list[InstanceRow]], Any],
              bridge: Bridge) -> None:
        ae = self._ae(dest)
        assoc = ae.associate(dest.host, dest.port, contexts=move_contexts(rows),
                             ae_title=dest.ae_title, max_pdu=self.settings.dimse.max_pdu)
        if not assoc.is_established:
            if assoc.is_rejected:
                result = getattr(getattr(assoc.acceptor, "primitive", None), "result", 1)
                raise SendError("association rejected" + (
                    " (transient)" if result == 2 else ""), permanent=result != 2)
            raise SendError("association failed (destination down or unreachable)")
        confirmed: list[InstanceRow] = []
        try:
            reader = ReadAhead(retrieve, bridge, rows)
            for index, row in enumerate(rows):
                stage = functools.partial(reader.stage, index)
                try:
                    status = assoc.send_c_store(
                        Outgoing(row.sop_class_uid, row.sop_instance_uid, stage))
                except errors.NotAcceptable as exc:
                    raise SendError(exc.reason, permanent=True) from None
                except errors.PacsdError as exc:
                    raise SendError(exc.reason) from None
                except ValueError:
                    raise SendError("the destination accepted no presentation context "
                                    "for this SOP class", permanent=True) from None
                except RuntimeError:
                    raise SendError("sending failed (association lost)") from None
                code = getattr(status, "Status", None)
                if code is None:
                    raise SendError("no C-STORE response (association lost or timed out)")
                if code == 0 or code in WARNINGS:
                    confirmed.append(row)
                    if len(confirmed) >= CONFIRM_BATCH:
                        bridge.call(on_sent(confirmed))
                        confirmed = []
                    continue
                transient = (code & 0xFF00) == 0xA700
                raise SendError(f"C-STORE status 0x{code:04X}", permanent=not transient)
        finally:
            if confirmed:
                bridge.call(on_sent(confirmed))
            if assoc.is_established:
                assoc.release()
