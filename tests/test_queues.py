"""Several queues, and [queue:NAME] sections that override settings and dedicate children."""

import json
import signal

from curler import gearman, testing

from conftest import job_payload, wait_until
from test_delivery import drain_queue


def test_one_child_serves_every_queue(curlerd, client, endpoint):
    curlerd(workers="1", job_queue="mail,reports")
    client.submit_background("mail", job_payload("send"))
    client.submit_background("reports", job_payload("build"))
    requests = endpoint.wait_for(2)
    assert sorted(r.headers["X-Curler-Queue"] for r in requests) == ["mail", "reports"]


def test_queue_section_overrides_and_dedicates_children(curlerd, client, endpoint, gearmand):
    reports_endpoint = testing.Endpoint().start()
    try:
        daemon = curlerd(wait=False, workers="2", job_queue="mail,reports", sections={
            "queue:reports": {"curl-paths": reports_endpoint.url + "/reports", "workers": "1",
                              "post-format": "json", "dead-letter-queue": "reports.dead"}})
        daemon.wait_for_children(3)
        client.submit_background("mail", job_payload("send", to="a@example.com"))
        client.submit_background("reports", job_payload("monthly", year=2026))
        mail = endpoint.wait_for(1)[0]
        report = reports_endpoint.wait_for(1)[0]
        assert mail.path == "/jobs/send"
        assert mail.form == {"to": "a@example.com"}
        assert report.path == "/reports/monthly"
        assert json.loads(report.body) == {"year": 2026}

        workers = gearman.server_workers(gearman.parse_server(gearmand.address))
        functions = sorted(tuple(sorted(w[3])) for w in workers if w[2].startswith("curlerd-"))
        assert functions == [("mail",), ("mail",), ("reports",)]
    finally:
        reports_endpoint.stop()


def test_queue_section_dead_letter_queue(curlerd, client, endpoint, gearmand):
    endpoint.script("/jobs/missing", testing.Reply(404))
    curlerd(job_queue="mail,reports", sections={"queue:reports": {"dead-letter-queue": "reports.dead"}})
    client.submit_background("reports", job_payload("missing"))
    client.submit_background("mail", job_payload("missing"))
    reports = [json.loads(w) for w in drain_queue(gearmand, "reports.dead", 1)]
    mail = [json.loads(w) for w in drain_queue(gearmand, "mail.failed", 1)]
    assert reports[0]["queue"] == "reports"
    assert mail[0]["queue"] == "mail"


def test_reload_applies_queue_sections(curlerd, client, endpoint):
    other = testing.Endpoint().start()
    try:
        daemon = curlerd(workers="1", job_queue="mail")
        daemon.write_config({"queue:mail": {"curl-paths": other.url + "/v2"}})
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log(r"reloaded:")
        wait_until(lambda: len(daemon.child_pids()) == 1 and daemon.log().count(" started: queues ") >= 2,
                   message="the reloaded child")
        client.submit_background("mail", job_payload("send"))
        assert other.wait_for(1)[0].path == "/v2/send"
        assert endpoint.requests == []
    finally:
        other.stop()
