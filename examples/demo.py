"""Demo: a private gearmand, the example web app and curlerd, then one job from queue to endpoint.

Everything listens on 127.0.0.1 on free ports and is stopped at the end.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from curler import testing

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
TIMEOUT = 30.0


def start_webapp(port):
    process = subprocess.Popen([sys.executable, "-u", os.path.join(HERE, "webapp.py"), "--port", str(port)],
                               stdout=subprocess.PIPE, text=True)
    testing.wait_for_port(port)
    print(process.stdout.readline().rstrip())
    return process


def write_config(directory, gearmand, web_port):
    path = os.path.join(directory, "curler.ini")
    with open(path, "w") as ini:
        ini.write("[curlerd]\n"
                  f"job-servers = {gearmand.address}\n"
                  "job-queue = curl\n"
                  f"curl-paths = http://127.0.0.1:{web_port}/jobs\n"
                  "workers = 2\n"
                  f"pidfile = {directory}/curlerd.pid\n"
                  f"log-file = {directory}/curlerd.log\n")
    return path


def wait_for_line(stream, text):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if text in line:
            return line.rstrip()
    raise SystemExit(f"demo failed: the web app printed no line with {text!r} within {TIMEOUT:.0f} s")


def wait_for_children(log_path, count):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if os.path.exists(log_path) and open(log_path).read().count(" started: queues ") >= count:
            return
        time.sleep(0.05)
    raise SystemExit(f"demo failed: curlerd children did not start; see {log_path}")


def main():
    directory = tempfile.mkdtemp(prefix="curler-demo-")
    gearmand = testing.Gearmand().start()
    print(f"gearmand: listening on {gearmand.address}")
    webapp = start_webapp(testing.free_port())
    web_port = int(webapp.args[-1])
    config = write_config(directory, gearmand, web_port)
    curlerd = subprocess.Popen([os.path.join(BIN, "curlerd"), "-c", config])
    try:
        wait_for_children(os.path.join(directory, "curlerd.log"), 2)
        print(f"curlerd: running with pid {curlerd.pid}, config {config}")
        command = [os.path.join(BIN, "curler"), "submit", "--job-servers", gearmand.address,
                   "--data", '{"user_id": 5}', "generate_archive"]
        handle = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
        print(f'submitted {{"method": "generate_archive", "data": {{"user_id": 5}}}} as job {handle}')
        print(wait_for_line(webapp.stdout, "user_id="))
    finally:
        curlerd.send_signal(signal.SIGTERM)
        curlerd.wait(TIMEOUT)
        webapp.terminate()
        webapp.wait(TIMEOUT)
        gearmand.close()
        log_path = os.path.join(directory, "curlerd.log")
        if os.path.exists(log_path):
            print("curlerd log:")
            with open(log_path) as log:
                for line in log:
                    print("  " + line.rstrip())
        shutil.rmtree(directory, ignore_errors=True)
    print("demo finished: the job reached the web app as user_id=5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
