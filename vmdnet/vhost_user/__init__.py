"""vhost-user protocol, back-end side: sans-IO codec and state machine, plus a thin socket adapter.

  protocol.py      wire constants, payload layouts, VhostUserError
  codec.py         bytes + fds -> Message; Reply -> bytes
  backend.py       Backend: protocol state -> device events + replies (Theory of operation there)
  socket.py        AF_UNIX listen/connect, SCM_RIGHTS, Connection.pump()
  capabilities.py  --print-capabilities JSON

Usage (the device's event loop; `device` maps memory and runs rings)::

    from vmdnet.vhost_user import Backend, VhostUserError, events as ev, socket as vus

    backend = Backend(offered_features, queue_pairs=1, stop_vring=device.stop_vring)
    with vus.listen(path) as listener:
        while True:
            conn = listener.accept()
            while True:                      # poll conn.fileno() with the data path
                try:
                    events = conn.pump(backend)
                except VhostUserError as e:
                    device.handle(e.events)  # what happened before the bad message
                    events = None
                if events is None:           # EOF or protocol error
                    device.handle(backend.disconnect())
                    conn.close()
                    break
                device.handle(events)        # ev.VringReady, ev.MemTableChanged, ...
"""

from vmdnet.vhost_user import events
from vmdnet.vhost_user.backend import (
    DEFAULT_PROTOCOL_FEATURES,
    SUPPORTED_PROTOCOL_FEATURES,
    Backend,
)
from vmdnet.vhost_user.codec import Codec, Message, Reply
from vmdnet.vhost_user.events import (
    Event,
    FeaturesChanged,
    MemTableChanged,
    MtuChanged,
    Reset,
    VringConfig,
    VringFdsChanged,
    VringReady,
    VringStopped,
)
from vmdnet.vhost_user.protocol import (
    MemoryRegion,
    ProtocolFeature,
    Request,
    VhostUserError,
    request_name,
)

__all__ = [
    "Backend", "Codec", "DEFAULT_PROTOCOL_FEATURES", "Event", "FeaturesChanged",
    "MemTableChanged", "MemoryRegion", "Message", "MtuChanged", "ProtocolFeature", "Reply",
    "Request", "Reset", "SUPPORTED_PROTOCOL_FEATURES", "VhostUserError", "VringConfig",
    "VringFdsChanged", "VringReady", "VringStopped", "events", "request_name",
]
