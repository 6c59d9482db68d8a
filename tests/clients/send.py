#!/usr/bin/env python3
"""Send messages to the relay with Python's smtplib, a client we did not write.

Prints one JSON object per message on standard output:
  {"ok": true, "code": 250, "message": "..."}  or  {"ok": false, "stage": "auth", "code": 535, ...}
Used by the end-to-end tests in tests/e2e; runnable by hand too:
  python3 tests/clients/send.py --port 2525 --user mfp-3f --password scan-to-email \
      --from scanner@contoso.com --to you@example.com --body "hello"
"""
import argparse
import concurrent.futures
import json
import smtplib
import ssl
import sys


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["plain", "starttls", "ssl"], default="plain")
    p.add_argument("--cafile", help="trust this CA for the relay's certificate")
    p.add_argument("--insecure", action="store_true", help="do not verify the relay's certificate")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--auth", choices=["PLAIN", "LOGIN"], default="PLAIN")
    p.add_argument("--no-initial-response", action="store_true",
                   help="send AUTH without an initial response (wait for 334)")
    p.add_argument("--helo", action="store_true", help="say HELO instead of EHLO")
    p.add_argument("--from", dest="sender", required=True)
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--file", action="append", help="message file(s), sent as raw bytes")
    p.add_argument("--body", help="message text (a minimal header is added)")
    p.add_argument("--count", type=int, default=1, help="messages to send")
    p.add_argument("--parallel", type=int, default=1, help="concurrent sessions")
    p.add_argument("--per-session", type=int, default=1, help="messages per session")
    p.add_argument("--source", help="source address to connect from, e.g. 127.0.0.2")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--subject", default="smtplib test", help="Subject of a --body message")
    p.add_argument("--seq-start", type=int,
                   help="number the messages: message i gets a header X-Test-Seq: <seq-start + i> "
                        "and its result a \"seq\" field; a message counts as ok once the server "
                        "answered its DATA with 250, whatever happens to the session afterwards")
    p.add_argument("--no-size", action="store_true",
                   help="do not announce SIZE= in MAIL even if the server offers it")
    return p.parse_args()


def messages(a):
    if a.file:
        out = []
        for f in a.file:
            with open(f, "rb") as fh:
                out.append(fh.read())
        return out
    text = a.body if a.body is not None else "test"
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\n%s\r\n" % (a.sender, a.to[0], a.subject, text))
    return [msg.encode("utf-8")]


def connect(a):
    src = (a.source, 0) if a.source else None
    ctx = None
    if a.mode != "plain":
        ctx = ssl.create_default_context(cafile=a.cafile) if a.cafile else ssl.create_default_context()
        if a.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    if a.mode == "ssl":
        s = smtplib.SMTP_SSL(a.host, a.port, timeout=a.timeout, context=ctx, source_address=src)
    else:
        s = smtplib.SMTP(a.host, a.port, timeout=a.timeout, source_address=src)
    if a.helo:
        s.helo("pyclient")
    else:
        s.ehlo("pyclient")
    if a.mode == "starttls":
        s.starttls(context=ctx)
        s.ehlo("pyclient")
    if a.no_size:
        s.esmtp_features.pop("size", None)
    if a.user is not None:
        s.user, s.password = a.user, a.password
        mech = "auth_" + a.auth.lower()
        s.auth(a.auth, getattr(s, mech), initial_response_ok=not a.no_initial_response)
    return s


def fail(stage, e):
    code = getattr(e, "smtp_code", None)
    msg = getattr(e, "smtp_error", None)
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        first = next(iter(e.recipients.values()))
        code, msg = first[0], first[1]
        stage = "rcpt"
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return {"ok": False, "stage": stage, "code": code, "message": msg or repr(e)}


def capture_data_reply(s):
    """Keeps the server's reply to the message body (sendmail does not return it)."""
    original = s.data

    def data(msg):
        code, resp = original(msg)
        s.last_data_reply = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
        return code, resp

    s.data = data
    s.last_data_reply = ""


def session(a, batch):
    """batch: list of (seq or None, message bytes)."""
    def with_seq(r, seq):
        if seq is not None:
            r["seq"] = seq
        return r

    results = []
    try:
        s = connect(a)
    except smtplib.SMTPAuthenticationError as e:
        return [with_seq(fail("auth", e), seq) for seq, _ in batch]
    except Exception as e:  # noqa: BLE001 - report anything as a failed connect
        return [with_seq(fail("connect", e), seq) for seq, _ in batch]
    capture_data_reply(s)
    for seq, body in batch:
        s.last_data_reply = ""
        try:
            refused = s.sendmail(a.sender, a.to, body)
            ok = {"ok": True, "code": 250, "refused": {k: v[0] for k, v in refused.items()},
                  "message": "", "reply": s.last_data_reply}
            if seq is not None:
                # The 250 is what counts; a session lost right after it does not undo it.
                results.append(with_seq(ok, seq))
                try:
                    s.noop()
                except Exception:  # noqa: BLE001
                    pass
                continue
            code, msg = s.noop()  # keeps the session honest: still usable after the message
            results.append(ok)
        except Exception as e:  # noqa: BLE001
            stage = "mail" if isinstance(e, smtplib.SMTPSenderRefused) else "data"
            results.append(with_seq(fail(stage, e), seq))
            try:
                s.rset()
            except Exception:  # noqa: BLE001
                pass
    try:
        s.quit()
    except Exception:  # noqa: BLE001
        pass
    return results


def main():
    a = parse_args()
    bodies = messages(a)
    work = []
    for i in range(a.count):
        body = bodies[i % len(bodies)]
        seq = None
        if a.seq_start is not None:
            seq = a.seq_start + i
            body = b"X-Test-Seq: %d\r\n" % seq + body
        work.append((seq, body))
    batches = [work[i:i + a.per_session] for i in range(0, len(work), a.per_session)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.parallel) as pool:
        for res in pool.map(lambda b: session(a, b), batches):
            for r in res:
                print(json.dumps(r))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
