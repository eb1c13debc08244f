"""A PLC's OPC UA server for the gate's tests: asyncua's own server with each line's gate nodes, recording
every write the gate makes (a PostWrite callback, so no write is missed as sampling could).

``python tests/gate/opcua_server.py --port P --lines L1,L2 --record FILE [--username U --password PW]``
prints ``ready`` once it listens; each Write request becomes one JSON line in FILE (appended, so a
restarted server adds to the same record): ``{"writes": [[node id, value], ...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole

NAMESPACE = "urn:lineguard:test-plc"  # the first namespace registered: index 2, as the default node ids say


class OnePlcUser:
    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password

    def get_user(self, iserver, username=None, password=None, certificate=None):  # noqa: ANN001, ANN201
        if username == self.username and password == self.password:
            return User(role=UserRole.User, name=username)
        return None


async def serve(args: argparse.Namespace) -> None:
    user_manager = OnePlcUser(args.username, args.password) if args.username else None
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_identity_tokens([ua.UserNameIdentityToken] if args.username else [ua.AnonymousIdentityToken])
    idx = await server.register_namespace(NAMESPACE)
    assert idx == 2, idx
    plc = await server.nodes.objects.add_object(idx, "lineguard")
    for line in args.lines.split(","):
        for name, value, variant in (("part_id", "", ua.VariantType.String), ("reject", False, ua.VariantType.Boolean),
                                     ("sequence", 0, ua.VariantType.Int32), ("heartbeat", 0, ua.VariantType.Int32)):
            var = await plc.add_variable(ua.NodeId(f"lineguard.{line}.{name}", idx), f"{line}.{name}",
                                         ua.Variant(value, variant))
            await var.set_writable()

    record = open(args.record, "a", buffering=1)  # noqa: SIM115 - open for the server's life

    async def on_write(event, dispatcher) -> None:  # noqa: ANN001
        if not event.is_external:
            return  # the server's own writes (its status, every second)
        params = event.request_params
        writes = [[node.NodeId.to_string(), node.Value.Value.Value]
                  for node, status in zip(params.NodesToWrite, event.response_params) if status.is_good()]
        record.write(json.dumps({"writes": writes}, default=str) + "\n")

    server.subscribe_server_callback(CallbackType.PostWrite, on_write)
    async with server:
        print("ready", flush=True)
        while True:
            await asyncio.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lines", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--username")
    parser.add_argument("--password")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
