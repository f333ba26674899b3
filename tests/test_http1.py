"""The lean HTTP/1.1 response parser, fed through a socket pair."""

import socket
import threading

import pytest

from curler import http1


def parse(raw, limit=1000, chunk=7):
    """Send ``raw`` in small pieces from another thread, then close, and parse it."""
    ours, theirs = socket.socketpair()

    def feed():
        for start in range(0, len(raw), chunk):
            theirs.sendall(raw[start:start + chunk])
        theirs.close()

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        return http1.read_response(ours, limit)
    finally:
        thread.join(5)
        ours.close()


def test_content_length_body():
    response = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    assert response.status == 200
    assert response.body == b"hello"
    assert response.headers["x-a"] == "1"
    assert response.reusable
    assert not response.truncated


def test_chunked_body_with_trailers():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    response = parse(raw)
    assert response.body == b"hello world"
    assert response.reusable


def test_chunked_body_without_trailers():
    response = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert response.body == b"abc"
    assert response.reusable


def test_body_until_close():
    response = parse(b"HTTP/1.1 200 OK\r\n\r\nto the end")
    assert response.body == b"to the end"
    assert not response.reusable


def test_interim_response_is_skipped():
    response = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert response.status == 201
    assert response.body == b"ok"


def test_no_body_statuses():
    response = parse(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert response.status == 204
    assert response.body == b""
    assert response.reusable


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 20,
])
def test_body_past_limit_is_cut_off(raw):
    response = parse(raw, limit=10)
    assert response.body == b"x" * 10
    assert response.truncated
    assert not response.reusable


@pytest.mark.parametrize("raw, reusable", [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
])
def test_connection_reuse(raw, reusable):
    assert parse(raw).reusable is reusable


def test_repeated_headers_are_joined():
    response = parse(b"HTTP/1.1 200 OK\r\nVary: a\r\nVary: b\r\nContent-Length: 0\r\n\r\n")
    assert response.headers["vary"] == "a, b"


@pytest.mark.parametrize("raw", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Le",
])
def test_invalid_responses_raise(raw):
    with pytest.raises(http1.ProtocolError):
        parse(raw)
