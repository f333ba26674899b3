"""The baseline worker, case (b): one process, one ``requests.Session.post`` per job.

This is the original curler's design: take a job, decode its JSON payload,
POST its data as form fields to ``<base URL>/<method>``, report the outcome.
The Gearman side is curler's own worker loop (curler.gearman.Worker), so the
comparison with curlerd isolates the per-job HTTP and bookkeeping layers.
A kept-alive Session is the stricter baseline: ``requests.post`` without one
opens a new TCP connection for every job and is slower.
"""

import argparse
import json
import socket

import requests

from curler import gearman

GRAB_TIMEOUT = 1.0
HTTP_TIMEOUT = 60.0


def run(job_server, queue, base_url):
    session = requests.Session()
    worker = gearman.Worker([gearman.parse_server(job_server)], [queue],
                            f"bench-requests-worker-{socket.gethostname()}")
    while True:
        job = worker.grab_job(GRAB_TIMEOUT)
        if job is None:
            continue
        payload = json.loads(job.workload)
        response = session.post(f"{base_url}/{payload['method']}", data=payload.get("data") or {},
                                timeout=HTTP_TIMEOUT)
        if response.ok:
            worker.complete(job, response.content)
        else:
            worker.fail(job)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-server", required=True, help="Gearman job server as host:port")
    parser.add_argument("--queue", default="curl", help="Gearman function to work on")
    parser.add_argument("--url", required=True, help="base URL; each job goes to <url>/<method>")
    options = parser.parse_args()
    run(options.job_server, options.queue, options.url)


if __name__ == "__main__":
    main()
