#!/usr/bin/env python3
"""A real SMTP sink for the tests (aiosmtpd): writes each mail it accepts to DIR as a
.eml file. With --tls-cert/--tls-key it offers STARTTLS and requires it; with --user and
--password-file it requires AUTH (PLAIN/LOGIN) with those credentials.

Usage: smtp_sink.py --port N --dir DIR [--tls-cert C --tls-key K] [--user U --password-file F]
Prints "ready" on stdout once it listens on 127.0.0.1:N.
"""
import argparse
import os
import ssl
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(self.out, f"{time.time_ns()}.eml")
        with open(name + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(name + ".tmp", name)
        return "250 OK"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--user")
    ap.add_argument("--password-file")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    kw = {}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        kw.update(tls_context=ctx, require_starttls=True)
    if a.user:
        password = open(a.password_file).read().strip()

        def auth(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and data.login.decode() == a.user and data.password.decode() == password
            return AuthResult(success=ok, handled=False)

        kw.update(authenticator=auth, auth_required=True, auth_require_tls=bool(a.tls_cert))
    c = Controller(Handler(a.dir), hostname="127.0.0.1", port=a.port, **kw)
    c.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
