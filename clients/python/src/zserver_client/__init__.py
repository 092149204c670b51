"""A Python (asyncio) client of zserver: the wire protocol of docs/PROTOCOL.md (Noise XX
with key pinning, AES-256-GCM records with rekeying, calls and sends both ways, streams,
channels) and the login server's commands of docs/LOGIN.md.

>>> client = await connect("127.0.0.1", 7100, pin="<fingerprint>")   # doctest: +SKIP
"""

from .channels import (
    ChannelEvent,
    Channels,
    HistoryPage,
    JoinEvent,
    LeaveEvent,
    Member,
    Position,
    Publication,
    PublicationEvent,
    Subscription,
    UnsubscribedEvent,
)
from .client import Client, ClientStats, Handler, HandlerContext, connect, connect_ws, parse_fingerprint
from .errors import *  # noqa: F403
from .errors import __all__ as _errors
from .login import (
    FileInfo,
    KickedEvent,
    LoginClient,
    LoginEvent,
    Message,
    MessageEvent,
    PartialUpload,
    PushReport,
    Uploaded,
    WhoPage,
)
from .postcard import Reader, Writer
from .record import RekeyPolicy
from .stream import Download, StreamHead, hash_of

__version__ = "0.1.0"

__all__ = [
    "connect",
    "connect_ws",
    "parse_fingerprint",
    "Client",
    "ClientStats",
    "Handler",
    "HandlerContext",
    "RekeyPolicy",
    "Download",
    "StreamHead",
    "hash_of",
    "Reader",
    "Writer",
    "LoginClient",
    "LoginEvent",
    "MessageEvent",
    "KickedEvent",
    "Message",
    "PushReport",
    "WhoPage",
    "FileInfo",
    "PartialUpload",
    "Uploaded",
    "Channels",
    "Subscription",
    "Position",
    "Publication",
    "Member",
    "HistoryPage",
    "ChannelEvent",
    "PublicationEvent",
    "JoinEvent",
    "LeaveEvent",
    "UnsubscribedEvent",
    *_errors,
]
