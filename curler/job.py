"""The job itself: parse a payload, check its method, encode its data, classify an HTTP outcome.

Plain functions with no I/O, so tests can call them without a job server.
"""

import email.utils
import json
import re
import urllib.parse

MAX_METHOD_LENGTH = 1024
# One path segment: letters (any script), digits, '_', '-', '.' and '~'.
SEGMENT = re.compile(r"[\w.~-]+")
METHOD_CACHE_SIZE = 4096

SUCCESS = "success"
TRANSIENT = "transient"
PERMANENT = "permanent"
TRANSIENT_STATUSES = frozenset({408, 425, 429})


class InvalidPayload(ValueError):
    """The job's payload cannot be delivered as it is; the message gives the reason."""


def parse_payload(workload):
    """Return ``(method, data)`` from a JSON payload ``{"method": ..., "data": {...}}``."""
    try:
        payload = json.loads(workload.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidPayload("payload is not UTF-8 text") from None
    except ValueError as error:
        raise InvalidPayload(f"payload is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise InvalidPayload("payload is not a JSON object")
    method = payload.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidPayload("payload has no \"method\" string")
    data = payload.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidPayload("payload \"data\" is not a JSON object")
    return method, data


_method_paths = {}


def method_path(method):
    """Return the method as a percent-encoded relative path; raise InvalidPayload if unsafe.

    A method is segments of letters, digits, ``_ - . ~`` joined by ``/``. Empty
    segments, ``.`` and ``..``, and every other character (``: ? # \\ %`` and
    spaces among them) are rejected, so the URL cannot leave its base URL.
    """
    path = _method_paths.get(method)
    if path is not None:
        return path
    if len(method) > MAX_METHOD_LENGTH:
        raise InvalidPayload(f"method is longer than {MAX_METHOD_LENGTH} characters")
    for segment in method.split("/"):
        if not SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise InvalidPayload(f"invalid method {method!r}: expected a relative path of letters, "
                                 "digits, '_', '-', '.' and '~' between '/' (no '.' or '..' segment)")
    path = "/" + urllib.parse.quote(method, safe="/-_.~")
    if len(_method_paths) >= METHOD_CACHE_SIZE:
        _method_paths.clear()
    _method_paths[method] = path
    return path


def encode_form(data):
    """Encode a JSON object as ``application/x-www-form-urlencoded`` UTF-8.

    Nested objects and arrays use PHP's bracket notation (``user[id]=5``,
    ``ids[0]=1``). True and false become 1 and 0. Null and empty objects or
    arrays become an empty value, so no key is dropped.
    """
    fields = []
    for key, value in data.items():
        add_field(fields, quote(key), value)
    return "&".join(fields).encode("ascii")


def add_field(fields, name, value):
    if isinstance(value, dict) and value:
        for key, item in value.items():
            add_field(fields, f"{name}%5B{quote(key)}%5D", item)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            add_field(fields, f"{name}%5B{index}%5D", item)
    else:
        fields.append(f"{name}={quote(scalar_text(value))}")


def scalar_text(value):
    if value is True:
        return "1"
    if value is False:
        return "0"
    if value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, str):
        return value
    # JSON numbers arrive as int or float, whose str() is their JSON spelling.
    return str(value)


def quote(text):
    return urllib.parse.quote_plus(text, safe="")


def classify_status(status):
    """Return SUCCESS, TRANSIENT or PERMANENT for an HTTP status code."""
    if 200 <= status < 300:
        return SUCCESS
    if status >= 500 or status in TRANSIENT_STATUSES:
        return TRANSIENT
    return PERMANENT


FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"


def encode_body(post_format, data, handle):
    """Return ``(content type, body bytes)`` for the configured post format.

    ``form`` sends ``data`` as form fields, ``json`` as a JSON object, and
    ``legacy`` as the original curler did: a form field ``data`` with the JSON
    text and a field ``job_handle``.
    """
    if post_format == "form":
        return FORM_TYPE, encode_form(data)
    if post_format == "json":
        return JSON_TYPE, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    legacy = urllib.parse.urlencode({"data": json.dumps(data, separators=(",", ":")), "job_handle": handle})
    return FORM_TYPE, legacy.encode("ascii")


def backoff_delay(attempt, minimum, maximum, retry_after, uniform):
    """Return seconds to wait after failed attempt number ``attempt`` (1 for the first).

    The delay is drawn with full jitter from ``[minimum, minimum * 2**(attempt-1)]``,
    capped at ``maximum``. A ``Retry-After`` delay from the endpoint wins when
    it is given, still capped at ``maximum``.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), maximum)
    ceiling = min(maximum, minimum * 2 ** (attempt - 1))
    return uniform(minimum, ceiling) if ceiling > minimum else ceiling


def parse_retry_after(value, now):
    """Return the delay in seconds that a ``Retry-After`` value (delta seconds or HTTP date) requests, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)
