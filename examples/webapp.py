"""A small example web app with one job endpoint, /jobs/generate_archive.

curlerd POSTs each job's data here as form fields. The endpoint prints what
it received and replies 200, which marks the job done for curlerd. Run it with
``python examples/webapp.py --port 8080``; it listens on 127.0.0.1 only.
"""

import argparse
import http.server
import sys
import urllib.parse


class JobHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        fields = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8"), keep_blank_values=True)
        if self.path == "/jobs/generate_archive":
            user_id = fields.get("user_id", ["?"])[0]
            print(f"webapp: POST {self.path} user_id={user_id} "
                  f"(job handle {self.headers.get('X-Curler-Job-Handle')}, "
                  f"attempt {self.headers.get('X-Curler-Attempt')})", flush=True)
            self.reply(200, f"archive for user {user_id} generated\n")
        else:
            self.reply(404, f"no job endpoint at {self.path}\n")

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description="Example web app with a curler job endpoint.")
    parser.add_argument("--port", type=int, default=8080, help="TCP port on 127.0.0.1 (default 8080)")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), JobHandler)
    print(f"webapp: listening on http://127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
