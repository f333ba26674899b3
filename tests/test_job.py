"""The job's pure logic: payload parsing, method paths, form encoding, outcome classes and backoff."""

import json
import urllib.parse

import pytest

from curler import job


@pytest.mark.parametrize("workload, method, data", [
    (b'{"method": "generate_archive", "data": {"user_id": 5}}', "generate_archive", {"user_id": 5}),
    (b'{"method": "x"}', "x", {}),
    (b'{"method": "x", "data": null}', "x", {}),
    ('{"method": "café", "data": {"a": "é"}}'.encode(), "café", {"a": "é"}),
])
def test_parse_payload_accepts(workload, method, data):
    assert job.parse_payload(workload) == (method, data)


@pytest.mark.parametrize("workload, reason", [
    (b"not json", "not valid JSON"),
    (b'{"data":{}}', "no \"method\""),
    (b'{"method":"x","data":[1,2]}', "not a JSON object"),
    (b"\xff\xfe", "not UTF-8"),
    ('{"method":"x"}'.encode("utf-16"), "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"method": 5}', "no \"method\""),
    (b'{"method": ""}', "no \"method\""),
])
def test_parse_payload_rejects(workload, reason):
    with pytest.raises(job.InvalidPayload, match=reason):
        job.parse_payload(workload)


@pytest.mark.parametrize("method, path", [
    ("generate_archive", "/generate_archive"),
    ("reports/monthly", "/reports/monthly"),
    ("a-b.c~d", "/a-b.c~d"),
    ("café", "/caf%C3%A9"),
    ("v1.2/x", "/v1.2/x"),
    ("...", "/..."),
])
def test_method_path_accepts(method, path):
    assert job.method_path(method) == path


@pytest.mark.parametrize("method", [
    "../admin", "..", ".", "a/../b", "a/./b", "/admin", "a/", "a//b", "http://127.0.0.1:1/x",
    "x?y=1", "x#frag", "a\\b", "a b", "a%2e%2e", "a:b", "a\nb", "a\0b", "x" * 2000,
])
def test_method_path_rejects(method):
    with pytest.raises(job.InvalidPayload):
        job.method_path(method)


def decode(body):
    return urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True)


def test_encode_form_flat():
    assert job.encode_form({"user_id": 5}) == b"user_id=5"


def test_encode_form_nested_uses_brackets():
    fields = decode(job.encode_form({"user": {"id": 5, "tags": ["a", "b"]}, "ids": [1, 2]}))
    assert fields == [("user[id]", "5"), ("user[tags][0]", "a"), ("user[tags][1]", "b"),
                      ("ids[0]", "1"), ("ids[1]", "2")]


def test_encode_form_scalars():
    fields = decode(job.encode_form({"t": True, "f": False, "n": None, "x": 1.5, "s": "a b&c=d"}))
    assert fields == [("t", "1"), ("f", "0"), ("n", ""), ("x", "1.5"), ("s", "a b&c=d")]


def test_encode_form_keeps_empty_containers():
    fields = decode(job.encode_form({"tags": [], "meta": {}}))
    assert fields == [("tags", ""), ("meta", "")]


def test_encode_form_utf8():
    body = job.encode_form({"name": "Zoë", "city": "東京"})
    assert body == b"name=Zo%C3%AB&city=%E6%9D%B1%E4%BA%AC"
    assert decode(body) == [("name", "Zoë"), ("city", "東京")]


def test_encode_form_empty():
    assert job.encode_form({}) == b""


def test_encode_body_json():
    content_type, body = job.encode_body("json", {"user_id": 5, "name": "Zoë"}, "H:x:1")
    assert content_type == "application/json"
    assert json.loads(body) == {"user_id": 5, "name": "Zoë"}


def test_encode_body_legacy():
    content_type, body = job.encode_body("legacy", {"user_id": 5}, "H:x:1")
    assert content_type == "application/x-www-form-urlencoded"
    fields = dict(decode(body))
    assert json.loads(fields["data"]) == {"user_id": 5}
    assert fields["job_handle"] == "H:x:1"


@pytest.mark.parametrize("status, outcome", [
    (200, job.SUCCESS), (201, job.SUCCESS), (204, job.SUCCESS), (299, job.SUCCESS),
    (301, job.PERMANENT), (302, job.PERMANENT), (304, job.PERMANENT),
    (400, job.PERMANENT), (404, job.PERMANENT), (410, job.PERMANENT), (422, job.PERMANENT),
    (408, job.TRANSIENT), (425, job.TRANSIENT), (429, job.TRANSIENT),
    (500, job.TRANSIENT), (502, job.TRANSIENT), (503, job.TRANSIENT), (504, job.TRANSIENT),
])
def test_classify_status(status, outcome):
    assert job.classify_status(status) == outcome


def test_backoff_grows_and_is_capped():
    upper = lambda low, high: high
    delays = [job.backoff_delay(n, 1.0, 60.0, None, upper) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_jitter_stays_in_range():
    lower = lambda low, high: low
    assert job.backoff_delay(5, 1.0, 60.0, None, lower) == 1.0


def test_backoff_honours_retry_after_capped():
    assert job.backoff_delay(1, 1.0, 60.0, 2.0, None) == 2.0
    assert job.backoff_delay(1, 1.0, 60.0, 3600.0, None) == 60.0


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert job.parse_retry_after("2", now) == 2.0
    assert job.parse_retry_after(None, now) is None
    assert job.parse_retry_after("soon", now) is None
    date = "Tue, 14 Nov 2023 22:13:40 GMT"  # now + 20 s
    assert job.parse_retry_after(date, now) == pytest.approx(20.0)
    assert job.parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0
