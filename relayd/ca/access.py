"""Access security for clients pcas does not see: the same ACF, the same EPICS asLib.

CA puts are checked by pcas itself, through the asLib of EPICS base that pcaspy links
in (`load_access_security` in `relayd.ca.process` loads the ACF into it). A pvAccess put
reaches relayd instead, and must be judged by the same rules, not by a second reading
of the file: `PutAccess` asks that very asLib, as QSRV (the IOC's pvAccess server)
does. For each put it adds an asLib client to the PV's access security group, with the
put's user and host, reads the access asLib computed, and removes the client again.

pcaspy's extension module exports the asLib functions but not the ``asCheckPut`` macro,
which reads the client's ``access`` member; `_ASGClient` is that structure
(``asgClient`` in EPICS base's asLib.h, unchanged since EPICS 3.14). The calls run on
the CA process's main thread only, as pcas's own do.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

from pcaspy import _cas

AS_WRITE = 2  # asAccessRights: asNOACCESS, asREAD, asWRITE


class _ASGClient(ctypes.Structure):
    _fields_ = [
        ("next", ctypes.c_void_p), ("previous", ctypes.c_void_p),  # ELLNODE
        ("pasgMember", ctypes.c_void_p),
        ("user", ctypes.c_char_p),
        ("host", ctypes.c_char_p),
        ("userPvt", ctypes.c_void_p),
        ("pcallback", ctypes.c_void_p),
        ("level", ctypes.c_int),
        ("access", ctypes.c_int),
        ("trapMask", ctypes.c_int),
    ]


def _aslib() -> ctypes.CDLL:
    lib = ctypes.CDLL(_cas.__file__)  # the copy pcaspy loaded: the ACF pcas uses
    handle = ctypes.POINTER(ctypes.c_void_p)
    lib.asAddMember.argtypes = [handle, ctypes.c_char_p]
    lib.asAddClient.argtypes = [handle, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                ctypes.c_char_p]
    lib.asRemoveClient.argtypes = [handle]
    for function in (lib.asAddMember, lib.asAddClient, lib.asRemoveClient):
        function.restype = ctypes.c_long
    return lib


class PutAccess:
    """May these credentials, from this host, put to a PV of this group? Per the ACF."""

    def __init__(self) -> None:
        self._lib = _aslib()
        self._active = ctypes.c_int.in_dll(self._lib, "asActive")
        self._members: dict[str, ctypes.c_void_p] = {}

    def __call__(self, group: str, credentials: Sequence[str], host: str) -> bool:
        """True if any of `credentials` (a user, or ``role/<group>``) may write.

        Access security not loaded: everyone may. An asLib error: no one may (asLib
        fails safe, and so does this).
        """
        if not self._active.value:
            return True
        member = self._member(group)
        return any(self._may_write(member, who, host) for who in credentials)

    def _member(self, group: str) -> ctypes.c_void_p:
        member = self._members.get(group)
        if member is None:
            member = ctypes.c_void_p()
            if self._lib.asAddMember(ctypes.byref(member), group.encode()) != 0:
                member = ctypes.c_void_p()  # no such group: asAddClient fails, no access
            self._members[group] = member
        return member

    def _may_write(self, member: ctypes.c_void_p, user: str, host: str) -> bool:
        if not member.value:
            return False
        client = ctypes.c_void_p()
        # asLib keeps pointers to these (and lower-cases the host in place) until the
        # client is removed: they live to the end of this call.
        user_buffer = ctypes.create_string_buffer(user.encode())
        host_buffer = ctypes.create_string_buffer(host.encode())
        status = self._lib.asAddClient(ctypes.byref(client), member, 1, user_buffer,
                                       host_buffer)
        if not client.value:
            return False
        try:
            access = ctypes.cast(client, ctypes.POINTER(_ASGClient)).contents.access
            return status == 0 and access >= AS_WRITE
        finally:
            self._lib.asRemoveClient(ctypes.byref(client))
