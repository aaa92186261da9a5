"""A real SMTP server for the notification tests: aiosmtpd with STARTTLS required (the test's
certificate) and AUTH only after it, each message it takes appended to a JSON-lines file.

Usage: smtp_server.py PORT CERT KEY OUT   (prints "serving smtp 127.0.0.1:PORT" once it listens)
"""

import json
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps({
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "data": envelope.content.decode("utf-8", "replace"),
                "tls": session.ssl is not None,
                "auth": bool(session.authenticated),
            }) + "\n")
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"edge" \
        and auth_data.password == b"mail-pw"
    return AuthResult(success=ok)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(
    Handler(),
    hostname="127.0.0.1",
    port=port,
    tls_context=context,
    require_starttls=True,
    authenticator=authenticate,
    auth_require_tls=True,
    decode_data=False,
)
controller.start()
print(f"serving smtp 127.0.0.1:{port}", flush=True)
threading.Event().wait()
